"""A long cheap study on a dask cluster: wall time, replicates per second, and the client's
memory over the run (resident set size sampled every 0.5 s), in memory and with a store.

    python benchmarks/bench_study.py                      # 100 000 replicates, 2 workers
    python benchmarks/bench_study.py --n-rep 2000 --quick # smoke size
    python benchmarks/bench_study.py --n-rep 12000 --modes store,memory --separate-scheduler

Design: the paper's baseline at N = 27, Wald and percentile intervals (one-step bootstrap,
``--n-boot`` replicates). The client's RSS should stay flat with a store (finished replicates
go to disk as they arrive) and grow only with the result's own size without one.

``--separate-scheduler`` runs the scheduler and the workers as their own processes
(``dask scheduler`` / ``dask worker`` with a scheduler file) instead of a ``LocalCluster``,
whose scheduler lives in the client's process: the client's RSS is then the study's alone.
``--modes`` sets which runs and in which order (``store``, ``memory``).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil


def _sampler(stop: threading.Event, out: list):
    proc = psutil.Process()
    t0 = time.monotonic()
    while not stop.is_set():
        out.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))
        stop.wait(0.5)


def one(client, n_rep: int, n_boot: int, store: Path | None) -> dict:
    from nmfre import study

    rss: list = []
    stop = threading.Event()
    th = threading.Thread(target=_sampler, args=(stop, rss), daemon=True)
    th.start()
    t0 = time.perf_counter()
    ds = study.run("baseline", {"N": [27]}, n_rep=n_rep, seed=1, n_boot=n_boot, client=client, store=store,
                   methods=("wald", "percentile"), flush_seconds=5.0)
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    done = int(ds["done"].sum())
    mem = np.array([m for _, m in rss])
    q = len(mem) // 4 or 1
    along = {f"rss_{p}pct_mb": float(mem[min(int(p / 100 * len(mem)), len(mem) - 1)]) for p in (10, 30, 60, 90)}
    return {"store": store is not None, "n": done, "wall_s": wall, "rep_per_s": done / wall,
            "rss_start_mb": float(mem[:q].mean()), "rss_last_quarter_mb": float(mem[-q:].mean()),
            "rss_peak_mb": float(mem.max()), **along, "rss_end_mb": float(mem[-1]), "coverage_wald": float(
                ((ds["lower"].sel(interval="wald") <= ds["truth"]) & (ds["truth"] <= ds["upper"].sel(interval="wald")))
                .mean().compute())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-rep", type=int, default=100_000)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="only the store run")
    ap.add_argument("--modes", default="store,memory", help="runs, in order: store, memory")
    ap.add_argument("--separate-scheduler", action="store_true",
                    help="scheduler and workers in their own processes (dask CLI)")
    args = ap.parse_args(argv)
    modes = ["store"] if args.quick else args.modes.split(",")
    rows = []
    with _client(args.workers, args.separate_scheduler) as client, tempfile.TemporaryDirectory() as tmp:
        for i, mode in enumerate(modes):
            store = Path(tmp) / f"study{i}.zarr" if mode == "store" else None
            rows.append(one(client, args.n_rep, args.n_boot, store))
    print(f"{'store':>6} {'replicates':>10} {'wall s':>8} {'rep/s':>7} {'RSS first 1/4 MB':>17} "
          f"{'RSS last 1/4 MB':>16} {'peak MB':>8} {'Wald coverage':>13}")
    for r in rows:
        print(f"{'yes' if r['store'] else 'no':>6} {r['n']:>10} {r['wall_s']:>8.1f} {r['rep_per_s']:>7.1f} "
              f"{r['rss_start_mb']:>17.1f} {r['rss_last_quarter_mb']:>16.1f} {r['rss_peak_mb']:>8.1f} "
              f"{r['coverage_wald']:>13.4f}")
    print("client RSS (MB) at 10 / 30 / 60 / 90 % of the run and at its end:")
    for r in rows:
        print(f"{'store' if r['store'] else 'memory':>6}: " + " / ".join(
            f"{r[k]:.1f}" for k in ("rss_10pct_mb", "rss_30pct_mb", "rss_60pct_mb", "rss_90pct_mb", "rss_end_mb")))


@contextlib.contextmanager
def _client(workers: int, separate: bool):
    import distributed

    if not separate:
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as client:
            yield client
        return
    with tempfile.TemporaryDirectory() as tmp:
        sfile = str(Path(tmp) / "scheduler.json")
        dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
        sched = subprocess.Popen(dask + ["--scheduler-file", sfile, "--port", "0", "--dashboard-address", ":0"],
                                 stderr=subprocess.DEVNULL)
        work = None
        try:
            for _ in range(600):
                if Path(sfile).exists():
                    break
                time.sleep(0.1)
            work = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", sfile,
                                     "--nworkers", str(workers), "--nthreads", "1", "--no-dashboard"],
                                    stderr=subprocess.DEVNULL)
            with distributed.Client(scheduler_file=sfile) as client:
                client.wait_for_workers(workers, timeout=120)
                yield client
        finally:
            for p in (work, sched):
                if p is not None:
                    p.terminate()
                    p.wait(30)


if __name__ == "__main__":
    main()
