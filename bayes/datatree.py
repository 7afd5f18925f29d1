"""Posterior draws as an ArviZ ``xarray.DataTree`` with nmfre's coordinates, plus the
sampler diagnostics and the draws that follow the posterior (U, replicated Y).

Built directly with xarray (no ``az.from_numpyro``: the compiled sampler has no MCMC
object). Groups: ``posterior``, ``sample_stats``, ``observed_data`` and, when asked,
``posterior_predictive``.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import xarray as xr

from nmfre.core.bootstrap import align_components
from nmfre.core.stats import patterns
from nmfre.study import SAMPLER_THRESHOLDS

from .models import u_conditional
from .rotations import rotation_note

#: bayes's own folder: warnings point at the first caller outside it
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep

__all__ = ["INVARIANT", "SamplingWarning", "align_chains", "build", "diagnostics", "draw_u", "invariant_draws",
           "mixing", "warn_diagnostics"]

#: the label-invariant quantities: the feature effects X Theta (feature x covariate), the
#: variances' standard deviations and the log-likelihood (``sample_stats``)
INVARIANT = ("X_theta", "sigma", "tau", "loglik")

#: the diagnostics' thresholds (defined once, in :mod:`nmfre.study`, whose ``warning_share`` counts the same failures)
THRESHOLDS = SAMPLER_THRESHOLDS


class SamplingWarning(UserWarning):
    """The sampler's diagnostics fail a threshold (r_hat > 1.01, bulk ESS < 400, divergences)."""


def _posterior_dataset(draws: dict, fit, model: str) -> xr.Dataset:
    C, D = np.shape(draws["theta"])[:2]
    coords = {"chain": np.arange(C), "draw": np.arange(D), "component": fit.coords["component"],
              "covariate": fit.coords["covariate"]}
    post = xr.Dataset({"theta": (("chain", "draw", "component", "covariate"), np.asarray(draws["theta"]))},
                      coords=coords)
    if "X" in draws:
        post["X"] = (("chain", "draw", "feature", "component"), np.asarray(draws["X"]))
        post = post.assign_coords(feature=fit.coords["feature"])
    else:
        post["X"] = fit.X.copy()
    for name in ("sigma", "tau"):
        post[name] = (("chain", "draw"), np.broadcast_to(np.asarray(draws[name], float), (C, D)).copy())
    # nmfre's variances beside the standard deviations the models sample (derived, not sampled)
    post["sigma2"], post["tau2"] = post["sigma"] ** 2, post["tau"] ** 2
    return post


def build(draws: dict, stats: dict | None, fit, data, model: str, attrs: dict, *, U=None, yrep=None) -> xr.DataTree:
    """The DataTree of one posterior (draws: arrays with leading ``(chain, draw)``).

    ``posterior`` holds ``theta``, ``X``, ``sigma``, ``tau`` and the derived variances
    ``sigma2``, ``tau2`` (nmfre's names); ``observed_data`` and ``posterior_predictive``
    hold ``Y`` with nmfre's dims ``(feature, unit)`` (``yrep`` comes in as
    ``(chain, draw, unit, feature)``, NumPyro's plate order).

    ``fit`` supplies the coordinates (and X for the conditional models); for the joint
    model with rank > 1 every chain is aligned to ``fit``'s components.
    """
    post = _posterior_dataset(draws, fit, model)
    if model == "joint" and fit.shape["Q"] > 1:
        post = align_chains(post, fit.solution.X)
    if U is not None:
        post["U"] = xr.DataArray(U(post) if callable(U) else U, dims=("chain", "draw", "component", "unit"),
                                 coords={"component": post["component"].values, "unit": data.units})
    post.attrs.update(attrs)
    groups = {"posterior": post,
              "observed_data": xr.Dataset({"Y": (("feature", "unit"), np.asarray(data.Y))},
                                          coords={"feature": data.features, "unit": data.units})}
    if stats is not None:
        groups["sample_stats"] = xr.Dataset({k: (("chain", "draw"), np.asarray(v)) for k, v in stats.items()},
                                            coords={"chain": post["chain"], "draw": post["draw"]})
    if yrep is not None:
        groups["posterior_predictive"] = xr.Dataset(
            {"Y": (("chain", "draw", "feature", "unit"), np.swapaxes(np.asarray(yrep), -1, -2))},
            coords={"chain": post["chain"], "draw": post["draw"], "feature": data.features, "unit": data.units})
    return xr.DataTree.from_dict(groups)


