"""Likelihood-ratio tests between nested NMF-RE fits, and the boundary test of tau2 = 0.

* :func:`lrt` compares two fits of the same Y: a covariate dropped (the covariates of
  the smaller fit a subset of the larger's, same rank; ``chi2`` with ``Q x`` (dropped
  covariates) degrees of freedom), or a rank reduced (same covariates).
* :func:`lrt_tau2` tests ``tau2 = 0`` (no random effects) against ``tau2 > 0``. The null
  value is on the boundary of the parameter space, so the reference distribution of
  ``LR = 2 (l_full - l_null)`` is the 50:50 mixture of ``chi2_0`` (a point mass at 0) and
  ``chi2_1`` (Self & Liang 1987, case 5): ``p = 0.5 P(chi2_1 > LR)`` for ``LR > 0``, 1 at
  ``LR = 0``. The null model (``Y = X Theta A + E``) is fitted by the constrained
  maximisation of :mod:`nmfre.profile`, started at the full fit's X.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import chi2

from . import validation as v
from .profile import Constraint, likelihood_of, start_of

if TYPE_CHECKING:
    from .results import NMFREFit

#: a larger model's log-likelihood may fall below a smaller one's by this much (relative)
#: before the fits are called non-nested maxima
TOLERANCE = 1e-7
#: an LR for tau2 = 0 below ``ZERO (1 + |loglik|)`` is the optimiser's rounding at the boundary
#: (the full fit at tau2 -> 0) and counts as 0 (p-value 1)
ZERO = 1e-7


@dataclass(frozen=True)
class LRTResult:
    """A likelihood-ratio test.

    Attributes
    ----------
    statistic : float
        ``LR = 2 (l_big - l_small)`` (clipped at 0).
    df : int
        Difference in the number of free parameters.
    p_value : float
    reference : str
        The reference distribution, in words.
    loglik_small, loglik_big : float
    hypothesis : str
        What the smaller model says.
    """

    statistic: float
    df: int
    p_value: float
    reference: str
    loglik_small: float
    loglik_big: float
    hypothesis: str

    def to_series(self) -> pd.Series:
        """The result as a pandas Series."""
        return pd.Series(asdict(self))

    def __repr__(self) -> str:
        return (f"Likelihood-ratio test of {self.hypothesis}: LR = {self.statistic:.4f}, df = {self.df}, "
                f"p = {self.p_value:.4g} ({self.reference}); loglik {self.loglik_small:.4f} (small) vs "
                f"{self.loglik_big:.4f} (big)")


def mixture_p_value(statistic) -> np.ndarray | float:
    """p-value of ``LR`` against the 50:50 mixture of ``chi2_0`` and ``chi2_1``:
    ``0.5 P(chi2_1 > LR)`` for ``LR > 0``, 1 at ``LR <= 0``."""
    s = np.asarray(statistic, float)
    out = np.where(s > 0, 0.5 * chi2.sf(np.maximum(s, 0.0), 1), 1.0)
    return float(out) if out.ndim == 0 else out


def _clip(statistic: float, big: float, what: str) -> float:
    if statistic < -TOLERANCE * (1 + abs(big)):
        warnings.warn(f"{what}: the larger model's log-likelihood is below the smaller's by {-statistic / 2:.3g}; "
                      "the larger fit is not at its maximum (try n_init or another start); LR set to 0",
                      RuntimeWarning, stacklevel=3)
    return max(statistic, 0.0)


def lrt_tau2(fit: NMFREFit, tol: float = 1e-10) -> LRTResult:
    """Likelihood-ratio test of ``tau2 = 0`` with the boundary-corrected reference.

    Parameters
    ----------
    fit : NMFREFit
        The full fit (free variances, complete dense data). Its maximum is re-checked from
        its own estimate by the block ascent of :mod:`nmfre.profile` (the larger of the two
        log-likelihoods is used).
    tol : float
        Relative tolerance of the null fit.

    Returns
    -------
    LRTResult
        ``df = 1``; ``reference`` the 50:50 mixture of chi2_0 and chi2_1 (Self & Liang 1987).
        An LR below :data:`ZERO` ``(1 + |loglik|)`` is the optimisers' rounding at the
        boundary (the full fit at tau2 -> 0) and is reported as 0, p-value 1 (on
        Orthodont, loglik -215.6, about 2.2e-5; an unrounded LR that small would have p about 0.5).

    Raises
    ------
    ValueError
        A fit with a fixed variance or a df cap (the cap bounds tau2 from above, not the
        null), or data the profile cannot hold (missing values, sparse or lazy Y).
    """
    from .results import NMFREFit

    if not isinstance(fit, NMFREFit):
        raise ValueError(f"fit must be an NMFREFit, got {type(fit).__name__}")
    tol = v.positive_float(tol, "tol")
    if fit.settings.variance_mode != "free":
        raise ValueError("fit: the tau2 = 0 test needs a fit with both variances free (no fix_sigma2 / fix_tau2)")
    if fit.df_cap is not None:
        raise ValueError("fit: the tau2 = 0 test needs a fit without df cap (refit with df_cap=None): the cap "
                         "constrains tau2 and its null distribution is not the chi-square mixture")
    lik = likelihood_of(fit)
    best = lik.maximise(start_of(fit), Constraint(), True, tol)
    null = lik.maximise(best, Constraint(kind="tau2", value=0.0), True, tol)
    l_full = max(-best.nll, fit.loglik)
    stat = _clip(2.0 * (l_full - (-null.nll)), l_full, "lrt_tau2")
    if stat <= ZERO * (1 + abs(l_full)):  # the full fit is at the boundary: rounding, not evidence
        stat = 0.0
    return LRTResult(float(stat), 1, mixture_p_value(stat), "50:50 mixture of chi2_0 and chi2_1 (Self & Liang 1987)",
                     float(-null.nll), float(l_full), "tau2 = 0 (no random effects)")


def lrt(fit_small: NMFREFit, fit_big: NMFREFit) -> LRTResult:
    """Likelihood-ratio test of a smaller fit nested in a larger one.

    Parameters
    ----------
    fit_small, fit_big : NMFREFit
        Fits of the same Y by maximum likelihood with the same Theta sign and variance
        settings, and either the same rank with ``fit_small``'s covariates a strict subset
        of ``fit_big``'s (covariates dropped), or the same covariates with a smaller rank.

    Returns
    -------
    LRTResult
        ``df`` is the difference of :attr:`~nmfre.results.NMFREFit.n_params`. For dropped
        covariates the reference is ``chi2_df`` (an interior null when Theta is sign-free;
        with ``theta="nonneg"`` a null effect of 0 is on the boundary and chi2 is
        conservative). For a reduced rank the chi2 reference is **not** valid (the smaller
        model is a singular point of the larger: the extra component's basis column is not
        identified under the null); the p-value is given with a warning, and rank is better
        chosen with :func:`nmfre.ecv` (see the guide).

    Raises
    ------
    ValueError
        Fits that are not nested as described, not on the same data, or not ML fits.
    """
    from .results import NMFREFit

    for name, f in (("fit_small", fit_small), ("fit_big", fit_big)):
        if not isinstance(f, NMFREFit):
            raise ValueError(f"{name} must be an NMFREFit, got {type(f).__name__}")
        if f.method != "ml":
            raise ValueError(f"{name}: likelihood-ratio tests need maximum-likelihood fits (method='ml')")
    if not fit_small.data.same_data(fit_big.data) and not _same_y(fit_small, fit_big):
        raise ValueError("fit_small and fit_big must be fits of the same Y")
    ss, sb = fit_small.settings, fit_big.settings
    if (ss.theta, ss.variance_mode, ss.df_cap) != (sb.theta, sb.variance_mode, sb.df_cap):
        raise ValueError("fit_small and fit_big must share theta, the variance settings and the df cap")
    for name in ("sigma2", "tau2"):
        if getattr(ss, f"fix_{name}") and getattr(ss, name) != getattr(sb, name):
            raise ValueError(f"fit_small and fit_big fix {name} at different values ({getattr(ss, name):g} and "
                             f"{getattr(sb, name):g}): the models are not nested")
    cs = [str(c) for c in fit_small.data.covariates]
    cb = [str(c) for c in fit_big.data.covariates]
    Qs, Qb = fit_small.shape["Q"], fit_big.shape["Q"]
    if Qs == Qb and set(cs) < set(cb) and _columns_match(fit_small, fit_big, cs):
        dropped = [c for c in cb if c not in cs]
        hypothesis = f"no effect of {', '.join(dropped)} on any component"
        kind = "covariates"
    elif cs == cb and Qs < Qb:
        if not _columns_match(fit_small, fit_big, cs):
            raise ValueError("fit_small and fit_big have the same covariates by name but different values of A: "
                             "the fits are not nested (fit both with the same A)")
        hypothesis = f"rank {Qs} against rank {Qb}"
        kind = "rank"
    else:
        raise ValueError(f"fit_small (rank {Qs}, covariates {cs}) is not nested in fit_big (rank {Qb}, covariates "
                         f"{cb}): give the same rank with a subset of the covariates, or the same covariates with a "
                         "smaller rank")
    df = fit_big.n_params - fit_small.n_params
    stat = _clip(2.0 * (fit_big.loglik - fit_small.loglik), fit_big.loglik, "lrt")
    p = float(chi2.sf(stat, df))
    if kind == "rank":
        warnings.warn("lrt: the chi2 reference is not valid for a rank reduction (the extra component's basis is "
                      "not identified under the smaller rank); use the p-value as a rough guide only and choose "
                      "the rank by cross-validation (nmfre.ecv)", UserWarning, stacklevel=2)
        ref = f"chi2 with {df} df (NOT valid for rank: singular null)"
    else:
        ref = f"chi2 with {df} df" + (" (conservative: non-negative Theta, boundary null)"
                                      if ss.theta == "nonneg" else "")
    return LRTResult(float(stat), int(df), p, ref, fit_small.loglik, fit_big.loglik, hypothesis)


def _same_y(a: NMFREFit, b: NMFREFit) -> bool:
    ya, yb = a.data.Y, b.data.Y
    if a.data.kind != "dense" or b.data.kind != "dense" or ya.shape != yb.shape:
        return False
    return bool(np.array_equal(ya, yb, equal_nan=True))


def _columns_match(small: NMFREFit, big: NMFREFit, cs: list[str]) -> bool:
    """The smaller fit's covariate rows equal the larger's rows of the same names."""
    cb = [str(c) for c in big.data.covariates]
    rows = [cb.index(c) for c in cs]
    return bool(np.allclose(small.data.A, big.data.A[rows]))


__all__ = ["LRTResult", "lrt", "mixture_p_value", "lrt_tau2"]
