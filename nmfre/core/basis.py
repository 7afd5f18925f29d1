"""Simplex geometry and starting bases (columns of X are probability vectors)."""

from __future__ import annotations

import numpy as np


def project_simplex(V: np.ndarray) -> np.ndarray:
    """Euclidean projection of each column of ``V`` onto the probability simplex.

    From :data:`MICHELOT_COLUMNS_MIN` rows, column by column with :func:`project_vector`
    (Michelot's threshold: the same projection to rounding, 2-3 times faster at ``P`` = 2000 to
    5000 than sorting the whole array, benchmarks/results/scale.md, twenty-fourth round)."""
    P = V.shape[0]
    if P >= MICHELOT_COLUMNS_MIN:
        out = np.empty(V.shape)
        for q in range(V.shape[1]):
            out[:, q] = project_vector(V[:, q])
        return out
    U = -np.sort(-V, axis=0)
    css = np.cumsum(U, axis=0) - 1.0
    idx = np.arange(1, P + 1)[:, None]
    cond = U - css / idx > 0
    rho = P - 1 - np.argmax(cond[::-1], axis=0)
    theta = css[rho, np.arange(V.shape[1])] / (rho + 1)
    return np.maximum(V - theta, 0.0)


def project_vector(v: np.ndarray) -> np.ndarray:
    """:func:`project_simplex` of one vector: the inner loop of the X sweeps, called thousands
    of times per fit, so the result is written in place.

    Below :data:`MICHELOT_MIN` entries it performs :func:`project_simplex`'s operations (so the
    same result to the last bit; the index vector cached). From there the threshold comes from
    Michelot's algorithm (:func:`_michelot`: a few passes over the entries still above it, no
    sort), the same projection to rounding (the threshold's sum taken in another order) and 3 to
    6 times faster at ``P`` = 2000 to 5000 (benchmarks/results/scale.md, twenty-fourth round).
    """
    P = v.shape[0]
    if P >= MICHELOT_MIN:
        theta = _michelot(v)
        if theta is not None:
            out = v - theta
            np.maximum(out, 0.0, out=out)
            return out
    idx = _RANKS.get(P)
    if idx is None:
        idx = np.arange(1, P + 1)
        idx.flags.writeable = False
        _RANKS[P] = idx
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    css -= 1.0
    cond = u - css / idx > 0
    rho = P - 1 - int(cond[::-1].argmax())
    out = v - css[rho] / (rho + 1)
    np.maximum(out, 0.0, out=out)
    return out


def _michelot(v: np.ndarray) -> float | None:
    """The threshold ``theta`` of the projection of ``v`` onto the simplex (``max(v - theta, 0)``
    sums to 1), by Michelot's algorithm (J. Optim. Theory Appl. 50, 1986; Condat, Math. Program.
    158, 2016): ``theta = (sum of the entries above theta - 1) / their number``, iterated from the
    mean of all entries. The thresholds rise and the set above them shrinks until it no longer
    changes, which happens after finitely many passes, each over the entries left (typically a
    handful). None (the caller sorts instead) after :data:`MICHELOT_MAX_PASSES` passes or on a
    non-finite threshold."""
    u = v
    theta = (u.sum() - 1.0) / u.shape[0]
    if not np.isfinite(theta):  # a non-finite entry (the later thresholds are finite means)
        return None
    for _ in range(MICHELOT_MAX_PASSES):
        u = u[u > theta]
        if u.shape[0] == 0:  # only by rounding: max(v) exceeds every threshold
            return None
        new = (u.sum() - 1.0) / u.shape[0]
        if new <= theta:  # the set is stable (new == theta), or rounding at the threshold
            return float(theta)
        theta = new
    return None


#: the length from which :func:`project_vector` takes Michelot's threshold instead of sorting
#: (at ``P`` = 100 the two cost the same, 8-9 microseconds; at 500 10 against 15, at 2000 16
#: against 53, at 5000 25-32 against 148)
MICHELOT_MIN = 256
#: the rows from which :func:`project_simplex` projects column by column (one sort of the whole
#: array is faster below: 59 against 70 microseconds at 500 x 5, 29 against 62 at 256 x 5; at
#: 2000 x 10 571 against 258, at 5000 x 10 1591 against 478)
MICHELOT_COLUMNS_MIN = 1000
#: passes of :func:`_michelot` before it gives up (a sort then decides)
MICHELOT_MAX_PASSES = 64


