"""Exact second-order information of the NMF-RE marginal likelihood, matrix-free.

Complete data (one block of :class:`~nmfre.core.stats.Stats`, in any form). Coordinates
``(X, Theta, sigma2, tau2)``; the nll is

    nll = 1/2 [ n log(2 pi sigma2) + N log det M - N Q log lambda + q / sigma2 ],
    M = X'X + lambda I,  lambda = sigma2 / tau2,  q = ||R||^2 - tr(M^-1 X'RR'X),  R = Y - X Theta A,

and its gradient (:func:`gradient`) needs the data only through ``Y Y' X`` (gram form:
``G X``, ``O(P^2 Q)``; dense or sparse: ``Y (Y'X)``, ``O(nnz Q)``), plus ``Y A'``,
``A A'`` and ``||Y||^2``. The gram and sparse forms use the gram identities for the rest
(``P``-sized work only: a sparse Y enters as the operator ``G v = Y (Y'v)``, never as
``G`` and never through ``N``-sized residual products); the dense form (small problems)
forms the residual products exactly.

* :func:`hessian_product`: the observed Hessian times a direction, exact to rounding: the
  derivative of :func:`gradient` along the direction in closed form (forward mode, in real
  arithmetic), from the gradient's terms at the point, computed once (:class:`Point`). One
  product costs one data product (``G dX`` in gram form, ``O(P^2 Q)``) and ``O(P Q^2 + Q^3)``
  further work. (:func:`gradient` is complex-analytic, so the complex step ``Im g(x + i h v)
  / h`` of Squire & Trapp 1998 gives the same products to rounding; the tests check that.)
* :func:`fisher_product`: the expected information times a direction in ``O(P Q^2 + P Q K
  + Q^3)`` (no data), with the formulas of :mod:`nmfre.core.newton`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stats import gram_product

#: the factor between the trial lengths of :func:`newton_step`'s projected search (measured
#: against the segment's feasible part alone: benchmarks/results/scale.md, twentieth round)
PROJECTED_SEARCH = 4.0

#: where the observed Hessian's model does not fall at the Fisher step (the expected information
#: is much flatter than the observed Hessian along it, so the step overshoots) and no Newton step
#: is found from it, :func:`newton_step` starts again at the model's minimiser along that step
#: (a step already), with the trust region around it. Around an overshooting Fisher step no point
#: of a small region had the model below 0, so no Newton step was ever taken, the radius (which
#: follows the Newton steps' ratio) never changed, and every iteration was a halved Fisher step.
#: The named fault: a sign-free 100 x 2000 counts fit (the iteration benchmark's counts
#: generator, seed 3, c = 0.3) switched to the second-order steps took 615 of them (637
#: iterations), each halved 4-8 times; with the start, 39 iterations. It applies to the polish of
#: :func:`nmfre.core.ml.fit_ml` too (no radius there). Only where the Fisher start
#: gives no step: of the ladder's non-negative fits, the 110 small ones take the same steps, and
#: 1 of 110 medium and 3 of 33 large ones change (large: 1703 -> 1717 iterations;
#: benchmarks/results/scale.md, forty-fifth round). False: no second start
SCALED_START = True


def _rmul(Y, Z):
    """``Y @ Z`` as an ndarray (``Y`` dense or sparse)."""
    return np.asarray(Y @ Z)


@dataclass(frozen=True)
class Data:
    """The data of a complete-data problem as :func:`gradient` needs it.

    Attributes
    ----------
    form : {"dense", "gram", "sparse"}
    YA : ndarray (P, K)
    AA : ndarray (K, K)
    trG : float
    A : ndarray (K, N)
    G : ndarray (P, P) or None
    Y : ndarray or nmfre.core.sparse.RowSplit or None
    N : int
    """

    form: str
    YA: np.ndarray
    AA: np.ndarray
    trG: float
    A: np.ndarray
    N: int
    G: np.ndarray | None = None
    Y: object = None

    @classmethod
    def of(cls, stats) -> Data:
        """From complete-data :class:`~nmfre.core.stats.Stats` (one block observing every row)."""
        b = stats.blocks[0]
        if not stats.complete:
            raise ValueError("trust.Data needs complete data (one block)")
        return cls(b.form, b.YA, b.AA, b.trG, b.A, b.N, b.G, b.Y)

    @property
    def P(self) -> int:
        return self.YA.shape[0]


@dataclass(frozen=True)
class Moments:
    """What the gradient needs at ``(X, Theta)``: ``XtX``, ``XtYA = X'YA'``, ``WR = X'RR'X``,
    ``rss``, ``RRtX = RR'X`` (``P x Q``), ``JA = X'RA'``, ``C1 = Theta AA' Theta'`` and, in dense
    form, ``J = X'R`` (complex-analytic in X, Theta)."""

    XtX: np.ndarray
    XtYA: np.ndarray
    WR: np.ndarray
    rss: object
    RRtX: np.ndarray
    JA: np.ndarray
    C1: np.ndarray
    J: np.ndarray | None = None


