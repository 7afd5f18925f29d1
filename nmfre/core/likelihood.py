"""Marginal likelihood of NMF-RE and its exact profile in the variance components.

Pure numpy kernels. For units sharing the observed features ``O`` (a block; complete data
are one block), with ``R = Y - X Theta A`` on those rows, ``d_q`` and ``V`` the eigenvalues
and eigenvectors of ``X_O'X_O`` and ``s_q`` the squared norm of row ``q`` of ``V'X_O'R``,
the marginal negative log-likelihood of ``y_n ~ N(X_O Theta a_n, sigma2 I + tau2 X_O X_O')``
summed over the blocks is

    nll = 1/2 [ n_obs log(2 pi sigma2) + sum_b N_b sum_q log(1 + d_bq / lambda)
                + (||R||^2 - sum_bq s_bq / (d_bq + lambda)) / sigma2 ],

with ``lambda = sigma2 / tau2`` and ``n_obs`` the number of observed entries. For fixed
``lambda`` the optimal ``sigma2`` has a closed form, so the variance components reduce to a
one-dimensional profile in ``lambda``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

LOG_2PI = float(np.log(2.0 * np.pi))
LAMBDA_MIN = 1e-10
LAMBDA_MAX = 1e12
#: the quadratic form ``rss - sum s / (d + lambda)`` is a difference of terms as large as
#: :attr:`Sufficient.scale` (``rss`` in dense form; in gram and sparse form, where ``rss`` is
#: itself ``||Y||^2 - 2 tr(...) + tr(...)``, the sum of those terms' sizes, which grow with
#: Theta^2): at or below ``QUAD_RESOLVED * scale`` it is not resolved in double precision, and
#: the likelihood there counts as +inf (:func:`nll`, :func:`profile_objective`), so that no step
#: is accepted into a state whose nll is rounding. A safeguard: the fault that showed such
#: states (a sign-free fit through a singular basis, benchmarks/results/scale.md, seventeenth
#: round) was in dense form and is removed by the bound in :meth:`Sufficient.quad`
QUAD_RESOLVED = 1e-12


@dataclass(frozen=True)
class Sufficient:
    """Quantities of the marginal likelihood that do not depend on the variances.

    Attributes
    ----------
    rss : float
        ``||Y - X Theta A||^2`` over the observed entries.
    s : ndarray
        Squared row norms of ``V' X_O' R`` (``Q`` per block, concatenated).
    d : ndarray
        Eigenvalues of ``X_O'X_O`` (clipped at 0; ``Q`` per block).
    w : ndarray
        Number of units of each ``d`` entry's block.
    n_obs : int
        Number of observed entries (``N P`` for complete data).
    scale : float, optional
        The size of the terms ``rss`` and ``s`` were computed from (their rounding error is
        about ``1e-16 scale``); None: ``rss`` (computed directly from the residual).
    perp, t : float and ndarray, optional
        The residuals' parts outside and along the basis, from explicit residuals
        (:func:`nmfre.core.passes.residual_moments`): ``perp = ||(I - U U') R||^2`` and ``t_q =
        ||u_q' R||^2`` with ``u_q = X v_q / sqrt(d_q)`` the left singular vectors of ``X_O``
        (``rss = perp + sum t``, ``s = d t``). Given, the quadratic form is the sum of
        non-negative terms ``perp + sum t lambda / (d + lambda)``, which does not cancel where
        lambda is small against ``d`` (strong random effects), as ``rss - sum s / (d + lambda)``
        does (its rounding about ``eps rss``).
    """

    rss: float
    s: np.ndarray
    d: np.ndarray
    w: np.ndarray
    n_obs: int
    scale: float | None = None
    perp: float | None = None
    t: np.ndarray | None = None

    @property
    def resolution(self) -> float:
        """The smallest quadratic form that is resolved: ``QUAD_RESOLVED * scale`` (0 for the
        non-cancelling form of ``perp`` and ``t``)."""
        if self.perp is not None:
            return 0.0
        return QUAD_RESOLVED * (self.rss if self.scale is None else self.scale)

    def quad(self, lam):
        """``||R||^2 - sum s / (d + lambda)`` (vectorised over ``lam``), each ``s`` taken at
        most ``d rss``: ``s = ||R'X v||^2 <= ||R||_2^2 ||X v||^2 <= rss d`` exactly, so the bound
        only removes rounding, which otherwise ``1 / (d + lambda)`` amplifies where ``X'X`` is
        (nearly) singular (a rounding residue of 1e-15 in ``s`` with ``d = 0`` and ``lambda =
        1e-10`` is 1e-5 of ``rss``). With ``perp`` and ``t``: ``perp + sum t lambda / (d +
        lambda)``, the same number without the cancellation."""
        lam = np.asarray(lam, dtype=float)
        if self.perp is not None:
            return self.perp + np.sum(self.t * (lam[..., None] / (self.d + lam[..., None])), axis=-1)
        s = np.minimum(self.s, self.d * self.rss)
        return self.rss - np.sum(s / (self.d + lam[..., None]), axis=-1)

    def logdet(self, lam):
        """``sum w log(1 + d / lambda)`` (vectorised over ``lam``)."""
        lam = np.asarray(lam, dtype=float)
        return np.sum(self.w * np.log1p(self.d / lam[..., None]), axis=-1)


def sufficient(Y: np.ndarray, X: np.ndarray, mean: np.ndarray) -> Sufficient:
    """:class:`Sufficient` for complete data and residual ``Y - X @ mean`` (``mean`` = Theta A)."""
    R = Y - X @ mean
    d, V = np.linalg.eigh(X.T @ X)
    d = np.maximum(d, 0.0)
    W = V.T @ (X.T @ R)
    return Sufficient(float(np.vdot(R, R)), np.einsum("qn,qn->q", W, W), d, np.full(d.size, float(Y.shape[1])),
                      Y.size)


def nll(suff: Sufficient, sigma2: float, lam: float) -> float:
    """Marginal negative log-likelihood (with the ``2 pi`` term); +inf where the quadratic
    form is not resolved (:data:`QUAD_RESOLVED`)."""
    q = float(suff.quad(lam))
    res = suff.resolution
    if res > 0 and q <= res:
        return np.inf
    return 0.5 * (suff.n_obs * (LOG_2PI + np.log(sigma2)) + float(suff.logdet(lam)) + q / sigma2)


def profile_objective(suff: Sufficient, lam, mode: str, sigma2: float = 1.0, tau2: float = 1.0):
    """nll minimised over the free variance given ``lambda`` (vectorised over ``lam``).

    ``mode`` is ``"free"`` (sigma2 profiled in closed form), ``"sigma2"`` (sigma2 fixed)
    or ``"tau2"`` (tau2 fixed, so sigma2 = lambda tau2). +inf where the quadratic form is
    not resolved (:data:`QUAD_RESOLVED`).
    """
    n = suff.n_obs
    lam = np.asarray(lam, dtype=float)
    raw = suff.quad(lam)
    q = np.maximum(raw, 1e-300)
    ld = suff.logdet(lam)
    if mode == "free":
        out = 0.5 * (n * (LOG_2PI + np.log(q / n) + 1.0) + ld)
    elif mode == "sigma2":
        out = 0.5 * (n * (LOG_2PI + np.log(sigma2)) + ld + q / sigma2)
    elif mode == "tau2":
        s2 = lam * tau2
        out = 0.5 * (n * (LOG_2PI + np.log(s2)) + ld + q / s2)
    else:
        raise ValueError(f"unknown profile mode {mode!r}")
    res = suff.resolution
    if res > 0:
        out = np.where(raw <= res, np.inf, out)
    return out


def variances_at(suff: Sufficient, lam: float, mode: str, sigma2: float, tau2: float):
    """``(sigma2, tau2)`` implied by ``lambda`` under ``mode``."""
    if mode == "free":
        s2 = max(float(suff.quad(lam)) / suff.n_obs, 1e-300)
    elif mode == "sigma2":
        s2 = sigma2
    elif mode == "tau2":
        s2 = lam * tau2
    else:
        raise ValueError(f"unknown profile mode {mode!r}")
    return s2, s2 / lam


def optimize_lambda(
    suff: Sufficient,
    mode: str,
    lam_lo: float,
    lam_current: float | None = None,
    sigma2: float = 1.0,
    tau2: float = 1.0,
    lam_hi: float = LAMBDA_MAX,
) -> float:
    """Exact minimiser of the profile nll over ``lambda`` in ``[lam_lo, lam_hi]``.

    A log-spaced grid locates the basin (the bracket around its best point); safeguarded
    Newton in ``log lambda`` (analytic derivatives, :func:`_profile_derivatives`), started
    at ``lam_current`` when it lies in the bracket and bisecting on the derivative's sign
    whenever the Newton step leaves the bracket or the curvature is not positive, refines
    it to ``1e-12`` in ``log lambda`` (bounded Brent where the derivatives are not finite).
    The result is never worse than the grid's best point or ``lam_current`` (when given and
    feasible).
    """
    lo = max(lam_lo, LAMBDA_MIN)
    hi = max(lam_hi, lo)
    if hi <= lo * (1 + 1e-12):
        return lo
    grid, lams = _grid(lo, hi)
    vals = profile_objective(suff, lams, mode, sigma2, tau2)
    i = int(np.nanargmin(vals) if np.isnan(vals).any() else vals.argmin())
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    t = grid[i]
    if lam_current is not None and lam_current > 0 and a < np.log(lam_current) < b:
        t = float(np.log(lam_current))  # the previous iterate: usually a few Newton steps away
    var = tau2 if mode == "tau2" else sigma2
    finite = True
    with np.errstate(all="ignore"):
        for _ in range(100):
            d1, d2 = _profile_derivatives(suff, float(np.exp(t)), mode, var)
            if not (np.isfinite(d1) and np.isfinite(d2)):  # the quadratic form at its floor
                finite = False
                break
            if d1 > 0:
                b = t
            elif d1 < 0:
                a = t
            else:
                break
            step = -d1 / d2 if d2 > 0 else np.inf
            if abs(step) <= 1e-12:
                t += step
                break
            t = t + step if a < t + step < b else 0.5 * (a + b)
            if b - a <= 1e-12:
                break
    if not finite:  # (the objective is inf or nan on part of the bracket: scipy's arithmetic on it warns)
        with np.errstate(all="ignore"):
            t = minimize_scalar(lambda x: float(profile_objective(suff, np.exp(x), mode, sigma2, tau2)),
                                bounds=(a, b), method="bounded", options={"xatol": 1e-12, "maxiter": 200}).x
    # the Newton point and the previous iterate in one evaluation (the same numbers as one each)
    current = lam_current is not None and lo <= lam_current <= hi
    at = np.array([np.exp(t), lam_current]) if current else np.array([np.exp(t)])
    val = profile_objective(suff, at, mode, sigma2, tau2)
    cands = [(float(val[0]), float(at[0])), (float(vals[i]), float(lams[i]))]
    if current:
        cands.append((float(val[1]), float(at[1])))
    return min(cands)[1]


#: the 41-point grid of :func:`optimize_lambda` over lambda's whole range (and its exponential),
#: built once: the variance profile runs several times per iteration of the ML solver
_FULL_GRID: tuple[np.ndarray, np.ndarray] | None = None


def _grid(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """``(log lambda, lambda)`` at 41 points equally spaced in ``log lambda`` on ``[lo, hi]``."""
    global _FULL_GRID
    if lo == LAMBDA_MIN and hi == LAMBDA_MAX and _FULL_GRID is not None:
        return _FULL_GRID
    grid = np.linspace(np.log(lo), np.log(hi), 41)
    out = grid, np.exp(grid)
    if lo == LAMBDA_MIN and hi == LAMBDA_MAX:
        for x in out:
            x.flags.writeable = False
        _FULL_GRID = out
    return out


def _profile_derivatives(suff: Sufficient, lam: float, mode: str, var: float) -> tuple[float, float]:
    """First and second derivatives of :func:`profile_objective` in ``t = log lambda``
    (``var``: the fixed sigma2 in mode ``"sigma2"``, the fixed tau2 in mode ``"tau2"``)."""
    n = suff.n_obs
    lam = np.float64(lam)  # numpy scalars: an overflow gives inf, not an exception
    e = 1.0 / (suff.d + lam)
    se = suff.s * e
    see = se * e
    ee = e * e
    q = max(suff.rss - se.sum() if suff.perp is None else float(suff.quad(lam)), 1e-300)
    q1 = see.sum()  # dq/dlam
    q2 = -2.0 * (see @ e)
    wl = suff.w.sum() / lam
    l1 = suff.w @ e - wl  # d logdet / dlam
    l2 = wl / lam - suff.w @ ee
    if mode == "free":
        g1 = 0.5 * (n * q1 / q + l1)
        g2 = 0.5 * (n * (q2 / q - (q1 / q) * (q1 / q)) + l2)
    elif mode == "sigma2":
        g1 = 0.5 * (l1 + q1 / var)
        g2 = 0.5 * (l2 + q2 / var)
    elif mode == "tau2":
        g1 = 0.5 * (n / lam + l1 + (q1 * lam - q) / (lam * lam * var))
        g2 = 0.5 * (-n / lam**2 + l2 + (q2 / lam - 2 * q1 / lam**2 + 2 * q / lam**3) / var)
    else:
        raise ValueError(f"unknown profile mode {mode!r}")
    return lam * g1, lam * lam * g2 + lam * g1


def icc(X: np.ndarray, sigma2: float, tau2: float) -> float:
    """Trace-based intraclass correlation ``tau2 tr(X'X) / (tau2 tr(X'X) + sigma2 P)``."""
    tr = float(np.sum(X * X))
    return tau2 * tr / (tau2 * tr + sigma2 * X.shape[0])