def align_chains(post: xr.Dataset, X_ref: np.ndarray) -> xr.Dataset:
    """Match each chain's components to the frequentist fit (label switching).

    Parameters
    ----------
    post : xarray.Dataset
        Posterior with ``X`` (chain, draw, feature, component) and ``theta``.
    X_ref : array (P, Q)
        The reference basis.

    Returns
    -------
    xarray.Dataset
        A copy with every chain's components permuted (``attrs["chain_permutations"]``).
    """
    Xs = post["X"].transpose("chain", "draw", "feature", "component").values.copy()
    th = post["theta"].transpose("chain", "draw", "component", "covariate").values.copy()
    perms = []
    for c in range(Xs.shape[0]):
        perm, _ = align_components(X_ref, Xs[c].mean(axis=0))
        Xs[c] = Xs[c][..., perm]
        th[c] = th[c][:, perm, :]
        perms.append(perm.tolist())
    post = post.copy()
    post["X"] = (("chain", "draw", "feature", "component"), Xs)
    post["theta"] = (("chain", "draw", "component", "covariate"), th)
    post.attrs["chain_permutations"] = str(perms)
    return post


def draw_u(post: xr.Dataset, Y: np.ndarray, A: np.ndarray, rng) -> np.ndarray:
    """U (chain, draw, component, unit) from its Gaussian conditional for every draw.

    Unit ``n`` with observed rows ``O``: mean ``M_O^-1 X_O'(y_O - X_O Theta a_n)`` and
    covariance ``sigma^2 M_O^-1``, ``M_O = X_O'X_O + lambda I`` (:func:`bayes.u_conditional`,
    one batch of draws per pattern of observed features).
    """
    th = post["theta"].transpose("chain", "draw", "component", "covariate").values
    C, D, Q, _ = th.shape
    X = post["X"]
    X = (X.transpose("chain", "draw", "feature", "component").values if "chain" in X.dims
         else np.broadcast_to(X.transpose("feature", "component").values, (C, D) + X.shape))
    s2 = (post["sigma"] ** 2).transpose("chain", "draw").values[..., None, None]
    t2 = (post["tau"] ** 2).transpose("chain", "draw").values[..., None, None]
    pats, inverse = patterns(~np.isnan(Y), order="sorted")
    U = np.empty((C, D, Q, Y.shape[1]))
    z = rng.standard_normal(U.shape)
    for b, pat in enumerate(pats):
        units = np.flatnonzero(inverse == b)
        Xo = X * pat[:, None]
        mean, cov = u_conditional(np.where(pat[:, None], np.nan_to_num(Y[:, units]), 0.0), A[:, units], Xo, th,
                                  s2, t2)
        U[..., units] = mean + np.linalg.cholesky(cov) @ z[..., units]
    return U


def diagnostics(dt: xr.DataTree, var_names=("theta", "sigma", "tau"), *, invariant: bool = False) -> dict:
    """Max r_hat (rank-normalised split), min bulk ESS over ``var_names`` and the number
    of divergences (ArviZ's array functions: the same numbers as ``az.summary``).

    Parameters
    ----------
    dt : xarray.DataTree
        From :func:`bayes.sample` or :func:`bayes.fit_vi`.
    var_names : sequence of str
        Variables to check; those held constant (fixed in the model) are skipped.
    invariant : bool
        Check the label-invariant quantities instead (:func:`invariant_draws`: X Theta,
        sigma, tau, the log-likelihood), which mix where weakly identified components
        do not (:func:`mixing` has both, per quantity).

    Returns
    -------
    dict
        ``max_r_hat``, ``min_ess_bulk``, ``divergences``.
    """
    post = dt["posterior"]
    if invariant:
        arrays = list(invariant_draws(dt).values())
    else:
        if isinstance(var_names, str):
            var_names = (var_names,)
        unknown = [n for n in var_names if n not in post.data_vars]
        if unknown:
            raise ValueError(f"var_names {unknown} are not in the posterior; it has {sorted(map(str, post.data_vars))}")
        arrays = [post[name].transpose("chain", "draw", ...).values for name in var_names
                  if name in post.data_vars and "chain" in post[name].dims and varies(post[name].values)]
    rhat, ess = _rhat_ess(arrays)
    div = 0
    if "sample_stats" in dt.children and "diverging" in dt["sample_stats"]:
        div = int(dt["sample_stats"]["diverging"].sum())
    return {"max_r_hat": rhat, "min_ess_bulk": ess, "divergences": div}