def data_product(data: Data, X: np.ndarray) -> np.ndarray:
    """The product of the data with X that :func:`moments` needs: ``G X`` (``P x Q``; gram
    form, and sparse form as ``Y (Y'X)``: two passes over the non-zeros, no ``G``) or ``Y'X``
    (dense form, ``N x Q``)."""
    if data.form == "gram":
        return gram_product(data.G, X)
    if data.form == "sparse":
        return _rmul(data.Y, _rmul(data.Y.T, X))
    return _rmul(data.Y.T, X)


def residual_product(data: Data, X: np.ndarray, theta: np.ndarray, DX: np.ndarray) -> np.ndarray | None:
    """``Y J'`` with ``J = X'R`` (``P x Q``; dense form, None in gram and sparse form), from
    ``DX = Y'X`` (:func:`data_product`): the second data product of :func:`moments`, kept by
    :class:`Point`."""
    if data.form != "dense":
        return None
    J = DX.T - (X.T @ X) @ theta @ data.A
    return np.asarray(data.Y @ J.T)


def moments(data: Data, X: np.ndarray, theta: np.ndarray, DX: np.ndarray | None = None,
            YJ: np.ndarray | None = None) -> Moments:
    """:class:`Moments` (exact residual products in dense form, the gram identities otherwise).

    ``DX``: :func:`data_product` of ``X`` when already known; ``YJ`` (dense form): ``Y J'``
    with ``J = X'R`` (:func:`residual_product`) when already known."""
    if DX is None:
        DX = data_product(data, X)
    XtX = X.T @ X
    XtYA = X.T @ data.YA
    C1 = theta @ data.AA @ theta.T
    if data.form != "dense":
        GX = DX
        XtGX = X.T @ GX
        T = XtYA @ theta.T @ XtX
        WR = XtGX - T - T.T + XtX @ C1 @ XtX
        RRtX = GX - data.YA @ theta.T @ XtX - X @ theta @ XtYA.T + X @ C1 @ XtX
        rss = data.trG - 2.0 * np.sum(theta * XtYA) + np.sum(C1 * XtX)
        JA = XtYA - XtX @ theta @ data.AA
        return Moments(XtX, XtYA, WR, rss, RRtX, JA, C1)
    TA = theta @ data.A
    J = DX.T - XtX @ TA  # X'R, Q x N
    R = data.Y - X @ TA
    rss = np.sum(R * R)
    JA = J @ data.A.T
    YJt = _rmul(data.Y, J.T) if YJ is None else YJ
    RRtX = YJt - X @ theta @ JA.T
    return Moments(XtX, XtYA, J @ J.T, rss, RRtX, JA, C1, J)


def gradient(data: Data, X: np.ndarray, theta: np.ndarray, sigma2, tau2, DX: np.ndarray | None = None,
             YJ: np.ndarray | None = None):
    """Gradient of the nll in ``(X, Theta, sigma2, tau2)``: ``(gX, gT, g_sigma2, g_tau2)``, from
    the terms of :func:`point`.

    Complex-analytic in all arguments (the tests check :func:`hessian_product`, its derivative
    in closed form, against its complex step). ``DX``, ``YJ``: see :func:`moments`.
    """
    p = point(data, X, theta, sigma2, tau2, DX, YJ)
    n = data.N * data.P
    gX = data.N * X @ p.Minv + p.E / sigma2
    L_s2 = 0.5 * (n / sigma2 - p.q / sigma2**2)
    return gX, p.gTn / sigma2, L_s2 + p.L_lam / tau2, -p.L_lam * (sigma2 / tau2) / tau2


@dataclass(frozen=True)
class Point:
    """The gradient's terms at ``(X, Theta, sigma2, tau2)`` (:func:`point`), which
    :func:`gradient` combines and :func:`hessian_product` differentiates: the :class:`Moments`,
    the data product ``DX``, ``Minv = M^-1``, ``MJ = Minv JA``, ``MWM = Minv WR Minv``, ``H = C1
    + MWM + MJ Theta'``, ``E = X H - YA Theta' - RRtX Minv``, ``gTn = sigma2 gT``, ``q`` (the
    quadratic form) and ``L_lam`` (the nll's derivative in lambda at fixed sigma2)."""

    X: np.ndarray
    theta: np.ndarray
    sigma2: float
    tau2: float
    m: Moments
    DX: np.ndarray
    Minv: np.ndarray
    MJ: np.ndarray
    MWM: np.ndarray
    H: np.ndarray
    E: np.ndarray
    gTn: np.ndarray
    q: float
    L_lam: float


