"""nmfre.results.NMFREFit: labels, fitted values, prediction, summary, netCDF round trip."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import direct_nll

import nmfre


def test_loglik_is_the_marginal_loglik(ml_fit, orthodont):
    Y, A = (d.to_numpy() for d in orthodont)
    f = ml_fit
    assert -f.loglik == pytest.approx(direct_nll(Y, f.X.values, f.theta.values, A, f.sigma2, f.tau2), rel=1e-11)
    assert f.nll_trace[-1] == pytest.approx(-f.loglik, rel=0, abs=1e-12)


def test_labels_flow_and_xarray_input(orthodont, ml_fit):
    Y, A = orthodont
    assert ml_fit.X.dims == ("feature", "component")
    assert list(ml_fit.X.feature.values) == list(Y.index)
    assert list(ml_fit.U.unit.values) == list(Y.columns)
    assert list(ml_fit.theta.covariate.values) == ["intercept", "male"]
    Yx = xr.DataArray(Y.to_numpy().T, dims=("unit", "feature"),
                      coords={"unit": list(Y.columns), "feature": list(Y.index)})
    Ax = xr.DataArray(A.to_numpy(), dims=("covariate", "unit"),
                      coords={"covariate": list(A.index), "unit": list(A.columns)})
    f = nmfre.fit(Yx, Ax, rank=1)
    assert f.loglik == pytest.approx(ml_fit.loglik, rel=1e-12)
    f2 = nmfre.fit(Y, A.iloc[:, ::-1], rank=1)  # A with units in another order is aligned by label
    assert f2.loglik == pytest.approx(ml_fit.loglik, rel=1e-12)


def test_permuting_units_permutes_u(orthodont, ml_fit):
    Y, A = orthodont
    perm = np.random.default_rng(0).permutation(Y.shape[1])
    f2 = nmfre.fit(Y.iloc[:, perm], A.iloc[:, perm], rank=1)
    np.testing.assert_allclose(f2.U.sel(unit=ml_fit.U.unit), ml_fit.U, rtol=1e-6, atol=1e-7)
    assert f2.loglik == pytest.approx(ml_fit.loglik, rel=1e-12)


def test_public_parts_and_immutability(ml_fit):
    assert ml_fit.data.Y.shape == (4, 27) and ml_fit.solution.nll == -ml_fit.loglik
    with pytest.raises(AttributeError):
        ml_fit.theta = None
    with pytest.raises(Exception):  # noqa: B017  (frozen dataclass)
        ml_fit.solution.sigma2 = 1.0


def test_fitted_predict_and_r2(ml_fit, orthodont, ref):
    Y, A = orthodont
    np.testing.assert_allclose(ml_fit.predict(), ml_fit.fitted(True))
    fixed = ml_fit.predict(random=False)
    np.testing.assert_allclose(fixed, ml_fit.X.values @ ml_fit.theta.values @ A.to_numpy())
    new = pd.DataFrame([[1.0, 1.0], [1.0, 0.0]], index=["intercept", "male"], columns=["boy", "girl"])
    p = ml_fit.predict(new)
    assert list(p.unit.values) == ["boy", "girl"]
    np.testing.assert_allclose(p.sel(unit="boy"), fixed.sel(unit="M01"))
    with pytest.raises(ValueError, match="A_new"):
        ml_fit.predict(np.ones((3, 2)))
    r = ref["runs"]["head_signed"]
    assert ml_fit.r_squared == pytest.approx(r["r_squared_grandmean_blup_recomputed"], rel=1e-6)
    assert ml_fit.r_squared_fixed == pytest.approx(r["r_squared_grandmean_fixed_recomputed"], rel=1e-6)
    assert 0 < ml_fit.r_squared_fixed < ml_fit.r_squared < 1


def test_predict_checks_new_design(ml_fit):
    one = ml_fit.predict([1.0, 0.0], random=True)
    assert one.sizes == {"feature": 4, "unit": 1}
    bad = pd.DataFrame([[1.0], [1.0]], index=["intercept", "female"], columns=["x"])
    with pytest.raises(ValueError, match="do not match"):
        ml_fit.predict(bad)
    with pytest.raises(ValueError, match="A_new contains NaN"):
        ml_fit.predict(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="random"):
        ml_fit.predict(random="yes")
    da = xr.DataArray([[1.0, 1.0], [0.0, 1.0]], dims=("covariate", "unit"),
                      coords={"covariate": ["intercept", "male"], "unit": ["g", "b"]})
    assert list(ml_fit.predict(da).unit.values) == ["g", "b"]
    # a Series is one unit, indexed by covariate (as a 1-D array is)
    series = ml_fit.predict(pd.Series([1.0, 0.0], index=["intercept", "male"]))
    np.testing.assert_array_equal(series.values, one.values)
    with pytest.raises(ValueError, match="do not match"):
        ml_fit.predict(pd.Series([1.0, 0.0], index=["intercept", "female"]))
    # Y_new's unit labels name the units when A_new has none; labels on both must agree; Y_new
    # is checked whether or not random effects are added
    A2 = np.array([[1.0, 1.0], [0.0, 1.0]])
    Y2 = pd.DataFrame(np.full((4, 2), 25.0), index=ml_fit.X["feature"].values, columns=["a", "b"])
    assert list(ml_fit.predict(A2, Y_new=Y2).unit.values) == ["a", "b"]
    with pytest.raises(ValueError, match=r"Y_new unit labels \['a', 'b'\] do not match A_new's \['g', 'b'\]"):
        ml_fit.predict(da, Y_new=Y2)
    with pytest.raises(ValueError, match="Y_new must be numeric"):
        ml_fit.predict(A2, Y_new="garbage", random=False)
    np.testing.assert_array_equal(ml_fit.predict(A2, Y_new=Y2, random=False).values, ml_fit.predict(A2).values)


def test_netcdf_round_trip(tmp_path, orthodont):
    Y, A = orthodont
    fit = nmfre.fit(Y, A, rank=1, method="paper", df_cap="auto")
    path = tmp_path / "fit.nc"
    fit.to_netcdf(path)
    back = nmfre.load(path)
    assert back.to_dataset().identical(fit.to_dataset())
    assert back.df_cap_rate == 0.3 and back.scan.attrs["chosen_rate"] == 0.3
    assert back.loglik == fit.loglik and back.converged == fit.converged
    assert back.settings == fit.settings
    xr.testing.assert_identical(back.U, fit.U)
    inf = back.infer(n_boot=50, seed=1)
    assert np.isfinite(inf.table.se).all()
    with pytest.raises(ValueError, match="not an nmfre fit"):
        nmfre.NMFREFit.from_dataset(xr.Dataset({"Y": fit.Y}))


def test_summary_renders_and_infer_does_not_change_it(ml_fit):
    before = str(ml_fit.summary())
    for key in ("sigma2", "tau2", "df_U", "Basis1", "intercept", "male", "Converged"):
        assert key in before
    assert "<table>" in ml_fit._repr_html_()
    inf = ml_fit.infer(n_boot=50, seed=1)
    assert str(ml_fit.summary()) == before  # infer() returns a result, it does not mutate the fit
    with_inf = str(ml_fit.summary(inference=inf))
    assert "Boot.SE" in with_inf and "Boot.SE" not in before


def test_summary_says_how_it_stopped_and_what_was_missing(orthodont):
    """The stop reason in words, singular counts, and a line on missing entries (the summary
    never said that data were missing)."""
    Y, A = orthodont
    Yv = Y.to_numpy().copy()
    Yv[1, :5] = np.nan
    text = str(nmfre.fit(Yv, A.to_numpy(), rank=1).summary())
    assert "Missing         5 of the 108 entries of Y (fitted on the 103 observed)" in text
    assert "stopped at the tolerance, tol 1e-10, 1 start)" in text
    with pytest.warns(nmfre.ConvergenceWarning):
        one = str(nmfre.fit(Y, A, rank=1, max_iter=1).summary())
    assert "NO (1 iteration, stopped at max_iter" in one and "Missing" not in one


def test_summary_says_what_was_fixed_chosen_or_not_estimated(orthodont):
    """A fixed variance is marked fixed; an automatic df cap says the scan chose its rate; a
    paper fit that stopped before the algorithm's first sigma2 update (iteration 50) says its
    sigma2 is the starting value (and a longer one does not)."""
    Y, A = orthodont
    fixed = str(nmfre.fit(Y, A, rank=1, fix_tau2=True, tau2=10.0).summary())
    assert "random effect (tau2, fixed)" in fixed and "residual (sigma2)" in fixed
    auto = nmfre.fit(Y, A, rank=1, method="paper", df_cap="auto", sigma2=5.0)
    text = str(auto.summary())
    assert f"(rate {auto.df_cap_rate:g} chosen by the scan, df_cap='auto';" in text
    assert auto.n_iter < 50 and auto.sigma2 == 5.0
    assert "this fit stopped after 2, so sigma2 is its starting value (5), not an estimate" in text
    long = nmfre.fit(Y, A, rank=1, method="paper", sigma2=5.0)
    assert long.n_iter >= 50 and long.sigma2 != 5.0
    assert "starting value" not in str(long.summary()) and "chosen by the scan" not in str(long.summary())


def test_text_labels_come_back_as_python_strings(ml_fit, tmp_path):
    """Component, feature and covariate labels have one dtype (object, Python str) in a fit, after
    a netCDF round trip (they came back as <U) and after a zarr one (numpy's StringDType)."""
    ml_fit.to_netcdf(tmp_path / "f.nc")
    ml_fit.to_dataset().to_zarr(tmp_path / "f.zarr", zarr_format=2)
    back = [nmfre.load(tmp_path / "f.nc"),
            nmfre.NMFREFit.from_dataset(xr.open_zarr(tmp_path / "f.zarr", consolidated=False).load())]
    for f in [ml_fit, *back]:
        for arr, dim in ((f.X, "component"), (f.X, "feature"), (f.theta, "covariate")):
            assert arr[dim].dtype == object and all(type(x) is str for x in arr[dim].values), (dim, arr[dim].dtype)
