"""Benchmark: the joint NumPyro model on Orthodont, 4 chains x 1000 draws (+1000 warm-up),
wall time including compilation; baseline in the same run: the same sampler with the
chains run sequentially. Target (issue #4): <= 120 s on the 2-core machine, aim 30 s.

Run: ``python benchmarks/bench_bayes.py``.
"""

from __future__ import annotations

import time
import warnings

import bayes  # first: parallel host devices and x64 before JAX starts
import nmfre


def run(chain_method):
    Y, A = nmfre.load_orthodont()
    fit = nmfre.fit(Y, A, rank=1)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bayes.SamplingWarning)
        post = bayes.sample(Y, A, 1, model="joint", fit=fit, num_warmup=1000, num_samples=1000, num_chains=4,
                            seed=0, chain_method=chain_method)
    return time.perf_counter() - t, bayes.diagnostics(post)


def main():
    par, dpar = run("parallel")
    seq, dseq = run("sequential")
    print("joint model, Orthodont, 4 chains x (1000 warm-up + 1000 draws), compilation included")
    print(f"  parallel chains:   {par:7.2f} s   {dpar}")
    print(f"  sequential chains: {seq:7.2f} s   {dseq}")
    print(f"  ratio parallel / sequential: {par / seq:.3f}; budget 120 s -> {par / 120:.3f} of it")


if __name__ == "__main__":
    main()