def point(data: Data, X: np.ndarray, theta: np.ndarray, sigma2: float, tau2: float, DX: np.ndarray | None = None,
          YJ: np.ndarray | None = None) -> Point:
    """:class:`Point` at ``(X, Theta, sigma2, tau2)`` (complex-analytic); ``DX``, ``YJ``: see
    :func:`moments`."""
    DX = data_product(data, X) if DX is None else DX
    m = moments(data, X, theta, DX, YJ)
    N, Q = data.N, X.shape[1]
    lam = sigma2 / tau2
    Minv = np.linalg.inv(m.XtX + lam * np.eye(Q))
    MJ = Minv @ m.JA
    MWM = Minv @ m.WR @ Minv
    H = m.C1 + MWM + MJ @ theta.T
    E = X @ H - data.YA @ theta.T - m.RRtX @ Minv
    gTn = m.XtX @ (theta @ data.AA + MJ) - m.XtYA
    q = m.rss - np.sum(Minv * m.WR)
    L_lam = 0.5 * (N * np.trace(Minv) - N * Q / lam + np.trace(MWM) / sigma2)
    return Point(X, theta, sigma2, tau2, m, DX, Minv, MJ, MWM, H, E, gTn, q, L_lam)


def _moments_derivative(data: Data, p: Point, dX: np.ndarray, dT: np.ndarray):
    """The derivative of :func:`moments` at ``p`` along ``(dX, dT)``: ``(dXtX, dXtYA, dC1, dWR,
    drss, dRRtX, dJA)``, with one data product (``G dX``, ``Y (Y'dX)``; dense form ``Y'dX`` and
    ``Y dJ'``)."""
    X, theta, m = p.X, p.theta, p.m
    S = X.T @ dX
    dXtX = S + S.T
    dXtYA = dX.T @ data.YA
    E1 = dT @ data.AA @ theta.T
    dC1 = E1 + E1.T
    if data.form != "dense":
        dGX = data_product(data, dX)
        S2 = p.DX.T @ dX  # X'G dX = (G X)'dX: G symmetric
        XtX, XtYA, C1 = m.XtX, m.XtYA, m.C1
        dT_ = (dXtYA @ theta.T + XtYA @ dT.T) @ XtX + XtYA @ theta.T @ dXtX
        CX = C1 @ XtX
        dWR = S2 + S2.T - dT_ - dT_.T + dXtX @ CX + XtX @ (dC1 @ XtX + C1 @ dXtX)
        dRRtX = (dGX - data.YA @ (dT.T @ XtX + theta.T @ dXtX) - dX @ (theta @ XtYA.T - CX)
                 - X @ (dT @ XtYA.T + theta @ dXtYA.T - dC1 @ XtX - C1 @ dXtX))
        drss = -2.0 * (np.sum(dT * XtYA) + np.sum(theta * dXtYA)) + np.sum(dC1 * XtX) + np.sum(C1 * dXtX)
        dJA = dXtYA - dXtX @ theta @ data.AA - XtX @ dT @ data.AA
        return dXtX, dXtYA, dC1, dWR, drss, dRRtX, dJA
    dDX = data_product(data, dX)  # Y'dX, N x Q
    dTA = dT @ data.A
    J, TA = m.J, theta @ data.A
    dJ = dDX.T - dXtX @ TA - m.XtX @ dTA
    # rss = ||R||^2, dR = -dX TA - X dTA; dX'R = (Y'dX)' - dX'X TA and X'R = J (no P x N work)
    drss = -2.0 * (np.sum((dDX.T - S.T @ TA) * TA) + np.sum(J * dTA))
    JdJ = J @ dJ.T
    dWR = JdJ + JdJ.T
    dJA = dJ @ data.A.T
    dRRtX = _rmul(data.Y, dJ.T) - dX @ theta @ m.JA.T - X @ (dT @ m.JA.T + theta @ dJA.T)
    return dXtX, dXtYA, dC1, dWR, drss, dRRtX, dJA


def hessian_product(data: Data, X, theta, sigma2, tau2, dX, dT, ds2=0.0, dt2=0.0, DX=None, YJ=None):
    """Observed Hessian of the nll at ``(X, Theta, sigma2, tau2)`` times ``(dX, dT, d_sigma2,
    d_tau2)``: :func:`directional_hessian` at :func:`point` (``DX``: :func:`data_product` of
    ``X``, ``YJ``: :func:`residual_product`, when already known). Returns ``(HX, HT, H_sigma2,
    H_tau2)``."""
    return directional_hessian(data, point(data, X, theta, sigma2, tau2, DX, YJ), dX, dT, ds2, dt2)