#: ``arange(1, P + 1)`` by ``P`` for :func:`project_vector` (read-only once built).
_RANKS: dict[int, np.ndarray] = {}


def normalise_columns(W: np.ndarray) -> np.ndarray:
    """Clip at 0 and scale each column to sum 1 (a zero column becomes uniform)."""
    W = np.maximum(W, 0.0)
    s = W.sum(axis=0)
    bad = s <= 0
    W = W / np.where(bad, 1.0, s)
    W[:, bad] = 1.0 / W.shape[0]
    return W


def nndsvd(Y, rank: int) -> np.ndarray:
    """Basis from the NNDSVD of ``max(Y, 0)`` (Boutsidis & Gallopoulos 2008), columns
    normalised to sum to 1. Deterministic.

    ``Y`` may be a dense array or a scipy.sparse matrix. Small problems use LAPACK's full
    SVD; large ones (``P N > 4e6`` or sparse) the leading ``rank`` singular triplets from
    ARPACK (a fixed start vector), without copying a non-negative Y.
    """
    sparse = hasattr(Y, "tocsr")
    if sparse:
        Yp = Y if Y.nnz == 0 or Y.data.min() >= 0 else Y.maximum(0)
    else:
        Yp = Y if Y.min() >= 0 else np.maximum(Y, 0.0)
    P, N = Y.shape
    if not sparse and P * N <= 4_000_000 or rank >= min(P, N) - 1:
        Uu, _, Vt = np.linalg.svd(np.asarray(Yp.todense()) if sparse else Yp, full_matrices=False)
    else:
        from scipy.sparse.linalg import svds

        Uu, sv, Vt = svds(Yp, k=rank, v0=np.full(min(P, N), 1.0 / np.sqrt(min(P, N))), tol=1e-10)
        order = np.argsort(-sv)
        Uu, Vt = Uu[:, order], Vt[order]
    return nndsvd_from_svd(Uu, Vt, rank)


def nndsvd_from_svd(Uu: np.ndarray, Vt: np.ndarray, rank: int) -> np.ndarray:
    """NNDSVD basis from the leading singular vectors (``Uu``: ``P x >=rank``, ``Vt``:
    ``>=rank x N``) of ``max(Y, 0)``; each pair keeps its larger-norm sign part."""
    W = np.zeros((Uu.shape[0], rank))
    W[:, 0] = np.abs(Uu[:, 0])
    for j in range(1, rank):
        x, y = Uu[:, j], Vt[j, :]
        xp, xn = np.maximum(x, 0), np.maximum(-x, 0)
        yp, yn = np.maximum(y, 0), np.maximum(-y, 0)
        mp = np.linalg.norm(xp) * np.linalg.norm(yp)
        mn = np.linalg.norm(xn) * np.linalg.norm(yn)
        W[:, j] = xp if mp >= mn else xn
    return normalise_columns(W)


def random_basis(P: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """Random simplex columns (uniform on the simplex)."""
    return normalise_columns(rng.exponential(size=(P, rank)))


def weighted_project_simplex(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``argmin_x sum_p w_p (x_p - v_p)^2`` over the probability simplex (``w > 0``).

    The solution is ``x_p = max(v_p - tau / w_p, 0)`` with ``tau`` found exactly from the
    sorted breakpoints ``v_p w_p``; equal weights give :func:`project_simplex`.
    """
    t = v * w
    order = np.argsort(-t)
    inv = 1.0 / w[order]
    csum_v = np.cumsum(v[order])
    csum_i = np.cumsum(inv)
    tau = (csum_v - 1.0) / csum_i
    # the active set is the largest k with tau_k < t_(k)
    k = int(np.flatnonzero(tau < t[order])[-1]) if np.any(tau < t[order]) else 0
    return np.maximum(v - tau[k] / w, 0.0)
