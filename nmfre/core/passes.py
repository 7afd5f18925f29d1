"""Passes over the units of Y, for every kind of Y: a dense numpy array, a ``scipy.sparse``
matrix or a dask array (in memory, on disk, or on a ``dask.distributed`` cluster).

The ML solver needs one pass (the compressed statistics, :func:`stats_of`); the random
effects and the inference need one more (:func:`blup`, :func:`conditional_pieces`). Dense
data are processed in chunks of units with exact residuals; sparse data through sparse
products (the dense residual is never formed); dask data chunk by chunk through dask
(reductions for the statistics, ``map_blocks`` for per-unit results, which stay lazy).
dask is imported only when a dask array is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import stats as cstats

#: units per chunk when a pass over dense data forms residuals (bounds the temporaries)
CHUNK = 8192


def kind(Y: Any) -> str:
    """``"dask"``, ``"sparse"`` or ``"dense"``."""
    if hasattr(Y, "dask") and hasattr(Y, "chunks"):
        return "dask"
    if hasattr(Y, "tocsr"):
        return "sparse"
    return "dense"


def _chunks(N: int, chunk: int = CHUNK):
    for a in range(0, N, chunk):
        yield slice(a, min(a + chunk, N))


# ----------------------------------------------------------------------------- checks
def describe(Y: Any) -> dict:
    """One pass: ``min``, ``max``, ``rms`` (overflow-free), ``unit_spread`` (largest
    range of a feature across units) and ``n_negative``."""
    k = kind(Y)
    if k == "dask":
        import dask

        lo, hi, rlo, rhi, neg, absmax = dask.compute(Y.min(), Y.max(), Y.min(axis=1), Y.max(axis=1), (Y < 0).sum(),
                                                     abs(Y).max())
        m = float(absmax)
        e = int(np.frexp(m)[1]) if m > 0 else 0
        ss = float(dask.compute(((Y * 2.0**-e) ** 2).sum())[0]) if m > 0 else 0.0
    else:
        if k == "sparse":
            data = Y.data
            full = Y.nnz == Y.shape[0] * Y.shape[1]
            lo = data.min() if full else min(data.min(initial=0.0), 0.0)
            hi = data.max() if full else max(data.max(initial=0.0), 0.0)
            rlo = Y.min(axis=1).toarray().ravel()
            rhi = Y.max(axis=1).toarray().ravel()
            neg = int((data < 0).sum())
        else:
            lo, hi = Y.min(), Y.max()
            rlo, rhi = Y.min(axis=1), Y.max(axis=1)
            neg = int(np.count_nonzero(Y < 0)) if lo < 0 else 0
        m = float(max(abs(lo), abs(hi)))
        e = int(np.frexp(m)[1]) if m > 0 else 0
        if m == 0:
            ss = 0.0
        elif k == "sparse":
            ss = float(np.sum(np.ldexp(Y.data, -e) ** 2))
        else:
            ss = sum(float(np.sum(np.ldexp(Y[:, sl], -e) ** 2)) for sl in _chunks(Y.shape[1]))
    n = Y.shape[0] * Y.shape[1]
    rms = float(np.sqrt(ss / n)) * 2.0**e if m > 0 else 0.0
    spread = float(np.max(np.asarray(rhi) - np.asarray(rlo)))
    spread = float(np.max(np.asarray(rhi) - np.asarray(rlo)))
    return {"min": float(lo), "max": float(hi), "rms": rms, "unit_spread": spread, "n_negative": int(neg)}


# ----------------------------------------------------------------------------- statistics
def stats_of(Y: Any, A: np.ndarray, form: str = "auto") -> cstats.Stats:
    """The :class:`~nmfre.core.stats.Stats` of complete data (one pass for dask)."""
    if kind(Y) != "dask":
        return cstats.from_arrays(Y, A, form)
    import dask
    import dask.array as da

    Ad = da.from_array(A, chunks=(A.shape[0], Y.chunks[1]))
    G, YA, trG = dask.compute(Y @ Y.T, Y @ Ad.T, (Y * Y).sum())
    return cstats.from_gram(np.asarray(G), np.asarray(YA), A @ A.T, float(trG), A)


def xty(Y: Any, X: np.ndarray) -> np.ndarray:
    """``X'Y`` (``Q x N``) without densifying a sparse Y."""
    k = kind(Y)
    if k == "sparse":
        return np.asarray(Y.T @ X).T
    if k == "dask":
        return np.asarray((Y.T @ X).compute()).T
    return X.T @ Y


def nndsvd(Y: Any, rank: int) -> np.ndarray:
    """NNDSVD start (:func:`nmfre.core.basis.nndsvd`) for a dask Y in two passes: the
    gram of ``max(Y, 0)`` gives the left singular vectors, ``max(Y, 0)' U`` the right ones."""
    import dask.array as da

    from .basis import nndsvd_from_svd

    Yp = da.maximum(Y, 0.0)
    w, V = np.linalg.eigh(np.asarray((Yp @ Yp.T).compute()))
    order = np.argsort(-w)[:rank]
    s = np.sqrt(np.maximum(w[order], 1e-300))
    Uu = V[:, order]
    Vt = (np.asarray((Yp.T @ Uu).compute()) / s).T
    return nndsvd_from_svd(Uu, Vt, rank)


# ----------------------------------------------------------------------------- random effects
def _blup_dense(Yc: np.ndarray, Ac: np.ndarray, X, theta, Minv) -> np.ndarray:
    return Minv @ (X.T @ (Yc - X @ (theta @ Ac)))


