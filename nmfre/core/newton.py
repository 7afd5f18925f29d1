"""The expected information of NMF-RE and the projected Newton (Fisher-scoring) system.

Coordinates: ``vec_row X`` (``P Q``), ``vec_row Theta`` (``Q K``) and the free variances
(``sigma2``: ``dSigma = I``; ``tau2``: ``dSigma = X X'``). Per block of units observing
rows ``O`` (complete data: one block), with ``S = Sigma_O^-1 = (I - X M^-1 X')/sigma2``,
``Z = S X = (lambda/sigma2) X M^-1``, ``W = X'Z``, ``C1 = Theta AA' Theta'``,
``D = C1 + c W`` and ``c = N tau2^2``:

* ``F_XX = S (x) D + c T``, ``T[pq, rs] = Z[p, s] Z[r, q]`` (so ``F_XX V = S V D + c Z V' Z``);
* ``F_XTheta[pq, jk] = Z[p, j] (Theta AA')[q, k]``; ``F_ThetaTheta = W (x) AA'``;
* ``F_XV = N tau2 vec(S a Z)``, ``F_VV = N/2 tr(S a S b)`` for ``a, b`` in ``{I, XX'}``.

Small problems assemble ``F`` densely (:func:`dense_information`, :func:`dense_kkt`).
Large complete-data problems never form a ``PQ x PQ`` matrix: ``F_XX`` is a block-diagonal
base ``I (x) D / sigma2`` (one ``Q x Q`` block per feature) plus low-rank corrections of
rank ``2 Q^2`` (``-(X M^-1 X') (x) D / sigma2`` and ``c T``), which Woodbury's identity
inverts in ``O(P Q^3 + U Q^4 + Q^6)`` (``U`` the number of distinct patterns of free entries
among the rows); Theta, the variances and the simplex constraints are
eliminated through a small Schur complement (:func:`structured_kkt`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import get_lapack_funcs


@dataclass(frozen=True)
class Parts:
    """Per-block pieces of the information (plain arrays)."""

    rows: np.ndarray | None
    N: int
    Xb: np.ndarray
    Minv: np.ndarray
    Z: np.ndarray
    W: np.ndarray
    D: np.ndarray
    c: float
    TAA: np.ndarray  # Theta AA'
    AA: np.ndarray
    XtX: np.ndarray
    WR: np.ndarray
    rss: float


def block_parts(prob, st, ex) -> list[Parts]:
    """:class:`Parts` of every block at state ``st`` (``ex``: the blocks' E-step quantities)."""
    s2, lam = st.sigma2, st.lam
    tau2 = s2 / lam
    out = []
    for b, m, e in zip(prob.stats.blocks, prob.moments(st.X, st.theta), ex, strict=True):
        Z = (lam / s2) * m.Xb @ e.Minv
        W = m.Xb.T @ Z
        W = 0.5 * (W + W.T)
        c = b.N * tau2**2
        out.append(Parts(b.rows, b.N, m.Xb, e.Minv, Z, W, m.C1 + c * W, c, st.theta @ b.AA, b.AA, m.XtX, m.WR,
                         m.rss))
    return out


def _variance_terms(p: Parts, s2: float, lam: float, names: list[str]):
    """``F_VV`` (nV x nV), ``F_XV`` columns (P_O x Q each) and the variance gradient ``gV``."""
    tau2 = s2 / lam
    Po = p.Xb.shape[0]
    H1 = np.trace(p.Minv @ p.XtX)
    H2 = np.trace(p.Minv @ p.XtX @ p.Minv @ p.XtX)
    trS = (Po - H1) / s2
    trSS = (Po - 2 * H1 + H2) / s2**2
    trW, trWW = np.trace(p.W), np.sum(p.W * p.W)
    trZZ = np.sum(p.Z * p.Z)
    tr = {("sigma2", "sigma2"): trSS, ("sigma2", "tau2"): trZZ, ("tau2", "sigma2"): trZZ, ("tau2", "tau2"): trWW}
    FV = np.array([[0.5 * p.N * tr[a, b] for b in names] for a in names])
    cols = {"sigma2": p.N * tau2 * (lam / s2) * p.Z @ p.Minv, "tau2": p.N * tau2 * p.Z @ p.W}
    quad = {"sigma2": (p.rss - 2 * np.sum(p.Minv * p.WR) + np.trace(p.Minv @ p.XtX @ p.Minv @ p.WR)) / s2**2,
            "tau2": (lam / s2) ** 2 * np.trace(p.Minv @ p.WR @ p.Minv)}
    first = {"sigma2": trS, "tau2": trW}
    gV = np.array([0.5 * (p.N * first[a] - quad[a]) for a in names])
    return FV, [cols[a] for a in names], gV


#: bound on the doubles of the stacked ``B x P x P`` blocks that :func:`dense_information` sums
#: with one matrix product (the blocks are taken in chunks of at most this size)
DENSE_CHUNK = 2_000_000


def dense_information(prob, st, parts: list[Parts], names: list[str], vterms: list | None = None):
    """Dense ``F`` in ``(vec_row X, vec_row Theta, variances)`` and the variance gradient.

    The blocks' contributions to the ``X``/``Theta`` part are summed by matrix products over
    the stacked blocks (each embedded in all ``P`` rows, zero where it does not observe), in
    chunks of :data:`DENSE_CHUNK` doubles: with many distinct patterns of missing values
    (one block per unit) this is ``O(B P^2 Q^2)`` flops in a few BLAS calls instead of ``B``
    Kronecker products and scatters (100 x 300 with 10% missing cells: 2.1 s -> 60-91 ms per
    call). ``vterms``: the blocks' :func:`_variance_terms` when already computed.
    """
    P, Q, K = prob.P, prob.rank, prob.K
    nV = len(names)
    n = P * Q + Q * K
    s2 = st.sigma2
    XX = np.zeros((P, P, Q, Q))  # [p, r, q, s]: sum_b S[p, r] D[q, s]
    TT = np.zeros((P, Q, P, Q))  # [p, s, r, q]: sum_b c Z[p, s] Z[r, q]
    XT = np.zeros((P, Q, Q, K))  # [p, j, q, k]: sum_b Z[p, j] (Theta AA')[q, k]
    WA = np.zeros((Q, Q, K, K))  # [a, b, k, l]: sum_b W[a, b] AA[k, l]
    step = max(1, DENSE_CHUNK // (P * P))
    for lo in range(0, len(parts), step):
        chunk = parts[lo:lo + step]
        B = len(chunk)
        bi, ri = _embedding([p.rows for p in chunk], P)
        Xe = np.zeros((B, P, Q))
        Ze = np.zeros((B, P, Q))
        obs = np.zeros((B, P))
        Xe[bi, ri] = np.concatenate([p.Xb for p in chunk])
        Ze[bi, ri] = np.concatenate([p.Z for p in chunk])
        obs[bi, ri] = 1.0
        Minv = np.stack([p.Minv for p in chunk])
        S = -(Xe @ Minv) @ Xe.transpose(0, 2, 1)
        S[:, np.arange(P), np.arange(P)] += obs
        S /= s2
        D = np.stack([p.D for p in chunk])
        c = np.array([p.c for p in chunk])
        Zf = Ze.reshape(B, P * Q)
        XX += (S.reshape(B, P * P).T @ D.reshape(B, Q * Q)).reshape(P, P, Q, Q)
        TT += ((c[:, None] * Zf).T @ Zf).reshape(P, Q, P, Q)
        XT += (Zf.T @ np.stack([p.TAA for p in chunk]).reshape(B, Q * K)).reshape(P, Q, Q, K)
        WA += (np.stack([p.W for p in chunk]).reshape(B, Q * Q).T
               @ np.stack([p.AA for p in chunk]).reshape(B, K * K)).reshape(Q, Q, K, K)
    F = np.zeros((n + nV, n + nV))
    F[: P * Q, : P * Q] = (XX.transpose(0, 2, 1, 3) + TT.transpose(0, 3, 2, 1)).reshape(P * Q, P * Q)
    FXT = XT.transpose(0, 2, 1, 3).reshape(P * Q, Q * K)
    F[: P * Q, P * Q:n] = FXT
    F[P * Q:n, : P * Q] = FXT.T
    F[P * Q:n, P * Q:n] = WA.transpose(0, 2, 1, 3).reshape(Q * K, Q * K)
    gV = np.zeros(nV)
    if nV:
        terms = [_variance_terms(p, s2, st.lam, names) for p in parts] if vterms is None else vterms
        for FV, _, g in terms:  # in block order, as the rest of the solver sums them
            F[n:, n:] += FV
            gV += g
        _, ri = _embedding([p.rows for p in parts], P)
        for j in range(nV):
            col = np.zeros((P, Q))
            np.add.at(col, ri, np.concatenate([t[1][j] for t in terms]))
            F[: P * Q, n + j] = F[n + j, : P * Q] = col.ravel()
    return F, gV


def _embedding(rows: list, P: int):
    """``(block, row)`` indices of the blocks' observed rows, block after block (``None``: all
    ``P`` rows): where the rows of each block's ``P_O``-row arrays, concatenated, go."""
    rows = [np.arange(P) if r is None else r for r in rows]
    return np.repeat(np.arange(len(rows)), [r.size for r in rows]), np.concatenate(rows)


#: the Newton systems' ridge, relative to each block's own information (:func:`block_ridges`)
RIDGE = 1e-10


def block_ridges(dX: np.ndarray, dT: np.ndarray, dV: np.ndarray) -> tuple[float, float, float]:
    """The ridges of the Newton systems' X, Theta and variance blocks: :data:`RIDGE` times the
    mean absolute diagonal of the information over each block's free coordinates (``dX``,
    ``dT``, ``dV``; 0 for an empty block).

    Each block has its own because the blocks have different units: when Y is measured in
    other units (``k Y``), X's information is unchanged, Theta's scales as ``1 / k^2`` and the
    variances' as ``1 / k^4``, so each ridge scales with its block and a fit of ``k Y`` takes
    the steps of a fit of ``Y`` (its stopping threshold, ``tol (1 + |nll|)``, follows the
    nll's shift by ``n_obs log k``, so it may stop an iteration earlier or later). The ridge is
    per block, not per covariate: Theta's columns carry the units of Y over their covariate's
    (12 x 60 fits with one covariate rescaled by 1e-4 to 1e4 took 8-11 iterations at every
    scale, 8-10 at the original one; benchmarks/results/scale.md, thirty-fifth round). One
    ridge for all (1e-10 times the mean over every
    coordinate, until 2026-12-06) was set by the largest block: it swamped Theta's and the
    variances' information where ``k`` was large and X's where it was small (a 12 x 60 fit: 6
    iterations at ``k = 1``, 153-170 at ``k = 1e3`` to ``1e5``, each stopped short of the
    optimum; with missing cells, ``max_iter`` at ``k = 1e-4``; with this ridge 6 and 5 at every
    ``k``; benchmarks/results/scale.md, thirty-fifth round).
    """
    return tuple(RIDGE * float(np.mean(np.abs(b))) if b.size else 0.0 for b in (dX, dT, dV))


def kkt_matrix(F: np.ndarray, free: np.ndarray, P: int, Q: int, nV: int):
    """``(kkt, idx, E)``: the KKT matrix of the ``free`` coordinates (indices ``idx``) under
    the unit-column-sum constraints of X (rows of ``E``), with each block's ridge
    (:func:`block_ridges`; X's coordinates come first, the ``nV`` variances' last) on the free
    block."""
    idx = np.flatnonzero(free)
    nf = idx.size
    E = np.zeros((Q, nf))
    xi = idx < P * Q
    E[idx[xi] % Q, np.flatnonzero(xi)] = 1.0
    Ff = F[np.ix_(idx, idx)]
    d = np.diag(Ff)
    vi = idx >= F.shape[0] - nV
    ti = ~xi & ~vi
    rX, rT, rV = block_ridges(d[xi], d[ti], d[vi])
    Ff = Ff + np.diag(np.where(xi, rX, np.where(vi, rV, rT)))
    return np.block([[Ff, E.T], [E, np.zeros((Q, Q))]]), idx, E


def dense_kkt(F: np.ndarray, g: np.ndarray, free: np.ndarray, P: int, Q: int, nV: int):
    """Newton step on the ``free`` coordinates under the unit-column-sum constraints of X
    (:func:`kkt_matrix`); None when singular."""
    kkt, idx, _ = kkt_matrix(F, free, P, Q, nV)
    nf = idx.size
    try:
        sol = np.linalg.solve(kkt, np.concatenate([-g[idx], np.zeros(Q)]))
    except np.linalg.LinAlgError:
        return None
    delta = np.zeros(F.shape[0])
    delta[idx] = sol[:nf]
    return delta


def information_diagonal(prob, st, parts: list[Parts]):
    """Diagonal of the information in X (``P x Q``) and Theta (``Q x K``), summed over blocks."""
    FX = np.zeros((prob.P, prob.rank))
    FT = np.zeros((prob.rank, prob.K))
    for p in parts:
        Sdiag = (1.0 - np.einsum("pq,qr,pr->p", p.Xb, p.Minv, p.Xb)) / st.sigma2
        f = Sdiag[:, None] * np.diag(p.D)[None, :] + p.c * p.Z**2
        if p.rows is None:
            FX += f
        else:
            FX[p.rows] += f
        FT += np.outer(np.diag(p.W), np.diag(p.AA))
    return FX, FT


# ----------------------------------------------------------------------------- structured
def _row_patterns(mask: np.ndarray):
    """The distinct rows of a boolean ``mask`` (``pats``, in lexicographic order of their bit
    codes), each row's pattern index, and the rows grouped by pattern (``order``, with group
    ``g`` at ``order[starts[g]:starts[g + 1]]``) for :func:`numpy.add.reduceat`."""
    P, Q = mask.shape
    if Q <= 62:
        codes = mask.astype(np.int64) @ (np.int64(1) << np.arange(Q, dtype=np.int64))
        _, first, pat = np.unique(codes, return_index=True, return_inverse=True)
        pats = mask[first]
    else:
        pats, pat = np.unique(mask, axis=0, return_inverse=True)
    pat = pat.reshape(-1)
    order = np.argsort(pat, kind="stable")
    starts = np.searchsorted(pat[order], np.arange(pats.shape[0]))
    return pats, pat, order, starts


def _lu(M: np.ndarray):
    """LAPACK's LU factorisation of ``M`` (``getrf``, as :func:`scipy.linalg.lu_factor` calls it,
    for :func:`scipy.linalg.lu_solve`); a zero pivot raises ``numpy.linalg.LinAlgError`` (as
    ``numpy.linalg.solve`` does) instead of scipy's warning. LAPACK is called directly: the
    factorisations here are small (``2 Q^2`` and the Schur complement) and made once per face,
    where ``lu_factor``'s wrapper and a warnings filter cost more than the factorisation."""
    getrf = _GETRF.get(M.dtype.char)
    if getrf is None:
        getrf = _GETRF[M.dtype.char] = get_lapack_funcs("getrf", (M,))
    lu, piv, info = getrf(M, overwrite_a=False)
    if info < 0:
        raise ValueError(f"illegal value in argument {-info} of the internal getrf")
    if info > 0:
        raise np.linalg.LinAlgError(f"Diagonal number {info} is exactly zero. Singular matrix.")
    return lu, piv


def _lu_solve(lu_piv, b: np.ndarray) -> np.ndarray:
    """``M^-1 b`` for a real ``b`` (1-D or 2-D) from :func:`_lu`'s factors by LAPACK's ``getrs``,
    the call :func:`scipy.linalg.lu_solve` makes (``check_finite=False``: the same result to the bit)
    without its wrapper's batching and dtype checks, which cost more than the solve at these
    sizes (a solve per conjugate-gradient iteration: benchmarks/results/scale.md,
    forty-third round)."""
    lu, piv = lu_piv
    b = np.asarray(b, dtype=lu.dtype)
    if b.size == 0:
        return b.copy()
    getrs = _GETRS.get(lu.dtype.char)
    if getrs is None:
        getrs = _GETRS[lu.dtype.char] = get_lapack_funcs("getrs", (lu,))
    x, info = getrs(lu, piv, b)
    if info != 0:
        raise ValueError(f"illegal value in argument {-info} of the internal getrs")
    return x


#: LAPACK's ``getrf`` and ``getrs`` by dtype (looked up once)
_GETRF: dict = {}
_GETRS: dict = {}


def _kron(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``numpy.kron`` of two square matrices (the same products, without its general-shape
    bookkeeping, which dominates at ``Q x Q``)."""
    m, n = a.shape[0], b.shape[0]
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(m * n, m * n)


def _perm(Q: int) -> np.ndarray:
    """The ``Q^2 x Q^2`` permutation ``vec(V) -> vec(V')`` (read-only, built once per ``Q``)."""
    Pi = _PERMS.get(Q)
    if Pi is None:
        Pi = np.zeros((Q * Q, Q * Q))
        j, q = np.divmod(np.arange(Q * Q), Q)
        Pi[np.arange(Q * Q), q * Q + j] = 1.0
        Pi.flags.writeable = False
        _PERMS[Q] = Pi
    return Pi


_PERMS: dict[int, np.ndarray] = {}


#: rows per chunk of :meth:`_Woodbury.gram`'s block-diagonal solve: its ``(rows, Q, Q + 2)``
#: products stay under 4 MiB at ``Q <= 14``, the size from which numpy advises the kernel to back
#: an array by huge pages. Where the kernel then compacts memory at the first touch
#: (transparent huge pages ``madvise``, as on the development machine), one unchunked
#: ``(5000, 10, 12)`` product took 0.5-40 ms instead of 0.55 (benchmarks/results/scale.md,
#: thirtieth round)
GRAM_ROWS = 2048

#: the share of rows on masks other than the most common one above which
#: :meth:`_Woodbury._binv` multiplies the stacked blocks of all rows instead of one shared block
BINV_SHARED_REST = 0.25


class _Woodbury:
    """``A = B0 + L K L'`` on the free entries of X, with ``B0`` block diagonal per feature."""

    def __init__(self, p: Parts, s2: float, mask: np.ndarray, ridge: float):
        P, Q = mask.shape
        self.mask, self.X, self.Z = mask, p.Xb, p.Z
        # B0_p = D / sigma2 + ridge I on row p's free entries (identity on its bound ones,
        # removed by the mask): rows differ only by their mask, so each distinct mask is
        # inverted once and the sums over rows in _lbl go through the distinct masks
        pats, pat, self._order, self._starts = _row_patterns(mask)
        m2 = pats[:, :, None] & pats[:, None, :]
        Bu = np.linalg.inv(np.where(m2, p.D / s2 + ridge * np.eye(Q), np.eye(Q))) * m2
        self._Binv_u = 0.5 * (Bu + Bu.transpose(0, 2, 1))  # symmetric to the last bit: LBL is too
        self._setup_binv(pat, P)
        QQ = Q * Q
        self.K = np.zeros((2 * QQ, 2 * QQ))
        self.K[:QQ, :QQ] = -_kron(p.Minv, p.D) / s2
        self.K[QQ:, QQ:] = p.c * _perm(Q)
        Xs, Zs = self.X[self._order], self.Z[self._order]  # rows grouped by mask
        XZ = self._lbl(Xs, Zs)  # the (Z, X) block is its transpose
        self.LBL = LBL = np.empty((2 * QQ, 2 * QQ))
        LBL[:QQ, :QQ], LBL[:QQ, QQ:], LBL[QQ:, :QQ], LBL[QQ:, QQ:] = self._lbl(Xs, Xs), XZ, XZ.T, self._lbl(Zs, Zs)
        # the capacitance matrix, factorised once: every solve of the face (the Schur complement's,
        # each conjugate-gradient preconditioning) reuses it; a zero pivot raises, as
        # numpy.linalg.solve did when it was solved afresh each time
        self._cap_lu = _lu(np.eye(2 * Q * Q) + LBL @ self.K)

    def _lbl(self, Ai, Aj):
        """``sum_p kron(a_ip a_jp', Binv_p)`` reordered to ``[(j, q), (k, r)]``: the outer
        products summed within each distinct mask, then one small GEMM (``Ai``, ``Aj``: rows
        in the grouped order ``_order``)."""
        P, Q = Ai.shape
        outer = (Ai[:, :, None] * Aj[:, None, :]).reshape(P, Q * Q)  # p, (j, k)
        sums = np.add.reduceat(outer, self._starts, axis=0)  # per distinct mask
        out = sums.T @ self._Binv_u.reshape(-1, Q * Q)  # (j, k), (q, r)
        return out.reshape(Q, Q, Q, Q).transpose(0, 2, 1, 3).reshape(Q * Q, Q * Q)

    def _cap_solve(self, T: np.ndarray) -> np.ndarray:
        """``cap^-1 T`` (``cap = I + LBL K``) from the factorisation made once."""
        return _lu_solve(self._cap_lu, T)

    def _setup_binv(self, pat: np.ndarray, P: int):
        """What :meth:`_binv` needs: the most common mask's block and the other rows with theirs
        (``_rest``), or, where more than :data:`BINV_SHARED_REST` of the rows have other masks,
        every row's block (``_stacked``)."""
        sizes = np.diff(np.append(self._starts, P))
        top = int(np.argmax(sizes))
        self._top = self._Binv_u[top]
        rest = np.flatnonzero(pat != top)
        self._stacked = self._Binv_u[pat] if rest.size > BINV_SHARED_REST * P else None
        self._rest = (rest, self._Binv_u[pat[rest]]) if rest.size and self._stacked is None else None

    def _binv(self, V: np.ndarray, lo: int = 0) -> np.ndarray:
        """``B0^-1 V`` for ``V`` of shape ``(P, Q, r)``: row ``p``'s block times ``V[p]``.

        Where most rows share one mask (the usual case: few entries of X at their bound), every
        row is multiplied by that mask's block (one GEMM for ``r = 1``) and the rows of other
        masks are then overwritten with their own blocks' products; otherwise a batched product
        of the stacked blocks. For ``r = 1`` at ``P = 2000``, ``Q = 10`` the first takes 0.07 ms
        where the second takes 0.13-0.2 ms, several times per conjugate-gradient iteration;
        with half the rows on other masks, or for the ``r = 12`` columns of a factorisation,
        it is slower (0.42 against 0.23 ms; benchmarks/results/scale.md, twenty-ninth round).

        ``lo``: ``V`` holds rows ``lo`` to ``lo + len(V)`` only (:meth:`gram`'s row chunks)."""
        hi = lo + V.shape[0]
        if self._stacked is not None:
            return np.matmul(self._stacked[lo:hi], V)
        r = V.shape[2]
        out = (V[:, :, 0] @ self._top)[:, :, None] if r == 1 else np.matmul(self._top, V)
        if self._rest is not None:
            rest, Brest = self._rest
            a, b = np.searchsorted(rest, (lo, hi))  # rest is sorted
            if b > a:
                out[rest[a:b] - lo] = np.matmul(Brest[a:b], V[rest[a:b] - lo])
        return out

    def gram(self, C: np.ndarray, V: np.ndarray) -> np.ndarray:
        """``B'A^-1 B`` for ``B = [L_Z C, V]`` (``L_Z``: the low-rank columns ``z_j (x) e_q``
        of the Z part, ``C`` of shape ``(Q^2, c)``; ``V`` of shape ``(P, Q, r)``, zero off the
        mask), by Woodbury without forming ``A^-1 B``: ``B'B0^-1 B - T1' K cap^-1 T1`` with
        ``T1 = L'B0^-1 B``. The ``L_Z C`` part costs no pass over the features (its products
        with ``B0^-1`` are in ``LBL``), so only ``V`` takes a block-diagonal solve, in chunks of
        :data:`GRAM_ROWS` rows (one chunk up to that many features: the same sums as unchunked)."""
        Q = self.X.shape[1]
        QQ = Q * Q
        P, _, r = V.shape
        c = C.shape[1]
        T1v = np.zeros((2 * QQ, r))
        VY = np.zeros((r, r))
        for lo in range(0, P, GRAM_ROWS):
            hi = min(lo + GRAM_ROWS, P)
            Y1 = self._binv(V[lo:hi], lo)
            flat = Y1.reshape(hi - lo, Q * r)
            T1v += np.concatenate([(self.X[lo:hi].T @ flat).reshape(QQ, r), (self.Z[lo:hi].T @ flat).reshape(QQ, r)])
            VY += V[lo:hi].reshape((hi - lo) * Q, r).T @ Y1.reshape((hi - lo) * Q, r)
        T1 = np.concatenate([self.LBL[:, QQ:] @ C, T1v], axis=1)
        D = np.empty((c + r, c + r))
        D[:c, :c] = C.T @ self.LBL[QQ:, QQ:] @ C
        D[:c, c:] = C.T @ T1v[QQ:]
        D[c:, :c] = D[:c, c:].T
        D[c:, c:] = VY
        return D - T1.T @ (self.K @ self._cap_solve(T1))

    def solve(self, V: np.ndarray) -> np.ndarray:
        """``A^-1 V`` for ``V`` of shape ``(P, Q, r)`` (entries off the mask ignored)."""
        Q = self.X.shape[1]
        V = V * self.mask[:, :, None]
        Y1 = self._binv(V)
        P, _, r = Y1.shape
        flat = Y1.reshape(P, Q * r)
        T1 = np.concatenate([(self.X.T @ flat).reshape(Q * Q, r), (self.Z.T @ flat).reshape(Q * Q, r)])
        T2 = self.K @ self._cap_solve(T1)
        corr = (self.X @ T2[: Q * Q].reshape(Q, Q * r) + self.Z @ T2[Q * Q:].reshape(Q, Q * r)).reshape(P, Q, r)
        return Y1 - self._binv(corr * self.mask[:, :, None])


class StructuredKKT:
    """The projected Newton system of :func:`dense_kkt` for complete data, factorised once for
    a set of ``free`` coordinates and solved for any gradient without forming ``F``.

    Solves ``[[F_ff, E'], [E, 0]] [delta, mu] = [-g_f, 0]`` (the same ridges as the dense
    solver) by Woodbury on the X block and a Schur complement of size ``m = QK + nV + Q`` for
    Theta, the variances and the column-sum constraints (formed as ``B'A^-1 B`` by
    :meth:`_Woodbury.gram`, never ``A^-1 B``; the Theta columns through the low-rank part,
    without a pass over the features). Factorising costs ``O(P Q^3 + P Q r^2 + U Q^4 + Q^6)``,
    ``r = nV + Q``, ``U`` the number of distinct patterns of free entries among the rows;
    each solve two solves with the X block, ``O(P Q^3 + P Q m)``. Raises
    ``numpy.linalg.LinAlgError`` when singular.
    """

    def __init__(self, prob, st, p: Parts, names: list[str], free: np.ndarray):
        P, Q, K = prob.P, prob.rank, prob.K
        s2 = st.sigma2
        nV = len(names)
        n = P * Q + Q * K
        self.P, self.Q, self.K, self.nV, self.n = P, Q, K, nV, n
        self.mask = mask = free[: P * Q].reshape(P, Q)
        self.tfree = tfree = np.flatnonzero(free[P * Q:n])
        FX, FT = information_diagonal(prob, st, [p])
        FV, vcols, _ = _variance_terms(p, s2, st.lam, names) if nV else (np.zeros((0, 0)), [], np.zeros(0))
        FTT = _kron(p.W, p.AA)[np.ix_(tfree, tfree)]
        rX, rT, rV = block_ridges(FX[mask], np.diag(FTT), np.diag(FV))
        self.A = A = _Woodbury(p, s2, mask, rX)
        # columns coupling X with (Theta, variances, multipliers): the Theta columns are
        # low-rank, entry (p, q) of column (j, k) being mask_pq Z_pj TAA_qk, so only the
        # variance and multiplier columns are stored (Bv); see _bt and _b
        jt, kt = np.divmod(tfree, K)
        nT = tfree.size
        Bv = np.empty((P, Q, nV + Q))
        for i, c in enumerate(vcols):
            Bv[:, :, i] = c
        Bv[:, :, nV:] = np.eye(Q)[None, :, :]
        Bv *= mask[:, :, None]
        self.Bv2 = Bv.reshape(P * Q, nV + Q)
        self.Z, self.TAA, self.jt, self.kt = p.Z, p.TAA, jt, kt
        m_eta = nT + nV
        Deta = np.zeros((m_eta + Q, m_eta + Q))
        Deta[:nT, :nT] = FTT + rT * np.eye(nT)
        Deta[nT:m_eta, nT:m_eta] = FV + rV * np.eye(nV)
        # the Theta columns are L_Z C (C[(j, q), (j, k)] = TAA[q, k]): Bm' A^-1 Bm never forms A^-1 Bm
        C = np.zeros((Q * Q, nT))
        C[jt[None, :] * Q + np.arange(Q)[:, None], np.arange(nT)[None, :]] = p.TAA[:, kt]
        S = Deta - A.gram(C, Bv)
        # the column-sum constraints are met to rounding by removing the step's column sums over
        # each column's free entries (the Schur complement and the step round A^-1 differently:
        # on an ill-conditioned face the sums would drift to 1e-8)
        self.count = np.maximum(mask.sum(axis=0), 1)
        if not np.all(np.isfinite(S)):
            raise np.linalg.LinAlgError("non-finite Schur complement")
        self.schur = _lu(S)  # raises on an exactly zero pivot (LAPACK getrf's info > 0)
        self.m_eta = m_eta

    def _bt(self, V: np.ndarray) -> np.ndarray:
        """``Bm' vec(V)`` for ``V`` of shape ``(P, Q)`` (Theta columns through ``Z`` and ``TAA``)."""
        Vm = V * self.mask
        theta = (self.Z.T @ Vm @ self.TAA)[self.jt, self.kt]
        return np.concatenate([theta, self.Bv2.T @ Vm.ravel()])

    def _b(self, y: np.ndarray) -> np.ndarray:
        """``Bm y`` as a ``(P, Q)`` array."""
        nT = self.tfree.size
        W = np.zeros((self.Q, self.K))
        W[self.jt, self.kt] = y[:nT]
        return self.mask * (self.Z @ W @ self.TAA.T) + (self.Bv2 @ y[nT:]).reshape(self.P, self.Q)

    def solve(self, gX: np.ndarray, gT: np.ndarray, gV: np.ndarray) -> np.ndarray:
        """The step ``delta`` (length ``PQ + QK + nV``) for gradient ``(gX, gT, gV)``."""
        P, Q, n, tfree = self.P, self.Q, self.n, self.tfree
        Ag = self.A.solve(gX[:, :, None])[:, :, 0]
        ry = np.concatenate([-gT.ravel()[tfree], -np.asarray(gV, dtype=float), np.zeros(Q)])
        ry = ry + self._bt(Ag)
        y = _lu_solve(self.schur, ry)
        dx = -self.A.solve((gX + self._b(y))[:, :, None])[:, :, 0]
        dx = dx - self.mask * (np.sum(dx * self.mask, axis=0) / self.count)
        delta = np.zeros(n + self.nV)
        delta[: P * Q] = (dx * self.mask).ravel()
        delta[P * Q + tfree] = y[: tfree.size]
        delta[n:] = y[tfree.size:self.m_eta]
        return delta


def structured_kkt(prob, st, p: Parts, names: list[str], gX: np.ndarray, gT: np.ndarray,
                   free: np.ndarray, gV: np.ndarray | None = None):
    """The Newton step of :func:`dense_kkt` for complete data without forming ``F``
    (:class:`StructuredKKT`); None when singular. ``gV``: the variance gradient (default:
    the state's)."""
    if gV is None:
        gV = _variance_terms(p, st.sigma2, st.lam, names)[2] if names else np.zeros(0)
    try:
        return StructuredKKT(prob, st, p, names, free).solve(gX, gT, gV)
    except np.linalg.LinAlgError:
        return None


# ----------------------------------------------------------------------------- matrix-free
def fisher_product(prob, st, parts: list[Parts], names: list[str], dX: np.ndarray, dT: np.ndarray,
                   dV: np.ndarray | None = None, vterms: list | None = None):
    """The expected information times a direction, ``F (vec_row dX, vec_row dT, dV)``, without
    forming ``F``: ``O(P Q^2 + P Q K + Q^3)`` per block (no data).

    Per block: ``F_XX V = S V D + c Z V' Z``, ``F_XTheta W = Z W (Theta AA')'``,
    ``F_ThetaX V = Z' V Theta AA'``, ``F_ThetaTheta W = W_ W AA'`` and the variance rows of
    :func:`_variance_terms` (``vterms``: those terms per block when already computed).
    Returns ``(FX (P x Q), FT (Q x K), FV (nV,))``.
    """
    s2 = st.sigma2
    nV = len(names)
    dV = np.zeros(nV) if dV is None else np.asarray(dV, dtype=float)
    oX = np.zeros_like(dX, dtype=float)
    oT = np.zeros_like(dT, dtype=float)
    oV = np.zeros(nV)
    for i, p in enumerate(parts):
        V = dX if p.rows is None else dX[p.rows]
        SV = (V - p.Xb @ (p.Minv @ (p.Xb.T @ V))) / s2
        out = SV @ p.D + p.c * p.Z @ (V.T @ p.Z) + p.Z @ dT @ p.TAA.T
        oT += p.Z.T @ V @ p.TAA + p.W @ dT @ p.AA
        if nV:
            FV, cols, _ = _variance_terms(p, s2, st.lam, names) if vterms is None else vterms[i]
            for j, col in enumerate(cols):
                out = out + dV[j] * col
                oV[j] += float(np.sum(col * V))
            oV += FV @ dV
        if p.rows is None:
            oX += out
        else:
            oX[p.rows] += out
    return oX, oT, oV
