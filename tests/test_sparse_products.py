"""The sparse form's products on several threads (nmfre.core.sparse.RowSplit).

Each output row is the same sum in the same order as scipy's single product, so the products
are compared with scipy's to the bit (``array_equal``), whatever the threads: the named faults
(row ranges that overlap, miss rows or are written into the wrong rows of the output, a race
on it, Y' with another order of terms) all change bits or whole rows.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from nmfre.core import basis, blas, ml, sparse, stats


def _matrix(P=300, N=700, density=0.05, seed=0):
    """A CSR matrix with empty rows and columns, a dense row and unsorted indices."""
    rng = np.random.default_rng(seed)
    M = sp.random(P, N, density=density, random_state=rng, format="lil")
    M[5, :] = rng.random(N)  # one dense row: the ranges are cut by non-zeros, not rows
    M[7, :] = 0.0
    M[:, 11] = 0.0
    M = M.tocsr()
    order = rng.permutation(M.indices.size)  # unsorted within rows
    for r in range(M.shape[0]):
        a, b = M.indptr[r], M.indptr[r + 1]
        p = a + rng.permutation(b - a)
        M.indices[a:b], M.data[a:b] = M.indices[p].copy(), M.data[p].copy()
    assert order.size and not M.has_sorted_indices
    return M


def _reference(M):
    R = M.tocsr().copy()
    R.sort_indices()
    return R


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_products_equal_scipy_to_the_bit(threads, fmt, monkeypatch):
    monkeypatch.setattr(sparse, "MIN_NNZ_PER_THREAD", 10)
    M = _matrix()
    ref = _reference(M)
    given = M.asformat(fmt)
    kept = given.copy()
    Y = sparse.RowSplit(given, threads=threads)
    for name in ("data", "indices", "indptr", "row", "col"):  # the caller's matrix is not changed
        if hasattr(kept, name):
            assert np.array_equal(getattr(given, name), getattr(kept, name))
    assert Y.parallel == (threads > 1) and Y.shape == M.shape and Y.nnz == M.nnz
    rng = np.random.default_rng(1)
    X, W = rng.normal(size=(300, 4)), rng.normal(size=(700, 4))
    cases = [
        (Y @ W, ref @ W),
        (Y.T @ X, ref.T @ X),
        (Y @ np.asfortranarray(W), ref @ W),  # a transposed view, as in Y (X'R)'
        (Y.T @ X[:, 1], ref.T @ X[:, 1]),  # a vector
        (Y @ (W + 1j * W[:, ::-1]), ref @ (W + 1j * W[:, ::-1])),  # complex: the gradient's complex step
        (Y.T @ X[:, :1], ref.T @ X[:, :1]),
    ]
    for got, want in cases:
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
    assert Y.T.T.csr is Y.csr  # the transpose shares the arrays


def test_a_larger_pool_replaces_the_smaller_one(monkeypatch):
    """Products on more ranges than the pool has threads for get a larger pool; the smaller
    one is shut down (its threads end), and products go on equal to scipy's."""
    monkeypatch.setattr(sparse, "MIN_NNZ_PER_THREAD", 10)
    monkeypatch.setattr(sparse, "_POOL", {"pid": None, "pool": None, "size": 0})
    M = _reference(_matrix())
    V = np.ones((700, 2))
    assert np.array_equal(sparse.RowSplit(M, threads=2) @ V, M @ V)
    small = sparse._POOL["pool"]
    assert sparse._POOL["size"] == 1
    assert np.array_equal(sparse.RowSplit(M, threads=4) @ V, M @ V)
    assert sparse._POOL["size"] == 3 and sparse._POOL["pool"] is not small and small._shutdown
    assert np.array_equal(sparse.RowSplit(M, threads=2) @ V, M @ V)  # the larger pool serves
    assert sparse._POOL["size"] == 3
    sparse._POOL["pool"].shutdown()


def test_ranges_balance_non_zeros_and_cover_every_row():
    M = _reference(_matrix())
    for parts in (1, 2, 3, 5, 299, 1000):
        ranges = sparse._ranges(M, parts)
        starts, stops = [a for a, _, _ in ranges], [b for _, b, _ in ranges]
        assert starts[0] == 0 and stops[-1] == M.shape[0] and starts[1:] == stops[:-1]
        assert len(ranges) <= parts and all(b > a for a, b, _ in ranges)
        assert sum(r.nnz for _, _, r in ranges) == M.nnz
        assert all(np.shares_memory(r.data, M.data) for _, _, r in ranges)  # views, not copies
    nnz = [r.nnz for _, _, r in sparse._ranges(M, 2)]
    assert max(nnz) - min(nnz) <= 700 + 2 * M.getnnz(axis=1).max()  # a row is not split


