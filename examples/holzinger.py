"""HolzingerSwineford1939 (the CSV bundled with semopy): which covariates affect which factor.

As in the paper: incomplete rows dropped, every column min-max scaled, Y = x1..x9
(features) for the children (units), A = age.rev (1 - scaled age), sex, school without an
intercept, rank 3, non-negative Theta. The basis X gives sparse loadings (measurement
side); inference on Theta gives the covariate-side selection.

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
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    X = fit.X.to_pandas()
    im = axes[0].imshow(X.values, cmap="Greens", aspect="auto")
    axes[0].set_yticks(range(len(X.index)), X.index)
    axes[0].set_xticks(range(X.shape[1]), X.columns)
    axes[0].set_title("loadings X (columns sum to 1)")
    fig.colorbar(im, ax=axes[0])
    inf.plot(ax=axes[1])
    fig.savefig(out / "holzinger.png", dpi=100)
    plt.close(fig)
    return inf.table


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small, fast run")
    p.add_argument("--out", default="holzinger-out", help="folder for tables and figures")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
