"""Which intervals hold their level? Bootstrap versus posterior intervals over replicates.

The paper's baseline design (P = 4, Q = 1, Orthodont-based truth, non-negative Theta)
at N = 27 (Orthodont's size: few clusters) and N = 100, Gaussian and centred-exponential
errors, alternative and null (male effect 0): 8 cells, fitted by maximum likelihood
(no df cap); per replicate, on the same fit, eight 95% intervals for the male effect and
the intercept:

* ``wald``: CR1 sandwich, normal quantiles (nmfkc's);
* ``percentile``: one-step wild bootstrap (Exp(1) - 1 multipliers), percentile;
* ``cr2``: CR2 (Bell-McCaffrey) sandwich, t with Satterthwaite degrees of freedom;
* ``studentized``: wild bootstrap-t, each replicate studentised by its own CR2 sandwich;
* ``refit``: refit wild bootstrap (the slow gold standard), percentile;
* ``conditional``: posterior with X, sigma2 and tau2 fixed at the fit, flat prior (NUTS);
* ``conditional_x``: posterior with X fixed at the fit, variances sampled;
* ``joint``: posterior of the whole model.

Summaries (:func:`nmfre.study.summarize`): coverage with its Monte Carlo standard error,
mean width relative to Wald, interval score (width plus 2/alpha times the miss; lower is
better), bias and RMSE of each method's point estimate (the posterior mean for the
posteriors), the share of replicates with sampler warnings and the wall time per
replicate (``--quick``: 2 cells, 6 replicates).

Run: ``python examples/coverage_study.py [--quick] [--out DIR] [--n-rep R] [--n-boot B]
[--n-boot-refit B] [--seed S] [--workers W] [--frequentist-only] [--methods M1,M2] [--store PATH]
[--progress]``; ``--workers`` runs on a local dask cluster (each worker compiles each posterior
once); ``--store`` writes replicates as they finish, and the same command resumes a killed run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nmfre import study  # noqa: E402

GRID = {"N": [27, 100], "errors": ["normal", "exp"], "hypothesis": ["alt", "null"]}
QUICK_GRID = {"N": [27, 100], "errors": ["normal"], "hypothesis": ["alt"]}
FREQUENTIST = ("wald", "percentile", "cr2", "studentized", "refit")
POSTERIOR = ("conditional", "conditional_x", "joint")
COLUMNS = ["coverage", "coverage_mcse", "width_ratio", "interval_score", "point_bias", "point_rmse",
           "warning_share", "seconds"]


def main(args) -> pd.DataFrame:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_rep = args.n_rep or (6 if args.quick else 500)
    n_boot = args.n_boot or (100 if args.quick else 1000)
    n_boot_refit = args.n_boot_refit or (10 if args.quick else 200)
    grid = QUICK_GRID if args.quick else GRID
    draws = 200 if args.quick else 500
    client = cluster = None
    if args.workers:
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1)
        client = Client(cluster)
    kw = dict(n_rep=n_rep, seed=args.seed, client=client, n_boot=n_boot, n_boot_refit=n_boot_refit,
              fit_kwargs={"method": "ml", "df_cap": None}, store=args.store, progress=args.progress)
    frequentist = tuple(args.methods.split(",")) if args.methods else FREQUENTIST
    t = time.perf_counter()
    try:
        if args.frequentist_only:
            ds = study.run("baseline", grid, methods=frequentist, **kw)
        else:
            import bayes

            ds = bayes.study.run("baseline", grid, methods=frequentist + POSTERIOR, num_warmup=draws,
                                 num_samples=draws, **kw)
    finally:
        if client is not None:
            client.close()
            cluster.close()
    secs = time.perf_counter() - t
    summary = study.summarize(ds)
    cells = list(grid)
    table = summary[COLUMNS].to_dataframe().reorder_levels(cells + ["component", "covariate", "interval"])
    table = table.sort_index(level=cells + ["component", "covariate"], sort_remaining=False).droplevel("component")
    n_cells = int(np.prod([len(x) for x in grid.values()]))
    posteriors = "no posteriors" if args.frequentist_only else f"posteriors 4 x ({draws} + {draws})"
    print(f"coverage study: {n_rep} replicates x {n_cells} cells, B = {n_boot} (refit {n_boot_refit}), "
          f"{posteriors}: {secs:.1f} s wall\n")
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table.round(3).to_string())
    table.to_csv(out / "coverage_study.csv")
    ds.to_netcdf(out / "coverage_study.nc")
    fig = study.plot_coverage(summary)
    fig.savefig(out / "coverage_study.png", dpi=100)
    plt.close(fig)
    table.attrs.update(n_rep=n_rep, seconds=secs)
    return table


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small, fast run")
    p.add_argument("--out", default="coverage-study-out", help="folder for tables and figures")
    p.add_argument("--n-rep", type=int, default=None)
    p.add_argument("--n-boot", type=int, default=None)
    p.add_argument("--n-boot-refit", type=int, default=None)
    p.add_argument("--workers", type=int, default=0, help="dask LocalCluster workers (0: in-process)")
    p.add_argument("--seed", type=int, default=20, help="master seed of the study (recorded run: 20)")
    p.add_argument("--frequentist-only", action="store_true", help="no posteriors (no JAX)")
    p.add_argument("--methods", default=None, help="comma-separated frequentist methods (default: all five)")
    p.add_argument("--store", default=None, help="zarr store: replicates written as they finish; re-run to resume")
    p.add_argument("--progress", action="store_true", help="progress bar")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