def blup(Y: Any, A: np.ndarray, X: np.ndarray, theta: np.ndarray, lam: float):
    """BLUP ``M^-1 X'(Y - X Theta A)`` of U (``Q x N``), ``M = X'X + lambda I``.

    A numpy array for dense and sparse Y; a lazy dask array (chunked like Y's units) for
    a dask Y.
    """
    Q = X.shape[1]
    M = X.T @ X + lam * np.eye(Q)
    k = kind(Y)
    if k == "sparse":
        return np.linalg.solve(M, xty(Y, X) - (X.T @ X) @ (theta @ A))
    Minv = np.linalg.inv(M)
    if k == "dask":
        import dask.array as da

        Ad = da.from_array(A, chunks=(A.shape[0], Y.chunks[1]))
        return da.map_blocks(_blup_dense, Y, Ad, X, theta, Minv, chunks=((Q,), Y.chunks[1]), dtype=float)
    if Y.shape[1] <= CHUNK:  # the exact formula of the small case
        return np.linalg.solve(M, X.T @ (Y - X @ (theta @ A)))
    U = np.empty((Q, Y.shape[1]))
    for s in _chunks(Y.shape[1]):
        U[:, s] = _blup_dense(Y[:, s], A[:, s], X, theta, Minv)
    return U


# ----------------------------------------------------------------------------- inference
def _pieces_dense(Yc, Ac, X, theta, U):
    Rc = Yc - X @ U - X @ (theta @ Ac)
    return float(np.sum(Rc**2)), X.T @ Rc


def _pieces_dask_block(Yc, Ac, X, theta, Minv):
    Uc = _blup_dense(Yc, Ac, X, theta, Minv)
    rss, XtR = _pieces_dense(Yc, Ac, X, theta, Uc)
    out = np.empty((XtR.shape[0] + 1, Yc.shape[1]))
    out[:-1] = XtR
    out[-1] = 0.0
    out[-1, 0] = rss  # the chunk's RSS rides in the last row
    return out


def conditional_pieces(Y: Any, A: np.ndarray, X: np.ndarray, theta: np.ndarray, U, lam: float):
    """``(RSS, X'R)`` of the conditional residual ``R = Y - X (U + Theta A)``.

    ``RSS = ||R||^2`` (a float) and ``X'R`` (``Q x N``, numpy) are all the sandwich and
    the bootstrap need of the data. Dense: exact residuals, chunk by chunk. Sparse:
    ``||R||^2 = ||Y||^2 - 2 tr(B Y'X) + tr(B B' X'X)`` with ``B = U + Theta A``. Dask: one
    pass that recomputes U per chunk (``U`` may be lazy).
    """
    k = kind(Y)
    B = None if k == "dask" else U + theta @ A
    if k == "sparse":
        XtY = xty(Y, X)
        XtX = X.T @ X
        trG = float(Y.multiply(Y).sum())
        rss = trG - 2.0 * float(np.sum(B * XtY)) + float(np.sum((B @ B.T) * XtX))
        return max(rss, 0.0), XtY - XtX @ B
    if k == "dask":
        import dask.array as da

        Q = X.shape[1]
        Minv = np.linalg.inv(X.T @ X + lam * np.eye(Q))
        Ad = da.from_array(A, chunks=(A.shape[0], Y.chunks[1]))
        out = da.map_blocks(_pieces_dask_block, Y, Ad, X, theta, Minv, chunks=((Q + 1,), Y.chunks[1]),
                            dtype=float).compute()
        return float(out[-1].sum()), np.asarray(out[:-1])
    rss, parts = 0.0, []
    for s in _chunks(Y.shape[1]):
        r, xr = _pieces_dense(Y[:, s], A[:, s], X, theta, U[:, s])
        rss += r
        parts.append(xr)
    return rss, np.concatenate(parts, axis=1)


def fitted_sums(Y: Any, A: np.ndarray, X: np.ndarray, theta: np.ndarray, U) -> dict:
    """Sums for R-squared: ``||Y||^2``, ``sum Y``, ``||Y - X Theta A||^2``, ``||Y - X(Theta A + U)||^2``."""
    k = kind(Y)
    XtX = X.T @ X
    if k == "dense" and Y.shape[1] <= CHUNK:
        F = X @ (theta @ A)
        return {"ss": float(np.vdot(Y, Y)), "sum": float(Y.sum()), "rss_fixed": float(np.sum((Y - F) ** 2)),
                "rss_random": float(np.sum((Y - F - X @ U) ** 2))}
    if k == "dask":
        import dask

        ss, total, XtY = dask.compute((Y * Y).sum(), Y.sum(), (Y.T @ X).T)
        XtY = np.asarray(XtY)
        U = np.asarray(U.compute()) if hasattr(U, "compute") else U
        ss, total = float(ss), float(total)
    elif k == "sparse":
        ss, total, XtY = float(Y.multiply(Y).sum()), float(Y.sum()), xty(Y, X)
    else:
        ss, total, XtY = float(np.vdot(Y, Y)), float(Y.sum()), X.T @ Y

    def rss(B):
        return max(ss - 2.0 * float(np.sum(B * XtY)) + float(np.sum((B @ B.T) * XtX)), 0.0)

    TA = theta @ A
    return {"ss": ss, "sum": total, "rss_fixed": rss(TA), "rss_random": rss(TA + U)}
