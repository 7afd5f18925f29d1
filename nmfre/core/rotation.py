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

#: entries of X (columns summing to 1), and of non-negative Theta relative to ``max(1, max Theta)``,
#: at or below this count as held at their bound by the linearised check
AT_BOUND = 1e-12
#: a rotation counts only if it moves some entry of X by at least this much
ROTATION_MIN = 1e-6
#: the largest rotation angle tried along a direction (its generator has unit Frobenius norm)
ANGLE_MAX = np.pi / 4


def generators(Q: int) -> np.ndarray:
    """An orthonormal (Frobenius) basis of the antisymmetric ``Q x Q`` matrices ``A`` with ``A 1 = 0``.

    The tangent space at the identity of the orthogonal ``R`` with ``R 1 = 1``. Shape
    ``((Q - 1)(Q - 2) / 2, Q, Q)``, empty below Q = 3. Deterministic: built on the Helmert
    basis of the complement of ``1``.
    """
    if Q < 3:
        return np.zeros((0, Q, Q))
    H = np.zeros((Q, Q - 1))
    for j in range(1, Q):
        H[:j, j - 1] = 1.0
        H[j, j - 1] = -float(j)
        H[:, j - 1] /= np.sqrt(j * (j + 1.0))
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


def _feasible(X: np.ndarray, theta: np.ndarray, nonneg: bool, R: np.ndarray, tol_theta: float) -> bool:
    if (X @ R).min() < -AT_BOUND:
        return False
    return not nonneg or (R.T @ theta).min() >= -tol_theta


def _directions(M: np.ndarray, m: int) -> list[np.ndarray]:
    """Non-zero ``s`` with ``M s >= 0`` to try, or none where only 0 has it (Stiemke's lemma:
    ``{s : M s >= 0} = {0}`` iff ``M`` has full column rank and ``M' lam = 0`` for some
    ``lam > 0``).

    First the one maximising ``sum(M s)`` over ``|s| <= 1`` where that is positive (it moves
    held entries off their bound, which second-order terms cannot undo), then both signs of
    each direction of ``M``'s null space (held entries stay at their bound to first order only).
    """
    if M.shape[0] == 0:
        return [np.eye(m)[0]]
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
    if res.status == 0 and -res.fun > 1e-12 * float(np.abs(M).max()):
        out.append(res.x)
    for v in Vt[rank:]:
        out += [v, -v]
    return out


def free_rotation(X: np.ndarray, theta: np.ndarray, nonneg: bool) -> FreeRotation | None:
    """A rotation of the components that keeps the bounds and moves X, or None.

    The linearised bounds at the estimate: ``(X A) >= 0`` at the entries of X at 0 and
    ``-(A Theta) >= 0`` at those of non-negative Theta (:data:`AT_BOUND`), for ``A`` in the span
    of :func:`generators`. Along each direction they allow (:func:`_directions`), the largest
    angle up to :data:`ANGLE_MAX` whose exact rotation ``expm(t A)`` keeps every bound
    (:func:`_extent`); the first whose rotation moves some entry of X by :data:`ROTATION_MIN`
    is returned. None where the bounds pin the estimate to first order, or where no direction
    tried moves X that much: a None does not prove that the estimate is unique.
    """
    Q = X.shape[1]
    G = generators(Q)
    m = len(G)
    if m == 0:
        return None
    scale = max(1.0, float(np.max(np.abs(theta)))) if theta.size else 1.0
    at_x = X <= AT_BOUND
    at_t = (theta <= AT_BOUND * scale) if nonneg else np.zeros(theta.shape, bool)
    M = np.column_stack([np.concatenate([(X @ g)[at_x], -(g @ theta)[at_t]]) for g in G])
    tol_theta = AT_BOUND * scale
    for s in _directions(M, m):
        A = np.tensordot(s / np.linalg.norm(s), G, axes=1)
        t = _extent(X, theta, nonneg, A, tol_theta)
        R = expm(t * A)
        dX = float(np.max(np.abs(X @ R - X)))
        if dX >= ROTATION_MIN:
            return FreeRotation(R, dX, float(np.max(np.abs(R.T @ theta - theta))))
    return None


def _extent(X: np.ndarray, theta: np.ndarray, nonneg: bool, A: np.ndarray, tol_theta: float) -> float:
    """The largest angle up to :data:`ANGLE_MAX` along ``A`` whose rotation keeps the bounds
    (bisection, from 0)."""
    if _feasible(X, theta, nonneg, expm(ANGLE_MAX * A), tol_theta):
        return ANGLE_MAX
    lo, hi = 0.0, ANGLE_MAX
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _feasible(X, theta, nonneg, expm(mid * A), tol_theta) else (lo, mid)
    return lo
