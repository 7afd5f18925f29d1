"""ADEMP performance measures against hand computation (exact: deterministic inputs, 1e-12)."""

import numpy as np
import pytest
import xarray as xr

from nmfre.performance import performance, tidy


def test_closed_form_small_example():
    est = xr.DataArray([1.0, 2.0, 3.0, 4.0], dims="replicate")
    se = xr.DataArray([1.0, 1.0, 2.0, 2.0], dims="replicate")
    lo, hi = est - 1.5, est + 1.5  # width 3; cover 2 iff est in [0.5, 3.5]: replicates 1, 2, 3
    p = xr.DataArray([0.01, 0.2, 0.04, 0.5], dims="replicate")
    r = performance(est, xr.DataArray(2.0), se=se, lower=lo, upper=hi, p_value=p, level=0.9)
    assert r["bias"] == 0.5 and r["mse"] == 1.5 and int(r["n_valid"]) == 4
    np.testing.assert_allclose(r["empse"], np.sqrt(5 / 3), rtol=1e-14)
    np.testing.assert_allclose(r["bias_mcse"], np.sqrt(5 / 3) / 2, rtol=1e-14)
    np.testing.assert_allclose(r["empse_mcse"], np.sqrt(5 / 3) / np.sqrt(6), rtol=1e-14)
    # (t_i - theta)^2 = 1, 0, 1, 4; minus mse 1.5: -0.5, -1.5, -0.5, 2.5 -> squares sum 9
    np.testing.assert_allclose(r["mse_mcse"], np.sqrt(9 / 12), rtol=1e-14)
    np.testing.assert_allclose(r["modse"], np.sqrt(2.5), rtol=1e-14)  # mean(1, 1, 4, 4) = 2.5
    var_v = 3.0  # sample variance of (1, 1, 4, 4)
    np.testing.assert_allclose(r["modse_mcse"], np.sqrt(var_v / (4 * 4 * 2.5)), rtol=1e-14)
    ratio = np.sqrt(2.5) / np.sqrt(5 / 3)
    np.testing.assert_allclose(r["modse_relerr"], 100 * (ratio - 1), rtol=1e-14)
    np.testing.assert_allclose(r["modse_relerr_mcse"], 100 * ratio * np.sqrt(var_v / (4 * 4 * 2.5**2) + 1 / 6),
                               rtol=1e-14)
    assert r["coverage"] == 0.75 and r["width"] == 3.0 and r["width_mcse"] == 0.0
    np.testing.assert_allclose(r["coverage_mcse"], np.sqrt(0.75 * 0.25 / 4), rtol=1e-14)
    # bias-eliminated: centre is mean(est) = 2.5, in [est - 1.5, est + 1.5] for est in [1, 4]: all
    assert r["be_coverage"] == 1.0 and r["be_coverage_mcse"] == 0.0
    assert r["rejection"] == 0.5
    # interval score (a = 0.1): width 3 plus 20 x miss distance; replicate 4 misses by 0.5
    scores = np.array([3.0, 3.0, 3.0, 3.0 + 20 * 0.5])
    np.testing.assert_allclose(r["interval_score"], scores.mean(), rtol=1e-14)
    np.testing.assert_allclose(r["interval_score_mcse"], scores.std(ddof=1) / 2, rtol=1e-14)


def test_against_loops_with_failures_and_labels():
    """Labelled dims are kept, NaN replicates (failures) are left out cell by cell."""
    rng = np.random.default_rng(0)
    R, S, Q = 50, 3, 2
    est = rng.normal(1.0, 0.3, (S, R, Q))
    se = np.abs(rng.normal(0.3, 0.05, (S, R, Q)))
    est[1, :5, 0] = np.nan  # five failed replicates in one cell
    truth = np.array([1.0, 1.1])
    da = lambda x: xr.DataArray(x, dims=("N", "replicate", "component"),  # noqa: E731
                                coords={"N": [10, 20, 30], "component": ["a", "b"]})
    r = performance(da(est), xr.DataArray(truth, dims="component", coords={"component": ["a", "b"]}), se=da(se),
                    lower=da(est - 1.96 * se), upper=da(est + 1.96 * se))
    assert r["bias"].dims == ("N", "component") and list(r["component"].values) == ["a", "b"]
    for s in range(S):
        for q in range(Q):
            ok = np.isfinite(est[s, :, q])
            e, sd, n = est[s, ok, q], se[s, ok, q], ok.sum()
            cell = r.isel(N=s, component=q)
            assert int(cell["n_valid"]) == n == (45 if (s, q) == (1, 0) else 50)
            np.testing.assert_allclose(cell["bias"], e.mean() - truth[q], rtol=1e-12)
            np.testing.assert_allclose(cell["empse"], e.std(ddof=1), rtol=1e-12)
            np.testing.assert_allclose(cell["modse"], np.sqrt((sd**2).mean()), rtol=1e-12)
            cov = np.mean((e - 1.96 * sd <= truth[q]) & (truth[q] <= e + 1.96 * sd))
            np.testing.assert_allclose(cell["coverage"], cov, rtol=1e-12)
            np.testing.assert_allclose(cell["coverage_mcse"], np.sqrt(cov * (1 - cov) / n), rtol=1e-12)
    frame = tidy(r)
    assert list(frame.columns) == ["N", "component", "measure", "value", "mcse"]
    assert set(frame["measure"]) == {"bias", "empse", "mse", "modse", "modse_relerr", "coverage", "be_coverage",
                                     "width", "interval_score"}
    row = frame[(frame.N == 20) & (frame.component == "a") & (frame.measure == "bias")]
    np.testing.assert_allclose(row["value"], r["bias"].sel(N=20, component="a"), rtol=0)


def test_bad_input():
    est = xr.DataArray(np.ones(4), dims="replicate")
    with pytest.raises(ValueError, match="no dim 'rep'"):
        performance(est, xr.DataArray(1.0), dim="rep")
    with pytest.raises(ValueError, match="both lower and upper"):
        performance(est, xr.DataArray(1.0), lower=est)
    with pytest.raises(ValueError, match="truth must not vary"):
        performance(est, est)


def test_model_se_mcse_counts_the_ses():
    """An SE missing where the estimate is not: modse and its MCSE use the SEs there are
    (Morris et al. Table 6, n = the SEs averaged; the MCSE used the estimates' count)."""
    rng = np.random.default_rng(1)
    est = rng.normal(1.0, 0.3, 12)
    se = np.abs(rng.normal(0.3, 0.05, 12))
    est[0] = np.nan
    se[[0, 1]] = np.nan
    r = performance(xr.DataArray(est, dims="replicate"), xr.DataArray(1.0), se=xr.DataArray(se, dims="replicate"))
    v = se[2:] ** 2
    modse, empse = np.sqrt(v.mean()), np.nanstd(est, ddof=1)
    np.testing.assert_allclose(r["modse"], modse, rtol=1e-12)
    np.testing.assert_allclose(r["modse_mcse"], np.sqrt(v.var(ddof=1) / (4 * 10 * modse**2)), rtol=1e-12)
    want = 100 * modse / empse * np.sqrt(v.var(ddof=1) / (4 * 10 * modse**4) + 1 / (2 * (11 - 1)))
    np.testing.assert_allclose(r["modse_relerr_mcse"], want, rtol=1e-12)
