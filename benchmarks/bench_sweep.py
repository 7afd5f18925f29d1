"""Benchmark: a sweep of small shapes, looking for ML fits that crawl or stop short (issue 17).

Where ``bench_iterations.py`` times a few rungs against scikit-learn, this script fits many
small problems once each (no timing comparison) and reports the distribution of iterations
per generator and every fit that took more than ``--slow`` iterations or did not converge,
with its stop reason. Data come from the generators of ``bench_iterations.py`` (all of its
``GENERATORS`` by default, those the recorded runs had and those added since; ``--generators``
picks some); every combination of the grid is fitted
once with ``nmfre.fit(Y, A, rank=Q, theta=..., max_iter=...)`` (maximum likelihood, default
tolerance and start).

The default grid, 288 fits per generator, is the one recorded in ``benchmarks/results/scale.md``
(fourteenth round, then with its four generators: 1152 fits, 161 s of fitting on two cores, plus
the data): P in {50, 100, 200}, N in {500, 2000}, Q in {2, 3, 5, 8}, K = 3, Theta >= 0 and
sign-free, noise c in {0.3, 1}, seeds 0-2, ``max_iter`` 2000.

Run::

    python benchmarks/bench_sweep.py                           # the recorded grid
    python benchmarks/bench_sweep.py --generators counts --Q 8 --P 50 --N 500
    python benchmarks/bench_sweep.py --quick                   # smoke test (seconds)
    python benchmarks/bench_sweep.py --out sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sibling benchmark scripts

from bench_iterations import GENERATORS, int_list  # noqa: E402


def fit_one(gen: str, P: int, N: int, Q: int, K: int, theta: str, noise: float, seed: int,
            max_iter: int) -> dict:
    """Fit one data set; its shape, iterations, convergence, stop reason, nll and wall s."""
    import nmfre

    Y, A = GENERATORS[gen](P, N, Q, K, seed, noise)
    rec = dict(generator=gen, P=P, N=N, Q=Q, K=K, theta=theta, noise=noise, seed=seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = nmfre.fit(Y, A, rank=Q, theta=theta, max_iter=max_iter)
    rec.update(n_iter=int(fit.n_iter), converged=bool(fit.converged), stop_reason=fit.stop_reason,
               nll=float(-fit.loglik), wall_s=time.perf_counter() - t0)
    return rec


def summary(runs: list[dict], slow: int) -> str:
    """Markdown: one row per generator, then the fits above ``slow`` iterations or not converged."""
    head = ["generator", "fits", "iters median", "iters 90th pct", "iters max", f"> {slow} iters",
            "not converged (stop reason: count)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for gen in sorted({r["generator"] for r in runs}):
        rr = [r for r in runs if r["generator"] == gen]
        it = [r["n_iter"] for r in rr]
        reasons: dict[str, int] = {}
        for r in rr:
            if not r["converged"]:
                reasons[r["stop_reason"]] = reasons.get(r["stop_reason"], 0) + 1
        lines.append("| " + " | ".join([gen, str(len(rr)), f"{np.median(it):g}", f"{np.percentile(it, 90):.3g}",
                                        str(max(it)), str(sum(i > slow for i in it)),
                                        ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "none"])
                     + " |")
    flagged = [r for r in runs if r["n_iter"] > slow or not r["converged"]]
    if flagged:
        lines += ["", f"Fits above {slow} iterations or not converged:", ""]
        lines += [f"* {r['generator']} {r['P']} x {r['N']}, Q = {r['Q']}, Theta {r['theta']}, c = {r['noise']:g}, "
                  f"seed {r['seed']}: {r['n_iter']} iterations, {r['stop_reason']}" for r in flagged]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generators", default=",".join(GENERATORS),
                        help=f"comma-separated, of {', '.join(GENERATORS)} (default: all)")
    parser.add_argument("--P", default="50,100,200")
    parser.add_argument("--N", default="500,2000")
    parser.add_argument("--Q", default="2,3,5,8")
    parser.add_argument("--K", type=int, default=3)
    parser.add_argument("--theta", default="nonneg,free")
    parser.add_argument("--noise", default="0.3,1.0")
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument("--slow", type=int, default=100, help="iterations above which a fit is listed")
    parser.add_argument("--quick", action="store_true", help="a tiny grid (smoke test)")
    parser.add_argument("--out", help="write every fit's record as JSON")
    args = parser.parse_args(argv)
    gens = args.generators.split(",")
    unknown = [g for g in gens if g not in GENERATORS]
    if unknown:
        raise SystemExit(f"--generators: unknown {', '.join(unknown)}; known: {', '.join(GENERATORS)}")
    thetas = args.theta.split(",")
    if any(t not in ("nonneg", "free") for t in thetas):
        raise SystemExit("--theta: 'nonneg' and/or 'free'")
    if args.quick:
        grid = itertools.product(gens, [30], [300], [2], thetas, [0.3], [0])
    else:
        grid = itertools.product(gens, int_list(args.P), int_list(args.N), int_list(args.Q), thetas,
                                 [float(c) for c in args.noise.split(",")], int_list(args.seeds))
    runs = [fit_one(g, P, N, Q, args.K, t, c, s, args.max_iter) for g, P, N, Q, t, c, s in grid]
    table = summary(runs, args.slow)
    print(table)
    total = sum(r["wall_s"] for r in runs)
    print(f"\n{len(runs)} fits, {total:.1f} s of fitting")
    out = {"quick": args.quick, "max_iter": args.max_iter, "runs": runs, "table": table}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
