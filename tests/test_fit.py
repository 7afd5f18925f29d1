"""Properties of the fits: closed forms, invariances, monotonicity, labels, IO."""

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import simulate_rank2
from scipy.stats import multivariate_normal

import nmfre
from nmfre import fitting
from nmfre.inference import align_components
from nmfre.likelihood import nll, sufficient


def direct_nll(Y, X, theta, A, sigma2, tau2):
    P = Y.shape[0]
    Sigma = sigma2 * np.eye(P) + tau2 * X @ X.T
    mean = X @ theta @ A
    return -sum(multivariate_normal(mean[:, n], Sigma).logpdf(Y[:, n]) for n in range(Y.shape[1]))


def test_nll_formula_matches_dense_gaussian():
    Y, A, X, theta = simulate_rank2(1, N=20)
    val = nll(sufficient(Y, X, theta @ A), 0.3, 0.3 / 2.5)
    assert val == pytest.approx(direct_nll(Y, X, theta, A, 0.3, 2.5), rel=1e-10)


def test_loglik_is_the_marginal_loglik(ml_fit, orthodont):
    Y, A = (d.to_numpy() for d in orthodont)
    f = ml_fit
    assert -f.loglik == pytest.approx(direct_nll(Y, f.X.values, f.theta.values, A, f.sigma2, f.tau2), rel=1e-11)
    assert f.nll_trace[-1] == pytest.approx(-f.loglik, rel=0, abs=1e-12)


def test_free_theta_is_ols_given_x(ml_fit, orthodont):
    """GLS = OLS for fixed X: Theta = (X'X)^-1 X'Y A'(AA')^-1."""
    Y, A = (d.to_numpy() for d in orthodont)
    X = ml_fit.X.values
    ols = np.linalg.solve(X.T @ X, X.T @ Y @ A.T) @ np.linalg.inv(A @ A.T)
    np.testing.assert_allclose(ml_fit.theta.values, ols, rtol=1e-12)


def test_u_is_the_blup(ml_fit, orthodont):
    Y, A = (d.to_numpy() for d in orthodont)
    X, th = ml_fit.X.values, ml_fit.theta.values
    M = X.T @ X + ml_fit.lam * np.eye(1)
    np.testing.assert_allclose(ml_fit.U.values, np.linalg.solve(M, X.T @ (Y - X @ th @ A)), rtol=1e-10)


def test_profile_is_stationary_in_variances(ml_fit, orthodont):
    Y, A = (d.to_numpy() for d in orthodont)
    s = sufficient(Y, ml_fit.X.values, ml_fit.theta.values @ A)
    f0 = nll(s, ml_fit.sigma2, ml_fit.lam)
    for ds2, dl in [(1.001, 1), (0.999, 1), (1, 1.001), (1, 0.999)]:
        assert nll(s, ml_fit.sigma2 * ds2, ml_fit.lam * dl) >= f0


@pytest.mark.parametrize("theta", ["free", "nonneg"])
def test_nll_trace_monotone_rank2(theta):
    Y, A, _, _ = simulate_rank2(3)
    fit = nmfre.fit(Y, A, rank=2, theta=theta)
    assert fit.converged
    tr = fit.nll_trace
    assert np.all(np.diff(tr) <= 0), np.diff(tr).max()
    assert tr[-1] == pytest.approx(-fit.loglik)
    np.testing.assert_allclose(fit.X.sum("feature"), 1.0, atol=1e-12)
    assert (fit.X >= 0).all()
    if theta == "nonneg":
        assert (fit.theta >= 0).all()


def test_ecme_and_scoring_steps_never_increase_nll():
    Y, A, _, _ = simulate_rank2(4)
    X0 = fitting.nndsvd(Y, 2)
    for cap in [None, 0.3 * 150 * 2]:
        prob = fitting.Problem(Y, A, 2, False, "free", 1.0, 1.0, cap)
        st = fitting.initial_state(prob, X0, None)
        for _ in range(15):
            new = fitting.ecme(prob, st)
            assert new.nll <= st.nll
            st = new
            new = fitting.scoring_step(prob, st)
            if new is not None:
                assert new.nll <= st.nll
                st = new


def test_recovers_truth_rank2():
    Y, A, X, theta = simulate_rank2(5, N=400)
    fit = nmfre.fit(Y, A, rank=2, n_init=3, seed=1)
    perm, cos = align_components(X, fit.X.values)
    assert cos.min() > 0.99
    np.testing.assert_allclose(fit.theta.values[perm], theta, atol=1.5)


def test_scaling_invariance(orthodont, ml_fit):
    Y, A = orthodont
    c = 3.5
    f2 = nmfre.fit(Y * c, A, rank=1)
    np.testing.assert_allclose(f2.theta, c * ml_fit.theta, rtol=1e-6)
    np.testing.assert_allclose(f2.U, c * ml_fit.U, rtol=1e-5, atol=1e-6)
    assert f2.sigma2 == pytest.approx(c**2 * ml_fit.sigma2, rel=1e-6)
    assert f2.tau2 == pytest.approx(c**2 * ml_fit.tau2, rel=1e-5)
    P, N = Y.shape
    assert f2.loglik == pytest.approx(ml_fit.loglik - N * P * np.log(c), rel=1e-10)


def test_permuting_units_permutes_u(orthodont, ml_fit):
    Y, A = orthodont
    perm = np.random.default_rng(0).permutation(Y.shape[1])
    f2 = nmfre.fit(Y.iloc[:, perm], A.iloc[:, perm], rank=1)
    np.testing.assert_allclose(f2.U.sel(unit=ml_fit.U.unit), ml_fit.U, rtol=1e-6, atol=1e-7)
    assert f2.loglik == pytest.approx(ml_fit.loglik, rel=1e-12)


