"""Every example runs in --quick mode, writes its figures, and reproduces its key numbers."""

from pathlib import Path

import numpy as np
import pytest
from helpers import load_script

EXAMPLES = {p.stem: p for p in sorted((Path(__file__).parent.parent / "examples").glob("*.py"))}


def _check_quickstart(out):
    assert out["fit"].loglik == pytest.approx(-215.586901, abs=1e-6)
    assert out["paper"].df_cap_rate == 0.3 and out["paper"].n_iter == 2
    t = out["inference"].table
    assert t.loc[("Basis1", "male"), "se"] == pytest.approx(3.05669, rel=1e-5)


def _check_orthodont(comp):
    nmf, lmm = comp.iloc[0], comp.iloc[1]
    assert nmf["male effect per measurement"] == pytest.approx(9.422697 / 4, rel=1e-6)
    # statsmodels MixedLM (random intercept, ML) on the same 108 rows
    assert lmm["male effect per measurement"] == pytest.approx(2.321023, rel=1e-4)
    assert lmm["log-likelihood"] == pytest.approx(-217.428243, rel=1e-6)
    assert nmf["log-likelihood"] > lmm["log-likelihood"]


def _check_chickweight(comp):
    """Unbalanced (578 of 600 cells): at NMF-RE's basis, statsmodels' MixedLM on the observed
    rows has the same log-likelihood and estimates (the same model)."""
    assert comp.attrs["n_observed"] == 578
    ll = comp["log-likelihood"].to_numpy()
    assert ll[1] == pytest.approx(ll[0], abs=1e-6) and ll[2] <= ll[0] + 1e-6
    np.testing.assert_allclose(comp.attrs["theta_lmm"], comp.attrs["theta"], rtol=1e-6)


def _check_missing_study(t):
    np.testing.assert_allclose(t["missing_share"], t.index.get_level_values("missing"), atol=0.03)
    assert ((t["cover_wald"] >= 0) & (t["cover_wald"] <= 1)).all() and (t["mean_se"] > 0).all()


def _check_coverage_study(t):
    methods = ["wald", "percentile", "cr2", "studentized", "refit", "conditional", "conditional_x", "joint"]
    assert sorted(set(t.index.get_level_values("interval"))) == sorted(methods)
    assert t["coverage"].between(0, 1).all() and (t["interval_score"] > 0).all()
    assert (t.xs("wald", level="interval")["width_ratio"] == 1.0).all()
    freq = t[t.index.get_level_values("interval").isin(methods[:5])]
    assert freq["warning_share"].isna().all()
    assert t.xs("joint", level="interval")["warning_share"].between(0, 1).all()
    assert (t["seconds"] > 0).all()


def _check_holzinger(out):
    t, lo = out["table"], out["loadings"]
    # the loading selection: support is a share of the 20 replicates; selected = support >= 0.95;
    # the verbal tests x4-x6 make up factor 1 and x2, x3 factor 2 in all 20 replicates
    sup = lo["support"].transpose("feature", "component").values
    assert lo.attrs["n_draws"] == 20 and np.allclose(sup * 20, np.round(sup * 20))
    np.testing.assert_array_equal(lo["selected"].values, lo["support"].values >= 0.95)
    assert (lo["support"].sel(feature=["x4", "x5", "x6"], component="Basis1") == 1).all()
    assert (lo["support"].sel(feature=["x2", "x3"], component="Basis2") == 1).all()
    sig = (t["p_value"] < 0.05).to_numpy().reshape(3, 3)
    np.testing.assert_array_equal(sig, [[True, False, False], [True, False, True], [True, True, True]])
    assert t.loc[("Basis1", "age.rev"), "estimate"] == pytest.approx(2.26575, rel=1e-3)


def _check_migration(t):
    assert t.loc[("Basis1", "hub_QUE"), "estimate"] == pytest.approx(126.98, rel=1e-3)
    assert t.loc[("Basis2", "hub_ONT"), "estimate"] == pytest.approx(138.23, rel=1e-3)


def _check_tweets(out):
    t, lo = out["table"], out["loadings"]
    np.testing.assert_array_equal(lo["selected"].values, lo["support"].values >= 0.95)
    assert lo.attrs["threshold"] == pytest.approx(1 / lo.sizes["feature"]) and lo.attrs["n_draws"] == 20
    # "great" carries topics 1 and 3 in every replicate (support 1 of 20)
    assert lo["support"].sel(feature="great", component=["Basis1", "Basis3"]).values.tolist() == [1.0, 1.0]
    # components in the canonical order (centre of mass of X along the terms)
    assert t.loc[("Basis3", "android"), "estimate"] == pytest.approx(78.55, rel=1e-3)
    assert t.loc[("Basis1", "campaign"), "estimate"] == pytest.approx(83.83, rel=1e-3)


def _check_baseline_study(t):
    # the paper's algorithm stops after 2 iterations at its starting variances (sigma2 = 1)
    np.testing.assert_allclose(t["mean_sigma2"], 1.0)
    np.testing.assert_allclose(t["df_u_frac_q50"], 0.2006, atol=2e-4)
    assert (t.xs("alt", level="hypothesis")["reject"] == 1.0).all()


def _check_stress_test(t):
    assert t.loc["cap0.21", "df_U/(NQ) median"] == pytest.approx(0.21, abs=1e-3)
    assert t.loc["off", "df_U/(NQ) median"] > 0.99 and t.loc["off", "sigma2 mean (true 1)"] < 0.6
    assert 0.8 < t.loc["cap0.21", "sigma2 mean (true 1)"] < 1.25


def _check_bayes_vs_bootstrap(out):
    o, r = out["orthodont"], out["rank2"]
    np.testing.assert_allclose(o["conditional_sd"], o["se_model"], rtol=0.12)  # closed form, 4 x 300 draws
    assert ((o["joint_width_ratio"] > 0.8) & (o["joint_width_ratio"] < 1.3)).all()
    intercepts = r.xs("covariate1", level="covariate")
    # conditioning on X-hat understates the intercepts' uncertainty on the rank-2 set
    assert (intercepts["joint_sd"] > 3 * intercepts["conditional_sd"]).all()
    assert (intercepts["se_refit"] > 3 * intercepts["se_sandwich"]).all()


CHECKS = {k[len("_check_"):]: v for k, v in globals().items() if k.startswith("_check_")}


def test_every_example_has_a_check():
    assert set(CHECKS) == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_quick(name, tmp_path):
    mod = load_script(EXAMPLES[name], name)
    out = mod.main(mod.parse(["--quick", "--out", str(tmp_path)]))
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())
    CHECKS[name](out)
