"""scipy's own BLAS pool at one thread during the ML iteration (nmfre.core.blas)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from nmfre.core import blas


def _threads(ctl) -> int:
    return ctl.lib_controllers[0].num_threads


@pytest.fixture
def scipy_pool():
    """scipy's pool set to two threads for the test (then restored); skipped where scipy shares
    numpy's BLAS (the limiter does nothing there, tested below)."""
    ctl = blas.scipy_blas_controller()
    if ctl is None:
        pytest.skip("scipy uses numpy's BLAS here: nothing to limit")
    with ctl.limit(limits=2):
        if _threads(ctl) != 2:
            pytest.skip("scipy's BLAS pool cannot be set to two threads here")
        yield ctl


def test_limits_inside_and_restores(scipy_pool):
    with blas.scipy_blas_single_threaded():
        assert _threads(scipy_pool) == 1
        with blas.scipy_blas_single_threaded():  # re-entrant
            assert _threads(scipy_pool) == 1
        assert _threads(scipy_pool) == 1
    assert _threads(scipy_pool) == 2


def test_restores_after_an_exception(scipy_pool):
    with pytest.raises(RuntimeError), blas.scipy_blas_single_threaded():
        raise RuntimeError("inside")
    assert _threads(scipy_pool) == 2


def test_other_threads_leave_the_pool_alone(scipy_pool):
    """A block entered on another thread changes nothing, even while the main thread's block is
    open, and leaving it does not undo the main thread's limit."""
    seen = {}

    def worker(tag):
        with blas.scipy_blas_single_threaded():
            seen[tag] = (_threads(scipy_pool), blas._STATE["depth"])

    t = threading.Thread(target=worker, args=("alone",))
    t.start(), t.join(10)
    with blas.scipy_blas_single_threaded():
        t = threading.Thread(target=worker, args=("inside main's block",))
        t.start(), t.join(10)
        seen["main after the worker left"] = _threads(scipy_pool)
    assert seen == {"alone": (2, 0), "inside main's block": (1, 1), "main after the worker left": 1}
    assert _threads(scipy_pool) == 2


def test_no_op_where_blas_is_shared(monkeypatch):
    monkeypatch.setattr(blas, "scipy_blas_controller", lambda: None)
    with blas.scipy_blas_single_threaded():
        pass
    assert blas._STATE["depth"] == 0


def test_fit_runs_scipy_lapack_single_threaded(scipy_pool, monkeypatch):
    """Every scipy LAPACK/nnls call of a fit (the start's eigh, Theta's nnls, the KKT solves) sees
    scipy's pool at one thread; after the fit it is back at two."""
    import scipy.linalg

    import nmfre
    from nmfre.core import ml, newton

    seen: list[tuple[str, int]] = []

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            seen.append((name, _threads(scipy_pool)))
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(scipy.linalg, "eigh", spy("eigh", scipy.linalg.eigh))
    monkeypatch.setattr(ml, "nnls", spy("nnls", ml.nnls))
    monkeypatch.setattr(newton, "_lu", spy("getrf", newton._lu))
    sim = nmfre.simulate.block_sparse(P=60, N=2000, rank=3, K=2, seed=3)  # gram form: eigh start
    fit = nmfre.fit(np.asarray(sim["Y"]), np.asarray(sim["A"]), rank=3, theta="nonneg")
    assert fit.converged
    assert {name for name, _ in seen} >= {"eigh", "nnls"}
    assert {n for _, n in seen} == {1}
    assert _threads(scipy_pool) == 2
