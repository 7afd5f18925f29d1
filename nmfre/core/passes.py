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

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..validation import array_kind
from . import stats as cstats

#: entries per chunk when a pass over dense data forms temporaries (4e6 doubles = 32 MB)
CHUNK_ENTRIES = 4_000_000


def kind(Y: Any) -> str:
    """``"dask"``, ``"sparse"``, ``"masked"`` (dense with NaN = missing) or ``"dense"``
    (:func:`nmfre.validation.array_kind`, dense split by missingness)."""
    held = array_kind(Y)
    if held != "dense":
        return held
    if np.isnan(np.sum(Y)):  # one pass, no temporary (Inf was refused at input)
        return "masked"
    return "dense"


def groups(Y: np.ndarray):
    """``(rows or None, units)`` of each pattern of observed features of a masked Y."""
    pats, inverse = cstats.patterns(~np.isnan(Y))
    for k, pat in enumerate(pats):
        yield (None if pat.all() else np.flatnonzero(pat)), np.flatnonzero(inverse == k)


def _rows(X, rows):
    return X if rows is None else X[rows]


def _cell(Y, rows, units):
    return Y[:, units] if rows is None else Y[np.ix_(rows, units)]


def _chunk_groups(Yc: np.ndarray):
    """``(rows or None, units)`` of each pattern of observed features in one chunk of units
    (:func:`groups`; one group of every unit where nothing is missing)."""
    return groups(Yc) if np.isnan(Yc).any() else [(None, np.arange(Yc.shape[1]))]


def _pattern_mask(P: int, rows) -> np.ndarray:
    """The pattern's observed features as a boolean mask of length ``P`` (``rows`` None: all);
    its bytes key a pattern across chunks."""
    mask = np.ones(P, bool)
    if rows is not None:
        mask[:] = False
        mask[rows] = True
    return mask


def _unit_offsets(Y) -> np.ndarray:
    """The first unit of each chunk of units of a dask Y, and N at the end."""
    return np.concatenate([[0], np.cumsum(Y.chunks[1])])


def _dask_chunks(Y, A: np.ndarray, fn, *args) -> list:
    """``fn(chunk, A's columns of the chunk, *args)`` for each chunk of units of a dask Y, one
    task each, computed together."""
    import dask

    offsets = _unit_offsets(Y)
    tasks = [dask.delayed(fn)(blk, A[:, a:b], *args)
             for blk, a, b in zip(Y.to_delayed().ravel(), offsets[:-1], offsets[1:], strict=True)]
    return list(dask.compute(*tasks))


