"""The paper's baseline simulation (Table 1): P = 4, Q = 1, Orthodont-based truth,
N in {27, 100, 200}, Gaussian or centred-exponential errors, alternative or null for
the male effect: 12 cells, the paper's fit (its algorithm, df cap 0.21) and the
one-step wild bootstrap.

Run: ``python examples/baseline_study.py [--quick] [--out DIR] [--n-rep R] [--n-boot B]
[--workers W] [--method paper|ml]``; ``--workers`` runs on a local dask cluster.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from nmfre import study  # noqa: E402

GRID = {"N": [27, 100, 200], "errors": ["normal", "exp"], "hypothesis": ["alt", "null"]}


def main(args) -> pd.DataFrame:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_rep = args.n_rep or (10 if args.quick else 1000)
    n_boot = args.n_boot or (100 if args.quick else 1000)
    over = {} if args.method == "paper" else {"method": "ml", "df_cap": None}
    client = cluster = None
    if args.workers:
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1)
        client = Client(cluster)
    t = time.perf_counter()
    try:
        ds = study.run("baseline", GRID, n_rep=n_rep, seed=1, n_boot=n_boot, client=client,
                       progress=not args.quick and sys.stderr.isatty(), fit_kwargs=over)
    finally:
        if client is not None:
            client.close()
            cluster.close()
    secs = time.perf_counter() - t
    summ = study.summarize(ds)
    male = summ.sel(component="Basis1", covariate="male", drop=True)
    table = male[["bias", "sd", "rmse", "mean_se", "mean_boot_se", "reject", "cover_wald", "cover_pct",
                  "df_u_frac_q50", "mean_sigma2"]].to_dataframe()
    print(f"baseline study ({args.method}): {n_rep} replicates x 12 cells, B = {n_boot}: {secs:.1f} s wall "
          f"({secs / 12:.1f} s per cell)\n")
    print("male effect (reject = rejection rate at 5%: power under alt, size under null):")
    with pd.option_context("display.width", 160):
        print(table.round(3).to_string())
    table.to_csv(out / f"baseline_{args.method}.csv")
    summ.to_netcdf(out / f"baseline_{args.method}_summary.nc")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True, layout="constrained")
    for ax, hyp in zip(axes, ["alt", "null"], strict=True):
        for err, mk in [("normal", "o"), ("exp", "s")]:
            s = male.sel(hypothesis=hyp, errors=err)
            ax.plot(s["N"], s["cover_pct"], marker=mk, label=f"percentile, {err}")
            ax.plot(s["N"], s["cover_wald"], marker=mk, ls="--", label=f"Wald, {err}")
        ax.axhline(0.95, color="0.5", lw=0.8)
        ax.set_title(f"male effect, {hyp}")
        ax.set_xlabel("N")
    axes[0].set_ylabel("coverage of 95% interval")
    axes[1].legend(fontsize=7)
    fig.savefig(out / f"baseline_{args.method}.png", dpi=100)
    plt.close(fig)
    return table


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small, fast run")
    p.add_argument("--out", default="baseline-study-out", help="folder for tables and figures")
    p.add_argument("--n-rep", type=int, default=None)
    p.add_argument("--n-boot", type=int, default=None)
    p.add_argument("--workers", type=int, default=0, help="dask LocalCluster workers (0: in-process)")
    p.add_argument("--method", choices=["paper", "ml"], default="paper")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
