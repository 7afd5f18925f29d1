"""Benchmark: the scale ladder of issue #9, nmfre side by side with scikit-learn's NMF.

Every case fits ``nmfre.fit(Y, A, rank=Q, theta=...)`` (maximum likelihood, default
settings) and scikit-learn's ``NMF(n_components=Q, init="nndsvda")`` (default solver
``"cd"`` and ``max_iter=200``) on the same Y, in the same process, one after the other.

Cases (block-sparse design of :func:`nmfre.simulate.block_sparse`, noise sd
``0.3 / sqrt(P)``, Y clipped at 0; ``--list`` prints them with their targets):

* ``small-nonneg-s0`` .. ``small-nonneg-s4``, ``small-free-s0`` .. ``small-free-s4``:
  dense 100 x 2000, Q = 5, K = 4, seeds 0-4, Theta non-negative and sign-free
  (targets: converged, <= 1 s);
* ``medium``: dense 500 x 5000, Q = 5, K = 3 (converged, <= 5 s);
* ``large``: dense 2000 x 20000, Q = 10, K = 3, Y = 3.2e8 bytes (converged, <= 60 s,
  peak <= 2 x Y);
* ``sparse``: scipy.sparse CSR 5000 x 20000 with 1% non-zeros, Q = 10, K = 3, generated
  sparsely (random positions, values from the model mean at those positions plus noise,
  clipped at 0); passed as CSR to both (converged, <= 60 s, peak <= 1 GB);
* ``lazy``: 20 x 1 000 000, Q = 3, K = 3, written to netCDF and opened lazily with
  ``xr.open_dataarray(path, chunks={"unit": 100_000})`` (A from a ``.npy``); nmfre fits
  the dask-backed DataArray (U stays lazy), then ``fit.infer(n_boot=10000)`` is timed
  and measured on its own (targets: fit converged, <= 60 s, peak <= 600 MB; infer <= 30 s
  and <= 500 MB more). scikit-learn gets Y loaded into memory after nmfre's
  measurements.

All cases except ``small-free-*`` use ``theta="nonneg"`` (the design's Theta is
non-negative, as scikit-learn's factors are).

How it runs: the data sets are generated first, in a separate process, and saved to a
temporary directory (``.npy``, ``.npz`` for the sparse Y, netCDF for the lazy one). Each
case then runs in a fresh ``python bench_scale.py --case NAME`` process that loads its
data, records the resident set size (RSS) after imports and loading (the baseline), runs
nmfre, records its numbers, frees the fit, runs scikit-learn and prints one JSON line.
The parent process never holds the data: a child started with ``vfork`` inherits the
parent's peak RSS in ``ru_maxrss``, so a large parent would inflate every child's figure.
The peak of each step is read from ``VmHWM`` in ``/proc/self/status``, reset before the
step through ``/proc/self/clear_refs`` (Linux >= 4.0), so nmfre's and scikit-learn's
peaks are measured separately in the same process; where that is unavailable the process
peak ``ru_maxrss`` is used (then it includes everything before the step).

Run::

    make bench-scale                                  # the whole ladder (~10 min, 0.5 GB in /tmp)
    python benchmarks/bench_scale.py --quick          # reduced sizes (smoke test, < 1 min)
    python benchmarks/bench_scale.py --cases small-nonneg,medium --out results.json
    python benchmarks/bench_scale.py --data-dir /tmp/nmfre-bench   # keep and reuse the data

``--cases`` takes case names or their prefixes (``small`` selects all ten small cases).

Columns of the Markdown table (one row per case and method; ``nmfre infer`` is the
bootstrap of the lazy case):

* ``case``, ``data``: case name; kind of Y, P x N, Q, K and Y's size (dense and lazy:
  8 P N bytes, the float64 array in memory or in the file; sparse: CSR data + indices +
  indptr);
* ``wall s``: wall-clock seconds of the call (``time.perf_counter``);
* ``CPU s``: CPU seconds of the process, all threads (``time.process_time``);
* ``iters``: nmfre's ``fit.n_iter``; scikit-learn's ``n_iter_``;
* ``conv``: nmfre's ``fit.converged``; scikit-learn: no ``ConvergenceWarning``
  (``n_iter_ < max_iter``);
* ``nll / err``: nmfre's ``-fit.loglik`` (marginal negative log-likelihood);
  scikit-learn's ``reconstruction_err_`` (Frobenius norm ``||Y - W H||``);
* ``‖Y−fit‖``: Frobenius norm of the residual of the rank-Q fit (nmfre:
  ``Y - X (Theta A + U)``, from ``fit.r_squared_uncentered`` after the measurements;
  scikit-learn: ``Y - W H``), comparable between the two;
* ``peak MB``: peak RSS of the process while the step ran (absolute, including the
  baseline: interpreter, libraries and the data held; MB = 2^20 bytes throughout);
* ``peak/Y``: ``peak MB`` over Y's size;
* ``+MB``: ``peak MB`` minus the RSS just before the step (what the step itself added);
* ``nmfre/sklearn``: ratio of wall times (nmfre row);
* ``target``: the issue's targets for nmfre (``met`` or what was missed; not checked with
  ``--quick``). Memory targets are checked against the absolute peak.

The machine (CPU count, load average, library versions, BLAS threads) is printed above
the table; ``--out`` writes all numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

MB = 2.0**20
FULL_SEEDS = range(5)


# ----------------------------------------------------------------------------- the ladder
@dataclass(frozen=True)
class Dataset:
    """One generated data set.

    Attributes
    ----------
    name : str
        File stem in the data directory.
    kind : {"dense", "sparse", "lazy"}
        How Y is stored and handed to the methods.
    P, N, Q, K : int
        Features, units, rank and covariates of the design.
    seed : int
        Seed of the generator.
    density : float
        Fraction of stored entries (sparse only).
    chunk : int
        Units per dask chunk (lazy only).
    """

    name: str
    kind: str
    P: int
    N: int
    Q: int
    K: int
    seed: int = 0
    density: float = 1.0
    chunk: int = 0


@dataclass(frozen=True)
class Case:
    """One measured case: a data set, nmfre's settings and the targets.

    Attributes
    ----------
    name : str
    data : Dataset
    theta : {"nonneg", "free"}
        nmfre's ``theta`` argument.
    n_boot : int
        Bootstrap replicates timed after the fit (0: no inference).
    targets : dict
        ``wall_s``, ``peak_mb``, ``peak_over_y`` for the fit and ``infer_wall_s``,
        ``infer_extra_mb`` for the inference (absent: not a target).
    """

    name: str
    data: Dataset
    theta: str = "nonneg"
    n_boot: int = 0
    targets: dict = field(default_factory=dict)


def ladder(quick: bool = False) -> list[Case]:
    """The cases of issue #9 (``quick``: the same cases on reduced sizes).

    Parameters
    ----------
    quick : bool
        Reduced sizes for a smoke run.

    Returns
    -------
    list of Case
    """
    if quick:
        # tiny, but through the same code paths: dense residuals, gram statistics with the
        # structured Newton system (PQ > 1500), sparse products, a lazy Y in several chunks
        # with the streamed bootstrap (N > 4096)
        small = dict(P=30, N=300, Q=3, K=3)
        medium, large = dict(P=40, N=1000, Q=3, K=3), dict(P=520, N=4000, Q=3, K=3)
        sparse, lazy = dict(P=600, N=3000, Q=3, K=3, density=0.01), dict(P=20, N=6000, Q=3, K=3, chunk=1500)
        n_boot = 1000
    else:
        small = dict(P=100, N=2000, Q=5, K=4)
        medium, large = dict(P=500, N=5000, Q=5, K=3), dict(P=2000, N=20_000, Q=10, K=3)
        sparse = dict(P=5000, N=20_000, Q=10, K=3, density=0.01)
        lazy = dict(P=20, N=1_000_000, Q=3, K=3, chunk=100_000)
        n_boot = 10_000
    cases = []
    for theta in ("nonneg", "free"):
        for s in FULL_SEEDS:
            cases.append(Case(f"small-{theta}-s{s}", Dataset(f"small-s{s}", "dense", seed=s, **small), theta,
                              targets={"wall_s": 1.0}))
    cases += [
        Case("medium", Dataset("medium", "dense", **medium), targets={"wall_s": 5.0}),
        Case("large", Dataset("large", "dense", **large), targets={"wall_s": 60.0, "peak_over_y": 2.0}),
        Case("sparse", Dataset("sparse", "sparse", **sparse), targets={"wall_s": 60.0, "peak_mb": 1024.0}),
        Case("lazy", Dataset("lazy", "lazy", **lazy), n_boot=n_boot,
             targets={"wall_s": 60.0, "peak_mb": 600.0, "infer_wall_s": 30.0, "infer_extra_mb": 500.0}),
    ]
    return cases


def select(cases: list[Case], spec: str | None) -> list[Case]:
    """The cases named in ``spec`` (comma-separated names or name prefixes), in ladder order.

    Raises
    ------
    SystemExit
        A name that matches no case.
    """
    if not spec:
        return cases
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    for w in wanted:
        if not any(c.name == w or c.name.startswith(w + "-") for c in cases):
            raise SystemExit(f"unknown case {w!r}; cases: {', '.join(c.name for c in cases)}")
    return [c for c in cases if any(c.name == w or c.name.startswith(w + "-") for w in wanted)]


# ----------------------------------------------------------------------------- memory
def rss_mb() -> float:
    """Current resident set size of this process in MB (psutil)."""
    import psutil

    return psutil.Process().memory_info().rss / MB


def _vmhwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def maxrss_mb() -> float:
    """``ru_maxrss`` of this process in MB (the process peak since it started)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / MB if sys.platform == "darwin" else r / 1024.0


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its current RSS (Linux).

    Returns
    -------
    bool
        True when the reset worked (then :func:`peak_mb` is the peak since this call).
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _vmhwm_mb() is not None
    except OSError:
        return False