def varies(values: np.ndarray) -> bool:
    """Whether an array takes more than one value (exactly: the std of a constant array can
    round to 1e-16, which once counted a fixed sigma as sampled)."""
    return bool(np.ptp(values) > 0) if np.size(values) else False


def _rhat_ess(arrays) -> tuple[float, float]:
    """Max rank-normalised split r_hat and min bulk ESS over (chain, draw, ...) arrays
    (entries constant over the draws skipped)."""
    from arviz_stats.base import array_stats

    if not arrays:  # nothing that varies over the draws
        return float("nan"), float("nan")
    a = np.concatenate([np.asarray(x, float).reshape(x.shape[0], x.shape[1], -1) for x in arrays], axis=2)
    a = a[..., np.ptp(a, axis=(0, 1)) > 0]  # (not std > 0: a constant's std can round to 2e-16)
    if a.shape[-1] == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = array_stats.rhat(a, chain_axis=0, draw_axis=1)
        ess = array_stats.ess(a, chain_axis=0, draw_axis=1, method="bulk")
        # (one chain: r_hat is NaN everywhere, which numpy's nanmax reports with a RuntimeWarning)
        return float(np.nanmax(rhat)), float(np.nanmin(ess))


def invariant_draws(dt: xr.DataTree) -> dict:
    """The label-invariant quantities of a posterior, as (chain, draw, ...) arrays.

    ``X_theta``: the feature effects ``X Theta`` (feature x covariate: the mean of Y is
    ``X Theta A``, whatever the labelling and the scaling shared by X and Theta);
    ``sigma``, ``tau``; ``loglik``: the marginal log-likelihood of the draw (from
    ``sample_stats`` when the sampler recorded it). Quantities a posterior lacks (or
    holds constant) are left out.
    """
    post = dt["posterior"]
    th = post["theta"].transpose("chain", "draw", "component", "covariate").values
    X = post["X"]
    X = (X.transpose("chain", "draw", "feature", "component").values if "chain" in X.dims
         else X.transpose("feature", "component").values)
    out = {"X_theta": X @ th}
    for name in ("sigma", "tau"):
        if name in post.data_vars and "chain" in post[name].dims:
            out[name] = post[name].transpose("chain", "draw").values
    if "sample_stats" in dt.children and "loglik" in dt["sample_stats"]:
        out["loglik"] = dt["sample_stats"]["loglik"].transpose("chain", "draw").values
    return out


def mixing(dt: xr.DataTree):
    """Mixing reported separately for label-invariant and per-component quantities.

    Rows: the label-invariant quantities (:data:`INVARIANT`: ``X_theta``, ``sigma``,
    ``tau``, ``loglik``), then one row per component (its column of X and row of Theta,
    labelled by the component's name). A component whose rows fail the thresholds while
    the invariant rows pass is not identified by the data (weakly separated from another
    component, or crossing between labellings): its X column and Theta row are not
    interpretable, the feature effects ``X Theta`` are.

    Returns
    -------
    pandas.DataFrame
        Index ``quantity``; columns ``kind`` (``"invariant"`` or ``"component"``),
        ``max_r_hat``, ``min_ess_bulk``, ``ok`` (r_hat and ESS within :data:`THRESHOLDS`).
    """
    import pandas as pd

    rows = []
    for name, a in invariant_draws(dt).items():
        rows.append((name, "invariant") + _rhat_ess([a]))
    post = dt["posterior"]
    for c in post["component"].values:
        arrays = [post["theta"].sel(component=c).transpose("chain", "draw", ...).values]
        if "chain" in post["X"].dims:
            arrays.append(post["X"].sel(component=c).transpose("chain", "draw", ...).values)
        rows.append((str(c), "component") + _rhat_ess(arrays))
    table = pd.DataFrame(rows, columns=["quantity", "kind", "max_r_hat", "min_ess_bulk"]).set_index("quantity")
    good = (table["max_r_hat"] <= THRESHOLDS["max_r_hat"]) & (table["min_ess_bulk"] >= THRESHOLDS["min_ess_bulk"])
    table["ok"] = good | table["max_r_hat"].isna()
    return table


def _above(value: float, threshold: float) -> str:
    """``value`` to 3 decimals, or as many more as show that it exceeds ``threshold`` (1.0102
    printed as 1.010 beside '> 1.01')."""
    for digits in range(3, 10):
        text = f"{value:.{digits}f}"
        if float(text) > threshold:
            return text
    return f"{value:.10g}"


