"""The comparison ladder: bootstrap intervals against posteriors, on Orthodont and on a
simulated rank-2 data set.

From cheapest to fullest: model-based SE, sandwich SE and one-step wild bootstrap
(nmfre), the refit bootstrap, the conditional posterior (X and variances fixed: must
equal N(theta_hat, I^-1)), the posterior conditional on X-hat only, and the full joint
posterior (how much does conditioning on X-hat understate uncertainty?).

``--large`` adds the 50 x 1000 rung (block-sparse data, Q = 3, K = 2, free Theta): the
bootstrap against the conditional and joint posteriors, with a smaller refit bootstrap (100
replicates). The conditional posteriors: 4 chains x (1000 + 1000); the joint posterior: 4
chains, 1000 warm-up draws and :func:`bayes.sample`'s default number of draws (1000 with NUTS;
with ChEES-HMC 2000, or 4000 where the basis has more than 100 entries: the lengths at which
its r_hat meets 1.01 on the benchmark ladder). ``--quick``: 4 x (300 + 300) throughout.

The samplers are :func:`bayes.sample`'s defaults (``kernel="auto"``): NUTS for the
conditional models and at rank 1, ChEES-HMC for the joint posterior at rank > 1 (NUTS did
not mix at 50 x 1000, see the benchmarks page); each posterior's ``sampler`` attribute
names the kernel that ran, and the run prints it.

Run: ``python examples/bayes_vs_bootstrap.py [--quick] [--large] [--out DIR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import bayes  # noqa: E402
import nmfre  # noqa: E402


def ladder(name, Y, A, rank, args, out: Path, large: bool = False) -> pd.DataFrame:
    q = args.quick
    fit = nmfre.fit(Y, A, rank=rank, n_init=1 if q else 3, seed=1)
    one = fit.infer(n_boot=400 if q else 4000, seed=1)
    refit = fit.infer(n_boot=40 if q else (100 if large else 400), seed=2, method="refit")
    n = 300 if q else 1000
    kw = dict(fit=fit, num_warmup=n, num_samples=n, seed=3)
    draws = {"joint": n if q else None}  # None: the sampler's default for the kernel and size
    posts = {m: bayes.sample(Y, A, rank, model=m, **{**kw, "num_samples": draws.get(m, n)})
             for m in ("conditional", "conditional_x", "joint")}
    table = bayes.compare(one, *posts.values(), names=list(posts))
    rt = refit.table
    table.insert(5, "refit_boot_low", rt["ci_low"].to_numpy())
    table.insert(6, "refit_boot_high", rt["ci_high"].to_numpy())
    table.insert(1, "se_model", one.table["se_model"].to_numpy())
    table.insert(2, "se_sandwich", one.table["se"].to_numpy())
    table.insert(3, "se_boot", one.table["boot_se"].to_numpy())
    table.insert(4, "se_refit", rt["boot_se"].to_numpy())
    for m, p in posts.items():
        table[f"{m}_sd"] = p["posterior"]["theta"].std(("chain", "draw")).values.ravel()
    table.to_csv(out / f"{name}_ladder.csv")
    fig = bayes.plot_compare(one, *posts.values(), names=list(posts))
    fig.savefig(out / f"{name}_forest.png", dpi=100)
    plt.close(fig)
    d = {m: bayes.diagnostics(p) for m, p in posts.items()}
    print(f"\n== {name} (rank {rank}) ==")
    with pd.option_context("display.width", 160, "display.max_columns", 40):
        cols = ["estimate", "se_model", "se_sandwich", "se_boot", "se_refit"] + [f"{m}_sd" for m in posts]
        print(table[cols].round(4))
    print("sampler diagnostics:", {m: {k: round(v, 3) for k, v in x.items()} for m, x in d.items()})
    print("samplers:", {m: p["posterior"].attrs["sampler"].split()[0] for m, p in posts.items()})
    return table


def main(args) -> dict:
    bayes.configure()  # parallel CPU chains, if JAX has not started yet
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Y, A = nmfre.load_orthodont()
    t1 = ladder("orthodont", Y, A, 1, args, out)
    d = nmfre.simulate.rank2(N=120 if args.quick else 200, seed=0)
    Y2, A2 = d["Y"].values, d["A"].values
    t2 = ladder("rank2", Y2, A2, 2, args, out)
    result = {"orthodont": t1, "rank2": t2}
    if args.large:
        d = nmfre.simulate.block_sparse(P=50, N=1000, rank=3, K=2, seed=11)
        result["block50x1000"] = ladder("block50x1000", d["Y"].values, d["A"].values, 3, args, out, large=True)
    return result


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small, fast run")
    p.add_argument("--large", action="store_true", help="add the 50 x 1000, Q = 3 rung")
    p.add_argument("--out", default="bayes-vs-bootstrap-out", help="folder for tables and figures")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
