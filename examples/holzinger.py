"""HolzingerSwineford1939 (the CSV bundled with semopy): which covariates affect which factor.

As in the paper: incomplete rows dropped, every column min-max scaled, Y = x1..x9
(features) for the children (units), A = age.rev (1 - scaled age), sex, school without an
intercept, rank 3, non-negative Theta. Inference on Theta gives the covariate-side
selection; the refit bootstrap (X re-estimated in every replicate) gives the
measurement-side selection with its uncertainty: for each test and factor, the share of
replicates in which the test's loading exceeds 1/9, its share under a uniform column
("is test 7 really part of this factor?").

Run: ``python examples/holzinger.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import nmfre  # noqa: E402


def load():
    import semopy

    df = pd.read_csv(os.path.join(os.path.dirname(semopy.__file__), "examples", "holzinger_swineford39_data.csv"))
    df = df.dropna()
    df["age"] = df["ageyr"] + df["agemo"] / 12
    df["school"] = (df["school"] == "Pasteur").astype(float)
    scale = lambda s: (s - s.min()) / (s.max() - s.min())  # noqa: E731
    items = [f"x{i}" for i in range(1, 10)]
    Y = pd.DataFrame({c: scale(df[c]) for c in items}).T
    A = pd.DataFrame({"age.rev": 1 - scale(df["age"]), "sex": scale(df["sex"]), "school": df["school"]}).T
    Y.columns = A.columns = [f"child{i}" for i in df["id"]]
    return Y, A


def main(args) -> pd.DataFrame:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Y, A = load()
    fit = nmfre.fit(Y, A, rank=3, theta="nonneg", n_init=2 if args.quick else 10, seed=1)
    inf = fit.infer(n_boot=200 if args.quick else 5000, seed=1)
    print(fit.summary(inference=inf))
    sel = inf.selection(0.05)
    print("\nsignificant covariate effects (p < 0.05, one-sided):")
    print(sel["significant"].to_pandas())
    inf.table.to_csv(out / "holzinger_theta.csv")
    # measurement side: refit bootstrap keeping X (aligned to the estimate in every replicate)
    refit = fit.infer(method="refit", n_boot=20 if args.quick else 500, seed=2, keep_X=True)
    lo = refit.loadings()
    print(f"\nloading support ({lo.attrs['description']}):")
    print(lo["support"].to_pandas().round(3))
    print("\nselected loadings:")
    print(lo["selected"].to_pandas())
    lo[["estimate", "support", "selected"]].to_dataframe().join(
        lo["ci"].to_dataset("ci_bound").to_dataframe()).to_csv(out / "holzinger_loadings.csv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    refit.plot_loadings(ax=axes[0])
    inf.plot(ax=axes[1])
    fig.savefig(out / "holzinger.png", dpi=100)
    plt.close(fig)
    return {"table": inf.table, "loadings": lo}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small, fast run")
    p.add_argument("--out", default="holzinger-out", help="folder for tables and figures")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
