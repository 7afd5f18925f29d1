"""Degrees-of-freedom control for the random effects (the paper's df cap).

``df_U(lambda) = N sum_q d_q / (d_q + lambda)`` is decreasing in ``lambda``; the cap keeps
``df_U <= max(rate N Q, 1)`` by raising ``lambda`` to the root of ``df_U = cap``. The cap
only ever raises ``lambda``. :func:`choose_rate` is nmfkc 0.7.0's automatic scan rule.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq

from .likelihood import LAMBDA_MAX

#: ratio df_U / cap below which a rate counts as a working safeguard (nmfkc 0.7.0)
SAFEGUARD_RATIO = 0.99
DEFAULT_RATES = tuple(np.round(np.arange(1, 11) / 10, 10))


def df_u(d: np.ndarray, N, lam):
    """Effective degrees of freedom of U, ``N sum_q d_q / (d_q + lambda)``.

    ``N`` is the number of units, or an array of weights like ``d`` (units per block,
    for the per-unit df summed over blocks of missing data). Vectorised over ``lam``.
    """
    lam = np.asarray(lam, dtype=float)
    if np.ndim(N) == 0:
        return N * np.sum(d / (d + lam[..., None]), axis=-1)
    return np.sum(N * d / (d + lam[..., None]), axis=-1)


def cap_value(rate: float, N: int, Q: int) -> float:
    """The cap ``max(rate N Q, 1)``."""
    return max(rate * N * Q, 1.0)


def lambda_for_df(d: np.ndarray, N: int, target: float, lam_max: float = LAMBDA_MAX) -> float:
    """Smallest ``lambda`` with ``df_U(lambda) <= target``, solved to machine precision.

    Returns 0 when ``df_U`` cannot exceed ``target`` for any ``lambda > 0``.
    """
    d = np.maximum(np.asarray(d, dtype=float), 0.0)
    if float(np.sum(np.broadcast_to(N, d.shape)[d > 0])) <= target:
        return 0.0

    def f(t):
        return float(df_u(d, N, np.exp(t))) - target

    lo, hi = np.log(1e-12), np.log(1e-6)
    while f(hi) > 0 and hi < np.log(lam_max):
        lo, hi = hi, hi + np.log(10.0)
    if f(lo) <= 0:
        return float(np.exp(lo))
    if f(hi) > 0:
        return float(lam_max)
    return float(np.exp(brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps)))


def lambda_for_df_paper(d: np.ndarray, N: int, target: float, lam_min: float,
                        lam_max: float = LAMBDA_MAX) -> float:
    """nmfkc 0.7.0's root search: bracket upwards from ``lam_min`` by factors of 10,
    then Brent's zeroin with absolute tolerance 1e-8 (R's ``uniroot`` default here).
    """
    if float(df_u(d, N, lam_min)) <= target:
        return lam_min
    hi = lam_min
    df_hi = np.inf
    while hi < lam_max:
        hi = max(1e-12, 1e-6 if hi == 0 else hi * 10)
        df_hi = float(df_u(d, N, hi))
        if df_hi <= target:
            break
    if df_hi > target:
        return lam_max
    return zeroin(lambda lam: float(df_u(d, N, lam)) - target, lam_min, hi, tol=1e-8)


def zeroin(f, ax: float, bx: float, tol: float, maxit: int = 1000) -> float:
    """Brent's root finder exactly as R's ``R_zeroin2`` (used by ``uniroot``)."""
    eps = np.finfo(float).eps
    a, b = ax, bx
    fa, fb = f(a), f(b)
    c, fc = a, fa
    if fa == 0.0:
        return a
    if fb == 0.0:
        return b
    for _ in range(maxit):
        prev_step = b - a
        if abs(fc) < abs(fb):
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol_act = 2 * eps * abs(b) + tol / 2
        new_step = (c - b) / 2
        if abs(new_step) <= tol_act or fb == 0.0:
            return b
        if abs(prev_step) >= tol_act and abs(fa) > abs(fb):
            cb = c - b
            if a == c:
                t1 = fb / fa
                p = cb * t1
                q = 1.0 - t1
            else:
                q = fa / fc
                t1 = fb / fc
                t2 = fb / fa
                p = t2 * (cb * q * (q - t1) - (b - a) * (t1 - 1.0))
                q = (q - 1.0) * (t1 - 1.0) * (t2 - 1.0)
            if p > 0:
                q = -q
            else:
                p = -p
            if p < (0.75 * cb * q - abs(tol_act * q) / 2) and p < abs(prev_step * q / 2):
                new_step = p / q
        if abs(new_step) < tol_act:
            new_step = tol_act if new_step > 0 else -tol_act
        a, fa = b, fb
        b += new_step
        fb = f(b)
        if (fb > 0 and fc > 0) or (fb < 0 and fc < 0):
            c, fc = a, fa
    return b


def choose_rate(rates, df_u_final, caps, hit, converged) -> float | None:
    """nmfkc 0.7.0's rule for ``df_cap="auto"``.

    Among converged fits with ``df_U / cap < 0.99`` (a working safeguard), take the
    largest rate whose cap was hit at least once; failing that, the smallest rate
    whose cap never hit; ``None`` when no rate qualifies.
    """
    rates = np.asarray(rates, dtype=float)
    safe = (np.asarray(df_u_final) / np.asarray(caps) < SAFEGUARD_RATIO) & np.asarray(converged, bool)
    hit = np.asarray(hit, bool)
    if np.any(safe & hit):
        return float(rates[safe & hit].max())
    if np.any(safe & ~hit):
        return float(rates[safe & ~hit].min())
    return None