def directional_hessian(data: Data, p: Point, dX, dT, ds2=0.0, dt2=0.0):
    """The observed Hessian at the point ``p`` times ``(dX, dT, d_sigma2, d_tau2)``: the
    derivative of :func:`gradient` along the direction, in closed form (forward mode, every
    term of the gradient differentiated by the product rule; exact to rounding). Returns
    ``(HX, HT, H_sigma2, H_tau2)``.

    The point's terms are computed once (:class:`Hessian` keeps them for all its products). A
    product multiplies the data once in gram form (``G dX``) and twice in dense and sparse form
    (dense: ``Y'dX`` and ``Y dJ'``; sparse: ``Y'dX`` and ``Y`` times that), plus ``O(P Q^2 +
    Q^3)`` work (dense form ``O(N Q^2)``) of real arithmetic.
    """
    X, theta, m = p.X, p.theta, p.m
    s2, t2 = float(p.sigma2), float(p.tau2)
    dX = np.asarray(dX, dtype=float)
    dT = np.asarray(dT, dtype=float)
    ds2, dt2 = float(ds2), float(dt2)
    N, Q = data.N, X.shape[1]
    n = N * data.P
    lam = s2 / t2
    dlam = ds2 / t2 - s2 * dt2 / t2**2
    dXtX, dXtYA, dC1, dWR, drss, dRRtX, dJA = _moments_derivative(data, p, dX, dT)
    Minv = p.Minv
    dMinv = -Minv @ (dXtX + dlam * np.eye(Q)) @ Minv
    dMJ = dMinv @ m.JA + Minv @ dJA
    MW = Minv @ m.WR
    dMWM = dMinv @ MW.T + Minv @ dWR @ Minv + MW @ dMinv
    dH = dC1 + dMWM + dMJ @ theta.T + p.MJ @ dT.T
    dE = dX @ p.H + X @ dH - data.YA @ dT.T - dRRtX @ Minv - m.RRtX @ dMinv
    HX = N * (dX @ Minv + X @ dMinv) + dE / s2 - p.E * (ds2 / s2**2)
    HT = (dXtX @ (theta @ data.AA + p.MJ) + m.XtX @ (dT @ data.AA + dMJ) - dXtYA) / s2 - p.gTn * (ds2 / s2**2)
    dq = drss - np.sum(dMinv * m.WR) - np.sum(Minv * dWR)
    dL_lam = 0.5 * (N * np.trace(dMinv) + N * Q * dlam / lam**2 + np.trace(dMWM) / s2
                    - np.trace(p.MWM) * ds2 / s2**2)
    dL_s2 = 0.5 * (-n * ds2 / s2**2 - dq / s2**2 + 2.0 * p.q * ds2 / s2**3)
    Hs = dL_s2 + dL_lam / t2 - p.L_lam * dt2 / t2**2
    Ht = -(dL_lam * lam + p.L_lam * dlam) / t2 + p.L_lam * lam * dt2 / t2**2
    return HX, HT, float(Hs), float(Ht)


# ----------------------------------------------------------------------------- the step
class FisherModel:
    """The quadratic model ``m(d) = g'd + d'F d / 2`` of the nll at a state, with ``F`` the
    expected information, in the flat coordinates ``(vec_row X, vec_row Theta, variances)``.

    ``F`` is never formed for large complete-data problems: products come from
    :func:`nmfre.core.newton.fisher_product` (``O(P Q^2)``) and solves on a face (a set of
    free coordinates, under the unit-column-sum constraints of X) from
    :class:`nmfre.core.newton.StructuredKKT` (factorised once per face). Small problems and
    several blocks (missing values) use the dense information.
    """

    def __init__(self, prob, st, parts, names: list[str], gX, gT, gV, dense: bool):
        from . import newton

        self._newton = newton
        self.prob, self.st, self.parts, self.names = prob, st, parts, names
        self.P, self.Q, self.K, self.nV = prob.P, prob.rank, prob.K, len(names)
        self.nX = self.P * self.Q
        self.nT = self.Q * self.K
        self.g = np.concatenate([gX.ravel(), gT.ravel(), np.asarray(gV, dtype=float)])
        self._vterms = [newton._variance_terms(p, st.sigma2, st.lam, names) for p in parts] if names else None
        self.F = newton.dense_information(prob, st, parts, names, self._vterms)[0] if dense else None
        self._face = None

    def split(self, v: np.ndarray):
        """``(X part (P x Q), Theta part (Q x K), variance part)`` of a flat vector."""
        return (v[: self.nX].reshape(self.P, self.Q), v[self.nX:self.nX + self.nT].reshape(self.Q, self.K),
                v[self.nX + self.nT:])

    def product(self, v: np.ndarray) -> np.ndarray:
        """``F v``."""
        if self.F is not None:
            return self.F @ v
        oX, oT, oV = self._newton.fisher_product(self.prob, self.st, self.parts, self.names, *self.split(v),
                                                 vterms=self._vterms)
        return np.concatenate([oX.ravel(), oT.ravel(), oV])

    def value(self, d: np.ndarray) -> float:
        """``m(d)``."""
        return float(self.g @ d + 0.5 * d @ self.product(d))

    def factor(self, free: np.ndarray):
        """A solver of the face's KKT system: ``solve(r)`` returns the step ``delta`` (zero off
        ``free``, column sums of its X part zero) minimising ``r'delta + delta'F delta / 2``.
        Raises ``numpy.linalg.LinAlgError`` when singular."""
        key = free.tobytes()
        if self._face is not None and self._face[0] == key:
            return self._face[1]
        if self.F is not None:
            solver = _DenseFace(self.F, free, self.P, self.Q, len(self.names))
        else:
            K = self._newton.StructuredKKT(self.prob, self.st, self.parts[0], self.names, free)
            solver = _Solver(lambda r: K.solve(*self.split(r)))
        self._face = (key, solver)  # the last face (the Fisher step's, reused by the Newton step)
        return solver


