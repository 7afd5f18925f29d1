"""nmfre.fit and nmfre.df_scan: settings, df cap, variances, warnings, seeds."""

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import rank2

import nmfre
from nmfre.settings import FitSettings


def test_df_cap_bounds_df_u_in_ml(orthodont, ml_fit):
    Y, A = orthodont
    fit = nmfre.fit(Y, A, rank=1, df_cap=0.5)
    assert fit.df_u <= fit.df_cap * (1 + 1e-8)
    assert fit.df_cap == 0.5 * 27
    assert fit.cap_hit and fit.solution.cap_hit_iters
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
    h = nmfre.fit(Y, A, rank=1, tau2=40.0, fix_tau2=True)
    assert h.tau2 == 40.0 and h.loglik >= g.loglik
    # a df cap that would move a fixed variance is refused (it replaced tau2 = 100 by 0.17 and
    # the summary called it fixed); with tau2 fixed alone ML moves sigma2 and keeps tau2
    with pytest.raises(ValueError, match="df_cap with fix_sigma2 and fix_tau2"):
        nmfre.fit(Y, A, rank=1, sigma2=0.1, tau2=100.0, fix_sigma2=True, fix_tau2=True, df_cap=0.3)
    with pytest.raises(ValueError, match="df_cap with fix_tau2 and method='paper'"):
        nmfre.fit(Y, A, rank=1, tau2=100.0, fix_tau2=True, df_cap=0.3, method="paper")
    capped = nmfre.fit(Y, A, rank=1, tau2=100.0, fix_tau2=True, df_cap=0.3)
    assert capped.tau2 == 100.0 and capped.cap_hit and capped.df_u <= capped.df_cap * (1 + 1e-8)


def test_auto_cap_with_several_starts_is_refused(orthodont):
    """df_cap='auto' scans the rates from one start: n_init > 1 was dropped silently (one start
    run and reported, settings.n_init 5)."""
    Y, A = orthodont
    with pytest.raises(ValueError, match="n_init > 1 with df_cap='auto'"):
        nmfre.fit(Y, A, rank=1, df_cap="auto", n_init=5)


def test_labelled_starting_values_are_aligned(orthodont, ml_fit):
    """Starting values labelled by feature and covariate are put in the data's order (they
    were taken by position: theta labelled (male, intercept) started as (intercept, male));
    other labels are refused; unlabelled values are taken as given."""
    Y, A = orthodont
    X, theta = ml_fit.X, ml_fit.theta
    plain = nmfre.fit(Y, A, rank=1, init={"X": X.values, "theta": theta.values}, max_iter=1)
    for start in ({"X": X.isel(feature=slice(None, None, -1)), "theta": theta.isel(covariate=[1, 0])},
                  {"X": X.to_pandas().iloc[::-1], "theta": theta.to_pandas().iloc[:, ::-1]}):
        again = nmfre.fit(Y, A, rank=1, init=start, max_iter=1)
        np.testing.assert_array_equal(again.theta, plain.theta)
        assert again.loglik == plain.loglik
    with pytest.raises(ValueError, match=r"init\['X'\]'s feature labels \['a', 'b', 'c', 'd'\] are not the data's"):
        nmfre.fit(Y, A, rank=1, init={"X": X.assign_coords(feature=list("abcd"))})
    with pytest.raises(ValueError, match="formula 'z ~ male' has a left-hand side"):
        nmfre.fit(Y, rank=1, covariates=pd.DataFrame({"male": A.to_numpy()[1], "z": 1.0}, index=A.columns),
                  formula="z ~ male")


def test_global_random_state_untouched():
    Y, A, _, _ = rank2(6)
    np.random.seed(11)
    before = np.random.get_state()[1].copy()
    nmfre.fit(Y, A, rank=2, init="random", n_init=2, seed=1).infer(n_boot=10, seed=2)
    assert np.array_equal(np.random.get_state()[1], before)


def test_convergence_warning_only_when_not_converged():
    Y, A, _, _ = rank2(8)
    with pytest.warns(nmfre.ConvergenceWarning):
        f = nmfre.fit(Y, A, rank=2, method="paper", max_iter=3, tol=1e-12)
    assert not f.converged and f.n_iter == 3 and f.stop_reason == "max_iter"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nmfre.fit(Y, A, rank=2).converged


def test_formula_interface(orthodont, ml_fit):
    Y, A = orthodont
    cov = pd.DataFrame({"male": A.loc["male"].to_numpy()}, index=A.columns)
    f = nmfre.fit(Y, rank=1, covariates=cov, formula="~ male")
    assert list(f.theta.covariate.values) == ["intercept", "male"]
    np.testing.assert_allclose(f.theta, ml_fit.theta, rtol=1e-10)


def test_default_intercept():
    Y, _, _, _ = rank2(9)
    f = nmfre.fit(Y, rank=2)
    assert list(f.theta.covariate.values) == ["intercept"]


def test_fit_and_df_scan_share_settings(orthodont):
    Y, A = orthodont
    f = nmfre.fit(Y, A, rank=1, method="paper", df_cap="auto")
    table = nmfre.df_scan(Y, A, rank=1)
    pd.testing.assert_frame_equal(table, f.scan)
    assert table.attrs["chosen_rate"] == f.df_cap_rate == 0.3
    assert f.settings == FitSettings.create(method="paper", df_cap="auto")
    assert f.settings.max_iter == 50000 and f.settings.tol == 1e-5 and f.settings.theta == "nonneg"
    # df_scan checks what fit checks (it skipped the negative-Y check before)
    with pytest.raises(ValueError, match="negative"):
        nmfre.df_scan(Y - 30, A, rank=1)
    with pytest.raises(ValueError, match="zero variance"):
        nmfre.df_scan(np.ones((4, 27)), rank=1)
    with pytest.raises(ValueError, match="theta"):
        nmfre.df_scan(Y, A, rank=1, theta="free")


def test_settings_round_trip_and_validation():
    s = FitSettings.create(theta="nonneg", df_cap=0.3, n_init=3, init="random")
    assert FitSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown settings"):
        FitSettings.from_dict({"methd": "ml"})
    with pytest.raises(ValueError, match="n_init > 1"):
        FitSettings.create(init={"X": np.ones((2, 1))}, n_init=2)
