"""Benchmark: repeated posterior sampling, as a coverage study does it.

Orthodont-size data sets (the paper's baseline design, P = 4, N = 27, K = 2, Q = 1), a
different data set per call, 4 chains x (500 + 500). For the ``conditional`` and ``joint``
models: the first call (compilation included), the mean time of the following calls, the
number of compilations, and the resident memory (RSS) after the first call and after all
calls. Then ``Sampler.sample_batch`` (one vectorised compiled call over a batch of data
sets) against the loop of single calls on the same data sets (the baseline, measured in
the same run).

Run: ``python benchmarks/bench_repeated.py [--calls 1000] [--batch 16] [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import time
import warnings

import psutil

import bayes
import nmfre
from bayes import compiled


def _data(n: int, seed0: int = 0):
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(n):
            d = nmfre.simulate.baseline(N=27, seed=seed0 + s)
            out.append((d["Y"], d["A"], nmfre.fit(d["Y"], d["A"], rank=1)))
    return out


def repeated(model: str, calls: int, data) -> dict:
    proc = psutil.Process()
    sampler = bayes.Sampler(model, 1, 4, 27, 2, num_warmup=500, num_samples=500)
    before = sum(compiled.TRACES.values())
    t = time.perf_counter()
    Y, A, f = data[0]
    sampler.sample(Y, A, fit=f, seed=0, warn=False)
    first = time.perf_counter() - t
    gc.collect()
    rss0 = proc.memory_info().rss
    t = time.perf_counter()
    for i in range(1, calls):
        Y, A, f = data[i % len(data)]
        sampler.sample(Y, A, fit=f, seed=i, warn=False)
    per = (time.perf_counter() - t) / max(calls - 1, 1)
    gc.collect()
    rss1 = proc.memory_info().rss
    return {"model": model, "first_s": first, "per_call_s": per, "calls": calls,
            "compilations": sum(compiled.TRACES.values()) - before,
            "rss_after_first_mb": rss0 / 2**20, "rss_growth_mb": (rss1 - rss0) / 2**20}


def batch(model: str, size: int, data) -> dict:
    sampler = bayes.Sampler(model, 1, 4, 27, 2, num_warmup=500, num_samples=500)
    sets = [(Y, A) for Y, A, _ in data[:size]]
    fits = [f for _, _, f in data[:size]]
    sampler.sample_batch(sets, fits=fits, seed=0)  # compile
    t = time.perf_counter()
    sampler.sample_batch(sets, fits=fits, seed=1)
    vec = (time.perf_counter() - t) / size
    sampler.sample(*sets[0], fit=fits[0], seed=0, warn=False)  # compile the single-call sampler
    t = time.perf_counter()
    for i, ((Y, A), f) in enumerate(zip(sets, fits, strict=True)):
        sampler.sample(Y, A, fit=f, seed=i, warn=False)
    loop = (time.perf_counter() - t) / size
    return {"model": model, "batch": size, "batch_per_set_s": vec, "loop_per_set_s": loop, "ratio": vec / loop}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="20 calls, batch 4")
    args = p.parse_args(argv)
    calls, size = (20, 4) if args.quick else (args.calls, args.batch)
    data = _data(max(20, size))
    print(f"repeated sampling, Orthodont-size data (P=4, N=27, K=2, Q=1), 4 chains x (500 + 500), {calls} calls")
    for model in ("conditional", "joint"):
        r = repeated(model, calls, data)
        print(f"  {model:12s} first call {r['first_s']:6.2f} s; then {r['per_call_s']:.3f} s per call; "
              f"compilations {r['compilations']}; RSS {r['rss_after_first_mb']:.0f} MB after the first call, "
              f"{r['rss_growth_mb']:+.1f} MB after {calls - 1} more")
    print(f"batched (one vectorised call for {size} data sets) against the loop of single calls:")
    for model in ("conditional", "joint"):
        r = batch(model, size, data)
        print(f"  {model:12s} batch {r['batch_per_set_s']:.3f} s per data set, loop {r['loop_per_set_s']:.3f} s; "
              f"ratio batch / loop {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
