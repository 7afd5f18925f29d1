"""The paper's alternating algorithm (nmfkc 0.7.0 ``nmfre()``), step for step.

Multiplicative updates for X and Theta (non-negative), BLUP-then-centre U, damped moment
update of tau2 (only without a cap), damped sigma2 update every 10 iterations from
iteration 50, and the df cap ``max(rate N Q, 1)`` enforced by raising lambda. Stops when
the relative change of ``||R||^2 + lambda ||U||^2`` falls below ``tol``. Its constants
(variances clipped to ``[1e-12, 1e12]``, floors ``1e-10``) are absolute, as in nmfkc.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import dfcap
from .likelihood import LAMBDA_MAX, nll, sufficient
from .solution import Solution

FLOOR = 1e-10
#: the first iteration whose sigma2 update nmfkc makes (then every ``SIGMA2_EVERY``-th)
SIGMA2_FROM, SIGMA2_EVERY = 50, 10
VAR_MIN, VAR_MAX = 1e-12, 1e12


def clip(v: float) -> float:
    """nmfkc's clip of a variance to ``[1e-12, 1e12]``."""
    return min(max(v, VAR_MIN), VAR_MAX)


@dataclass
class PaperState:
    """The paper algorithm's iterate (mutated in place by the steps)."""

    X: np.ndarray
    theta: np.ndarray
    U: np.ndarray
    sigma2: float
    tau2: float
    hit_iters: list[int] = field(default_factory=list)


def _start(X0, theta0, U0, sigma2, tau2) -> PaperState:
    X = np.maximum(np.array(X0, dtype=float), FLOOR)
    theta = np.maximum(np.array(theta0, dtype=float), FLOOR)
    U = np.array(U0, dtype=float)
    D = np.maximum(X.sum(axis=0), 1e-12)
    return PaperState(X / D, theta * D[:, None], U * D[:, None], sigma2, tau2)


def _cap_step(st: PaperState, N: int, cap: float | None, it: int) -> float:
    """Steps 1-2: clip the variances; raise lambda to the cap's root when df_U exceeds it."""
    st.tau2 = clip(st.tau2)
    st.sigma2 = clip(st.sigma2)
    lam = st.sigma2 / st.tau2
    if cap is not None:
        d = np.maximum(np.linalg.eigvalsh(st.X.T @ st.X), 0.0)
        if float(dfcap.df_u(d, N, lam)) > cap:
            lam = dfcap.lambda_for_df_paper(d, N, cap, max(lam, 0.0), LAMBDA_MAX)
            st.tau2 = clip(st.sigma2 / max(lam, 1e-12))
            st.hit_iters.append(it)
    return lam


def _u_step(st: PaperState, Y, A, lam: float, update_tau2: bool, capped: bool) -> np.ndarray:
    """Steps 3-4: BLUP then row-centring of U; damped moment update of tau2 (no cap)."""
    Q, N = st.X.shape[1], Y.shape[1]
    M = st.X.T @ st.X + max(lam, 1e-12) * np.eye(Q)
    CA = st.theta @ A
    U = np.linalg.solve(M, st.X.T @ (Y - st.X @ CA))
    st.U = U - U.mean(axis=1, keepdims=True)
    if update_tau2 and not capped:
        tau2_new = clip(np.sum(st.U**2) / (N * Q) + st.sigma2 * np.trace(np.linalg.inv(M)) / Q)
        st.tau2 = 0.8 * st.tau2 + 0.2 * tau2_new
    return CA


def _x_step(st: PaperState, Yp, CA) -> None:
    """Step 5: multiplicative update of X, then unit column sums (Theta, U rescaled)."""
    Bp = np.maximum(CA + st.U, 0.0)
    X = st.X * _safe_div(Yp @ Bp.T, st.X @ (Bp @ Bp.T))
    X = np.maximum(X, FLOOR)
    D = np.maximum(X.sum(axis=0), 1e-12)
    st.X, st.theta, st.U = np.maximum(X / D, FLOOR), np.maximum(st.theta * D[:, None], FLOOR), st.U * D[:, None]


def _theta_step(st: PaperState, Yp, A, AAt) -> None:
    """Step 6: multiplicative update of Theta on ``max(Yp - X U, 0)``."""
    Ys = np.maximum(Yp - st.X @ st.U, 0.0)
    theta = st.theta * _safe_div((st.X.T @ Ys) @ A.T, ((st.X.T @ st.X) @ st.theta) @ AAt)
    st.theta = np.maximum(theta, FLOOR)


def fit_paper(Y: np.ndarray, A: np.ndarray, X0: np.ndarray, theta0: np.ndarray,
              U0: np.ndarray | None = None, *, rate: float | None = None, sigma2: float = 1.0,
              tau2: float = 1.0, update_sigma2: bool = True, update_tau2: bool = True,
              max_iter: int = 50000, tol: float = 1e-5) -> Solution:
    """Run the paper's algorithm from ``(X0, theta0[, U0])`` (see the module docstring)."""
    P, N = Y.shape
    Q = X0.shape[1]
    st = _start(X0, theta0, np.zeros((Q, N)) if U0 is None else U0, sigma2, tau2)
    Yp = np.maximum(Y, 0.0)
    AAt = A @ A.T
    cap = None if rate is None else dfcap.cap_value(rate, N, Q)
    obj_prev = np.inf
    trace, nll_trace = [], []
    converged, stop_reason, rel = False, "max_iter", np.nan
    it = 0
    for it in range(1, max_iter + 1):
        lam = _cap_step(st, N, cap, it)
        CA = _u_step(st, Y, A, lam, update_tau2, cap is not None)
        _x_step(st, Yp, CA)
        _theta_step(st, Yp, A, AAt)
        if update_sigma2 and it >= SIGMA2_FROM and it % SIGMA2_EVERY == 0:
            R = Y - st.X @ (st.theta @ A + st.U)
            st.sigma2 = 0.95 * st.sigma2 + 0.05 * clip(np.mean(R**2))
        R = Y - st.X @ (st.theta @ A + st.U)
        obj = np.sum(R**2) + st.sigma2 / clip(st.tau2) * np.sum(st.U**2)
        trace.append(obj)
        nll_trace.append(nll(sufficient(Y, st.X, st.theta @ A), st.sigma2, st.sigma2 / clip(st.tau2)))
        if not np.isfinite(obj):
            stop_reason = "nonfinite"
            break
        if np.isfinite(obj_prev):
            rel = abs(obj_prev - obj) / (abs(obj_prev) + FLOOR)
            if rel < tol:
                converged, stop_reason = True, "tol"
                break
        obj_prev = obj
    return _finish(st, P, nll_trace, trace, converged, it, stop_reason, rel)


def _finish(st: PaperState, P, nll_trace, trace, converged, it, stop_reason, rel) -> Solution:
    """Package the result, components ordered by ``sum_p (p/P) X[p, q]`` (Q > 1)."""
    lam = st.sigma2 / clip(st.tau2)
    return Solution(X=st.X, theta=st.theta, U=st.U, sigma2=st.sigma2, tau2=st.tau2, lam=lam, nll=nll_trace[-1],
                    nll_trace=np.asarray(nll_trace), converged=converged, n_iter=it, cap_hit=bool(st.hit_iters),
                    stop_reason=stop_reason, objective_trace=np.asarray(trace),
                    cap_hit_iters=tuple(st.hit_iters), rel_change=float(rel)).ordered()


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / np.maximum(den, FLOOR)
    out[~np.isfinite(out)] = 0.0
    return out
