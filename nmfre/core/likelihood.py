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
    """

    rss: float
    s: np.ndarray
    d: np.ndarray
    w: np.ndarray
    n_obs: int

    def quad(self, lam):
        """``||R||^2 - sum s / (d + lambda)`` (vectorised over ``lam``)."""
        lam = np.asarray(lam, dtype=float)
        return self.rss - np.sum(self.s / (self.d + lam[..., None]), axis=-1)

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
    """Marginal negative log-likelihood (with the ``2 pi`` term)."""
    q = float(suff.quad(lam))
    return 0.5 * (suff.n_obs * (LOG_2PI + np.log(sigma2)) + float(suff.logdet(lam)) + q / sigma2)


def profile_objective(suff: Sufficient, lam, mode: str, sigma2: float = 1.0, tau2: float = 1.0):
    """nll minimised over the free variance given ``lambda`` (vectorised over ``lam``).

    ``mode`` is ``"free"`` (sigma2 profiled in closed form), ``"sigma2"`` (sigma2 fixed)
    or ``"tau2"`` (tau2 fixed, so sigma2 = lambda tau2).
    """
    n = suff.n_obs
    lam = np.asarray(lam, dtype=float)
    q = np.maximum(suff.quad(lam), 1e-300)
    ld = suff.logdet(lam)
    if mode == "free":
        return 0.5 * (n * (LOG_2PI + np.log(q / n) + 1.0) + ld)
    if mode == "sigma2":
        return 0.5 * (n * (LOG_2PI + np.log(sigma2)) + ld + q / sigma2)
    if mode == "tau2":
        s2 = lam * tau2
        return 0.5 * (n * (LOG_2PI + np.log(s2)) + ld + q / s2)
    raise ValueError(f"unknown profile mode {mode!r}")


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

    A log-spaced grid locates the basin, bounded Brent refines it; the result is never
    worse than ``lam_current`` (when given and feasible).
    """
    lo = max(lam_lo, LAMBDA_MIN)
    hi = max(lam_hi, lo)
    if hi <= lo * (1 + 1e-12):
        return lo
    f = lambda t: float(profile_objective(suff, np.exp(t), mode, sigma2, tau2))  # noqa: E731
    grid = np.linspace(np.log(lo), np.log(hi), 41)
    vals = profile_objective(suff, np.exp(grid), mode, sigma2, tau2)
    i = int(np.nanargmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = minimize_scalar(f, bounds=(a, b), method="bounded", options={"xatol": 1e-12, "maxiter": 200})
    cands = [(float(res.fun), float(np.exp(res.x))), (float(vals[i]), float(np.exp(grid[i])))]
    if lam_current is not None and lo <= lam_current <= hi:
        cands.append((f(np.log(lam_current)), float(lam_current)))
    return min(cands)[1]


def icc(X: np.ndarray, sigma2: float, tau2: float) -> float:
    """Trace-based intraclass correlation ``tau2 tr(X'X) / (tau2 tr(X'X) + sigma2 P)``."""
    tr = float(np.sum(X * X))
    return tau2 * tr / (tau2 * tr + sigma2 * X.shape[0])