class _Solver:
    def __init__(self, fn):
        self.solve = fn


class _DenseFace:
    """LU factors of the dense KKT matrix of a face (:func:`nmfre.core.newton.kkt_matrix`)."""

    def __init__(self, F: np.ndarray, free: np.ndarray, P: int, Q: int, nV: int):
        from scipy.linalg import lu_factor

        from .newton import kkt_matrix

        kkt, idx, E = kkt_matrix(F, free, P, Q, nV)
        nf = idx.size
        # a column of X with no free entry leaves an empty constraint row: pin its multiplier
        empty = ~np.any(E, axis=1)
        kkt[nf + np.flatnonzero(empty), nf + np.flatnonzero(empty)] = 1.0
        self.lu = lu_factor(kkt, check_finite=False)
        if not np.all(np.isfinite(self.lu[0])) or np.any(np.diag(self.lu[0]) == 0):
            raise np.linalg.LinAlgError("singular KKT matrix")
        self.idx, self.n, self.Q = idx, F.shape[0], Q

    def solve(self, r: np.ndarray) -> np.ndarray:
        from scipy.linalg import lu_solve

        sol = lu_solve(self.lu, np.concatenate([-r[self.idx], np.zeros(self.Q)]), check_finite=False)
        out = np.zeros(self.n)
        out[self.idx] = sol[: self.idx.size]
        return out


@dataclass(frozen=True)
class QPStep:
    """Solution of the bound-constrained model problem: the displacement ``d`` (flat),
    ``decrement = -m(d)`` (the nll decrease the model predicts) and the face it lies on
    (``free``: coordinates not at a bound)."""

    d: np.ndarray
    decrement: float
    free: np.ndarray


def _project(model: FisherModel, x: np.ndarray, nonneg: bool) -> np.ndarray:
    """Euclidean projection of a flat point onto the feasible set (simplex columns of X,
    Theta >= 0 when ``nonneg``; variances free)."""
    from .basis import project_simplex

    X, T, V = model.split(x)
    T = np.maximum(T, 0.0) if nonneg else T
    return np.concatenate([project_simplex(X).ravel(), T.ravel(), V])


#: entries of X (on the simplex, so at most 1) at or below this after a projected-path point of
#: :func:`bound_qp` that were held at 0 before it are held still, and at the start of the QP
#: every entry of X at or below it is held (set to 0): one unit in the last place of 1
ROUNDING_HELD = float(np.finfo(float).eps)


