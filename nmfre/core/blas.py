"""One BLAS thread pool at work during the ML iteration.

numpy's and scipy's wheels (PyPI) each bundle their own OpenBLAS, each with its own pool
of threads sized to the machine. The ML iteration alternates numpy products with scipy's
small LAPACK calls (the structured KKT solves, ``nnls``), and after each call a pool's
threads keep spinning for a while: the two pools' threads then compete with the calling
thread for the cores. Measured on two cores (benchmarks/results/scale.md, thirteenth
round): fits of 100 x 2000 and 500 x 5000 data took 1.3-1.7x as long with both pools at
two threads as with scipy's at one; 2000 x 20000 (numpy's products) and sparse data were
unchanged.

:func:`scipy_blas_single_threaded` limits scipy's pool to one thread while it is entered,
only where scipy's BLAS is a different library from numpy's (with one shared BLAS, as in
most conda environments, it does nothing), and only on the main thread: the OpenBLAS of
scipy's wheel ignores a limit set from another thread (it still reports its old size), so
fits run on worker threads (the refit bootstrap's ``workers=``, dask's threaded workers)
leave the pools as they are. Entered by :func:`nmfre.core.ml.fit_ml` and around the NNDSVD
start's ``eigh`` (:func:`nmfre.core.passes.nndsvd`): limiting the iteration alone gave no
gain (measured), probably because scipy's pool, woken by the start, kept spinning into it.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_STATE: dict[str, Any] = {"depth": 0, "limiter": None}  # the main thread's open blocks


def _package_dirs(module) -> tuple[str, ...]:
    """Where a package and its wheel's bundled libraries (``numpy.libs``, ``.dylibs``) live."""
    root = os.path.dirname(os.path.realpath(module.__file__))
    return root + os.sep, root + ".libs" + os.sep


@functools.cache
def _blas_controller():
    """threadpoolctl's controller of every loaded BLAS library (numpy's and scipy's loaded
    first), found once."""
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS, so that it is listed)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def _under(lib, module) -> bool:
    """Whether a threadpoolctl library controller's file lies in ``module``'s package or its
    wheel's bundled libraries."""
    return os.path.realpath(lib.filepath).startswith(_package_dirs(module))


@contextmanager
def blas_single_threaded(active: bool = True) -> Iterator[None]:
    """Every BLAS pool (numpy's and scipy's) at one thread inside the block, on the main thread
    and when ``active`` (elsewhere it does nothing); restored on leaving.

    For the sparse form's iteration (:func:`nmfre.core.ml.fit_ml`), whose sparse products run
    on threads of their own (:mod:`nmfre.core.sparse`) and whose BLAS products are thin (``P x
    Q`` by ``Q x Q``): an idle OpenBLAS thread spins after each call and takes the core that
    the product's second range needs (benchmarks/results/scale.md, thirtieth round).
    """
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    with _blas_controller().limit(limits=1):
        yield


def numpy_blas_threads() -> int:
    """The size of numpy's BLAS pool now (under any ``threadpoolctl`` limit in force): the
    parallelism the user has given numpy's products, which :mod:`nmfre.core.sparse` gives the
    sparse products too. Where numpy's BLAS cannot be identified, the largest BLAS pool; with
    no BLAS listed, the number of usable cores."""
    import numpy

    blas_libs = _blas_controller().lib_controllers
    ours = [c for c in blas_libs if _under(c, numpy)]
    pool = [c.num_threads for c in (ours or blas_libs)]
    if pool:
        return max(1, max(pool))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@functools.cache
def scipy_blas_controller():
    """threadpoolctl's controller of scipy's own BLAS pool, or None where scipy shares
    numpy's BLAS (or either cannot be identified). Found once, then cached."""
    import numpy
    import scipy

    controller = _blas_controller()
    blas = controller.lib_controllers
    ours = [c for c in blas if _under(c, scipy)]
    if len(ours) != 1 or not any(_under(c, numpy) for c in blas):
        return None
    return controller.select(filepath=ours[0].filepath)


@contextmanager
def scipy_blas_single_threaded() -> Iterator[None]:
    """Limit scipy's own BLAS pool to one thread inside the block, on the main thread (see the
    module docstring; elsewhere it does nothing). Re-entrant: the outermost block sets the
    limit and restores what it found."""
    ctl = scipy_blas_controller()
    if ctl is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    if _STATE["depth"] == 0:
        _STATE["limiter"] = ctl.limit(limits=1)
    _STATE["depth"] += 1
    try:
        yield
    finally:
        _STATE["depth"] -= 1
        if _STATE["depth"] == 0:
            _STATE["limiter"].restore_original_limits()
            _STATE["limiter"] = None