def _chunks(Y) -> list[slice]:
    """Slices of units whose temporaries hold at most :data:`CHUNK_ENTRIES` entries."""
    P, N = Y.shape
    step = max(1, CHUNK_ENTRIES // max(P, 1))
    return [slice(a, min(a + step, N)) for a in range(0, N, step)]


#: entries per block of rows in :func:`describe`'s pass over dense data (2 MB: its four
#: reductions read each block from cache; 2000 x 20000: 0.04 s, where whole-array nan-reductions
#: and scaled chunks took 0.27-0.37 s)
DESCRIBE_ENTRIES = 262_144


def small(Y) -> bool:
    """Whether one temporary of Y's size fits within :data:`CHUNK_ENTRIES`."""
    return Y.shape[0] * Y.shape[1] <= CHUNK_ENTRIES


# ----------------------------------------------------------------------------- checks
def describe(Y: Any) -> dict:
    """One pass: ``min``, ``max``, ``rms`` (overflow-free), ``unit_spread`` (largest
    range of a feature across units), ``n_negative`` and ``n_missing`` (NaN), over the
    observed entries."""
    k = kind(Y)
    if k == "dask":
        import dask
        import dask.array as da

        lo, hi, rlo, rhi, neg, nan, ss = dask.compute(da.nanmin(Y), da.nanmax(Y), da.nanmin(Y, axis=1),
                                                      da.nanmax(Y, axis=1), (Y < 0).sum(), da.isnan(Y).sum(),
                                                      da.nansum(Y * Y))
        m = float(max(abs(lo), abs(hi)))
        e = 0
        ss = float(ss)
        if m > 0 and not (1e-290 < ss < 1e290):  # over- or underflow: a second, scaled pass
            e = int(np.frexp(m)[1])
            ss = float(da.nansum((Y * 2.0**-e) ** 2).compute())
    elif k == "sparse":
        data = Y.data
        full = Y.nnz == Y.shape[0] * Y.shape[1]
        lo = data.min() if full else min(data.min(initial=0.0), 0.0)
        hi = data.max() if full else max(data.max(initial=0.0), 0.0)
        rlo, rhi = Y.min(axis=1).toarray().ravel(), Y.max(axis=1).toarray().ravel()
        neg, nan = int((data < 0).sum()), 0
        m = float(max(abs(lo), abs(hi)))
        e = int(np.frexp(m)[1]) if m > 0 else 0
        ss = float(np.sum(np.ldexp(data, -e) ** 2)) if m > 0 else 0.0
    elif k == "dense":  # one pass over blocks of rows small enough to stay in cache
        rlo, rhi, ss, neg, nan = np.empty(Y.shape[0]), np.empty(Y.shape[0]), 0.0, 0, 0
        step = max(1, DESCRIBE_ENTRIES // max(Y.shape[1], 1))
        for a in range(0, Y.shape[0], step):
            b = np.asarray(Y[a:a + step], dtype=float)  # (integer data: no overflow in the squares)
            rlo[a:a + step], rhi[a:a + step] = b.min(axis=1), b.max(axis=1)
            ss += float(np.einsum("ij,ij->", b, b))
            if rlo[a:a + step].min() < 0:
                neg += int(np.count_nonzero(b < 0))
        lo, hi = rlo.min(), rhi.max()
        m = float(max(abs(lo), abs(hi)))
        e = 0
        if m > 0 and not (1e-290 < ss < 1e290):  # over- or underflow: a second, scaled pass
            e = int(np.frexp(m)[1])
            ss = sum(float(np.sum(np.ldexp(Y[:, sl], -e) ** 2)) for sl in _chunks(Y))
    else:
        lo, hi = np.nanmin(Y), np.nanmax(Y)
        rlo, rhi = np.nanmin(Y, axis=1), np.nanmax(Y, axis=1)
        neg = int(np.count_nonzero(Y < 0)) if lo < 0 else 0
        nan = int(np.count_nonzero(np.isnan(Y)))
        m = float(max(abs(lo), abs(hi)))
        e = int(np.frexp(m)[1]) if m > 0 else 0
        ss = sum(float(np.nansum(np.ldexp(Y[:, sl], -e) ** 2)) for sl in _chunks(Y)) if m > 0 else 0.0
    n = Y.shape[0] * Y.shape[1] - int(nan)
    rms = float(np.sqrt(ss / n)) * 2.0**e if m > 0 else 0.0
    spread = float(np.max(np.asarray(rhi) - np.asarray(rlo)))
    return {"min": float(lo), "max": float(hi), "rms": rms, "unit_spread": spread, "n_negative": int(neg),
            "n_missing": int(nan)}


# ----------------------------------------------------------------------------- statistics
def stats_of(Y: Any, A: np.ndarray, form: str = "auto", missing: bool | None = None) -> cstats.Stats:
    """The :class:`~nmfre.core.stats.Stats` of Y (one pass for dask).

    ``missing`` says whether a dask Y has NaN (computed when None); masked data get one
    block per pattern of observed features.
    """
    k = kind(Y)
    if k == "masked":
        return cstats.from_masked(Y, A, form)
    if k != "dask":
        return cstats.from_arrays(Y, A, form)
    import dask
    import dask.array as da

    if missing is None:
        missing = bool(da.isnan(Y).any().compute())
    if missing:
        return _masked_dask_stats(Y, A)
    Ad = da.from_array(A, chunks=(A.shape[0], Y.chunks[1]))
    G, YA, trG = dask.compute(Y @ Y.T, Y @ Ad.T, (Y * Y).sum())
    return cstats.from_gram(np.asarray(G), np.asarray(YA), A @ A.T, float(trG), A)


def _chunk_pattern_stats(Yc: np.ndarray, Ac: np.ndarray) -> dict:
    """Per-pattern gram statistics of one chunk of units (keys: the pattern's bytes; units
    numbered within the chunk)."""
    out = {}
    for rows, units in _chunk_groups(Yc):
        Yo = _cell(Yc, rows, units)
        Ao = Ac[:, units]
        mask = _pattern_mask(Yc.shape[0], rows)
        out[mask.tobytes()] = [mask, Yo @ Yo.T, Yo @ Ao.T, Ao @ Ao.T, float(np.vdot(Yo, Yo)), units]
    return out


def _masked_dask_stats(Y, A: np.ndarray) -> cstats.Stats:
    """Per-pattern statistics of a dask Y with NaN: one pass, one task per chunk of units."""
    offsets = _unit_offsets(Y)
    merged: dict = {}
    for part, offset in zip(_dask_chunks(Y, A, _chunk_pattern_stats), offsets[:-1], strict=True):
        for key, (mask, G, YA, AA, trG, units) in part.items():
            units = units + offset
            if key in merged:
                m = merged[key]
                m[1], m[2], m[3], m[4], m[5] = m[1] + G, m[2] + YA, m[3] + AA, m[4] + trG, np.concatenate([m[5], units])
            else:
                merged[key] = [mask, G, YA, AA, trG, units]
    blocks = []
    for mask, G, YA, AA, trG, units in sorted(merged.values(), key=lambda v: v[5].min()):
        rows = None if mask.all() else np.flatnonzero(mask)
        blocks.append(cstats.Block(rows, np.sort(units), int(units.size), AA, YA, trG, "gram", A[:, np.sort(units)],
                                   G=G))
    return cstats.Stats(Y.shape[0], Y.shape[1], A.shape[0], blocks)


def xty(Y: Any, X: np.ndarray) -> np.ndarray:
    """``X'Y`` (``Q x N``) without densifying a sparse Y."""
    k = kind(Y)
    if k == "sparse":
        return np.asarray(Y.T @ X).T
    if k == "dask":
        return np.asarray((Y.T @ X).compute()).T
    return X.T @ Y


def residual_moments(Y: Any, A: np.ndarray, X: np.ndarray, theta: np.ndarray,
                     stats: cstats.Stats) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Each block of ``stats``: ``(d, t, perp)`` of the explicit residuals ``R = Y - X Theta A``
    over its observed entries, in one pass over the units in chunks (no ``P x N`` temporary; a
    sparse Y is densified a chunk at a time, a dask Y one task per chunk).

    With ``X_O = U diag(sqrt(d)) V'`` (thin SVD): ``t_q = ||u_q'R||^2`` and ``perp = ||R - U
    U'R||^2``, so ``||R||^2 = perp + sum t`` and ``v_q'X_O'R R'X_O v_q = d_q t_q``
    (:class:`~nmfre.core.likelihood.Sufficient`'s non-cancelling form). The compressed
    statistics lose the digits that their terms cancel (:func:`nmfre.core.ml.rounding_size`);
    these are exact to the rounding of ``R`` and of its projection. ``Y``, ``A`` and ``stats``
    are the ones the fit iterated on.
    """
    k = kind(Y)
    masks, bases, ds = [], {}, []
    for b in stats.blocks:
        U, sv, _ = np.linalg.svd(b.take(X), full_matrices=False)
        masks.append(_pattern_mask(Y.shape[0], b.rows).tobytes())
        bases[masks[-1]] = U
        # (a block observing fewer features than the rank: X_O'X_O's other eigenvalues are 0,
        # with t = 0 there, as the compressed form's s = 0)
        ds.append(np.concatenate([sv * sv, np.zeros(X.shape[1] - sv.size)]))
    parts: list[dict]
    if k == "dask":
        parts = _dask_chunks(Y, A, _chunk_residual_moments, X, theta, bases)
    else:
        cols = Y.tocsc() if k == "sparse" else Y
        parts = []
        for sl in _chunks(Y):
            Yc = cols[:, sl].toarray() if k == "sparse" else np.asarray(cols[:, sl], dtype=float)
            parts.append(_chunk_residual_moments(Yc, A[:, sl], X, theta, bases))
    out = []
    for key, d in zip(masks, ds, strict=True):
        t, perp = np.zeros(d.size), 0.0
        for part in parts:
            if key in part:
                t[:part[key][0].size] += part[key][0]
                perp += part[key][1]
        out.append((d, t, perp))
    return out


def _chunk_residual_moments(Yc: np.ndarray, Ac: np.ndarray, X: np.ndarray, theta: np.ndarray,
                            bases: dict) -> dict:
    """Per pattern of observed features of one chunk of units (keys: the pattern mask's bytes,
    ``bases[key]`` the observed rows' left singular vectors ``U``): ``[t, perp]``."""
    out = {}
    for rows, units in _chunk_groups(Yc):
        key = _pattern_mask(Yc.shape[0], rows).tobytes()
        U = bases[key]
        Yo = _cell(Yc, rows, units)
        UY = U.T @ Yo
        # X Theta A lies in the span of U: R's part outside it is Y's (one product fewer)
        Z = UY - (U.T @ _rows(X, rows)) @ (theta @ Ac[:, units])
        E = Yo - U @ UY
        out[key] = [np.einsum("qn,qn->q", Z, Z), float(np.vdot(E, E))]
    return out


#: ``P`` from which :func:`leading_eigenpairs` uses Lanczos (ARPACK) instead of LAPACK
LANCZOS_FROM = 1000


def leading_eigenpairs(G: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``rank`` largest eigenvalues of the symmetric ``G`` and their eigenvectors.

    From ``P =`` :data:`LANCZOS_FROM` on (and ``rank <= P / 10``), implicitly restarted
    Lanczos (``scipy.sparse.linalg.eigsh``, tolerance 1e-10, a fixed start vector drawn from
    its own generator, so the result is deterministic and the global state untouched): a few
    dozen products with G, where LAPACK's tridiagonal reduction costs ``4 P^3 / 3`` flops (at
    2000 x 2000, 0.01-0.14 s against 0.37-0.61 s; the vectors agreed to 1.2e-15 on ten grams
    of seven generators: benchmarks/results/scale.md, twenty-eighth round). Its restarts are
    capped at about LAPACK's cost, so the worst case costs twice LAPACK's (where the last
    wanted eigenvalue lies in the noise, as the eleventh of data of rank 10, it needs more of
    them: 0.14 s against 0.02 s). Should ARPACK fail (no convergence within them, or a
    breakdown, as for ``G = 0``), and below that
    size, LAPACK's syevr with only the leading ``rank`` pairs (``O(P rank)`` memory beyond G's
    copy, where all P eigenvectors and syevd's workspace would need about 3 more ``P x P``
    arrays).
    """
    from scipy.linalg import eigh

    P = G.shape[0]
    if P >= LANCZOS_FROM and 10 * rank <= P:
        from scipy.sparse.linalg import ArpackError, eigsh

        v0 = np.random.default_rng(0).standard_normal(P)
        # at most about LAPACK's cost: a restart keeps `rank` of its ~2 rank + 1 vectors, so it
        # costs ~rank + 1 products with G (2 P^2 flops each), against 4 P^3 / 3 for LAPACK
        restarts = max(20, (2 * P) // (3 * (rank + 1)))
        try:
            return eigsh(G, k=rank, which="LA", v0=v0, tol=1e-10, maxiter=restarts)
        except ArpackError:  # no convergence within the restarts, or a breakdown (G v0 = 0)
            pass
    return eigh(G, subset_by_index=[max(P - rank, 0), P - 1], driver="evr")


def nndsvd(Y: Any, rank: int, G: np.ndarray | None = None, missing: bool = False) -> np.ndarray:
    """NNDSVD start (:func:`nmfre.core.basis.nndsvd`) from the gram of ``Yp = max(Y, 0)``:
    its eigenvectors are the left singular vectors, ``Yp' U / s`` the right ones (one more
    pass, ``N x rank``). ``G`` is ``Yp Yp'`` when already known (Y >= 0 and complete:
    the solver's gram); for dask Y with ``missing`` entries they start at the feature means."""
    from .basis import nndsvd_from_svd
    from .blas import scipy_blas_single_threaded

    k = kind(Y)
    Yp = Y
    if k == "dask":
        import dask.array as da

        Yp = da.maximum(Y, 0.0)
        if missing:
            Yp = da.where(da.isnan(Yp), da.nanmean(Yp, axis=1, keepdims=True), Yp)
        G = np.asarray((Yp @ Yp.T).compute()) if G is None else G
    elif G is None:
        raise ValueError("nndsvd from the gram needs G for an in-memory Y")
    with scipy_blas_single_threaded():  # (see nmfre.core.blas: no spinning pool left for the fit)
        w, V = leading_eigenpairs(G, rank)
    order = np.argsort(-w)[:rank]
    s = np.sqrt(np.maximum(w[order], 1e-300))
    Uu = V[:, order]
    if k == "dask":
        YtU = np.asarray((Yp.T @ Uu).compute())
    elif k == "sparse":
        YtU = np.asarray(Yp.T @ Uu)
    else:
        YtU = np.concatenate([Yp[:, sl].T @ Uu for sl in _chunks(Yp)])
    return nndsvd_from_svd(Uu, (YtU / s).T, rank)


# ----------------------------------------------------------------------------- random effects
def blup(Y: Any, A: np.ndarray, X: np.ndarray, theta: np.ndarray, lam: float):
    """BLUP ``M^-1 X'(Y - X Theta A)`` of U (``Q x N``), ``M = X'X + lambda I``.

    A numpy array for dense and sparse Y; a lazy dask array (chunked like Y's units) for
    a dask Y.
    """
    Q = X.shape[1]
    XtX = X.T @ X
    M = XtX + lam * np.eye(Q)
    k = kind(Y)
    if k == "masked":  # each unit from its observed features
        U = np.empty((Q, Y.shape[1]))
        for rows, units in groups(Y):
            Xo = _rows(X, rows)
            U[:, units] = np.linalg.solve(Xo.T @ Xo + lam * np.eye(Q),
                                          Xo.T @ (_cell(Y, rows, units) - Xo @ (theta @ A[:, units])))
        return U
    if k == "dask":
        import dask.array as da

        Ad = da.from_array(A, chunks=(A.shape[0], Y.chunks[1]))
        return da.map_blocks(blup, Y, Ad, X, theta, lam, chunks=((Q,), Y.chunks[1]), dtype=float)
    if k == "dense" and small(Y):  # the exact formula of the small case
        return np.linalg.solve(M, X.T @ (Y - X @ (theta @ A)))
    # sparse or large dense Y: one product with Y and no P x N temporary (dense 2000 x 20000:
    # 0.03 s, where residuals in chunks of units took 0.18-0.32 s; the same U to 4e-15 relative)
    return np.linalg.solve(M, xty(Y, X) - XtX @ (theta @ A))


# ----------------------------------------------------------------------------- inference
def _pieces_dense(Yc, Ac, X, theta, U):
    Rc = Yc - X @ U - X @ (theta @ Ac)
    return float(np.sum(Rc**2)), X.T @ Rc


@dataclass(frozen=True)
class Pieces:
    """What the conditional inference needs of the data (one pass).

    Attributes
    ----------
    rss : float
        ``sum_n ||r_n||^2`` over observed entries, ``r_n = y_n - X (u_n + Theta a_n)``.
    XtR : ndarray (Q, N)
        ``X_O' r_n`` per unit (its observed rows ``O``).
    core : ndarray (QK, QK)
        ``sum_n a_n a_n' (x) (X_O'X_O - X_O'X_O M_O^-1 X_O'X_O)``, the information times sigma2.
    df_u : float
        ``sum_n tr(M_O^-1 X_O'X_O)``, the random effects' degrees of freedom.
    n_obs : int
        Observed entries.
    patterns : tuple of (rows or None, units)
        Each unit's observed features (``rows`` None: all), for CR2.
    """

    rss: float
    XtR: np.ndarray
    core: np.ndarray
    df_u: float
    n_obs: int
    patterns: tuple = ()


def _core(AA, X, lam):
    XtX = X.T @ X
    Minv = np.linalg.inv(XtX + max(lam, 1e-12) * np.eye(X.shape[1]))
    return np.kron(AA, XtX - XtX @ Minv @ XtX), float(np.trace(Minv @ XtX))


def conditional_pieces(Y: Any, A: np.ndarray, X: np.ndarray, theta: np.ndarray, U, lam: float) -> Pieces:
    """:class:`Pieces` of the conditional residual ``R = Y - X (U + Theta A)``.

    Dense: exact residuals, chunk by chunk. Masked (missing entries): per pattern of
    observed features. Sparse: ``||R||^2 = ||Y||^2 - 2 tr(B Y'X) + tr(B B' X'X)`` with
    ``B = U + Theta A``. Dask: one pass that recomputes U per chunk (``U`` may be lazy).
    """
    k = kind(Y)
    P, N = Y.shape
    if k == "dask":
        return _dask_pieces(Y, A, X, theta, lam)
    if k == "masked":
        rss, XtR, core, df, n_obs = 0.0, np.empty((X.shape[1], N)), 0.0, 0.0, 0
        pats = tuple(groups(Y))
        for rows, units in pats:
            Xo = _rows(X, rows)
            r, XtR[:, units] = _pieces_dense(_cell(Y, rows, units), A[:, units], Xo, theta, U[:, units])
            c, d = _core(A[:, units] @ A[:, units].T, Xo, lam)
            rss, core, df, n_obs = rss + r, core + c, df + units.size * d, n_obs + units.size * Xo.shape[0]
        return Pieces(rss, XtR, core, df, n_obs, pats)
    core, d = _core(A @ A.T, X, lam)
    if k == "sparse":
        B = U + theta @ A
        XtY = xty(Y, X)
        XtX = X.T @ X
        trG = float(Y.multiply(Y).sum())
        rss = trG - 2.0 * float(np.sum(B * XtY)) + float(np.sum((B @ B.T) * XtX))
        return Pieces(max(rss, 0.0), XtY - XtX @ B, core, N * d, P * N, ((None, np.arange(N)),))
    if k == "dask":
        return _dask_pieces(Y, A, X, theta, lam)
    rss, parts = 0.0, []
    for sl in _chunks(Y):
        r, xr = _pieces_dense(Y[:, sl], A[:, sl], X, theta, U[:, sl])
        rss += r
        parts.append(xr)
    return Pieces(rss, np.concatenate(parts, axis=1), core, N * d, P * N, ((None, np.arange(N)),))


def _chunk_pieces(Yc, Ac, X, theta, lam, offset) -> Pieces:
    pc = conditional_pieces(Yc, Ac, X, theta, blup(Yc, Ac, X, theta, lam), lam)
    return Pieces(pc.rss, pc.XtR, pc.core, pc.df_u, pc.n_obs, tuple((r, u + offset) for r, u in pc.patterns))


def _dask_pieces(Y, A, X, theta, lam) -> Pieces:
    """:class:`Pieces` of a dask Y: one task per chunk of units (U recomputed there)."""
    import dask

    offsets = _unit_offsets(Y)
    tasks = [dask.delayed(_chunk_pieces)(blk, A[:, a:b], X, theta, lam, a)
             for blk, a, b in zip(Y.to_delayed().ravel(), offsets[:-1], offsets[1:], strict=True)]
    parts = dask.compute(*tasks)
    return Pieces(sum(p.rss for p in parts), np.concatenate([p.XtR for p in parts], axis=1),
                  sum(p.core for p in parts), sum(p.df_u for p in parts), sum(p.n_obs for p in parts),
                  tuple(g for p in parts for g in p.patterns))


def df_u(Y: Any, X: np.ndarray, lam: float) -> float:
    """``sum_n tr((X_O'X_O + lambda I)^-1 X_O'X_O)``: per-unit df of U summed (``N sum_q
    d_q / (d_q + lambda)`` for complete data, ``d`` the eigenvalues of ``X'X``)."""
    from .dfcap import df_u as df_of

    k = kind(Y)
    if k == "dask":
        import dask

        return float(sum(dask.compute(*[dask.delayed(df_u)(blk, X, lam) for blk in Y.to_delayed().ravel()])))
    if k != "masked":
        return float(df_of(np.maximum(np.linalg.eigvalsh(X.T @ X), 0.0), Y.shape[1], lam))
    return float(sum(df_of(np.maximum(np.linalg.eigvalsh(_rows(X, r).T @ _rows(X, r)), 0.0), u.size, lam)
                     for r, u in groups(Y)))


def fitted_sums(Y: Any, A: np.ndarray, X: np.ndarray, theta: np.ndarray, U) -> dict:
    """Sums for R-squared: ``||Y||^2``, ``sum Y``, ``||Y - X Theta A||^2``, ``||Y - X(Theta A + U)||^2``."""
    k = kind(Y)
    XtX = X.T @ X
    if k == "masked" or (k == "dense" and small(Y)):
        F = X @ (theta @ A)
        return {"ss": float(np.nansum(Y * Y)), "sum": float(np.nansum(Y)),
                "rss_fixed": float(np.nansum((Y - F) ** 2)), "rss_random": float(np.nansum((Y - F - X @ U) ** 2)),
                "n_obs": int(np.count_nonzero(~np.isnan(Y)))}
    if k == "dask":  # one task per chunk of units, each as an in-memory Y (missing entries too)
        import dask

        U = np.asarray(U.compute()) if hasattr(U, "compute") else np.asarray(U)
        offsets = _unit_offsets(Y)
        parts = dask.compute(*[dask.delayed(fitted_sums)(blk, A[:, a:b], X, theta, U[:, a:b])
                               for blk, a, b in zip(Y.to_delayed().ravel(), offsets[:-1], offsets[1:], strict=True)])
        return {key: sum(p[key] for p in parts) for key in parts[0]}
    if k == "sparse":
        ss, total, XtY = float(Y.multiply(Y).sum()), float(Y.sum()), xty(Y, X)
    else:
        ss, total, XtY = float(np.vdot(Y, Y)), float(Y.sum()), X.T @ Y

    def rss(B):
        return max(ss - 2.0 * float(np.sum(B * XtY)) + float(np.sum((B @ B.T) * XtX)), 0.0)

    TA = theta @ A
    return {"ss": ss, "sum": total, "rss_fixed": rss(TA), "rss_random": rss(TA + U), "n_obs": Y.shape[0] * Y.shape[1]}
