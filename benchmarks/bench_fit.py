"""Benchmark: the 100 x 2000, Q = 5, K = 4 design of issue #2 and the bootstrap of #3.

Prints time, iterations and nll of each method measured in this run, and ratios
against the baselines measured in the same run (the paper's algorithm for the fit, a
per-replicate loop like nmfkc's for the one-step bootstrap). Run: ``make bench`` or
``python benchmarks/bench_fit.py [--seed S] [--quick]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import nmfre
from nmfre.core.bootstrap import draw_multipliers, onestep_draws
from nmfre.core.covariance import conditional
from nmfre.simulate import block_sparse


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmfre.ConvergenceWarning)
        out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smaller problem (CI smoke run)")
    parser.add_argument("--paper-max-iter", type=int, default=5000)
    args = parser.parse_args(argv)
    P, N = (40, 400) if args.quick else (100, 2000)
    d = block_sparse(P=P, N=N, rank=5, K=4, seed=args.seed)
    Y, A = d["Y"], d["A"]
    print(f"design: block-sparse X, P={P}, N={N}, Q=5, K=4, Theta~U(0,10), U~N(0,0.25), noise sd 0.3, "
          f"Y clipped at 0 (seed {args.seed})")
    rows = []
    fits = {}
    for label, kw in [
        ("ml nonneg", dict(method="ml", theta="nonneg")),
        ("ml free", dict(method="ml", theta="free", max_iter=300)),
        ("paper (no cap)", dict(method="paper", max_iter=args.paper_max_iter)),
        ("paper cap 0.21", dict(method="paper", df_cap=0.21, max_iter=args.paper_max_iter)),
    ]:
        fit, sec = timed(nmfre.fit, Y, A, rank=5, **kw)
        fits[label] = (fit, sec)
        rows.append((label, sec, fit.n_iter, fit.converged, -fit.loglik))
    base = fits["paper (no cap)"][1]
    print(f"\n{'method':<16}{'seconds':>9}{'iters':>8}{'converged':>11}{'nll':>16}{'time / paper':>14}")
    for label, sec, it, conv, nll in rows:
        print(f"{label:<16}{sec:>9.2f}{it:>8d}{str(conv):>11}{nll:>16.4f}{sec / base:>14.3f}")
    ml = fits["ml nonneg"][0]
    best_paper = min(-fits[k][0].loglik for k in ("paper (no cap)", "paper cap 0.21"))
    print(f"\nnll(ML nonneg) - nll(best paper fit) = {-ml.loglik - best_paper:.4f} (negative: ML is better)")

    # one-step wild bootstrap: all B replicates in one matrix product vs a per-replicate
    # loop (the shape of nmfkc's R code), on the same multipliers
    B = 10_000
    inf, sec_b = timed(ml.infer, n_boot=B, seed=1)
    sol = ml.solution
    k = conditional(ml.data.Y, ml.data.A, sol.X, sol.theta, sol.U, ml.lam)
    W = draw_multipliers("exp", ml.shape["N"], B, np.random.default_rng(1))
    tvec = sol.theta.reshape(-1, order="F")
    _, sec_mat = timed(onestep_draws, tvec, k.cov_model, k.scores, W, True)
    nloop = 1000
    t = time.perf_counter()
    loop = np.empty((tvec.size, nloop))
    for b in range(nloop):
        loop[:, b] = np.maximum(tvec - k.cov_model @ (k.scores @ W[:, b]), 0.0)
    per_loop = (time.perf_counter() - t) / nloop
    per_mat = sec_mat / B
    print(f"\none-step bootstrap, B={B}: fit.infer() {sec_b:.3f} s in all (multipliers, kernel, draws, "
          f"quantiles, labelled output)")
    print(f"replicate draws: one product {per_mat * 1e6:.2f} us/replicate vs per-replicate loop "
          f"{per_loop * 1e6:.2f} us/replicate -> ratio {per_mat / per_loop:.3f}")
    print(f"bootstrap SE range {float(inf.table.boot_se.min()):.4g} .. {float(inf.table.boot_se.max()):.4g}")

if __name__ == "__main__":
    main()
