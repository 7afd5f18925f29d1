"""Quick start on Orthodont: ML and paper fits, inference, labelled outputs, a plot.

Run: ``python examples/quickstart.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import nmfre  # noqa: E402


def main(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Y, A = nmfre.load_orthodont()
    fit = nmfre.fit(Y, A, rank=1)
    paper = nmfre.fit(Y, A, rank=1, method="paper", df_cap="auto")
    inf = fit.infer(n_boot=200 if args.quick else 2000, seed=1)
    print(fit.summary(inference=inf))
    print(f"\npaper algorithm: df cap rate {paper.df_cap_rate}, loglik {paper.loglik:.3f} (ML {fit.loglik:.3f})")
    inf.table.to_csv(out / "quickstart_theta.csv")
    fig = inf.plot()
    fig.savefig(out / "quickstart_theta.png", dpi=100)
    plt.close(fig)
    return {"fit": fit, "inference": inf, "paper": paper}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small, fast run")
    p.add_argument("--out", default="quickstart-out", help="folder for tables and figures")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
