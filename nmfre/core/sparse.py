"""A ``scipy.sparse`` Y held for the ML iteration's thin products ``Y V`` and ``Y'V``.

In sparse form (:mod:`nmfre.core.stats`) every nll, gradient and Hessian product multiplies
the data with a thin dense matrix, ``Y'X`` (``N x Q``) or ``Y Z`` (``P x Q``), and these
products are most of an iteration's time. scipy multiplies on one thread. :class:`RowSplit`
keeps Y and Y' in CSR form, each cut into row ranges of equal numbers of non-zeros (views of
the same arrays, no copy), and multiplies the ranges on a thread pool (scipy's kernel releases
the GIL). Each output row is the same sum in the same order as scipy's single product (Y' as
CSR with sorted indices adds a row's terms in the order the CSC product of ``Y.T`` does), so
the results equal scipy's to the bit, whatever the number of threads. Measured at 5000 x
20000, 784 508 non-zeros, Q = 10, two cores: ``Y V`` 3.4 -> 1.9 ms, ``Y'X`` 3.2 -> 1.6 ms
(benchmarks/results/scale.md, thirtieth round).

The number of threads follows the size of numpy's BLAS pool (:func:`nmfre.core.blas.numpy_blas_threads`),
so whatever limits the BLAS (``OMP_NUM_THREADS``, ``threadpoolctl.threadpool_limits``, also
on a worker thread) limits these products too; matrices with fewer than
:data:`MIN_NNZ_PER_THREAD` non-zeros per thread are multiplied on the calling thread. Y' is a
second copy of the non-zeros: the sparse form holds twice the memory of a CSR Y.
"""

from __future__ import annotations

import os
import threading
from concurrent import futures

import numpy as np
import scipy.sparse as sp

from . import blas

#: below this many non-zeros per thread a product runs on the calling thread (a thread's
#: hand-off costs tens of microseconds; 1e5 non-zeros times Q = 10 take about 0.5 ms)
MIN_NNZ_PER_THREAD = 100_000

_POOL: dict = {"pid": None, "pool": None, "size": 0}
_LOCK = threading.Lock()


def _pool(size: int) -> futures.ThreadPoolExecutor:
    """The process's pool of at least ``size`` threads (made anew in a forked child); the
    calling thread of a product works too, so a product on ``n`` ranges takes ``n - 1``."""
    with _LOCK:
        if _POOL["pid"] != os.getpid() or _POOL["size"] < size:
            if _POOL["pid"] == os.getpid():  # a larger pool replaces this process's smaller one
                _POOL["pool"].shutdown(wait=False)
            _POOL.update(pid=os.getpid(), pool=futures.ThreadPoolExecutor(size, "nmfre-sparse"), size=size)
        return _POOL["pool"]


def _ranges(M: sp.csr_matrix, parts: int) -> list[tuple[int, int, sp.csr_matrix]]:
    """``(start, stop, rows)``: ``M`` cut into ``parts`` row ranges of about equal numbers of
    non-zeros, each a CSR view of ``M``'s arrays (only its index pointer is copied)."""
    ip = M.indptr
    cuts = np.searchsorted(ip, np.linspace(0, ip[-1], parts + 1))
    cuts[0], cuts[-1] = 0, M.shape[0]
    cuts = np.unique(np.clip(cuts, 0, M.shape[0]))
    out = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        s, e = ip[a], ip[b]
        rows = sp.csr_matrix((b - a, M.shape[1]), dtype=M.dtype)
        # set as attributes: the constructor copies a view of less than half its base (prune)
        rows.data, rows.indices, rows.indptr = M.data[s:e], M.indices[s:e], ip[a:b + 1] - s
        rows.has_sorted_indices = M.has_sorted_indices
        out.append((int(a), int(b), rows))
    return out


class RowSplit:
    """``Y`` (``P x N``, any ``scipy.sparse`` format) for products with thin dense matrices.

    ``Y @ V`` and ``Y.T @ V`` (``V`` a 1- or 2-d ndarray, real or complex) return ndarrays equal
    to scipy's to the bit (module docstring). ``Y.T`` is a :class:`RowSplit` sharing the arrays.

    Holds ``Y`` in CSR form (the caller's matrix itself where it is CSR with sorted indices)
    and ``Y'`` in CSR form (a copy: twice the memory of the non-zeros in all).

    Parameters
    ----------
    Y : scipy.sparse matrix or array
    threads : int, optional
        Threads per product; default: the size of numpy's BLAS pool when the object is made.
    """

    def __init__(self, Y, threads: int | None = None, *, _pair: tuple | None = None):
        if _pair is not None:
            self.csr, self._t, self.threads, self._parts, self._tparts = _pair
        else:
            csr = Y.tocsr()  # the caller's own matrix where it is CSR: never changed in place
            self.csr = csr if csr.has_sorted_indices else csr.sorted_indices()
            self._t = self.csr.T.tocsr()  # sorted by construction: one copy of the non-zeros
            if not self._t.has_sorted_indices:
                self._t = self._t.sorted_indices()
            self.threads = int(threads) if threads is not None else blas.numpy_blas_threads()
            n = max(1, min(self.threads, self.csr.nnz // MIN_NNZ_PER_THREAD))
            self._parts, self._tparts = _ranges(self.csr, n), _ranges(self._t, n)
        self.shape = self.csr.shape
        self.nnz = self.csr.nnz
        self.dtype = self.csr.dtype

    @property
    def parallel(self) -> bool:
        """Whether products run on more than one thread (more than one row range)."""
        return len(self._parts) > 1

    @property
    def T(self) -> RowSplit:
        """``Y'``, sharing the arrays."""
        return RowSplit(None, _pair=(self._t, self.csr, self.threads, self._tparts, self._parts))

    def __matmul__(self, V) -> np.ndarray:
        if not isinstance(V, np.ndarray) or V.ndim not in (1, 2) or len(self._parts) == 1:
            return np.asarray(self.csr @ V)
        if V.shape[0] != self.shape[1]:
            raise ValueError(f"matmul: shapes {self.shape} and {V.shape} do not align")
        V = np.ascontiguousarray(V)
        out = np.empty((self.shape[0],) + V.shape[1:], dtype=np.result_type(self.dtype, V.dtype))

        def one(part):
            a, b, rows = part
            out[a:b] = rows @ V

        pool = _pool(len(self._parts) - 1)
        others = [pool.submit(one, p) for p in self._parts[1:]]
        one(self._parts[0])  # the calling thread takes the first range
        for f in others:
            f.result()
        return out

    def tocsr(self) -> sp.csr_matrix:
        """``Y`` as scipy CSR (the object's own array)."""
        return self.csr
