"""What a compiled run needs: validated data, the frequentist fit, priors, compressed
statistics, starting values and the traced arguments (:class:`ModelSpec`).

:func:`model_spec` builds it for one data set; :func:`pad_patterns` gives data sets with
similar missingness one compiled sampler.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from nmfre import validation as v
from nmfre.core.covariance import conditional as conditional_covariance
from nmfre.core.covariates import Frame
from nmfre.labels import Data, check_rank, coerce, labels, some_labels

from . import likelihood, models
from .prior_shift import theta_prior_shift

__all__ = ["MODELS", "THETA_KINDS", "ModelSpec", "model_spec", "pad_patterns"]

MODELS = ("joint", "conditional", "conditional_x")
#: the constraint on Theta (nmfre.fit's ``theta=``)
THETA_KINDS = ("free", "nonneg")


@dataclass(frozen=True)
class ModelSpec:
    """A model ready to sample: data, fit, priors, statistics, starting values and the
    traced arguments of the compiled sampler. ``frame`` is the ``T`` of the covariates' frame
    when free Theta is sampled on ``T^-1 A`` (``stats`` are then those of ``(Y, T^-1 A)`` and
    ``args`` end with ``T``); None: the given covariates."""

    name: str
    data: Data
    fit: Any
    priors: dict
    stats: likelihood.Stats
    init: dict
    args: tuple
    nonneg: bool
    flat: bool = False
    sigma2_fixed: float | None = None
    frame: np.ndarray | None = None
    # free Theta's conditional posterior mean moved by its prior where the chains start, in
    # posterior sds (Q x K; bayes.prior_shift.theta_prior_shift); None for non-negative Theta, a
    # flat prior or a singular precision
    prior_shift: np.ndarray | None = None


def _frequentist_fit(fit, data: Data, rank: int, theta: str):
    """The given fit (checked against the data) or a fresh ML fit (of the observed
    entries when cells are missing)."""
    import nmfre

    if fit is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nmfre.ConvergenceWarning)
            return nmfre.fit(xr.DataArray(data.Y, dims=("feature", "unit"),
                                          coords={"feature": data.features, "unit": data.units}),
                             xr.DataArray(data.A, dims=("covariate", "unit"),
                                          coords={"covariate": data.covariates, "unit": data.units}),
                             rank=rank, theta=theta, n_init=1)
    if not isinstance(fit, nmfre.NMFREFit):
        raise v.ArgumentTypeError(f"fit must be an nmfre.NMFREFit, got {type(fit).__name__}")
    if fit.shape["Q"] != rank:
        raise ValueError(f"fit has rank {fit.shape['Q']} but rank={rank} was asked for")
    given = fit.data
    if given.kind == "sparse" and data.kind == "dense":  # a fit of the sparse Y given here (made dense)
        given = dataclasses.replace(given, Y=given.Y.toarray())
    if not given.same_data(data):
        if "dask" in (given.kind, data.kind):
            raise ValueError(f"fit was estimated on a {given.kind} Y and a {data.kind} Y is given: a lazy (dask) Y "
                             "is recognised as the fit's data only as the same dask array object; pass that, or "
                             "fit the Y given here")
        raise ValueError("fit was estimated on different data (Y or A differ from those given)")
    if fit.theta_kind != theta:
        raise ValueError(f"fit has theta={fit.theta_kind!r} but theta={theta!r} was asked for")
    return fit


def _fit_labels(data: Data, fit) -> Data:
    """One set of labels for the data and the fit: where one side's labels are the defaults
    (0..n-1; ``covariate1..``, or the ``intercept`` of ``A=None``) the other side's are
    taken (numpy input beside a fit of labelled data gave a posterior with the fit's labels
    and observed data with 0..n-1); labels of both that differ are an error."""
    out = {}
    for name in ("features", "units", "covariates"):
        mine, theirs = getattr(data, name), getattr(fit.data, name)
        if [str(x) for x in mine] == [str(x) for x in theirs]:
            continue
        if _default_labels(mine, name):
            out[name] = theirs
        elif not _default_labels(theirs, name):
            raise ValueError(f"the data's {name[:-1]} labels {some_labels(mine)} are not the fit's "
                             f"{some_labels(theirs)}")
    return dataclasses.replace(data, **out) if out else data


def _default_labels(given, name: str) -> bool:
    """Whether ``given`` are the labels nmfre gives unlabelled input (:func:`nmfre.labels.labels`
    with no values; ``intercept`` for ``A=None``)."""
    text, n = [str(x) for x in given], len(given)
    default = labels(None, n, name, "covariate" if name == "covariates" else None)
    return text == [str(x) for x in default] or (name == "covariates" and text == ["intercept"])


def pad_patterns(stats: likelihood.Stats, n: int | None = None) -> likelihood.Stats:
    """``stats`` with empty patterns appended up to ``n`` (default: the next power of 2),
    so that data sets with similar missingness share one compiled sampler."""
    B = stats.n_patterns
    n = 1 << (B - 1).bit_length() if n is None else n
    if n < B:
        raise ValueError(f"the data have {B} missing-data patterns, more than the sampler's {n}")
    if n == B:
        return stats
    return likelihood.Stats(*(np.concatenate([a, np.zeros((n - B,) + a.shape[1:])]) for a in stats))


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


def _start_fit(name: str, fit, data: Data, rank: int, theta: str):
    """The fit the joint model's chains start from (in :func:`bayes.sample` and
    :func:`bayes.sbc`): ``fit``, unless it is sign-free and ends at
    a degenerate configuration (:func:`nmfre.core.ml.degenerating`: two components merging with
    opposite effects, grown as far as the likelihood's ever smaller gains allow); then the
    non-negative fit of the same data, which cannot degenerate that way. Measured on Orthodont,
    rank 2: the sign-free fit's ``max |Theta|`` was 9.5e4 (6.3e4 at the present fit), and chains
    started there stayed there (sigma's r_hat 1.10, bulk ESS 53; started from the non-negative fit, see
    benchmarks/results/scale.md, thirty-fifth round). The models that hold X at the fit keep
    it: their X is the fit's by definition."""
    if name != "joint" or theta != "free" or not degenerate(fit, data):
        return fit
    return _frequentist_fit(None, data, rank, "nonneg")


def degenerate(fit, data: Data) -> bool:
    """Whether ``fit`` (of ``data``) ends at a degenerate configuration
    (:func:`nmfre.core.ml.degenerating` on its effects on orthonormal covariates)."""
    from nmfre.core.covariates import orthonormal_effects
    from nmfre.core.ml import degenerating

    sol = fit.solution
    return bool(degenerating(sol.X, orthonormal_effects(sol.theta, data.A)))


def _init(name: str, fit, data: Data, nonneg: bool, cov_model) -> dict:
    sol = fit.solution
    th0 = _f(sol.theta)
    if nonneg:  # start off the boundary, at a fraction of the standard error
        se = np.sqrt(np.diag(cov_model)).reshape(th0.shape, order="F") if cov_model is not None else 0.0
        th0 = np.maximum(th0, np.maximum(0.1 * se, 1e-6 * (np.abs(th0).max() or 1.0)))
    init = {"theta": th0}
    if name != "conditional":
        init.update(sigma=_f(np.sqrt(fit.sigma2)), tau=_f(np.sqrt(fit.tau2)))
    if name == "joint":
        Xi = sol.X + 1e-3 / data.P
        init["X_columns"] = _f((Xi / Xi.sum(axis=0)).T)
    return init


def model_spec(Y, A, rank: int, model: str, fit=None, theta: str = "free", priors: dict | None = None,
               n_patterns: int | None = None, frame: bool = False) -> ModelSpec:
    """Validate the inputs and build the :class:`ModelSpec` for ``model`` (``theta``: the
    constraint on Theta, ``"free"`` or ``"nonneg"``; ``frame``: free Theta sampled on the
    orthonormal covariates of :class:`nmfre.core.covariates.Frame`, whose ``T`` ends the
    traced arguments, see :func:`bayes.models.joint`)."""
    model = v.choice(model, "model", MODELS)
    theta = v.choice(theta, "theta", THETA_KINDS)
    frame = v.boolean(frame, "frame")
    if frame and theta != "free":
        raise ValueError("frame=True is for theta='free' (the constraint Theta >= 0 is not kept by a change of "
                         "covariates)")
    given = models.check_priors(priors, allow_flat=model == "conditional")
    unused = sorted(set(given) - set(models.USED_PRIORS[model]))
    if unused:  # accepted and ignored before
        raise ValueError(f"priors {unused} are not used by model={model!r}, which holds "
                         f"{'X, sigma and tau' if model == 'conditional' else 'X'} fixed at the fit; it uses "
                         f"{list(models.USED_PRIORS[model])}")
    data = coerce(Y, A)
    if data.kind == "sparse":  # reduced to statistics, and kept in observed_data: dense
        data = dataclasses.replace(data, Y=data.Y.toarray())
    rank = check_rank(rank, data.P, data.N)
    fr = Frame.of(data.A) if frame else None
    stats = pad_patterns(likelihood.statistics(data.Y, data.A if fr is None else fr.A), n_patterns)
    last = () if fr is None else (fr.T,)
    scale = given.pop("theta_scale", None) if model == "conditional" else None  # None: flat
    prior = {k: float(x) for k, x in models.resolve_priors(stats, rank, given).items()}
    missing = bool(np.isnan(data.Y).any())
    if missing and model == "conditional":
        raise ValueError("model='conditional' fixes sigma2 at nmfre's sigma2_used, which needs complete data; "
                         "use 'conditional_x' or 'joint' with missing values")
    fit = _frequentist_fit(fit, data, rank, theta)
    data = _fit_labels(data, fit)
    nonneg = theta == "nonneg"
    sol = fit.solution
    need = not missing and (model == "conditional" or nonneg)
    cond = conditional_covariance(data.Y, data.A, sol.X, sol.theta, sol.U, fit.lam) if need else None
    start = _start_fit(model, fit, data, rank, theta)
    init = _init(model, start, data, nonneg, None if cond is None else cond.cov_model)
    pri = {k: _f(x) for k, x in prior.items()}
    T = None if fr is None else fr.T
    # the prior's pull on free Theta where the chains start (bayes.prior_shift; the Gaussian
    # conditional does not describe a truncated posterior, so none for non-negative Theta)
    shift = None
    if model != "conditional" and not nonneg:
        shift = theta_prior_shift(stats, start.solution.X, float(start.sigma2), float(start.tau2),
                                  prior["theta_scale"], T)
    if model == "joint":
        return ModelSpec(model, data, fit, prior, stats, init, (stats, pri) + last, nonneg, frame=T, prior_shift=shift)
    X = _f(sol.X)
    if model == "conditional_x":  # X fixed at the fit: no prior on it (nor recorded)
        pri.pop("x_concentration")
        used = {k: x for k, x in prior.items() if k != "x_concentration"}
        return ModelSpec(model, data, fit, used, stats, init, (stats, X, pri) + last, nonneg, frame=T,
                         prior_shift=shift)
    s2 = cond.sigma2_used
    if scale is not None and not nonneg:
        shift = theta_prior_shift(stats, sol.X, s2, s2 / fit.lam, scale, T)
    cprior = {} if scale is None else {"theta_scale": _f(scale)}
    # X, sigma2 and tau2 are fixed at the fit: the record holds Theta's prior only
    used = {"theta_scale": "flat" if scale is None else float(scale)}
    return ModelSpec(model, data, fit, used, stats, init, (stats, X, _f(s2), _f(s2 / fit.lam), cprior) + last,
                     nonneg, flat=scale is None, sigma2_fixed=float(s2), frame=T, prior_shift=shift)
