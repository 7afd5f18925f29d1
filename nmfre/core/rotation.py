"""The likelihood's rotation invariance, and whether the bounds pin an estimate along it (plain numpy).

For every orthogonal ``R`` (Q x Q) with ``R 1 = 1``, ``X -> X R``, ``Theta -> R' Theta`` keeps the
mean ``X Theta A``, the random effects' covariance ``tau2 X X'`` and X's column sums, so the
likelihood (and the df cap, which sees ``X'X`` through its eigenvalues) does not change. These
``R`` form a group of dimension ``(Q - 1)(Q - 2) / 2``. Only the bounds (``X >= 0``, and
``Theta >= 0`` where constrained) can pin an estimate along it; where they do not, the estimate
is not unique (benchmarks/results/scale.md, forty-eighth round).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import expm
from scipy.optimize import linprog

#: an entry of X at or below this fraction of its column's largest (of non-negative Theta: of
#: Theta's largest) counts as held at its bound by the linearised check: the fit can leave
#: entries that belong at 0 slightly above it (the epsilon-active set of :mod:`nmfre.core.ml`)
HELD = 1e-6
#: a rotation counts only if it moves some entry of X by at least this fraction of X's largest
#: entry: far above what the slack of the held entries (:data:`HELD`) allows
ROTATION_MIN = 1e-4
#: the largest rotation angle tried along a direction (its generator has unit Frobenius norm)
ANGLE_MAX = np.pi / 4
#: at most this many directions are followed with exact rotations (the most promising first)
DIRECTIONS_MAX = 8


def helmert(P: int) -> np.ndarray:
    """The P x (P-1) orthonormal Helmert basis of ``{v : sum(v) = 0}`` (column ``j``: ``j`` ones,
    then ``-j``, scaled to unit norm)."""
    V = np.zeros((P, P - 1))
    for j in range(1, P):
        V[:j, j - 1] = 1.0
        V[j, j - 1] = -float(j)
        V[:, j - 1] /= np.sqrt(j * (j + 1.0))
    return V


def generators(Q: int) -> np.ndarray:
    """An orthonormal (Frobenius) basis of the antisymmetric ``Q x Q`` matrices ``A`` with ``A 1 = 0``.

    The tangent space at the identity of the orthogonal ``R`` with ``R 1 = 1``. Shape
    ``((Q - 1)(Q - 2) / 2, Q, Q)``, empty below Q = 3. Deterministic: built on the Helmert
    basis of the complement of ``1`` (:func:`helmert`).
    """
    if Q < 3:
        return np.zeros((0, Q, Q))
    H = helmert(Q)
    out = [(np.outer(H[:, i], H[:, j]) - np.outer(H[:, j], H[:, i])) / np.sqrt(2.0)
           for i in range(Q - 1) for j in range(i + 1, Q - 1)]
    return np.array(out)


@dataclass(frozen=True)
class FreeRotation:
    """A rotation along which an estimate can move without leaving its bounds or changing its
    likelihood: ``R`` (orthogonal, ``R 1 = 1``), and the largest changes of X and Theta."""

    R: np.ndarray
    dX: float
    dtheta: float


def _feasible(X: np.ndarray, theta: np.ndarray, nonneg: bool, R: np.ndarray, tol: tuple[float, float]) -> bool:
    """``X R >= -tol[0]`` and, for non-negative Theta, ``R' Theta >= -tol[1]`` (rounding: see
    :func:`_extent`)."""
    if (X @ R).min() < -tol[0]:
        return False
    return not nonneg or (R.T @ theta).min() >= -tol[1]


def _directions(M: np.ndarray, m: int) -> list[np.ndarray]:
    """Non-zero ``s`` with ``M s >= 0`` to try, or none where only 0 has it (Stiemke's lemma:
    ``{s : M s >= 0} = {0}`` iff ``M`` has full column rank and ``M' lam = 0`` for some
    ``lam > 0``). ``M``'s rows have unit norm.

    Without rows, both signs of every generator. Otherwise the maximiser of ``sum(M s)`` over
    ``|s| <= 1`` where that is positive (it moves held entries off their bound, which
    second-order terms cannot undo), then both signs of each direction of ``M``'s null space
    (held entries stay at their bound to first order only).
    """
    if M.shape[0] == 0:
        return [sign * e for e in np.eye(m) for sign in (1.0, -1.0)]
    # Vt is m x m either way (full matrices only where M has fewer rows than columns: U stays small)
    _, sv, Vt = np.linalg.svd(M, full_matrices=M.shape[0] < m)
    rank = int(np.sum(sv > sv[0] * 1e-10)) if sv[0] > 0 else 0
    n = M.shape[0]
    if rank == m:
        pos = linprog(np.zeros(n), A_eq=M.T, b_eq=np.zeros(m), bounds=[(1.0, None)] * n, method="highs")
        if pos.status == 0:  # M' lam = 0 with lam >= 1: the bounds pin it
            return []
    out = []
    res = linprog(-M.sum(axis=0), A_ub=-M, b_ub=np.zeros(n), bounds=[(-1.0, 1.0)] * m, method="highs")
    if res.status == 0 and -res.fun > 1e-9:
        out.append(res.x)
    for v in Vt[rank:]:
        out += [v, -v]
    return out


def free_rotation(X: np.ndarray, theta: np.ndarray, nonneg: bool) -> FreeRotation | None:
    """A rotation of the components that keeps the bounds and moves X, or None.

    The linearised bounds at the estimate: ``(X A) >= 0`` at the entries of X held at 0 and
    ``-(A Theta) >= 0`` at those of non-negative Theta (:data:`HELD`), for ``A`` in the span
    of :func:`generators`. The directions they allow (:func:`_directions`) are ranked by the
    move of X their first-order extent gives, and along the first :data:`DIRECTIONS_MAX` the
    largest angle up to :data:`ANGLE_MAX` whose exact rotation ``expm(t A)`` keeps every bound
    is found (:func:`_extent`). Returns the rotation that moves X most, where that move is at
    least :data:`ROTATION_MIN` of X's largest entry; None where the bounds pin the estimate to
    first order, where no direction tried moves X that much, or for non-finite input. A None
    does not prove that the estimate is unique.
    """
    Q = X.shape[1]
    G = generators(Q)
    m = len(G)
    if m == 0 or not (np.all(np.isfinite(X)) and np.all(np.isfinite(theta))) or X.max() <= 0:
        return None
    held_x = X <= HELD * X.max(axis=0)
    t_max = float(np.abs(theta).max()) if theta.size else 0.0
    held_t = (theta <= HELD * t_max) if nonneg else np.zeros(theta.shape, bool)
    M = np.column_stack([np.concatenate([(X @ g)[held_x], -(g @ theta)[held_t]]) for g in G])
    norms = np.linalg.norm(M, axis=1)
    M = M[norms > 0] / norms[norms > 0, None]  # unit rows: the cone and Stiemke's condition are unchanged
    candidates = []
    for s in _directions(M, m):
        A = np.tensordot(s / np.linalg.norm(s), G, axes=1)
        candidates.append((_first_order_move(X, A, held_x), A))
    candidates.sort(key=lambda c: -c[0])
    best = None
    tol = (1e-14 * float(X.max()), 1e-14 * max(t_max, 1e-300))  # rounding, relative to the largest entries
    for _, A in candidates[:DIRECTIONS_MAX]:
        R = expm(_extent(X, theta, nonneg, A, tol) * A)
        dX = float(np.max(np.abs(X @ R - X)))
        if dX >= ROTATION_MIN * X.max() and (best is None or dX > best.dX):
            best = FreeRotation(R, dX, float(np.max(np.abs(R.T @ theta - theta))))
    return best


def _first_order_move(X: np.ndarray, A: np.ndarray, held: np.ndarray) -> float:
    """The move of X that the linear path ``X (I + t A)`` allows before a free entry reaches 0."""
    D = X @ A
    down = (D < 0) & ~held
    t = min(float(np.min(X[down] / -D[down])), ANGLE_MAX) if down.any() else ANGLE_MAX
    return t * float(np.abs(D).max())


def _extent(X: np.ndarray, theta: np.ndarray, nonneg: bool, A: np.ndarray, tol: tuple[float, float]) -> float:
    """The largest angle up to :data:`ANGLE_MAX` along ``A`` whose rotation keeps the bounds to
    within ``tol`` (for X, for Theta; :func:`_feasible`), by bisection from 0: the angle
    returned always keeps them."""
    if _feasible(X, theta, nonneg, expm(ANGLE_MAX * A), tol):
        return ANGLE_MAX
    lo, hi = 0.0, ANGLE_MAX
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _feasible(X, theta, nonneg, expm(mid * A), tol) else (lo, mid)
    return lo
