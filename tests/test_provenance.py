"""Every label of an inference says what was computed (issue 15, item 1).

For each combination of sandwich (CR1, CR2), reference distribution (normal, Satterthwaite t,
fixed-df t) and bootstrap interval (percentile, bootstrap-t) the printed text, the table's
columns, the DataTree/netCDF attributes, the figure caption and ``bayes.compare``'s columns are
checked against the numbers themselves: the SE is the named sandwich, the statistic and its
p-value follow the named reference, the interval is the named kind. All checks are exact
(deterministic given the fixed multipliers; tolerances 1e-12 relative, floating point only).
"""

import itertools

import numpy as np
import pytest
import xarray as xr
from scipy.stats import norm
from scipy.stats import t as student_t

from nmfre.inference import load_inference, provenance

COMBOS = list(itertools.product(["CR1", "CR2"], [None, "satterthwaite", 7], ["percentile", "studentized"]))


@pytest.fixture(scope="module")
def infs(ml_fit):
    return {c: ml_fit.infer(n_boot=300, seed=3, vcov=c[0], df=c[1], ci=c[2]) for c in COMBOS}


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(map(str, c)))
def test_text_matches_numbers(infs, combo, ml_fit, tmp_path):
    vcov, df, ci = combo
    inf = infs[combo]
    text, html, line = repr(inf), inf._repr_html_(), inf.describe()
    other = "CR2" if vcov == "CR1" else "CR1"
    # the SE is the named sandwich: equal to a same-vcov run's, different from the other kind
    same = infs[(vcov, None, "percentile")]
    diff = infs[(other, None, "percentile")]
    np.testing.assert_allclose(inf.se, same.se, rtol=1e-12)
    assert not np.allclose(inf.se, diff.se, rtol=1e-6)
    for s in (text, html, line, str(ml_fit.summary(inference=inf))):
        assert f"{vcov} sandwich SE" in s and f"{other} sandwich" not in s
    assert f"SE ({vcov})" in text
    # the statistic and its reference
    stat = "z" if df is None else "t"
    assert inf.statistic_name == stat
    cols = list(inf.table.columns)
    assert cols == ["estimate", "se", "se_model", "boot_se", stat] + (["df"] if stat == "t" else []) + [
        "p_value", "ci_low", "ci_high"]
    assert f"{stat} statistic" in line and f"Pr(>|{stat}|)" in text
    other_stat = "t" if stat == "z" else "z"
    assert f"Pr(>|{other_stat}|)" not in text and other_stat not in inf.table.columns
    est, se = inf.estimate.values, inf.se.values
    np.testing.assert_allclose(inf.statistic, est / se, rtol=1e-12)
    if df is None:
        assert "against the normal" in line and np.isinf(inf.df).all()
        p, q = 2 * norm.sf(np.abs(est / se)), norm.ppf(0.975)
        with pytest.raises(AttributeError, match="statistic is 'z'"):
            inf.t  # noqa: B018
    else:
        dfs = np.full_like(est, 7.0) if df == 7 else inf.df.values
        assert np.isfinite(dfs).all() and (dfs > 1).all()
        assert ("Satterthwaite" in line) == (df == "satterthwaite") and ("df = 7" in line) == (df == 7)
        p, q = 2 * student_t.sf(np.abs(est / se), dfs), student_t.ppf(0.975, dfs)
        np.testing.assert_allclose(inf.df, dfs, rtol=1e-12)
        with pytest.raises(AttributeError, match="statistic is 't'"):
            inf.z  # noqa: B018
    np.testing.assert_allclose(inf.p_value, p, rtol=1e-10)
    wald = inf.ci_wald.transpose("ci_bound", ...).values
    np.testing.assert_allclose(wald, np.stack([est - q * se, est + q * se]), rtol=1e-12)
    # the bootstrap interval is the named kind
    pct = inf.draws.quantile([0.025, 0.975], dim="draw").values
    if ci == "percentile":
        np.testing.assert_allclose(inf.ci.values, pct, rtol=1e-12)
        assert "95% percentile interval" in line and "bootstrap-t" not in line
    else:
        assert not np.allclose(inf.ci.values, pct, rtol=1e-6)
        assert f"95% bootstrap-t interval (each replicate studentized by its own {vcov} sandwich)" in line
        assert "percentile" not in line
    assert inf.ci.attrs["ci_kind"] == ci and "2.5%" in text and "97.5%" in text
    # DataTree and netCDF carry the same text
    dt = inf.to_datatree()
    assert dt["posterior"].attrs["inference"] == line
    assert dt["posterior"].attrs["interval"] == provenance(inf.attrs)["ci"]
    path = tmp_path / "inf.nc"
    inf.to_netcdf(path)
    back = load_inference(path)
    assert back.describe() == line and back.attrs["description"] == line
    assert list(back.table.columns) == cols
    # the figure caption names the p-value's SE and reference
    fig = inf.plot()
    title = fig.axes[0].get_title()
    assert f"{stat} on {vcov} sandwich SE" in title and "two-sided" in title


