"""The one-step bootstrap at large N: multipliers against the generator's own throughput.

For each multiplier law, ``onestep_sum`` (the streamed ``scores @ W`` of the one-step wild
bootstrap: never an N x B array) against the limit, the generator alone filling the same
chunks on the same threads (no product). The ratio should be near 1: the bootstrap is then
bound by drawing the multipliers. Rademacher draws one bit per multiplier
(:func:`nmfre.core.bootstrap.rademacher`), so its limit is far lower than a law that draws a
double per multiplier.

    python benchmarks/bench_multipliers.py                 # N = 1e6, B = 10 000, QK = 4
    python benchmarks/bench_multipliers.py --quick         # N = 2e5, B = 2000
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent import futures

import numpy as np
import psutil
from threadpoolctl import threadpool_limits

from nmfre.core import bootstrap as cb


def generator_only(dist: str, N: int, B: int, seed: int, chunk: int, workers: int) -> float:
    """Seconds to draw the N x B multipliers as ``onestep_sum`` does (streams on threads,
    ``chunk`` units at a time), without the product."""
    streams = cb._streams(N, np.random.default_rng(seed))

    def one(k):
        a, b = k * cb.STREAM_UNITS, min((k + 1) * cb.STREAM_UNITS, N)
        buf = np.empty((min(chunk, b - a), B))
        for c in range(a, b, chunk):
            cb._fill(dist, streams[k], buf[: min(c + chunk, b) - c])

    t = time.perf_counter()
    with threadpool_limits(1), futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(len(streams))))
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, default=1_000_000)
    ap.add_argument("--B", type=int, default=10_000)
    ap.add_argument("--QK", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=cb.CHUNK_UNITS)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dists", default=",".join(cb.DISTS))
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    N, B = (200_000, 2000) if a.quick else (a.N, a.B)
    S = np.random.default_rng(0).standard_normal((a.QK, N))
    proc = psutil.Process()
    print(f"N = {N}, B = {B}, QK = {a.QK}, chunk {a.chunk}, {a.workers} threads; {N * B:.3g} multipliers")
    print(f"{'law':>10} {'onestep_sum s':>14} {'generator s':>12} {'ratio':>6} {'ns/multiplier':>14} {'RSS MB':>7}")
    for dist in a.dists.split(","):
        t = time.perf_counter()
        cb.onestep_sum(S, dist, B, np.random.default_rng(1), chunk=a.chunk, workers=a.workers)
        full = time.perf_counter() - t
        gen = generator_only(dist, N, B, 1, a.chunk, a.workers)
        print(f"{dist:>10} {full:>14.2f} {gen:>12.2f} {full / gen:>6.2f} {1e9 * full / (N * B):>14.3f} "
              f"{proc.memory_info().rss / 2**20:>7.0f}")


if __name__ == "__main__":
    main()