def test_shapes_that_do_not_align_raise(monkeypatch):
    monkeypatch.setattr(sparse, "MIN_NNZ_PER_THREAD", 10)
    Y = sparse.RowSplit(_matrix(), threads=2)
    with pytest.raises(ValueError, match="do not align"):
        Y @ np.ones((299, 2))


def test_threads_follow_the_blas_pool():
    M = sp.random(2000, 2000, density=0.2, random_state=0, format="csr")  # 8e5 non-zeros
    with threadpool_limits(1, user_api="blas"):
        assert blas.numpy_blas_threads() == 1
        assert not sparse.RowSplit(M).parallel
    with threadpool_limits(2, user_api="blas"):
        if blas.numpy_blas_threads() != 2:
            pytest.skip("numpy's BLAS pool cannot be set to two threads here")
        assert sparse.RowSplit(M).threads == 2 and sparse.RowSplit(M).parallel
    small = sp.random(50, 50, density=0.2, random_state=0, format="csr")
    assert not sparse.RowSplit(small, threads=8).parallel  # below MIN_NNZ_PER_THREAD


def test_blas_single_threaded_limits_on_the_main_thread_only():
    if blas.numpy_blas_threads() < 2:
        pytest.skip("numpy's BLAS pool has one thread here")
    before = blas.numpy_blas_threads()
    seen = {}
    with blas.blas_single_threaded():
        seen["inside"] = blas.numpy_blas_threads()
    with blas.blas_single_threaded(active=False):
        seen["inactive"] = blas.numpy_blas_threads()

    def worker():
        with blas.blas_single_threaded():
            seen["worker"] = blas.numpy_blas_threads()

    t = threading.Thread(target=worker)
    t.start(), t.join(10)
    assert seen == {"inside": 1, "inactive": before, "worker": before}
    assert blas.numpy_blas_threads() == before


_FORK_SCRIPT = """
import multiprocessing, numpy as np, scipy.sparse as sp
from nmfre.core import sparse
sparse.MIN_NNZ_PER_THREAD = 10
M = sp.random(300, 700, density=0.05, random_state=0, format="csr")
V = np.arange(700.0)
assert sparse.RowSplit(M, threads=2).parallel
sparse.RowSplit(M, threads=2) @ V  # the parent's pool exists


def child(queue):
    queue.put((sparse.RowSplit(M, threads=2) @ V).tolist())


if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=child, args=(queue,))
    p.start()
    got = np.asarray(queue.get(timeout=60))
    p.join(60)
    assert p.exitcode == 0 and np.array_equal(got, M @ V)
    print("ok")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_the_pool_works_in_a_forked_child(tmp_path):
    """A child forked after the parent used the pool has none of its threads: it makes its own
    (the named fault: a product that waits forever on the parent's dead threads). Run in a
    fresh interpreter, so that no other library's threads (JAX's, in the test session) are
    forked with it."""
    script = tmp_path / "fork_child.py"
    script.write_text(_FORK_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_fit_on_threads_equals_the_fit_on_one(monkeypatch):
    """The whole ML iteration in sparse form, with the products on three threads and on the
    calling thread (BLAS at one thread in both, so that only the sparse products differ):
    the same iterations and the same estimates to the bit."""
    rng = np.random.default_rng(4)
    P, N, Q = 40, 900, 3
    X = rng.dirichlet(np.full(P, 0.5), Q).T
    A = np.vstack([np.ones(N), rng.uniform(size=N)])
    Y = X @ (rng.uniform(2, 8, (Q, 2)) @ A + rng.normal(0, 0.5, (Q, N)))
    Y = sp.csr_matrix(np.where(rng.random((P, N)) < 0.3, Y + rng.normal(0, 0.01, (P, N)), 0.0).clip(0))
    monkeypatch.setattr(sparse, "MIN_NNZ_PER_THREAD", 100)
    out = {}
    for threads in (1, 3):
        monkeypatch.setattr(blas, "numpy_blas_threads", lambda t=threads: t)
        st = stats.from_arrays(Y, A, "sparse")
        assert st.blocks[0].Y.parallel == (threads > 1)
        prob = ml.Problem(st, Q, True, "free", 1.0, 1.0, None)
        with threadpool_limits(1, user_api="blas"):
            out[threads] = ml.fit_ml(prob, basis.nndsvd(Y, Q), max_iter=200)
    one, three = out[1], out[3]
    assert one.n_iter == three.n_iter > 5
    for name in ("X", "theta"):
        assert np.array_equal(getattr(one, name), getattr(three, name))
    assert one.sigma2 == three.sigma2 and one.tau2 == three.tau2
