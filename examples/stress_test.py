"""The paper's df-cap stress test (P = 4, Q = 3, N = 100, starting tau2 = 1000).

Without the cap (and tau2 frozen) U saturates: df_U/(NQ) -> ~0.999 and sigma2 collapses
far below its true value 1. The cap at 0.21 keeps df_U/(NQ) <= 0.21 and sigma2 near 1;
the cap at 0.99 does not help. The ML method (no cap, variances estimated) is run on the
same replicates for comparison (non-negative Theta, as in the paper).

Run: ``python examples/stress_test.py [--quick] [--out DIR] [--n-rep R]``.
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
import xarray as xr  # noqa: E402

from nmfre import study  # noqa: E402


def main(args) -> pd.DataFrame:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_rep = args.n_rep or (10 if args.quick else 200)
    n_boot = 100 if args.quick else 1000
    t = time.perf_counter()
    ds = study.run("stress", {"arm": ["cap0.21", "cap0.99", "off"]}, n_rep=n_rep, seed=2026, n_boot=n_boot,
                   progress=not args.quick and sys.stderr.isatty())
    ml = study.run("stress", {"arm": ["cap0.21"]}, n_rep=n_rep, seed=2026, n_boot=n_boot,
                   fit_kwargs={"method": "ml", "theta": "nonneg", "df_cap": None, "tau2": 1.0,
                               "fix_tau2": False})
    ml = ml.assign_coords(arm=["ml nonneg (no cap)"])
    both = xr.concat([ds, ml], dim="arm")
    secs = time.perf_counter() - t
    summ = study.summarize(both)
    table = pd.DataFrame({
        "df_U/(NQ) median": summ["df_u_frac_q50"].to_series(),
        "df_U/(NQ) q95": summ["df_u_frac_q95"].to_series(),
        "sigma2 mean (true 1)": summ["mean_sigma2"].to_series(),
        "cap hit rate": summ["cap_hit_rate"].to_series(),
        "male coverage (pct)": summ["cover_pct"].sel(component="Basis1", covariate="male").to_series(),
        "male coverage (Wald)": summ["cover_wald"].sel(component="Basis1", covariate="male").to_series(),
    })
    print(f"stress test, {n_rep} replicates per arm, B = {n_boot} ({secs:.1f} s)\n")
    print(table.round(3).to_string())
    table.to_csv(out / "stress_test.csv")
    both.to_netcdf(out / "stress_test.nc")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    arms = list(both["arm"].values)
    axes[0].boxplot([both["df_u_frac"].sel(arm=a).values.ravel() for a in arms], tick_labels=arms)
    axes[0].set_ylabel("df_U / (N Q)")
    axes[1].boxplot([both["sigma2"].sel(arm=a).values.ravel() for a in arms], tick_labels=arms)
    axes[1].axhline(1.0, color="tab:red", ls="--", label="true sigma2")
    axes[1].set_ylabel("sigma2 estimate")
    axes[1].legend()
    for ax in axes:
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle("df-cap stress test (P=4, Q=3, N=100)")
    fig.savefig(out / "stress_test.png", dpi=100)
    plt.close(fig)
    return table


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small, fast run")
    p.add_argument("--out", default="stress-test-out", help="folder for tables and figures")
    p.add_argument("--n-rep", type=int, default=None, help="replicates per arm")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