def bound_qp(model: FisherModel, x: np.ndarray, nonneg: bool, max_inner: int = 12) -> QPStep:
    """Minimise the model over the feasible set (simplex columns of X, Theta >= 0 when
    ``nonneg``): ``min m(d)`` subject to ``x + d`` feasible.

    Active-set iterations in the manner of Moré & Toraldo's GPCG, with an exact solve on
    each face instead of CG: on the face of the current point (coordinates at a bound held
    there) the equality-constrained minimiser is computed exactly
    (:meth:`FisherModel.factor`); when it is infeasible, the lowest model among the longest
    feasible part of the segment towards it (at least one bound) and the points of the projected
    path ``P(x + d + t delta)`` at ``t`` = 1, 1/2, 1/4, ... down to that segment's length (many
    bounds at once) gives a new face; when it is feasible, the
    bound multipliers are checked and the coordinates whose multiplier has the wrong sign
    are released. Every iterate is feasible and decreases the model; at most ``max_inner``
    face solves. Entries of X held at 0 stay held where a projection leaves them within
    :data:`ROUNDING_HELD` above it, and the entries of X within it of 0 at the start are held
    from the start (the step moves them to 0).

    Why the path's intermediate points: with only the segment and the full projection, the
    segment won nearly every time on the large rung's fits (2000 x 20000, Q = 10, many entries
    of X near 0), so each face solve (a factorisation) added one bound and the solve stopped at
    ``max_inner`` far from the QP's minimum; the path's points (a model product each) add many
    bounds at once (benchmarks/results/scale.md, forty-second round). Why the entries within
    rounding are held: on the small rung's uncentred fits each projected point released the
    10-50 entries held before it at 1e-18 (the projection's rounded threshold), and two face
    solves went on holding them again each time (benchmarks/results/scale.md, forty-third
    round).
    """
    n = x.size
    lower = np.zeros(n, bool)
    lower[: model.nX] = True
    if nonneg:
        lower[model.nX:model.nX + model.nT] = True
    free, d = _held(model, lower, np.zeros(n, bool), x, np.zeros(n))
    mval = model.value(d) if d.any() else 0.0
    scale = float(np.max(np.abs(model.g), initial=0.0)) or 1.0
    solves = 0
    while solves < max_inner:
        delta = _face_step(model, free, d)
        solves += 1
        if delta is None:
            break
        z = x + d + delta
        bad = lower & free & (z < 0)
        if not bad.any():
            d = d + delta
            d[lower & ~free] = -x[lower & ~free]
            mval = model.value(d)
            r = model.g + model.product(d)
            rX = r[: model.nX].reshape(model.P, model.Q)
            fX = free[: model.nX].reshape(model.P, model.Q)
            cnt = fX.sum(axis=0)
            mu = -np.where(cnt > 0, np.sum(np.where(fX, rX, 0.0), axis=0) / np.maximum(cnt, 1), 0.0)
            nu = r.copy()
            nu[: model.nX] = (rX + mu[None, :]).ravel()
            release = lower & ~free & (nu < -1e-12 * scale)
            if not release.any():
                break
            free |= release
            continue
        # a new face: the longest feasible part of the segment towards the face minimiser (at
        # least one bound) or a point of the projected path towards it (many bounds at once),
        # whichever has the lowest model
        ratios = np.full(n, np.inf)
        ratios[bad] = (x + d)[bad] / -delta[bad]
        frac = float(np.min(ratios))
        if frac <= 1e-12:  # blocked at once by coordinates at (or within rounding of) their bound
            hold = ratios <= 1e-12
            free &= ~hold
            d[hold] = -x[hold]
            continue
        cands = [d + frac * delta]
        cands[0][bad & (x + cands[0] < 0)] = -x[bad & (x + cands[0] < 0)]
        t = 1.0
        while t > frac:  # the projected path's points at t = 1, 1/2, 1/4, ... beyond the segment
            cands.append(_project(model, x + d + t * delta, nonneg) - x)
            t *= 0.5
        vals = [model.value(c) for c in cands]
        j = int(np.argmin(vals))
        if not vals[j] < mval:
            break
        mval = vals[j]
        free, d = _held(model, lower, free, x, cands[j])
    return QPStep(d, -mval, free)


def _face_step(model: FisherModel, free: np.ndarray, d: np.ndarray) -> np.ndarray | None:
    """The step from ``d`` to the model's minimiser on the face ``free`` (None when singular
    or not finite)."""
    try:
        delta = model.factor(free).solve(model.g + model.product(d))
    except np.linalg.LinAlgError:
        return None
    return delta if np.all(np.isfinite(delta)) else None


def _held(model: FisherModel, lower: np.ndarray, free: np.ndarray, x: np.ndarray, d: np.ndarray):
    """The face of the point ``x + d`` (``free``: the face it was reached from, all False at the
    start) and ``d`` with its held coordinates exactly at their bounds."""
    at = x + d <= 0
    # entries of X held at 0 (or, at the start, any entry) that the simplex projection left within
    # rounding above it (its threshold is a rounded mean: 1e-18 on the small rung) are held:
    # released, each would cost a face solve only to be held again (benchmarks/results/scale.md,
    # forty-third round)
    at[: model.nX] |= ~free[: model.nX] & ((x + d)[: model.nX] <= ROUNDING_HELD)
    held = lower & at
    d = d.copy()
    d[held] = -x[held]
    return ~held, d


