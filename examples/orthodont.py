"""Orthodont (nlme): growth curves, the Theta table, and a linear mixed model for comparison.

NMF-RE with rank 1 and A = intercept + male: ``y_n = x (theta' a_n + u_n) + e_n``; the
male effect at age p is ``x_p theta_male``, so the average male effect per measurement
is ``theta_male / 4`` (X's column sums to 1), comparable with the male coefficient of a
random-intercept LMM ``distance ~ age + male + (1 | Subject)`` (statsmodels MixedLM).

Run: ``python examples/orthodont.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import nmfre  # noqa: E402
from nmfre.plotting import growth  # noqa: E402


def main(args) -> pd.DataFrame:
    import statsmodels.formula.api as smf

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Y, A = nmfre.load_orthodont()
    fit = nmfre.fit(Y, A, rank=1)
    inf = fit.infer(n_boot=200 if args.quick else 5000, seed=1)
    print(fit.summary(inference=inf))
    long = nmfre.load_orthodont(long=True)
    long["male"] = (long["Sex"] == "Male").astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lmm = smf.mixedlm("distance ~ age + male", long, groups=long["Subject"]).fit(reml=False)
    t = inf.table.loc[("Basis1", "male")]
    P = Y.shape[0]
    comp = pd.DataFrame({
        "male effect per measurement": [t["estimate"] / P, lmm.params["male"]],
        "SE": [t["se"] / P, lmm.bse["male"]],
        "log-likelihood": [fit.loglik, lmm.llf],
        "parameters": [P - 1 + 2 + 2, 3 + 2],
    }, index=["NMF-RE (rank 1, ML)", "LMM distance ~ age + male + (1|Subject), ML"])
    print("\n", comp.round(4).to_string())
    comp.to_csv(out / "orthodont_vs_lmm.csv")
    inf.table.to_csv(out / "orthodont_theta.csv")
    fig = growth(Y, A, fit.fitted(False).to_pandas(), fit.fitted(True).to_pandas())
    fig.savefig(out / "orthodont_growth.png", dpi=100)
    plt.close(fig)
    fig = inf.plot()
    fig.savefig(out / "orthodont_theta.png", dpi=100)
    plt.close(fig)
    return comp


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small, fast run")
    p.add_argument("--out", default="orthodont-out", help="folder for tables and figures")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