def warn_diagnostics(dt: xr.DataTree, stacklevel: int | None = None) -> dict:
    """:func:`diagnostics`, with a :class:`SamplingWarning` when a threshold fails; when
    the label-invariant quantities mix but some components do not, the warning names
    those components as not identified by the data (:func:`mixing`). The warning points at
    the first caller outside bayes (or ``stacklevel`` frames up, when given)."""
    d = diagnostics(dt)
    problems = []
    if d["max_r_hat"] > THRESHOLDS["max_r_hat"]:
        problems.append(f"max r_hat {_above(d['max_r_hat'], THRESHOLDS['max_r_hat'])} > {THRESHOLDS['max_r_hat']}")
    if d["min_ess_bulk"] < THRESHOLDS["min_ess_bulk"]:
        problems.append(f"min bulk ESS {d['min_ess_bulk']:.0f} < {THRESHOLDS['min_ess_bulk']}")
    if d["divergences"]:
        problems.append(f"{d['divergences']} divergent transitions")
    if problems:
        model = dt["posterior"].attrs.get("model") if "posterior" in dt.children else None
        msg = f"sampler diagnostics{f' ({model} model)' if model else ''}: " + "; ".join(problems)
        if d["max_r_hat"] > THRESHOLDS["max_r_hat"] or d["min_ess_bulk"] < THRESHOLDS["min_ess_bulk"]:
            msg += _identification_note(dt)
        if stacklevel is None:
            warnings.warn(msg, SamplingWarning, skip_file_prefixes=(_PACKAGE,))
        else:
            warnings.warn(msg, SamplingWarning, stacklevel=stacklevel)
    return d


def _identification_note(dt: xr.DataTree) -> str:
    """The sentence naming the components that do not mix while the invariant quantities do;
    where the log-likelihood itself does not mix, the sentence on the chains' states
    (:func:`_states_note`)."""
    if dt["posterior"].sizes.get("component", 1) < 2 or "chain" not in dt["posterior"]["X"].dims:
        return ""
    table = mixing(dt)
    inv, comp = table[table["kind"] == "invariant"], table[table["kind"] == "component"]
    bad = list(comp.index[~comp["ok"]])
    # the chains' log-likelihood levels differ (its split r_hat; a low ESS alone is a short run)
    rhat = float(inv.loc["loglik", "max_r_hat"]) if "loglik" in inv.index else float("nan")
    unmixed = rhat > THRESHOLDS["max_r_hat"]
    if not bad:
        return _states_note(dt, rhat, alone=True) if unmixed else ""
    states = _states_note(dt, rhat) if unmixed else ""
    if inv["ok"].all():
        return (f". Components {bad} are not identified by the data (their X columns and Theta rows do not mix; "
                "the label-invariant quantities X Theta, sigma, tau and the log-likelihood do): interpret X Theta, "
                "not those components (bayes.mixing has the table)" + rotation_note(dt))
    return f". Components {bad} do not mix, nor do the label-invariant quantities (bayes.mixing has the table)" + states


def _states_note(dt: xr.DataTree, rhat: float, alone: bool = False) -> str:
    """Where the chains' log-likelihood levels differ (its split r_hat ``rhat`` above the
    threshold): the chains' mean log-likelihoods, the pattern of chains that sit in different
    states of the posterior (metastable modes that a chain leaves rarely), and the move
    between them that this run did not use: replica exchange (``tempering=``, ChEES-HMC
    only), or more replicas where the run was tempered. ``alone``: the first sentence of the
    note (nothing else was said not to mix)."""
    means = dt["sample_stats"]["loglik"].mean("draw").values
    listed = ", ".join(f"{m:.6g}" for m in means)
    attrs = dt["posterior"].attrs
    sampler = str(attrs.get("sampler", ""))
    if "tempering" in attrs:
        move = ("this run exchanged states between tempered replicas already (its tempering attribute has the "
                "exchange rates): more replicas, down to a lower power, or a longer run")
    elif sampler.startswith("NUTS"):
        move = ("replica exchange moves between the states: bayes.sample(..., kernel='chees', tempering=10) "
                "(ChEES-HMC only)")
    else:
        move = "bayes.sample(..., tempering=10) (ChEES-HMC with replica exchange) moves between the states"
    return (f". The log-likelihood does not mix{'' if alone else ' either'} (split r_hat {rhat:.3f}): the chains' "
            f"means are {listed} (a spread of {float(np.ptp(means)):.3g}), as when chains sit in different states of "
            f"the posterior and leave them rarely; longer runs show whether they cross, and {move}")