class Hessian:
    """Products with the observed Hessian in the flat coordinates of a :class:`FisherModel`
    (the model's variance coordinates; the data multiplied once per product in gram form,
    twice otherwise: once each by ``Y'`` and ``Y`` in sparse form). The gradient's terms at
    the point (:class:`Point`) are computed once, from ``DX``, ``YJ`` (:func:`data_product` and
    :func:`residual_product` at ``(X, theta)``) when already known (:func:`nmfre.core.ml.hessian`
    takes them from the cached moments of the state)."""

    def __init__(self, data: Data, model: FisherModel, X, theta, sigma2, tau2, DX=None, YJ=None):
        self.data, self.model = data, model
        DX = data_product(data, X) if DX is None else DX
        YJ = residual_product(data, X, theta, DX) if YJ is None and data.form == "dense" else YJ
        self.at = point(data, X, theta, sigma2, tau2, DX, YJ)
        self.count = 0

    def __call__(self, v: np.ndarray) -> np.ndarray:
        names = self.model.names
        vX, vT, vV = self.model.split(v)
        ds2 = vV[names.index("sigma2")] if "sigma2" in names else 0.0
        dt2 = vV[names.index("tau2")] if "tau2" in names else 0.0
        hX, hT, hs, ht = directional_hessian(self.data, self.at, vX, vT, ds2, dt2)
        self.count += 1
        return np.concatenate([hX.ravel(), hT.ravel(), [hs if nm == "sigma2" else ht for nm in names]])


def _to_boundary(model: FisherModel, s: np.ndarray, p: np.ndarray, radius: float) -> float:
    """``tau >= 0`` with ``||s + tau p||_F = radius`` (``||s||_F <= radius``)."""
    Fp = model.product(p)
    a = float(p @ Fp)
    b = 2.0 * float(s @ Fp)
    c = float(s @ model.product(s)) - radius**2
    if a <= 0:
        return 0.0
    return max((-b + np.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a), 0.0)


def face_cg(hess: Hessian, model: FisherModel, free: np.ndarray, d0: np.ndarray, hd0: np.ndarray,
            radius: float = np.inf, rtol: float = 1e-3, max_iter: int = 25):
    """Truncated Newton on a face in a trust region (Steihaug-Toint CG).

    Preconditioned CG on ``g'd + d'H d / 2`` (``H`` the observed Hessian) over the
    ``free`` coordinates under the unit-column-sum constraints, preconditioned by the
    face's expected information (an exact KKT solve, so every iterate keeps the constraints;
    Gould, Hribar & Nocedal 2001), started at ``d0`` (``hd0 = H d0``), the displacement
    ``s = d - d0`` kept within ``||s||_F <= radius`` (the information norm, which makes the
    region the preconditioner's). On negative curvature, or when an iterate would leave the
    region, the step goes to the boundary. Stops when the preconditioned residual ``r'z`` has
    fallen by ``rtol**2`` (``rtol`` in its norm) or at ``max_iter``; a rise of ``r'z`` on the
    way is normal for PCG and does not stop it.

    Returns ``(d, H d, on_boundary, capped)`` or None when no step was taken; ``capped``: CG
    stopped at ``max_iter`` (not at ``rtol``, the boundary or negative curvature).
    """
    try:
        solver = model.factor(free)
    except np.linalg.LinAlgError:
        return None
    d, hd = d0.copy(), hd0.copy()
    s = np.zeros_like(d)
    r = (model.g + hd) * free
    z = -solver.solve(r)
    rz0 = rz = float(r @ z)
    if not rz > 0:
        return None
    p = -z
    moved = False
    for _ in range(max_iter):
        hp = hess(p)
        kap = float(p @ hp)
        a = rz / kap if kap > 0 else np.inf
        if np.isfinite(radius):
            sn = s + a * p if np.isfinite(a) else None
            if sn is None or float(sn @ model.product(sn)) > radius**2:
                tau = _to_boundary(model, s, p, radius)
                if tau > 0:
                    d, hd, s = d + tau * p, hd + tau * hp, s + tau * p
                    moved = True
                return (d, hd, True, False) if moved else None
        elif not kap > 0:
            break
        d, hd, s = d + a * p, hd + a * hp, s + a * p
        moved = True
        r = r + a * hp * free
        z = -solver.solve(r)
        rzn = float(r @ z)
        # no stop when r'z rises: PCG decreases the error's energy norm, not r'z, which can rise
        # for a while. Stopping at a rise (as this loop once did) cut CG to one product at every
        # iteration of fits crawling along a flat valley, which then took hundreds of iterations
        # and stopped above the optimum by more than the tolerance (scale.md, 2026-12-03)
        if rzn <= rtol**2 * rz0:
            break
        p = -z + (rzn / rz) * p
        rz = rzn
    else:
        return (d, hd, False, True) if moved else None
    return (d, hd, False, False) if moved else None