def test_settings_in_text(ml_fit):
    """Bootstrap kind and law, level and alternative are read from the run, not defaults."""
    inf = ml_fit.infer(n_boot=40, seed=1, method="refit", dist="rademacher", level=0.9, alternative="greater",
                       max_iter=50)
    line = inf.describe()
    assert "refit wild bootstrap, B = 40, Rademacher multipliers" in line
    assert "90% percentile interval" in line and "greater p-value" in line
    text = repr(inf)
    assert "Pr(>z)" in text and "5%" in text and "95%" in text and "2.5%" not in text
    np.testing.assert_allclose(inf.p_value, norm.sf(inf.statistic), rtol=1e-12)
    inf = ml_fit.infer(n_boot=50, seed=1, dist="mammen", alternative="less")
    assert "one-step wild bootstrap, B = 50, Mammen multipliers" in inf.describe() and "Pr(<z)" in repr(inf)
    W = np.random.default_rng(0).normal(size=(27, 30))
    assert "user-supplied multipliers" in ml_fit.infer(multipliers=W).describe()


def test_nonneg_projection_said(orthodont):
    import nmfre

    Y, A = orthodont
    fit = nmfre.fit(Y, A, rank=1, theta="nonneg")
    inf = fit.infer(n_boot=50, seed=1)
    assert "projected onto Theta >= 0" in inf.describe() and "Pr(>z)" in repr(inf)
    # refits are constrained fits: their description does not say they were projected
    refit = fit.infer(n_boot=6, seed=1, method="refit")
    assert "projected" not in refit.describe() and "refits with Theta >= 0" in refit.describe()


def test_interval_at_other_level(infs):
    inf = infs[("CR2", "satterthwaite", "percentile")]
    w = inf.interval("wald", 0.8)
    q = student_t.ppf(0.9, inf.df.values)
    np.testing.assert_allclose(w.sel(ci_bound="upper"), inf.estimate + q * inf.se, rtol=1e-12)
    assert w.attrs["description"].startswith("80% Wald interval") and "Satterthwaite" in w.attrs["description"]
    b = inf.interval("bootstrap", 0.8)
    np.testing.assert_allclose(b.values, inf.draws.quantile([0.1, 0.9], dim="draw").values, rtol=1e-12)
    xr.testing.assert_identical(inf.interval("bootstrap").drop_attrs(), inf.ci.drop_attrs())
    with pytest.raises(ValueError, match="bootstrap-t interval was computed at level 0.95"):
        infs[("CR1", None, "studentized")].interval("bootstrap", 0.8)
    with pytest.raises(ValueError, match="kind"):
        inf.interval("profile")


@pytest.mark.parametrize("combo", [("CR1", None, "percentile"), ("CR2", "satterthwaite", "studentized")])
def test_bayes_compare_uses_the_inference_intervals(infs, combo):
    """compare's Wald and bootstrap columns are the inference's own intervals, and say so.

    The 'posterior' here is the bootstrap itself shaped as a DataTree (no sampling)."""
    bayes = pytest.importorskip("bayes")
    inf = infs[combo]
    post = inf.to_datatree(chains=2)
    tab = bayes.compare(inf, post, names=["resampled"])
    np.testing.assert_allclose(tab[["wald_low", "wald_high"]].to_numpy().T,
                               inf.ci_wald.transpose("ci_bound", ...).values.reshape(2, -1), rtol=1e-12)
    np.testing.assert_allclose(tab[["boot_low", "boot_high"]].to_numpy().T, inf.ci.values.reshape(2, -1), rtol=1e-12)
    lab = provenance(inf.attrs)
    assert tab.attrs["intervals"]["wald"] == lab["wald"]
    assert tab.attrs["intervals"]["boot"].startswith(lab["ci"])
    fig = bayes.plot_compare(inf, post, names=["resampled"])
    legend = [t.get_text() for ax in fig.axes for leg in [ax.get_legend()] if leg for t in leg.get_texts()]
    legend += [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert lab["short"]["wald"] in legend and lab["short"]["ci"] in legend
    with pytest.raises(ValueError, match="names must be distinct and not 'wald'"):
        bayes.compare(inf, post, names=["boot"])
