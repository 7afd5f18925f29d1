"""How far the prior on Theta moves its posterior: a check made before sampling.

The default prior ``Theta ~ Normal(0, theta_scale)`` (:func:`bayes.models.default_priors`,
``theta_scale = 10 P rms(Y)``) is weak for effects on the scale of the data, but an uncentred
covariate ``c + x`` makes intercepts of about ``-c`` times the slopes, and where those are many
prior scales from 0 the prior decides the posterior: with ``c = 1000`` on two 20 x 300 data sets
of the sampler's ladder the slopes' posterior sds were 0.098 and 0.17 against 0.13 and 0.32 at
``c = 0`` (the same data; benchmarks/results/bayes.md, 2026-12-07), which a comparison with the
bootstrap would read as narrower Bayesian intervals, not as the prior.

Given X, sigma^2 and tau^2, free Theta's likelihood is Gaussian (precision ``H``, mean ``m0``, the
GLS estimate) and the prior's precision ``I / s^2`` adds to it; the prior moves the conditional
posterior mean by ``-(H + I / s^2)^-1 m0 / s^2`` (towards 0). :func:`theta_prior_shift` gives that
shift in conditional posterior sds, entry by entry, and :func:`warn_prior_shift` says so (a
:class:`PriorWarning`) where it is above :data:`PRIOR_SHIFT_MAX` where the chains start (the
frequentist fit, or for the joint model the fit :func:`bayes.sample` starts from). It is conditional
on X: in the joint posterior the prior also cuts the ridge along which Theta follows X, so its
effect there can be larger (at ``c = 1000`` above, the conditional shifts are 2.3 and 2.4 sds and
the joint posterior sds 0.75 and 0.53 times those at ``c = 0``). Non-negative Theta is not checked:
its flat-prior estimate can lie far outside ``Theta >= 0``, where the Gaussian shift says nothing
about the truncated posterior (a review found a reported shift of 2.4 sds where the truncated
conditional posterior's mean moved by 0.001 sds).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.linalg import cho_solve, solve_triangular

from .datatree import _PACKAGE

__all__ = ["PRIOR_SHIFT_MAX", "PriorWarning", "UNCENTRED", "theta_prior_shift", "warn_prior_shift"]

#: the largest move of Theta's conditional posterior mean by its prior, in conditional posterior
#: sds, that passes without a :class:`PriorWarning` (on four 20 x 300 data sets with a covariate at
#: ``c + z``: 0.024-0.039 at ``c = 100``, 2.3-3.9 at ``c = 1000``; Orthodont 2e-4 at rank 1)
PRIOR_SHIFT_MAX = 0.1

#: a covariate whose mean is more than this many of its sds from 0 is named as uncentred in the
#: warning's advice
UNCENTRED = 3.0


class PriorWarning(UserWarning):
    """The prior on Theta, not the data, decides part of its posterior."""


def theta_prior_shift(stats, X: np.ndarray, sigma2: float, tau2: float, scale: float,
                      T: np.ndarray | None = None) -> np.ndarray | None:
    """The move of Theta's conditional posterior mean by its ``Normal(0, scale)`` prior, in
    conditional posterior sds.

    Parameters
    ----------
    stats : bayes.likelihood.Stats
        Compressed statistics of ``(Y, A)``, or of ``(Y, T^-1 A)`` when ``T`` is given (the
        covariates' frame, :class:`nmfre.core.covariates.Frame`).
    X : array (P, Q)
    sigma2, tau2 : float
    scale : float
        The prior's scale on Theta (on the given covariates).
    T : array (K, K), optional
        ``A = T A_o`` for statistics of the frame's covariates ``A_o``.

    Returns
    -------
    numpy.ndarray (Q, K) or None
        The posterior mean minus the flat prior's, ``-(H + I / scale^2)^-1 m0 / scale^2``,
        divided by the posterior sds ``sqrt(diag (H + I / scale^2)^-1)``, with ``H`` the
        precision of ``vec(Theta)`` (column-major) given X, sigma^2 and tau^2 and ``m0 = H^-1
        g`` its mean under a flat prior (the GLS estimate); positive where the prior pulls the
        entry up. None where ``H`` is singular (the data alone do not identify Theta at this X).
        Both conditionals are :func:`bayes.models.theta_conditional`'s (in double precision).
    """
    import jax

    from .models import theta_conditional

    if T is not None:  # A = T A_o: AA' = T A_oA_o' T', YA' = YA_o' T'
        stats = stats._replace(AA=T @ np.asarray(stats.AA) @ T.T, YA=np.asarray(stats.YA) @ T.T)
    X = np.asarray(X, dtype=float)
    with jax.enable_x64(True):  # Theta's conditional with the prior (L L' its precision) and flat
        m0 = np.asarray(theta_conditional(stats, X, sigma2, tau2, np.inf)[0])
        L = np.asarray(theta_conditional(stats, X, sigma2, tau2, scale)[1])
    if not (np.all(np.isfinite(m0)) and np.all(np.isfinite(L))):  # H singular: no flat-prior mean
        return None
    Linv = solve_triangular(L, np.eye(L.shape[0]), lower=True)
    # m_s - m0 = -(H + I / s^2)^-1 m0 / s^2, over the sds sqrt(diag (H + I / s^2)^-1)
    z = -cho_solve((L, True), m0) / scale**2 / np.sqrt(np.sum(Linv**2, axis=0))
    return z.reshape(X.shape[1], -1, order="F")


def warn_prior_shift(spec, where: str = "") -> np.ndarray | None:
    """:func:`theta_prior_shift` where ``spec``'s chains start (``spec.prior_shift``, a
    :class:`bayes.spec.ModelSpec`), with a :class:`PriorWarning` naming the entries of Theta that
    its prior moves by more than :data:`PRIOR_SHIFT_MAX` conditional posterior sds; ``where``
    begins the message (e.g. which data set of a batch). The warning points at the first caller
    outside bayes. Returns the shifts (None for non-negative Theta, a flat prior, or a singular
    precision: nothing is checked)."""
    z = spec.prior_shift
    if z is None:
        return None
    big = np.abs(z) > PRIOR_SHIFT_MAX
    if big.any():
        warnings.warn(where + _message(spec, z, big), PriorWarning, skip_file_prefixes=(_PACKAGE,))
    return z


def _message(spec, z: np.ndarray, big: np.ndarray) -> str:
    """The warning: the entries, largest shift first; what the shift is conditional on (by
    model); and the advice: for a model that holds X at a degenerate sign-free fit, that fit;
    else the covariates whose mean is more than :data:`UNCENTRED` of their sds from 0 where there
    are any."""
    theta = spec.fit.theta
    comps, covs = theta.coords["component"].values, theta.coords["covariate"].values
    order = np.argsort(-np.abs(z), axis=None)
    named = [f"theta[{comps[q]}, {covs[k]}] by {z[q, k]:+.3g}"
             for q, k in (np.unravel_index(i, z.shape) for i in order) if big[q, k]]
    shown = ", ".join(named[:4]) + (f" and {len(named) - 4} more" if len(named) > 4 else "")
    given = {"joint": "given the X, sigma and tau the chains start from",
             "conditional_x": "given the fit's X and the sigma and tau the chains start from",
             "conditional": "given the fit's X, sigma and tau, as the model holds them"}[spec.name]
    msg = (f"the prior Theta ~ Normal(0, {spec.priors['theta_scale']:.4g}) moves the posterior mean of "
           f"{shown} posterior sds ({given}; more than {PRIOR_SHIFT_MAX})")
    if spec.name == "joint":
        msg += ("; in the joint posterior the prior also cuts the ridge along which Theta follows X, so its "
                "effect there can be larger")
    from .spec import degenerate

    if spec.name != "joint" and spec.fit.theta_kind == "free" and degenerate(spec.fit, spec.data):
        # X is held at a degenerate fit (components merging with opposite effects): the data do
        # not identify those components' effects, whatever the covariates
        return msg + (". The fit X is held at is degenerate (two components merging with opposite effects), so the "
                      "data do not identify their effects: fit with theta='nonneg' or a smaller rank")
    A = np.asarray(spec.data.A, dtype=float)
    mean, sd = A.mean(axis=1), A.std(axis=1)
    # a row constant to rounding (an intercept of 0.1s has sd 1e-17) is not a covariate to centre
    ratio = np.abs(mean) / np.where(sd > 1e-12 * np.abs(mean), sd, np.inf)
    off = [f"{covs[k]} (mean {ratio[k]:.3g} sds from 0)" for k in np.flatnonzero(ratio > UNCENTRED)]
    if off:
        msg += (f". Uncentred covariates make intercepts far from 0: {', '.join(off)}; centre them, or give "
                "priors={'theta_scale': ...} above the effects you expect")
    else:
        msg += ". Give priors={'theta_scale': ...} above the effects you expect, if the data should decide them"
    return msg
