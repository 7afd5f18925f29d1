"""Maximum likelihood for NMF-RE on plain numpy arrays.

``Y (P x N) = X (Theta A + U) + E`` with ``X >= 0`` (columns on the simplex), ``U`` with
iid ``N(0, tau2)`` entries and ``E`` iid ``N(0, sigma2)``. :func:`fit_ml` maximises the
marginal likelihood: projected Fisher scoring in (X, Theta, sigma2, tau2) with the
expected information in closed form, each step followed by an ECME sweep (E-step for U,
exact per-column HALS block minimisation for X on the simplex, exact GLS/NNLS for Theta,
exact 1-D profile for the variances); a SQUAREM cycle of the ECME map where scoring finds
no decrease. Every accepted iteration does not increase the nll.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from . import dfcap
from .basis import project_simplex
from .likelihood import LAMBDA_MIN, nll, optimize_lambda, sufficient, variances_at
from .solution import Solution

#: variance modes: which of sigma2, tau2 are held fixed
MODES = {(False, False): "free", (True, False): "sigma2", (False, True): "tau2", (True, True): "fixed"}


@dataclass
class Problem:
    """Data and settings shared by the ML iterations.

    Attributes
    ----------
    Y, A : ndarray
        ``P x N`` data, ``K x N`` design.
    rank : int
    nonneg : bool
        Theta constrained to ``>= 0``.
    mode : str
        ``"free"``, ``"sigma2"`` (sigma2 fixed), ``"tau2"`` (tau2 fixed) or ``"fixed"``.
    sigma2, tau2 : float
        Starting or fixed variances.
    cap : float or None
        The df cap value ``max(rate N Q, 1)`` (not the rate).
    """

    Y: np.ndarray
    A: np.ndarray
    rank: int
    nonneg: bool
    mode: str
    sigma2: float
    tau2: float
    cap: float | None

    def __post_init__(self):
        self.P, self.N = self.Y.shape
        self.K = self.A.shape[0]
        self.YAt = self.Y @ self.A.T
        self.AAt = self.A @ self.A.T
        self.AAt_inv = np.linalg.inv(self.AAt)

    def lam_floor(self, d: np.ndarray) -> float:
        """Smallest admissible lambda given the eigenvalues ``d`` of X'X (the cap's root)."""
        if self.cap is None:
            return LAMBDA_MIN
        return max(dfcap.lambda_for_df(d, self.N, self.cap), LAMBDA_MIN)


@dataclass
class State:
    """One iterate: basis, effects, variances and its nll."""

    X: np.ndarray
    theta: np.ndarray
    sigma2: float
    lam: float
    nll: float
    cap_active: bool = False


# ----------------------------------------------------------------------------- exact blocks
def theta_step(prob: Problem, X: np.ndarray, lam: float) -> np.ndarray:
    """Exact minimiser of the marginal nll over Theta for fixed ``X`` and ``lambda``.

    Free Theta: GLS equals OLS, ``(X'X)^-1 X'Y A'(AA')^-1``. Non-negative Theta: NNLS in
    the metric ``AA' (x) M^-1 X'X`` (the GLS quadratic form).
    """
    XtX = X.T @ X
    XtYAt = X.T @ prob.YAt
    if not prob.nonneg:
        try:
            return np.linalg.solve(XtX, XtYAt) @ prob.AAt_inv
        except np.linalg.LinAlgError:
            return np.linalg.lstsq(XtX, XtYAt, rcond=None)[0] @ prob.AAt_inv
    Q = X.shape[1]
    M = XtX + lam * np.eye(Q)
    G = np.linalg.solve(M, XtX)
    G = 0.5 * (G + G.T)
    H = np.kron(prob.AAt, G)
    g = np.linalg.solve(M, XtYAt).reshape(-1, order="F")
    free = np.linalg.lstsq(H, g, rcond=None)[0]
    if np.all(free >= 0):
        return free.reshape(Q, prob.K, order="F")
    ridge = 1e-12 * np.trace(H) / H.shape[0]
    L = np.linalg.cholesky(H + ridge * np.eye(H.shape[0]))
    sol = nnls(L.T, np.linalg.solve(L, g), maxiter=50 * H.shape[0])[0]
    return sol.reshape(Q, prob.K, order="F")


def profile(prob: Problem, X: np.ndarray, theta: np.ndarray, lam_current: float | None):
    """Exact variance step: returns ``(sigma2, lam, nll, suff, cap_active)``."""
    suff = sufficient(prob.Y, X, theta @ prob.A)
    lo = prob.lam_floor(suff.d)
    if prob.mode == "fixed":
        lam = max(prob.sigma2 / prob.tau2, lo)
        s2 = prob.sigma2
    else:
        lam = optimize_lambda(suff, prob.mode, lo, lam_current, prob.sigma2, prob.tau2)
        s2, _ = variances_at(suff, lam, prob.mode, prob.sigma2, prob.tau2)
    active = prob.cap is not None and lam <= lo * (1 + 1e-9)
    return s2, lam, nll(suff, s2, lam), suff, active


def blup(prob: Problem, X: np.ndarray, theta: np.ndarray, lam: float) -> np.ndarray:
    """BLUP of U: ``M^-1 X'(Y - X Theta A)``, ``M = X'X + lambda I``."""
    M = X.T @ X + lam * np.eye(X.shape[1])
    return np.linalg.solve(M, X.T @ (prob.Y - X @ (theta @ prob.A)))


def x_step(prob: Problem, st: State, sweeps: int = 10) -> np.ndarray:
    """Block minimisation of the expected complete-data loss over simplex columns.

    Minimises ``||Y - X B||^2 + tr(X S X')`` with ``B = Theta A + E[U]`` and
    ``S = N sigma2 M^-1`` by per-column HALS with exact Euclidean projections onto the
    simplex (each column update is an exact block minimiser).
    """
    X = st.X
    Q = X.shape[1]
    M = X.T @ X + st.lam * np.eye(Q)
    Minv = np.linalg.inv(M)
    Ubar = Minv @ (X.T @ (prob.Y - X @ (st.theta @ prob.A)))
    B = st.theta @ prob.A + Ubar
    G = B @ B.T + prob.N * st.sigma2 * Minv
    C = prob.Y @ B.T
    X = X.copy()
    for _ in range(sweeps):
        X_old = X.copy()
        for q in range(Q):
            if G[q, q] <= 0:
                continue
            v = X[:, q] + (C[:, q] - X @ G[:, q]) / G[q, q]
            X[:, q] = project_simplex(v[:, None])[:, 0]
        if Q == 1 or np.max(np.abs(X - X_old)) <= 1e-12:
            break
    return X


def ecme(prob: Problem, st: State) -> State:
    """One ECME sweep (X, then Theta, then the variances), never increasing the nll.

    When the df cap moves with X and the full step would increase the nll, the step in
    X is halved until it does not (the current point is always feasible).
    """
    X_new = x_step(prob, st)
    step = X_new - st.X
    t = 1.0
    for _ in range(40):
        X = st.X + t * step
        theta = theta_step(prob, X, st.lam)
        s2, lam, val, _, active = profile(prob, X, theta, st.lam)
        if val <= st.nll:
            return State(X, theta, s2, lam, val, active)
        t *= 0.5
    return st


def initial_state(prob: Problem, X0: np.ndarray, theta0: np.ndarray | None) -> State:
    """Profile the variances (and Theta when not given) at a starting basis."""
    lam0 = max(prob.sigma2 / prob.tau2, LAMBDA_MIN)
    theta = theta_step(prob, X0, lam0) if theta0 is None else np.array(theta0, dtype=float)
    if prob.nonneg:
        theta = np.maximum(theta, 0.0)
    s2, lam, val, _, active = profile(prob, X0, theta, lam0)
    if theta0 is None and prob.nonneg:
        theta = theta_step(prob, X0, lam)
        s2, lam, val, _, active = profile(prob, X0, theta, lam)
    return State(X0, theta, s2, lam, val, active)


# ----------------------------------------------------------------------------- scoring
def _gradient_parts(prob: Problem, st: State):
    """Shared pieces of the gradient: ``Minv, S, Z, W, R, B, gX, gT``."""
    X, theta, s2, lam = st.X, st.theta, st.sigma2, st.lam
    P, Q = prob.P, prob.rank
    Minv = np.linalg.inv(X.T @ X + lam * np.eye(Q))
    S = (np.eye(P) - X @ Minv @ X.T) / s2
    Z = S @ X
    W = X.T @ Z
    TA = theta @ prob.A
    R = prob.Y - X @ TA
    B = TA + Minv @ (X.T @ R)
    E = (prob.Y - X @ B) / s2
    gX = prob.N * X @ Minv - E @ B.T
    gT = -(X.T @ E @ prob.A.T)
    return Minv, S, Z, W, R, gX, gT


def fisher_system(prob: Problem, st: State):
    """Expected information ``F`` and gradient ``g`` of the nll in
    ``(vec_row X, vec_row Theta[, variances])`` and the number of variance coordinates.

    For ``vec(X)`` and ``vec(Theta)``: a mean part ``S (x) Theta A A' Theta'`` and a
    covariance part ``N tau2^2 (S (x) X'SX + T)`` with ``S = Sigma^-1``; the free
    variances (not when the df cap binds) enter through ``N/2 tr(S dSigma S dSigma)``.
    """
    X, theta, s2, lam = st.X, st.theta, st.sigma2, st.lam
    P, Q, K, N = prob.P, prob.rank, prob.K, prob.N
    tau2 = s2 / lam
    Minv, S, Z, W, R, gX, gT = _gradient_parts(prob, st)
    C1 = theta @ prob.AAt @ theta.T
    c = N * tau2**2
    FXX = np.kron(S, C1 + c * W) + c * np.einsum("ps,rq->pqrs", Z, Z).reshape(P * Q, P * Q)
    FXT = np.einsum("pj,qk->pqjk", Z, theta @ prob.AAt).reshape(P * Q, Q * K)
    FTT = np.einsum("ab,kl->akbl", W, prob.AAt).reshape(Q * K, Q * K)
    F = np.block([[FXX, FXT], [FXT.T, FTT]])
    g = np.concatenate([gX.ravel(), gT.ravel()])
    # variances that move with (X, Theta): their coupling with X is what makes
    # alternating schemes crawl, so they enter the Newton system (then are re-profiled)
    dSig = []
    if not st.cap_active:
        if prob.mode in ("free", "tau2"):
            dSig.append(np.eye(P))
        if prob.mode in ("free", "sigma2"):
            dSig.append(X @ X.T)
    if dSig:
        SR = S @ R
        FV = np.array([[0.5 * N * np.sum((S @ a) * (S @ b).T) for b in dSig] for a in dSig])
        FXV = np.stack([N * tau2 * (S @ a @ Z).ravel() for a in dSig], axis=1)
        gV = np.array([0.5 * (N * np.sum(S * a) - np.sum(SR * (a @ SR))) for a in dSig])
        nV = len(dSig)
        F = np.block([[F, np.vstack([FXV, np.zeros((Q * K, nV))])],
                      [np.hstack([FXV.T, np.zeros((nV, Q * K))]), FV]])
        g = np.concatenate([g, gV])
    return F, g, gT, len(dSig)


def _newton_direction(prob: Problem, st: State, F, g, gT, nV):
    """Solve the KKT system on the free coordinates (positive entries of X, Theta off its
    bound) under the unit-column-sum constraints; None when singular."""
    X, theta = st.X, st.theta
    P, Q, K = prob.P, prob.rank, prob.K
    act_X = X <= 0
    free = np.concatenate([~act_X.ravel(), ~((theta <= 0) & (gT > 0)).ravel() if prob.nonneg
                           else np.ones(Q * K, bool), np.ones(nV, bool)])
    idx = np.flatnonzero(free)
    nf = idx.size
    Ecol = np.zeros((Q, nf))
    for j, i in enumerate(idx):
        if i < P * Q:
            Ecol[i % Q, j] = 1.0
    Ff = F[np.ix_(idx, idx)]
    Ff = Ff + 1e-10 * np.mean(np.abs(np.diag(Ff))) * np.eye(nf)
    kkt = np.block([[Ff, Ecol.T], [Ecol, np.zeros((Q, Q))]])
    try:
        sol = np.linalg.solve(kkt, np.concatenate([-g[idx], np.zeros(Q)]))
    except np.linalg.LinAlgError:
        return None
    delta = np.zeros(P * Q + Q * K + nV)
    delta[idx] = sol[:nf]
    return delta[: P * Q].reshape(P, Q), delta[P * Q:P * Q + Q * K].reshape(Q, K)


def scoring_step(prob: Problem, st: State) -> State | None:
    """One projected Fisher-scoring step in (X, Theta, sigma2, tau2).

    The Newton system (:func:`fisher_system`) is solved on the positive entries of X
    (zeros stay, an ECME sweep can release them) and the free entries of Theta under the
    unit-column-sum constraints (KKT); the step, limited to 0.25 in any entry of X, is
    projected back onto the simplex (and Theta >= 0) and halved until the nll, with Theta
    (free case) and the variances re-profiled exactly, strictly decreases. Returns None
    when it does not.
    """
    F, g, gT, nV = fisher_system(prob, st)
    direction = _newton_direction(prob, st, F, g, gT, nV)
    if direction is None:
        return None
    dX, dT = direction
    big = np.max(np.abs(dX))
    t = min(1.0, 0.25 / big) if big > 0 else 1.0  # trust radius in simplex units
    for _ in range(40):
        Xn = project_simplex(st.X + t * dX)
        Tn = st.theta + t * dT
        Tn = np.maximum(Tn, 0.0) if prob.nonneg else theta_step(prob, Xn, st.lam)
        s2n, lamn, val, _, act = profile(prob, Xn, Tn, st.lam)
        if val < st.nll:
            return State(Xn, Tn, s2n, lamn, val, act)
        t *= 0.5
    return None


def kkt_decrement(prob: Problem, st: State) -> float:
    """Predicted nll decrease still available at ``st`` (a stationarity measure).

    For each free coordinate, ``(g - mu)^2 / (2 F_ii)`` with ``g`` the gradient, ``mu``
    the multiplier of its constraint (X: the column's X-weighted mean gradient, the
    simplex multiplier at a KKT point; Theta >= 0: 0) and ``F_ii`` the diagonal of the
    expected information; entries at a bound count only if the gradient pushes inward.
    Zero exactly at a KKT point of the profile nll.
    """
    X, theta, s2, lam = st.X, st.theta, st.sigma2, st.lam
    Q, N = prob.rank, prob.N
    tau2 = s2 / lam
    Minv = np.linalg.inv(X.T @ X + lam * np.eye(Q))
    TA = theta @ prob.A
    B = TA + Minv @ (X.T @ (prob.Y - X @ TA))
    E = (prob.Y - X @ B) / s2
    gX = N * X @ Minv - E @ B.T
    Sdiag = (1.0 - np.einsum("pq,qr,pr->p", X, Minv, X)) / s2
    Z = (X - X @ Minv @ (X.T @ X)) / s2
    W = X.T @ Z
    c = N * tau2**2
    FX = Sdiag[:, None] * np.diag(theta @ prob.AAt @ theta.T + c * W)[None, :] + c * Z**2
    dev = gX - np.sum(X * gX, axis=0)
    dev = np.where(X > 0, dev, np.minimum(dev, 0.0))
    out = float(np.sum(dev**2 / (2 * np.maximum(FX, 1e-300))))
    if prob.nonneg:
        gT = -(X.T @ E @ prob.A.T)
        FT = np.outer(np.diag(W), np.diag(prob.AAt))
        devT = np.where(theta > 0, gT, np.minimum(gT, 0.0))
        out += float(np.sum(devT**2 / (2 * np.maximum(FT, 1e-300))))
    return out


# ----------------------------------------------------------------------------- driver
def fit_ml(prob: Problem, X0: np.ndarray, theta0: np.ndarray | None = None,
           max_iter: int = 5000, tol: float = 1e-10, scoring_max_size: int = 1500) -> Solution:
    """Maximum-likelihood fit; every iteration does not increase the nll.

    An iteration is a projected Fisher-scoring step (:func:`scoring_step`, used while
    ``P Q + Q K <= scoring_max_size``; the dense information is ``(PQ + QK)^2``) followed
    by one ECME sweep; where scoring is too large or finds no decrease, a SQUAREM cycle
    (Varadhan & Roland 2008) of the monotone ECME map is used instead: two ECME sweeps,
    an extrapolation of X along them (projected back onto the simplex) and a stabilising
    sweep, accepted only if not worse than the plain sweeps. Converged when an iteration
    decreases the nll by less than ``tol * (1 + |nll|)``, moves X by less than
    ``sqrt(tol)`` and :func:`kkt_decrement` (the predicted decrease still available) is
    below ``tol * (1 + |nll|)``.
    """
    st = initial_state(prob, X0, theta0)
    trace: list[float] = []
    hits: list[int] = [0] if st.cap_active else []
    use_scoring = prob.P * prob.rank + prob.rank * prob.K <= scoring_max_size
    step_max, mstep = 1.0, 4.0
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        new = scoring_step(prob, st) if use_scoring else None
        if new is None:
            new, step_max = _squarem_cycle(prob, st, step_max, mstep)
        else:
            new = ecme(prob, new)
        dec = st.nll - new.nll
        dx = float(np.max(np.abs(new.X - st.X)))
        st = new
        trace.append(st.nll)
        if st.cap_active:
            hits.append(n_iter)
        if dec <= tol * (1.0 + abs(st.nll)) and dx <= np.sqrt(tol) \
                and kkt_decrement(prob, st) <= tol * (1.0 + abs(st.nll)):
            converged = True
            break
    U = blup(prob, st.X, st.theta, st.lam)
    return Solution(X=st.X, theta=st.theta, U=U, sigma2=st.sigma2, tau2=st.sigma2 / st.lam, lam=st.lam,
                    nll=st.nll, nll_trace=np.asarray(trace), converged=converged, n_iter=n_iter,
                    cap_hit=bool(hits), stop_reason="tol" if converged else "max_iter",
                    cap_hit_iters=tuple(hits))


def _squarem_cycle(prob: Problem, st: State, step_max: float, mstep: float):
    s1 = ecme(prob, st)
    s2 = ecme(prob, s1)
    r = s1.X - st.X
    v = s2.X - s1.X - r
    nr, nv = np.linalg.norm(r), np.linalg.norm(v)
    if nv == 0 or nr == 0:
        return s2, step_max
    alpha = min(-1.0, max(-nr / nv, -step_max))
    if alpha == -1.0:
        return s2, step_max * mstep if step_max == 1.0 else step_max
    Xe = project_simplex(st.X - 2 * alpha * r + alpha**2 * v)
    theta_e = theta_step(prob, Xe, s2.lam)
    s2e, lam_e, val_e, _, act_e = profile(prob, Xe, theta_e, s2.lam)
    cand = ecme(prob, State(Xe, theta_e, s2e, lam_e, val_e, act_e))
    if np.isfinite(cand.nll) and cand.nll <= s2.nll:
        return cand, step_max * mstep if alpha == -step_max else step_max
    return s2, max(1.0, step_max / mstep)