def test_df_cap_bounds_df_u_in_ml(orthodont, ml_fit):
    Y, A = orthodont
    fit = nmfre.fit(Y, A, rank=1, df_cap=0.5)
    assert fit.df_u <= fit.df_cap * (1 + 1e-8)
    assert fit.df_cap == 0.5 * 27
    assert fit.cap_hit
    assert fit.loglik <= ml_fit.loglik  # a constraint cannot improve the likelihood
    assert np.all(np.diff(fit.nll_trace) <= 0)
    loose = nmfre.fit(Y, A, rank=1, df_cap=1.0)
    assert loose.loglik == pytest.approx(ml_fit.loglik, rel=1e-10)


def test_fixed_variances(orthodont):
    Y, A = orthodont
    f = nmfre.fit(Y, A, rank=1, sigma2=2.0, fix_sigma2=True)
    assert f.sigma2 == 2.0
    g = nmfre.fit(Y, A, rank=1, sigma2=2.0, tau2=40.0, fix_sigma2=True, fix_tau2=True)
    assert (g.sigma2, g.tau2) == (2.0, 40.0)
    assert f.loglik >= g.loglik


def test_restarts_keep_best_and_are_reproducible():
    Y, A, _, _ = simulate_rank2(6)
    f1 = nmfre.fit(Y, A, rank=2, init="random", n_init=4, seed=np.random.default_rng(7))
    f2 = nmfre.fit(Y, A, rank=2, init="random", n_init=4, seed=7)
    assert len(f1.restarts) == 4
    assert -f1.loglik == pytest.approx(f1.restarts.nll.min())
    np.testing.assert_array_equal(f1.X.values, f2.X.values)


def test_global_random_state_untouched():
    Y, A, _, _ = simulate_rank2(6)
    np.random.seed(11)
    before = np.random.get_state()[1].copy()
    nmfre.fit(Y, A, rank=2, init="random", n_init=2, seed=1).infer(n_boot=10, seed=2)
    assert np.array_equal(np.random.get_state()[1], before)


def test_convergence_warning_only_when_not_converged():
    Y, A, _, _ = simulate_rank2(8)
    with pytest.warns(nmfre.ConvergenceWarning):
        f = nmfre.fit(Y, A, rank=2, method="paper", max_iter=3, tol=1e-12)
    assert not f.converged and f.n_iter == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nmfre.fit(Y, A, rank=2).converged


def test_identifiability_warning():
    rng = np.random.default_rng(0)
    Y = rng.uniform(1, 2, (2, 30))
    with pytest.warns(nmfre.IdentifiabilityWarning, match="identifiab"):
        nmfre.fit(Y, rank=2, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error", nmfre.IdentifiabilityWarning)
        nmfre.fit(Y, rank=2, df_cap=0.3, max_iter=50)


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
    # A with units in another order is aligned by label
    f2 = nmfre.fit(Y, A.iloc[:, ::-1], rank=1)
    assert f2.loglik == pytest.approx(ml_fit.loglik, rel=1e-12)


def test_formula_interface(orthodont, ml_fit):
    Y, A = orthodont
    cov = pd.DataFrame({"male": A.loc["male"].to_numpy()}, index=A.columns)
    f = nmfre.fit(Y, rank=1, covariates=cov, formula="~ male")
    assert list(f.theta.covariate.values) == ["intercept", "male"]
    np.testing.assert_allclose(f.theta, ml_fit.theta, rtol=1e-10)


def test_default_intercept():
    Y, _, _, _ = simulate_rank2(9)
    f = nmfre.fit(Y, rank=2)
    assert list(f.theta.covariate.values) == ["intercept"]


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


def test_netcdf_round_trip(tmp_path, orthodont):
    Y, A = orthodont
    fit = nmfre.fit(Y, A, rank=1, method="paper", df_cap="auto")
    path = tmp_path / "fit.nc"
    fit.to_netcdf(path)
    back = nmfre.load(path)
    assert back.to_dataset().identical(fit.to_dataset())
    assert back.df_cap_rate == 0.3 and back.scan.attrs["chosen_rate"] == 0.3
    assert back.loglik == fit.loglik and back.converged == fit.converged
    xr.testing.assert_identical(back.U, fit.U)
    inf = back.infer(n_boot=50, seed=1)
    assert np.isfinite(inf.table.se).all()


def test_summary_renders(ml_fit):
    text = str(ml_fit.summary())
    for key in ("sigma2", "tau2", "df_U", "Basis1", "intercept", "male", "Converged"):
        assert key in text
    assert "<table>" in ml_fit._repr_html_()


def test_predict_checks_new_design(ml_fit):
    one = ml_fit.predict([1.0, 0.0], random=True)
    assert one.sizes == {"feature": 4, "unit": 1}
    bad = pd.DataFrame([[1.0], [1.0]], index=["intercept", "female"], columns=["x"])
    with pytest.raises(ValueError, match="do not match"):
        ml_fit.predict(bad)
    with pytest.raises(ValueError, match="A_new contains NaN"):
        ml_fit.predict(np.array([[1.0], [np.nan]]))
    da = xr.DataArray([[1.0, 1.0], [0.0, 1.0]], dims=("covariate", "unit"),
                      coords={"covariate": ["intercept", "male"], "unit": ["g", "b"]})
    assert list(ml_fit.predict(da).unit.values) == ["g", "b"]