def newton_step(hess: Hessian, model: FisherModel, x: np.ndarray, nonneg: bool, qp: QPStep,
                radius: float = np.inf, rounds: int = 3):
    """The bound-constrained truncated Newton step with the observed Hessian.

    Starts at the Fisher step ``qp`` (:func:`bound_qp`) and its face (and where that gives no
    step and the Hessian model does not fall at ``qp.d``, again from the model's minimiser along
    it: :data:`SCALED_START`); on the face, CG on the Hessian model (:func:`face_cg`); when the
    result leaves the feasible set, a projected search along the segment towards it gives a new
    face: the longest feasible part of the
    segment (at least one bound), then the projections of the points at ``PROJECTED_SEARCH``
    times that length, times it again, ... while the Hessian model keeps falling (many bounds
    at once, as in Lin & More's TRON), and the projection of the CG point itself, whichever
    has the lower model; CG continues on that face (at most ``rounds`` faces), all within the
    trust region ``radius`` around the start. Returns ``(d, predicted decrease,
    on_boundary)`` with ``x + d`` feasible, or None (``on_boundary``: the last CG run ended
    on the region's boundary).

    The search matters on negative curvature, where CG goes to the region's boundary, far
    outside the feasible set: the segment towards that point can stop at once at a small entry
    (1e-9 to 1e-6 of a column summing to 1) while the projection of its end lands where the
    model is high, and the lower of those two alone gained almost nothing
    (benchmarks/results/scale.md, twentieth round). It stops at the first trial that does not
    lower the model, so a segment stopped by an entry at rounding level (1e-18), whose first
    trials change the model by less than its rounding, is not searched.
    """
    n = x.size
    lower = np.zeros(n, bool)
    lower[: model.nX] = True
    if nonneg:
        lower[model.nX:model.nX + model.nT] = True
    d = qp.d.copy()
    hd = hess(d)
    mval = float(model.g @ d + 0.5 * d @ hd)
    res = _newton_rounds(hess, model, x, nonneg, lower, d, hd, qp.free.copy(), False, radius, rounds)
    if res is None and SCALED_START and not mval < 0:
        slope, curv = float(model.g @ d), float(d @ hd)
        if slope < 0:  # then curv >= -2 slope > 0 (the model does not fall at d), so 0 < t <= 1/2
            t = -slope / curv  # the model's minimiser along the Fisher step: a step already
            d, hd = t * d, t * hd
            res = _newton_rounds(hess, model, x, nonneg, lower, d, hd, ~(lower & (x + d <= 0)), True, radius, rounds)
    return res


def _newton_rounds(hess: Hessian, model: FisherModel, x: np.ndarray, nonneg: bool, lower: np.ndarray,
                   d: np.ndarray, hd: np.ndarray, free: np.ndarray, moved: bool, radius: float, rounds: int):
    """:func:`newton_step`'s CG runs and projected searches from the start ``d`` (``hd = H d``,
    ``free`` its face, ``moved``: ``d`` is already a step)."""
    mval = float(model.g @ d + 0.5 * d @ hd)
    boundary = False
    for _ in range(rounds):
        res = face_cg(hess, model, free, d, hd, radius)
        if res is None:
            break
        dN, hdN, boundary, _ = res
        radius = np.sqrt(max(radius**2 - float((dN - d) @ model.product(dN - d)), 0.0))
        z = x + dN
        if not np.any(lower & (z < 0)):
            d, hd, moved = dN, hdN, True
            mval = float(model.g @ d + 0.5 * d @ hd)
            break
        # a new face by a projected search along the segment towards the CG point
        step = dN - d
        neg = lower & (z < 0)
        frac = float(np.min((x + d)[neg] / -step[neg]))
        d1, hd1 = d + frac * step, hd + frac * (hdN - hd)
        d1[neg & (x + d1 < 0)] = -x[neg & (x + d1 < 0)]
        best = (float(model.g @ d1 + 0.5 * d1 @ hd1), d1, hd1)
        t = frac * PROJECTED_SEARCH
        while 0.0 < t < 1.0:
            dt = _project(model, x + d + t * step, nonneg) - x
            hdt = hess(dt)
            mt = float(model.g @ dt + 0.5 * dt @ hdt)
            if not mt < best[0]:
                break
            best = (mt, dt, hdt)
            t *= PROJECTED_SEARCH
        d2 = _project(model, z, nonneg) - x
        hd2 = hess(d2)
        m2 = float(model.g @ d2 + 0.5 * d2 @ hd2)
        if m2 < best[0]:
            best = (m2, d2, hd2)
        if best[0] >= mval:
            break
        mval, d, hd = best
        moved = True
        free = ~(lower & (x + d <= 0))
    if not moved or not mval < 0:
        return None
    return d, -mval, boundary
