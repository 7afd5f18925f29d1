"""The data as the ML solver sees it: blocks of units that share their observed features,
each holding what the likelihood needs of its data.

For fixed A the marginal likelihood, its gradient, the information and every ECME/BLUP
quantity depend on a block's data only through ``G = Y Y'``, ``Y A'``, ``A A'`` and the
number of units (``||R||^2 = tr G - 2 tr(X'YA'Theta') + tr(Theta AA' Theta' X'X)``,
``X'RR'X = X'GX - X'YA'Theta'X'X - X'X Theta AY'X + X'X Theta AA'Theta'X'X``). A block
keeps its data in one of three forms, chosen per problem:

* ``"dense"``: ``Y`` in memory; residuals are formed (exact, ``O(P N Q)`` per evaluation),
  used for small problems and where ``N`` is not large against ``P``;
* ``"gram"``: only ``G``, ``YA'``, ``AA'`` (one pass over Y, then ``O(P^2 Q)`` per
  evaluation, independent of N): large N, dask arrays, files on disk;
* ``"sparse"``: a ``scipy.sparse`` Y; products ``X'Y`` in ``O(nnz Q)``, the dense residual
  is never formed.

Complete data are one block; with missing values, units are grouped by their pattern of
observed features (per-pattern statistics, so cost stays close to complete data when
patterns are few).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from .sparse import RowSplit

FORMS = ("dense", "gram", "sparse")


@dataclass(frozen=True)
class Moments:
    """What one block contributes at ``(X, Theta)`` (plain arrays).

    ``XtX = X_O'X_O``; ``XtYA = X_O'Y A'``; ``WR = X_O'R R'X_O``; ``rss = ||R||^2``
    (``rss_scale``: in gram and sparse form, the sum of the sizes of the three terms it is
    computed from, its rounding error about ``1e-16 rss_scale``; None in dense form);
    ``YRtX = Y R' X_O`` (``P_O x Q``); ``C1 = Theta AA' Theta'``; ``DX``: the first product of
    the data with ``X_O`` it took, ``G X_O`` (gram form, reused by
    :class:`nmfre.core.trust.Hessian`) or ``Y'X_O`` (sparse form; None in dense form). In
    sparse form the Hessian takes ``G X_O = YRtX + Y A' Theta' X_O'X_O`` instead
    (:func:`nmfre.core.ml.hessian`).

    In dense and sparse form ``YRtX`` costs a second pass over the data (``Y (X_O'R)'``), which
    the nll does not need: it is computed on first access (then kept), so that evaluating the
    nll at a trial point multiplies the data once.
    """

    Xb: np.ndarray
    XtX: np.ndarray
    XtYA: np.ndarray
    WR: np.ndarray
    rss: float
    residual: Callable[[], np.ndarray] = field(repr=False)
    C1: np.ndarray
    DX: np.ndarray | None = None
    rss_scale: float | None = None

    @cached_property
    def YRtX(self) -> np.ndarray:
        """``Y R' X_O`` (``P_O x Q``), formed on first access."""
        return self.residual()


@dataclass(frozen=True)
class Block:
    """Units that share their observed features ``rows``.

    Attributes
    ----------
    rows : ndarray of int or None
        Observed features (None: all ``P``).
    units : ndarray of int
        The block's units (positions in the data).
    N : int
    AA : ndarray (K, K)
        ``A A'`` over the block's units.
    YA : ndarray (P_O, K)
        ``Y A'``.
    trG : float
        ``||Y||^2``.
    form : {"dense", "gram", "sparse"}
    G : ndarray (P_O, P_O) or None
        ``Y Y'`` (gram form).
    Y : ndarray or :class:`nmfre.core.sparse.RowSplit` or None
        The block's data (dense form: the array; sparse form: ``scipy.sparse`` data held for
        parallel products).
    A : ndarray (K, N)
        The block's covariates.
    """

    rows: np.ndarray | None
    units: np.ndarray
    N: int
    AA: np.ndarray
    YA: np.ndarray
    trG: float
    form: str
    A: np.ndarray
    G: np.ndarray | None = None
    Y: Any = None

    @property
    def P(self) -> int:
        return self.YA.shape[0]

    def feature_squares(self) -> np.ndarray:
        """``diag(Y Y')``: each observed feature's sum of squares over the block's units."""
        if self.form == "gram":
            return np.diag(self.G).copy()
        if self.form == "sparse":
            csr = self.Y.tocsr()
            return np.asarray(csr.multiply(csr).sum(axis=1)).ravel()
        return np.einsum("pn,pn->p", self.Y, self.Y)

    def take(self, X: np.ndarray) -> np.ndarray:
        """The rows of ``X`` this block observes."""
        return X if self.rows is None else X[self.rows]

    def moments(self, X: np.ndarray, theta: np.ndarray) -> Moments:
        """:class:`Moments` at ``(X, Theta)``."""
        Xb = self.take(X)
        XtX = Xb.T @ Xb
        XtYA = Xb.T @ self.YA
        C1 = theta @ self.AA @ theta.T
        if self.form == "dense":
            R = self.Y - Xb @ (theta @ self.A)
            XtR = Xb.T @ R
            return Moments(Xb, XtX, XtYA, XtR @ XtR.T, float(np.vdot(R, R)), lambda: self.Y @ XtR.T, C1)
        if self.form == "sparse":
            DX = np.asarray(self.Y.T @ Xb)
            XtR = DX.T - XtX @ (theta @ self.A)  # Q x N, never P x N
            rss, scale = gram_rss(self.trG, theta, XtYA, C1, XtX)
            return Moments(Xb, XtX, XtYA, XtR @ XtR.T, rss, lambda: np.asarray(self.Y @ XtR.T), C1, DX, scale)
        GX = gram_product(self.G, Xb)
        XtGX = Xb.T @ GX
        T = XtYA @ theta.T @ XtX
        WR = XtGX - T - T.T + XtX @ C1 @ XtX
        rss, scale = gram_rss(self.trG, theta, XtYA, C1, XtX)
        YRtX = GX - self.YA @ theta.T @ XtX
        return Moments(Xb, XtX, XtYA, 0.5 * (WR + WR.T), rss, lambda: YRtX, C1, GX, scale)


def gram_product(G: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``G X`` for a symmetric gram ``G`` (``P x P``) and a thin real ``X`` (``P x Q``),
    computed as ``(X'G)'`` (a transposed view).

    The same sums, so the same numbers to rounding (with the OpenBLAS of numpy's wheel on the
    development machine: bit for bit at the sizes measured with ``Q`` = 3 to 20, ``P`` = 5 to
    4000; within 2e-15 relative at ``Q = 2``, where OpenBLAS takes another kernel; ``tests/test_data_passes.py``
    checks 1e-13), but OpenBLAS reads ``G`` faster this way round on one thread: 3.3 against
    5.3 ms at ``P = 2000``, ``Q = 10`` (on two threads 2.2 against 2.6 ms, and whole fits
    unchanged; benchmarks/results/scale.md, twenty-second round). The gram-form iteration makes
    several such products per iteration (its moments and its observed-Hessian products).
    """
    return (X.T @ G).T


def gram_rss(trG: float, theta: np.ndarray, XtYA: np.ndarray, C1: np.ndarray, XtX: np.ndarray):
    """``(rss, scale)``: ``||Y - X Theta A||^2 = ||Y||^2 - 2 tr(Theta' X'YA') + tr(C1 X'X)`` from
    gram statistics (``trG = ||Y||^2``, ``XtYA = X'YA'``, ``C1 = Theta AA' Theta'``), and the sum of
    the three terms' sizes, the scale of its rounding error (:attr:`Moments.rss_scale`)."""
    cross, fitted = 2.0 * float(np.sum(theta * XtYA)), float(np.sum(C1 * XtX))
    return trG - cross + fitted, trG + abs(cross) + abs(fitted)


@dataclass(frozen=True)
class Stats:
    """All blocks of a data set: what the ML solver iterates on.

    Attributes
    ----------
    P, N, K : int
    blocks : list of Block
    n_obs : int
        Observed entries.
    """

    P: int
    N: int
    K: int
    blocks: list[Block] = field(default_factory=list)

    @property
    def n_obs(self) -> int:
        return int(sum(b.N * b.P for b in self.blocks))

    @property
    def complete(self) -> bool:
        """One block observing every feature."""
        return len(self.blocks) == 1 and self.blocks[0].rows is None

    @property
    def AA(self) -> np.ndarray:
        return sum(b.AA for b in self.blocks)

    @property
    def unit_weights(self) -> np.ndarray:
        """``N_b`` per block (the df weights)."""
        return np.array([b.N for b in self.blocks], dtype=float)


def choose_form(P: int, N: int, nnz: int | None = None, sparse: bool = False) -> str:
    """The cheaper form for a ``P x N`` block: gram when ``G`` costs less per evaluation than
    the data and the problem is large enough for it to matter; dense (exact residuals)
    otherwise; sparse input stays sparse unless its gram is clearly cheaper."""
    nnz = P * N if nnz is None else nnz
    if sparse:
        return "gram" if P * P <= nnz // 8 and P <= 4000 else "sparse"
    return "gram" if P * N >= 100_000 and N >= 4 * P else "dense"


def block(Y, A: np.ndarray, rows: np.ndarray | None, units: np.ndarray, form: str) -> Block:
    """One block from its data ``Y`` (``P_O x N_b``, dense or sparse) and covariates ``A``."""
    AA = A @ A.T
    YA = np.asarray(Y @ A.T)
    if hasattr(Y, "multiply"):  # scipy.sparse
        trG = float(Y.multiply(Y).sum())
    else:
        trG = float(np.vdot(Y, Y))
    if form == "gram":
        G = Y @ Y.T
        G = np.asarray(G.todense()) if hasattr(G, "todense") else np.asarray(G)
        return Block(rows, units, A.shape[1], AA, YA, trG, "gram", A, G=G, Y=None)
    if form == "sparse":  # the iteration's products on the row ranges, in parallel
        Y = RowSplit(Y)
    return Block(rows, units, A.shape[1], AA, YA, trG, form, A, Y=Y)


def from_arrays(Y, A: np.ndarray, form: str = "auto") -> Stats:
    """:class:`Stats` for complete data ``Y`` (dense ndarray or scipy.sparse) and ``A``."""
    P, N = Y.shape
    sparse = hasattr(Y, "tocsr")
    if sparse:
        Y = Y.tocsr()
    if form == "auto":
        form = choose_form(P, N, Y.nnz if sparse else None, sparse)
    if form == "sparse" and not sparse:
        raise ValueError("form='sparse' needs a scipy.sparse Y")
    if form == "dense" and sparse:
        raise ValueError("a sparse Y is never densified; use form='sparse' or 'gram'")
    return Stats(P, N, A.shape[0], [block(Y, A, None, np.arange(N), form)])


def from_gram(G: np.ndarray, YA: np.ndarray, AA: np.ndarray, trG: float, A: np.ndarray) -> Stats:
    """:class:`Stats` from precomputed one-pass statistics (complete data)."""
    P, N = G.shape[0], A.shape[1]
    b = Block(None, np.arange(N), N, np.asarray(AA), np.asarray(YA), float(trG), "gram", A, G=np.asarray(G))
    return Stats(P, N, A.shape[0], [b])


def patterns(observed: np.ndarray, order: str = "appearance"):
    """Group units by their pattern of observed features (the one grouping of nmfre's ML
    solver and of bayes's statistics and U draws).

    Parameters
    ----------
    observed : ndarray (P, N) of bool
        True where a cell is observed.
    order : {"appearance", "sorted"}
        Number the patterns by first appearance among the units, or sort them
        lexicographically (False before True, the order of ``numpy.unique(observed.T,
        axis=0)``).

    Returns
    -------
    pattern_masks : ndarray (n_patterns, P) of bool
    inverse : ndarray (N,) of int
        The pattern of each unit.
    """
    if order not in ("appearance", "sorted"):
        raise ValueError(f"order must be 'appearance' or 'sorted', got {order!r}")
    packed = np.packbits(observed, axis=0).T.copy()
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if order == "sorted":  # bytes of the packed bits sort as the bool rows do
        return observed[:, first].T, inverse
    order_ = np.argsort(first)  # number the patterns by first appearance
    rank = np.empty_like(order_)
    rank[order_] = np.arange(order_.size)
    return observed[:, first[order_]].T, rank[inverse]


def from_masked(Y: np.ndarray, A: np.ndarray, form: str = "auto") -> Stats:
    """:class:`Stats` for a dense Y with missing entries (NaN): one block per pattern of
    observed features (a pattern observing every feature has ``rows=None``)."""
    P, N = Y.shape
    pats, inverse = patterns(~np.isnan(Y))
    blocks = []
    for k, pat in enumerate(pats):
        units = np.flatnonzero(inverse == k)
        rows = None if pat.all() else np.flatnonzero(pat)
        Yb = Y[:, units] if rows is None else Y[np.ix_(rows, units)]
        f = choose_form(*Yb.shape) if form == "auto" else form
        blocks.append(block(Yb, A[:, units], rows, units, f))
    return Stats(P, N, A.shape[0], blocks)