def peak_mb() -> float:
    """Peak RSS in MB: ``VmHWM`` since the last :func:`reset_peak`, else ``ru_maxrss``."""
    hwm = _vmhwm_mb()
    return maxrss_mb() if hwm is None else hwm


def measured(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` and measure it.

    Returns
    -------
    out : object
        What ``fn`` returned.
    m : dict
        ``wall_s``, ``cpu_s``, ``rss_before_mb``, ``peak_mb``, ``extra_mb`` (peak minus the
        RSS before), ``rss_after_mb``, ``peak_reset`` (whether the peak is the step's own)
        and ``warnings`` (one string per warning raised).
    """
    import gc
    import warnings

    gc.collect()
    before = rss_mb()
    reset = reset_peak()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    peak = peak_mb()
    m = {"wall_s": wall, "cpu_s": cpu, "rss_before_mb": before, "peak_mb": peak, "extra_mb": peak - before,
         "rss_after_mb": rss_mb(), "peak_reset": reset,
         "warnings": sorted({f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught})}
    return out, m


# ----------------------------------------------------------------------------- data
def _paths(d: Dataset, root: Path) -> dict:
    """File names of a data set; the stem holds the sizes, so quick and full sets can share a directory."""
    ext = {"dense": ".npy", "sparse": ".npz", "lazy": ".nc"}[d.kind]
    stem = f"{d.name}-{d.P}x{d.N}-Q{d.Q}-K{d.K}" + (f"-d{d.density:g}" if d.kind == "sparse" else "")
    return {"Y": root / f"{stem}-Y{ext}", "A": root / f"{stem}-A.npy", "meta": root / f"{stem}-meta.json"}


def _block_sparse_x(P: int, Q: int, rng):
    """Block-sparse basis as in :func:`nmfre.simulate.block_sparse` (one component per feature)."""
    import numpy as np

    X = np.zeros((P, Q))
    X[np.arange(P), np.arange(P) * Q // P] = rng.uniform(0.5, 1.5, P)
    return X / X.sum(axis=0)


def sparse_block_sparse(P: int, N: int, Q: int, K: int, density: float, noise_sd: float, seed: int = 0,
                        theta_scale: float = 10.0, tau2: float = 0.25):
    """A CSR ``Y`` of the block-sparse design, generated without a dense ``P x N`` array.

    Parameters
    ----------
    P, N, Q, K : int
        Features, units, rank, covariates (intercept plus ``K - 1`` U(0, 1)).
    density : float
        Fraction of positions stored, drawn uniformly without replacement.
    noise_sd : float
        Standard deviation of the noise added at the stored positions.
    seed : int
    theta_scale, tau2 : float
        ``Theta ~ U(0, theta_scale)``, ``U ~ N(0, tau2)``, as in ``block_sparse``.

    Returns
    -------
    Y : scipy.sparse.csr_matrix (P, N)
        ``X (Theta A + U) + E`` at the stored positions, clipped at 0 (zeros removed).
    A : ndarray (K, N)
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    X = _block_sparse_x(P, Q, rng)
    theta = rng.uniform(0.0, theta_scale, (Q, K))
    A = np.vstack([np.ones(N), rng.uniform(0.0, 1.0, (K - 1, N))])
    B = theta @ A + rng.normal(0.0, np.sqrt(tau2), (Q, N))
    return sparse_at_random(X, B, density, noise_sd, rng), A


def sparse_at_random(X, B, density: float, noise_sd: float, rng):
    """CSR ``Y``: ``X B + E`` at ``density P N`` positions drawn at random, clipped at 0 (zeros
    removed), never forming a dense ``P x N`` array."""
    import numpy as np
    import scipy.sparse as sp

    P, N = X.shape[0], B.shape[1]
    nnz = int(round(density * P * N))
    pos = np.sort(rng.choice(P * N, size=nnz, replace=False))
    rows, cols = np.divmod(pos, N)
    del pos
    vals = np.empty(nnz)
    step = 1 << 18
    for a in range(0, nnz, step):  # the mean X[p] . B[:, n] at the stored positions, in slices
        s = slice(a, a + step)
        vals[s] = np.einsum("iq,qi->i", X[rows[s]], B[:, cols[s]])
    vals += rng.normal(0.0, noise_sd, nnz)
    np.maximum(vals, 0.0, out=vals)
    Y = sp.csr_matrix((vals, (rows, cols)), shape=(P, N))
    Y.eliminate_zeros()
    return Y


def generate(d: Dataset, root: Path) -> dict:
    """Write data set ``d`` to ``root`` (skipped when its files are there) and return its metadata.

    Returns
    -------
    dict
        ``y_bytes`` (Y's size as stored in memory or on disk), ``nnz``, ``gen_s``.
    """
    import numpy as np

    p = _paths(d, root)
    if p["meta"].exists() and p["Y"].exists() and p["A"].exists():
        return json.loads(p["meta"].read_text())
    t = time.perf_counter()
    noise = 0.3 / np.sqrt(d.P)
    if d.kind == "sparse":
        import scipy.sparse as sp

        Y, A = sparse_block_sparse(d.P, d.N, d.Q, d.K, d.density, noise, d.seed)
        sp.save_npz(p["Y"], Y, compressed=False)
        nnz, y_bytes = int(Y.nnz), int(Y.data.nbytes + Y.indices.nbytes + Y.indptr.nbytes)
    else:
        import xarray as xr

        from nmfre.simulate import block_sparse

        sim = block_sparse(P=d.P, N=d.N, rank=d.Q, K=d.K, noise_sd=noise, seed=d.seed)
        Y, A = np.ascontiguousarray(sim["Y"].values), sim["A"].values
        feature = sim["Y"]["feature"].values
        del sim
        nnz, y_bytes = int(np.count_nonzero(Y)), int(Y.nbytes)
        if d.kind == "dense":
            np.save(p["Y"], Y)
        else:  # lazy: netCDF chunked along units as it will be read; integer unit labels
            arr = xr.DataArray(Y, dims=("feature", "unit"), name="Y",
                               coords={"feature": feature.astype(str), "unit": np.arange(d.N)})
            arr.to_netcdf(p["Y"], encoding={"Y": {"chunksizes": (d.P, min(d.chunk, d.N))}})
    np.save(p["A"], A)
    meta = {"y_bytes": y_bytes, "nnz": nnz, "gen_s": time.perf_counter() - t}
    p["meta"].write_text(json.dumps(meta))
    return meta


# ----------------------------------------------------------------------------- one case (child)
def _load(d: Dataset, root: Path):
    import numpy as np

    p = _paths(d, root)
    A = np.load(p["A"])
    if d.kind == "dense":
        return np.load(p["Y"]), A
    if d.kind == "sparse":
        import scipy.sparse as sp

        return sp.load_npz(p["Y"]).tocsr(), A
    import xarray as xr

    return xr.open_dataarray(p["Y"], chunks={"unit": d.chunk}), A


class _ComputeCounter:
    """Counts dask graph executions (each ``compute`` call), i.e. passes over a lazy Y."""

    def __init__(self):
        from dask.callbacks import Callback

        counter = self

        class _CB(Callback):
            def _start(self, dsk):
                counter.n += 1

        self.n = 0
        self._cb = _CB()

    def __enter__(self):
        self._cb.__enter__()
        return self

    def __exit__(self, *exc):
        self._cb.__exit__(*exc)


def _error(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip() + "\n" + \
        "".join(traceback.format_tb(exc.__traceback__)[-3:])


def residual_norm(fit, Y) -> float:
    """``||Y - X (Theta A + U)||_F`` of an nmfre fit, from its public ``r_squared_uncentered``.

    Parameters
    ----------
    fit : nmfre.NMFREFit
    Y : ndarray, scipy.sparse matrix or dask-backed DataArray
        The data the fit was estimated on.
    """
    import numpy as np

    if hasattr(Y, "tocsr"):
        ss = float(np.dot(Y.data, Y.data))
    elif hasattr(Y, "chunks") and Y.chunks is not None:
        ss = float((Y.data**2).sum().compute())
    else:
        ss = float(np.vdot(Y, Y))
    return float(np.sqrt(max(1.0 - fit.r_squared_uncentered, 0.0) * ss))


def _run_nmfre(case: Case, Y, A, rec: dict) -> None:
    import contextlib
    import gc

    import nmfre

    d = case.data
    counter = _ComputeCounter() if d.kind == "lazy" else None
    row = {"method": "nmfre"}
    rec["results"].append(row)
    fit = inf = None
    with counter or contextlib.nullcontext():
        try:
            fit, m = measured(nmfre.fit, Y, A, rank=d.Q, theta=case.theta)
            if counter:
                m["dask_computes"], counter.n = counter.n, 0
            row.update(m, maxrss_after_mb=maxrss_mb(), n_iter=fit.n_iter, converged=fit.converged,
                       objective=-fit.loglik, stop_reason=fit.stop_reason,
                       u_lazy=hasattr(fit.solution.U, "dask"))
        except Exception as exc:  # report, and still run the other method
            row["error"] = _error(exc)
        if fit is not None and case.n_boot:
            irow = {"method": "nmfre infer", "n_boot": case.n_boot}
            rec["results"].append(irow)
            try:
                inf, mi = measured(fit.infer, n_boot=case.n_boot, seed=0)
                if counter:
                    mi["dask_computes"], counter.n = counter.n, 0
                irow.update(mi, boot_se_max=float(inf.boot_se.max()))
            except Exception as exc:
                irow["error"] = _error(exc)
        if fit is not None:  # after the measurements: the residual norm of the rank-Q fit (a lazy Y: more passes)
            try:
                row["resid_fro"] = residual_norm(fit, Y)
            except Exception as exc:
                row["resid_error"] = _error(exc)
    del fit, inf
    gc.collect()


def _run_sklearn(case: Case, Y, rec: dict) -> None:
    from sklearn.decomposition import NMF

    row = {"method": "sklearn"}
    rec["results"].append(row)
    try:
        model = NMF(n_components=case.data.Q, init="nndsvda", random_state=0)
        _, m = measured(model.fit_transform, Y)
        conv = not any(w.startswith("ConvergenceWarning") for w in m["warnings"])
        row.update(m, maxrss_after_mb=maxrss_mb(), n_iter=int(model.n_iter_), converged=conv,
                   objective=float(model.reconstruction_err_), resid_fro=float(model.reconstruction_err_),
                   solver=model.solver, max_iter=model.max_iter)
    except Exception as exc:
        row["error"] = _error(exc)


def run_case(case: Case, root: Path) -> dict:
    """Measure one case in this (fresh) process: load, nmfre, then scikit-learn.

    Returns
    -------
    dict
        The case's record: sizes, ``baseline_mb``, ``threads`` and ``results`` (one dict
        per method, see :func:`measured` for the measurements).
    """
    t0 = time.perf_counter()
    import gc

    import numpy as np
    import sklearn.decomposition  # noqa: F401  (imported before the baseline is taken)
    from threadpoolctl import threadpool_info

    import nmfre  # noqa: F401

    d = case.data
    if d.kind == "lazy":
        import dask.array  # noqa: F401
    meta = json.loads(_paths(d, root)["meta"].read_text())
    Y, A = _load(d, root)
    gc.collect()
    rec = {"case": case.name, **asdict(case), "y_bytes": meta["y_bytes"], "nnz": meta["nnz"],
           "baseline_mb": rss_mb(), "baseline_maxrss_mb": maxrss_mb(), "load_s": time.perf_counter() - t0,
           "threads": sorted({f"{i['internal_api']}:{i['num_threads']}" for i in threadpool_info()}),
           "results": []}
    _run_nmfre(case, Y, A, rec)
    if d.kind == "lazy":  # scikit-learn gets the data in memory, after nmfre's measurements
        t = time.perf_counter()
        Yl = np.asarray(Y.values)
        Y.close()
        Y = Yl
        rec["sklearn_load_s"] = time.perf_counter() - t
    _run_sklearn(case, Y, rec)
    rec["child_s"] = time.perf_counter() - t0
    return rec


# ----------------------------------------------------------------------------- targets, table
def check_targets(rec: dict, quick: bool) -> str:
    """``"met"``, ``"missed: ..."`` or ``"n/a"`` for nmfre's targets of a case record."""
    if quick:
        return "n/a (quick)"
    t = rec.get("targets", {})
    rows = {r["method"]: r for r in rec.get("results", [])}
    fit, inf = rows.get("nmfre", {}), rows.get("nmfre infer", {})
    if "error" in rec or "error" in fit or not fit:
        return "missed: failed"
    miss = []
    if not fit.get("converged"):
        miss.append("not converged")
    if "wall_s" in t and fit["wall_s"] > t["wall_s"]:
        miss.append(f"{fit['wall_s']:.3g} s > {t['wall_s']:g} s")
    if "peak_mb" in t and fit["peak_mb"] > t["peak_mb"]:
        miss.append(f"peak {fit['peak_mb']:.0f} MB > {t['peak_mb']:g} MB")
    if "peak_over_y" in t and fit["peak_mb"] * MB > t["peak_over_y"] * rec["y_bytes"]:
        miss.append(f"peak {fit['peak_mb'] * MB / rec['y_bytes']:.2f} x Y > {t['peak_over_y']:g} x Y")
    if "infer_wall_s" in t:
        if "error" in inf or not inf:
            miss.append("infer failed")
        else:
            if inf["wall_s"] > t["infer_wall_s"]:
                miss.append(f"infer {inf['wall_s']:.3g} s > {t['infer_wall_s']:g} s")
            if inf["extra_mb"] > t["infer_extra_mb"]:
                miss.append(f"infer +{inf['extra_mb']:.0f} MB > {t['infer_extra_mb']:g} MB")
    return "met" if not miss else "missed: " + "; ".join(miss)


def _fmt(x, spec: str, none: str = "—") -> str:
    return none if x is None else format(x, spec)


def _describe_data(rec: dict) -> str:
    d = rec["data"]
    size = f"{rec['y_bytes'] / MB:.3g} MB"
    extra = f", {d['density']:.0%} nnz" if d["kind"] == "sparse" else ""
    return f"{d['kind']} {d['P']}×{d['N']}, Q={d['Q']}, K={d['K']}{extra} ({size})"


def markdown(records: list[dict], quick: bool) -> str:
    """The results as a Markdown table, one row per case and method."""
    head = ["case", "data", "method", "wall s", "CPU s", "iters", "conv", "nll / err", "‖Y−fit‖", "peak MB",
            "peak/Y", "+MB", "nmfre/sklearn", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rec in records:
        if "error" in rec and not rec.get("results"):
            lines.append(f"| {rec['case']} | {_describe_data(rec) if 'y_bytes' in rec else '—'} | — | "
                         + " | ".join(["—"] * 10) + f" | failed: {rec['error'].splitlines()[0][:80]} |")
            continue
        rows = {r["method"]: r for r in rec["results"]}
        skl = rows.get("sklearn", {})
        for r in rec["results"]:
            method = r["method"] + (f" (B={r['n_boot']})" if r["method"] == "nmfre infer" and "n_boot" in r else "")
            if "error" in r:
                lines.append(f"| {rec['case']} | {_describe_data(rec)} | {method} | "
                             + " | ".join(["—"] * 10) + f" | error: {r['error'].splitlines()[0][:80]} |")
                continue
            ratio = "—"
            if r["method"] == "nmfre" and skl.get("wall_s"):
                ratio = f"{r['wall_s'] / skl['wall_s']:.3g}"
            target = check_targets(rec, quick) if r["method"] == "nmfre" else ""
            conv = "—" if "converged" not in r else ("yes" if r["converged"] else "no")
            cells = [rec["case"], _describe_data(rec), method, _fmt(r.get("wall_s"), ".3g"),
                     _fmt(r.get("cpu_s"), ".3g"), _fmt(r.get("n_iter"), "d"), conv,
                     _fmt(r.get("objective"), ".7g"), _fmt(r.get("resid_fro"), ".5g"), _fmt(r.get("peak_mb"), ".0f"),
                     _fmt(r["peak_mb"] * MB / rec["y_bytes"], ".2f"), _fmt(r.get("extra_mb"), ".0f"), ratio, target]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(rec: dict) -> str:
    """One line per case: the target check, nmfre's stop reason and warnings, dask passes."""
    out = [f"{rec['case']}: target {rec.get('target', '?')}"]
    for r in rec.get("results", []):
        bits = []
        if r.get("stop_reason"):
            bits.append(f"stop {r['stop_reason']}")
        if "dask_computes" in r:
            bits.append(f"{r['dask_computes']} dask computes (passes over Y)")
        if r.get("u_lazy"):
            bits.append("U lazy")
        if "resid_error" in r:
            bits.append(f"residual norm failed: {r['resid_error'].splitlines()[0][:100]}")
        if not r.get("peak_reset", True):
            bits.append("peak = process peak (VmHWM reset unavailable)")
        bits += [w[:120] for w in r.get("warnings", []) if r["method"] != "sklearn" or "Convergence" not in w]
        if "error" in r:
            bits.append("ERROR " + r["error"].splitlines()[0][:200])
        if bits:
            out.append(f"{r['method']}: " + "; ".join(bits))
    if "error" in rec:
        out.append("FAILED: " + " | ".join(rec["error"].strip().splitlines()[-3:])[:400])
    return out[0] + ("; " + "; ".join(out[1:]) if out[1:] else "")


def machine() -> dict:
    """CPU count, platform, load average and library versions (no heavy imports)."""
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) / 2**20
    except OSError:
        pass
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "cpus_usable": cpus, "memory_gb": mem, "python": platform.python_version(),
            **{k: version(k) for k in ("nmfre", "numpy", "scipy", "scikit-learn", "dask", "xarray", "netCDF4")},
            "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}


def _machine_text(m: dict, threads) -> str:
    libs = ", ".join(f"{k} {m[k]}" for k in ("nmfre", "numpy", "scipy", "scikit-learn", "dask", "xarray", "netCDF4")
                     if m.get(k))
    load = "/".join(f"{x:.2f}" for x in m["loadavg_start"]) if m.get("loadavg_start") else "?"
    end = "/".join(f"{x:.2f}" for x in m["loadavg_end"]) if m.get("loadavg_end") else "?"
    return (f"machine: {m['cpu_count']} CPUs ({m['cpus_usable']} usable), {m['memory_gb'] or 0:.0f} GB, "
            f"{m['processor']}, {m['platform']}, Python {m['python']}\n"
            f"libraries: {libs}; BLAS/OpenMP threads: {', '.join(threads) or '?'}\n"
            f"load average (1/5/15 min) at start {load}, at end {end}")


# ----------------------------------------------------------------------------- driver (parent)
def _child(args: list[str], timeout: float) -> tuple[int, str, str]:
    try:
        p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        return -9, text(exc.stdout), text(exc.stderr) + f"\ntimed out after {timeout:g} s"


def _json_line(out: str):
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def main(argv=None) -> list[dict]:
    """Generate the data, run every selected case in its own process, print the table.

    Returns
    -------
    list of dict
        One record per case (as written by ``--out``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (smoke test, < 1 min)")
    parser.add_argument("--cases", help="comma-separated case names or prefixes (default: all)")
    parser.add_argument("--out", type=Path, help="write all results as JSON")
    parser.add_argument("--data-dir", type=Path, help="keep the data sets here and reuse them (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per case (default 3600)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--case", help=argparse.SUPPRESS)       # child: run one case, print one JSON line
    parser.add_argument("--generate", help=argparse.SUPPRESS)   # child: write these data sets
    args = parser.parse_args(argv)
    cases = ladder(args.quick)

    if args.case:
        case = {c.name: c for c in cases}[args.case]
        print(json.dumps(run_case(case, args.data_dir)), flush=True)
        return []
    if args.generate:
        sets = {c.data.name: c.data for c in cases}
        metas = {n: generate(sets[n], args.data_dir) for n in args.generate.split(",")}
        print(json.dumps(metas), flush=True)
        return []
    cases = select(cases, args.cases)
    if args.list:
        for c in cases:
            print(f"{c.name:<18} {c.data.kind:<7} {c.data.P}x{c.data.N} Q={c.data.Q} K={c.data.K} theta={c.theta}"
                  f"{f' n_boot={c.n_boot}' if c.n_boot else ''}  targets {c.targets}")
        return []

    info = machine()
    tmp = None
    root = args.data_dir
    if root is None:
        tmp = tempfile.mkdtemp(prefix="nmfre-bench-scale-")
        root = Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    try:
        sets = list(dict.fromkeys(c.data.name for c in cases))
        print(f"generating {len(sets)} data set(s) in {root} ...", flush=True)
        t = time.perf_counter()
        rc, out, err = _child(["--generate", ",".join(sets), "--data-dir", str(root)]
                              + (["--quick"] if args.quick else []), args.timeout)
        if rc != 0:
            raise SystemExit(f"data generation failed (exit {rc}):\n{err[-3000:]}")
        print(f"  done in {time.perf_counter() - t:.1f} s", flush=True)
        for c in cases:
            rc, out, err = _child(["--case", c.name, "--data-dir", str(root)] + (["--quick"] if args.quick else []),
                                  args.timeout)
            rec = _json_line(out) if rc == 0 else None
            if rec is None:
                rec = {"case": c.name, **asdict(c), "results": [],
                       "error": f"case process exited with {rc}:\n{err[-3000:]}"}
            rec["target"] = check_targets(rec, args.quick)
            records.append(rec)
            _progress(rec)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    threads = next((r["threads"] for r in records if r.get("threads")), [])
    print()
    print(_machine_text(info, threads))
    print("(wall and CPU seconds; peak = resident set size of the case's own process; see the module docstring)\n")
    print(markdown(records, args.quick))
    print()
    for rec in records:
        print(notes(rec))
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "quick": args.quick, "cases": records}, indent=1))
        print(f"\nresults written to {args.out}")
    return records


def _progress(rec: dict) -> None:
    parts = []
    for r in rec.get("results", []):
        if "error" in r:
            parts.append(f"{r['method']} ERROR {r['error'].splitlines()[0][:100]}")
        else:
            parts.append(f"{r['method']} {r['wall_s']:.2f} s, {r['peak_mb']:.0f} MB"
                         + (f", {r['n_iter']} it" if "n_iter" in r else ""))
    if "error" in rec:
        parts.append("FAILED " + rec["error"].splitlines()[0])
    print(f"{rec['case']:<18} " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
