"""Missing values end to end: the masked likelihood, its ML fit, inference, BLUPs,
imputation, prediction, long format, cross-validation, dask, simulation."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal

import nmfre
from nmfre import simulate
from nmfre.core import passes
from nmfre.core.covariance import COV_RIDGE

statsmodels = pytest.importorskip("statsmodels.api")


def _masked_orthodont(rate=0.2, seed=0):
    Y, A = nmfre.load_orthodont()
    Ym = Y.copy()
    Ym[np.random.default_rng(seed).random(Y.shape) < rate] = np.nan
    Ym.iloc[0] = Y.iloc[0]  # every child keeps its first visit
    return Ym, A


@pytest.fixture(scope="module")
def masked():
    Y, A = _masked_orthodont()
    return Y, A, nmfre.fit(Y, A, rank=1)


def _direct_loglik(Y, A, X, theta, s2, t2):
    ll = 0.0
    for n in range(Y.shape[1]):
        o = ~np.isnan(Y[:, n])
        Xo = X[o]
        ll += multivariate_normal(Xo @ theta @ A[:, n], s2 * np.eye(o.sum()) + t2 * Xo @ Xo.T).logpdf(Y[o, n])
    return ll


def test_loglik_is_the_likelihood_of_the_observed_entries(masked):
    Y, A, f = masked
    assert np.isnan(Y.to_numpy()).sum() > 10 and f.converged
    direct = _direct_loglik(Y.to_numpy(), A.to_numpy(), f.X.values, f.theta.values, f.sigma2, f.tau2)
    assert f.loglik == pytest.approx(direct, rel=1e-12)


def test_mixed_model_at_the_fitted_basis_reaches_the_same_likelihood(masked):
    """At NMF-RE's X, y_nO = X_O Theta a_n + x_O u_n + e is a linear mixed model (random slope
    on x_O). statsmodels MixedLM on the observed rows has the same likelihood: at NMF-RE's
    variance ratio its GLS effects, error variance and log-likelihood are NMF-RE's (exact, to
    rounding), and its own optimiser reaches that likelihood without passing it. (Its estimates
    are not compared: where its L-BFGS stops is a path of another library; it stopped 3.8e-7
    below NMF-RE's log-likelihood, with sigma2 7.8e-5 away, while 1e-4 was asserted.)"""
    Y, A, f = masked
    x = f.X.values[:, 0]
    rows = [(n, p) for n in range(Y.shape[1]) for p in range(Y.shape[0]) if not np.isnan(Y.iat[p, n])]
    y = np.array([Y.iat[p, n] for n, p in rows])
    exog = np.array([A.to_numpy()[:, n] * x[p] for n, p in rows])
    exog_re = np.array([[x[p]] for n, p in rows])
    groups = np.array([n for n, _ in rows])
    model = statsmodels.MixedLM(y, exog, groups, exog_re=exog_re)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lmm = model.fit(reml=False, method="lbfgs", gtol=1e-10)
    assert f.loglik - 1e-5 <= lmm.llf <= f.loglik + 1e-6
    ratio, none = np.array([[f.tau2 / f.sigma2]]), np.zeros(0)  # statsmodels' cov_re is in scale units
    fe, _ = model.get_fe_params(ratio, none)
    np.testing.assert_allclose(fe, f.theta.values.ravel(), rtol=1e-9)
    assert model.get_scale(fe, ratio, none) == pytest.approx(f.sigma2, rel=1e-9)
    params = statsmodels.regression.mixed_linear_model.MixedLMParams.from_components(fe, cov_re=ratio, vcomp=none)
    assert model.loglike(params, profile_fe=False) == pytest.approx(f.loglik, rel=1e-12)


def test_blup_and_imputation_are_the_conditional_means(masked):
    Y, A, f = masked
    Yv, Av = Y.to_numpy(), A.to_numpy()
    X, th = f.X.values, f.theta.values
    Sigma = f.sigma2 * np.eye(4) + f.tau2 * X @ X.T
    imp = f.impute()
    imp0 = f.impute(random=False)
    assert imp.attrs["n_imputed"] == int(np.isnan(Yv).sum())
    for n in range(Yv.shape[1]):
        o = ~np.isnan(Yv[:, n])
        mu = X @ th @ Av[:, n]
        u = np.linalg.solve(X[o].T @ X[o] + f.lam * np.eye(1), X[o].T @ (Yv[o, n] - mu[o]))
        np.testing.assert_allclose(f.U.values[:, n], u, rtol=1e-10)
        if (~o).any():  # E[y_m | y_o] from Gaussian conditioning
            cond = mu[~o] + Sigma[np.ix_(~o, o)] @ np.linalg.solve(Sigma[np.ix_(o, o)], Yv[o, n] - mu[o])
            np.testing.assert_allclose(imp.values[~o, n], cond, rtol=1e-10)
            np.testing.assert_allclose(imp0.values[~o, n], mu[~o], rtol=1e-12)
        np.testing.assert_array_equal(imp.values[o, n], Yv[o, n])


def test_predict_new_units_from_their_observed_features(masked):
    Y, A, f = masked
    new_A = A.iloc[:, :3].set_axis(["a", "b", "c"], axis=1)
    new_Y = Y.iloc[:, :3].set_axis(["a", "b", "c"], axis=1)
    pred = f.predict(new_A, Y_new=new_Y)
    np.testing.assert_allclose(pred.values, f.fitted(True).values[:, :3], rtol=1e-10)
    np.testing.assert_allclose(f.predict(new_A).values, f.fitted(False).values[:, :3], rtol=1e-12)
    with pytest.raises(ValueError, match="Y_new must be"):
        f.predict(new_A, Y_new=new_Y.iloc[:, :2])
    with pytest.raises(ValueError, match="no observed entry"):
        f.predict(new_A, Y_new=new_Y * np.nan)


def test_inference_uses_each_units_observed_rows(masked):
    Y, A, f = masked
    inf = f.infer(n_boot=200, seed=1)
    Yv, Av = Y.to_numpy(), A.to_numpy()
    X = f.X.values
    s2 = inf.sigma2_used
    info = sum(np.kron(np.outer(Av[:, n], Av[:, n]), X[o].T @ np.linalg.solve(
        s2 * np.eye(o.sum()) + (s2 / f.lam) * X[o] @ X[o].T, X[o]))
        for n in range(Yv.shape[1]) for o in [~np.isnan(Yv[:, n])])
    np.testing.assert_allclose(inf.info.values, info + COV_RIDGE * np.diag(np.diag(info)), rtol=1e-9)
    n_obs = int((~np.isnan(Yv)).sum())
    assert inf.attrs["df_u"] == pytest.approx(f.df_u, rel=1e-12)
    rss = np.nansum((Yv - f.fitted(True).values) ** 2)
    assert s2 == pytest.approx(rss / (n_obs - f.df_u - 2), rel=1e-10)
    assert np.isfinite(inf.table.boot_se).all()
    ref = f.infer(n_boot=8, seed=2, method="refit")
    assert ref.attrs["refit_converged_fraction"] == 1.0
    # the description says the data had missing entries, and how many (it did not)
    n_missing = int(np.isnan(Yv).sum())
    assert n_missing > 0 and inf.attrs["n_missing"] == n_missing == ref.attrs["n_missing"]
    assert inf.describe().endswith(f"from each unit's observed entries ({n_missing} missing entries of Y)")


def test_df_u_is_the_per_unit_sum(masked):
    Y, _, f = masked
    X = f.X.values
    expected = sum(np.trace(np.linalg.solve(X[o].T @ X[o] + f.lam * np.eye(1), X[o].T @ X[o]))
                   for o in (~np.isnan(Y.to_numpy())).T)
    assert f.df_u == pytest.approx(expected, rel=1e-12)
    capped = nmfre.fit(Y, nmfre.load_orthodont()[1], rank=1, df_cap=0.5)
    assert capped.df_u <= capped.df_cap * (1 + 1e-8) and capped.cap_hit


@pytest.mark.parametrize("theta", ["free", "nonneg"])
def test_rank2_masked_fit_is_monotone_and_optimal(theta):
    d = simulate.rank2(N=200, seed=5)
    Y = d["Y"].values.copy()
    Y[np.random.default_rng(1).random(Y.shape) < 0.2] = np.nan
    f = nmfre.fit(Y, d["A"].values, rank=2, theta=theta)
    assert f.converged and np.all(np.diff(f.nll_trace) <= 0)
    tight = nmfre.fit(Y, d["A"].values, rank=2, theta=theta, tol=1e-14, max_iter=20000)
    assert f.loglik == pytest.approx(tight.loglik, abs=1e-7)
    direct = _direct_loglik(Y, d["A"].values, f.X.values, f.theta.values, f.sigma2, f.tau2)
    assert f.loglik == pytest.approx(direct, rel=1e-11)


def _weak_component(seed, P, N, Q, frac=0.05):
    """Dirichlet(0.5) basis, one component whose Theta row is 1e-3 of the others', noise sd
    half the signal's, ``frac`` of the cells missing (QA's generator)."""
    rng = np.random.default_rng(seed)
    A = np.vstack([np.ones(N), rng.binomial(1, 0.5, N)])
    X = rng.dirichlet(np.full(P, 0.5), size=Q).T
    theta = rng.uniform(5, 10, (Q, 2))
    theta[Q - 1] *= 1e-3
    S = X @ (theta @ A + rng.normal(size=(Q, N)))
    Y = S + 0.5 * S.std() * rng.normal(size=S.shape)
    Y[rng.random(Y.shape) < frac] = np.nan
    return Y, A


def test_converged_with_missing_values_means_the_decreases_are_done(monkeypatch):
    """With missing values no observed Hessian certifies convergence, and the expected
    information can predict less than is left (the fault of ml.TAIL_WINDOWS, found on a
    150 x 400 fit, here on a smaller one of the same design): without the rule this fit stops
    "converged" 3.6 tolerances above where the rule ends it. Converged now also means that the
    decreases' own rate leaves less than the tolerance (ml.geometric_tail): going on from the
    returned fit at a tolerance 100 times tighter gains less than twice the fit's tolerance
    (measured 0.52 of it; the tail is an estimate, and the point where a path stops moves with
    the machine's rounding by up to about one iteration's decrease, so the bound has room)."""
    from nmfre.core import ml

    Y, A = _weak_component(0, 40, 120, 4)
    f = nmfre.fit(Y, A, rank=4)
    thr = 1e-10 * (1 + abs(f.loglik))
    assert f.converged and np.all(np.diff(f.nll_trace) <= 0)
    more = nmfre.fit(Y, A, rank=4, init={"X": f.X, "theta": f.theta}, tol=1e-12)
    assert more.converged and more.loglik - f.loglik < 2 * thr
    monkeypatch.setattr(ml, "geometric_tail", lambda trace: 0.0)
    old = nmfre.fit(Y, A, rank=4)
    assert old.converged and old.n_iter < f.n_iter and f.loglik - old.loglik > thr


def test_geometric_tail_closed_forms():
    """Geometric decreases: the tail exactly (``d r / (1 - r)``, the sum still to come);
    decreases in a pattern of period 1, 2 or 3 (a large phase, then small ones, shrinking by
    0.95 a period), wherever the trace ends: at least 0.85 of the sum still to come and at most
    4 times it (measured: period 2, 1.01 ending on the small phase and 3.56 on the large one;
    period 3, 1.02 ending on the large or the second small phase and 2.60 on the first small
    one). A median of single ratios gave the rate of one phase (a tail 14 times too small); a
    window of 3 alone gives 0.06 of the sum on period 2 ending on its small phase, one of 2
    alone 2.5e-6 on period 3 ending on its second small phase (the named fault: a
    complete-data fit stopped at a small phase; ml.TAIL_WINDOWS). A steady run ended by one
    anomalously small decrease is not taken for convergence (the windows' tail, not the cap
    at that decrease). Quadratic convergence leaves less than the
    last decrease at once (the last decreases of a 12 x 60 fit: the windows alone gave 1.7e-6,
    which held a converged fit for two more iterations of rounding's size); a flat or short
    trace."""
    from nmfre.core.ml import TAIL_RATE_MAX, geometric_tail

    r = 0.9
    d = 1e-3 * r ** np.arange(40)
    trace = 100.0 - np.concatenate([[0.0], np.cumsum(d)])
    assert geometric_tail(trace) == pytest.approx(d[-1] * r / (1 - r), rel=1e-9)

    def pattern(k, n):
        return 0.95 ** (np.arange(n) // k) * np.tile([1e-2] + [1e-5] * (k - 1), n)[:n]

    for k in (1, 2, 3):
        to_come = pattern(k, 5000)
        for n in range(60, 60 + k):  # ending on each phase
            trace = 10.0 - np.concatenate([[0.0], np.cumsum(pattern(k, n))])
            assert 0.85 <= geometric_tail(trace) / to_come[n:].sum() <= 4.0, (k, n)
    fit = -np.cumsum([15.07, 2.74, 8.11e-2, 1.99e-4, 5.2e-10])
    assert geometric_tail(fit) < 5.2e-10
    for steady in ([8.0, 4.0, 2.0, 1.0, 1e-3], [32.0, 16.0, 8.0, 4.0, 2.0, 1.0, 1e-3]):
        assert geometric_tail(-np.cumsum([0.0, *steady])) > 0.3  # the windows' (0.35, 0.91), not 1e-3
    quad = 1.0 - np.concatenate([[0.0], np.cumsum([1e-1, 1e-2, 1e-4, 1e-8, 1e-16, 1e-32, 1e-40, 1e-45, 1e-48])])
    assert geometric_tail(quad) < 1e-14
    assert geometric_tail([5.0, 5.0, 5.0]) == 0.0 and geometric_tail([5.0]) == 0.0
    assert geometric_tail([5.0, 4.0]) == 1.0  # one decrease: no rate to estimate
    up = 1.0 - np.concatenate([[0.0], np.cumsum([1e-6, 1e-6, 2e-6, 2e-6])])  # not shrinking
    assert geometric_tail(up) == pytest.approx(4e-6 / 2 * TAIL_RATE_MAX / (1 - TAIL_RATE_MAX), rel=1e-6)


def test_no_missing_takes_the_complete_data_path(orthodont, ml_fit):
    Y, A = orthodont
    assert passes.kind(Y.to_numpy()) == "dense"
    f = nmfre.fit(Y.astype(float), A, rank=1)
    assert f.loglik == ml_fit.loglik and np.array_equal(f.theta.values, ml_fit.theta.values)


def test_dask_with_missing_equals_in_memory(masked):
    da = pytest.importorskip("dask.array")
    Y, A, f = masked
    g = nmfre.fit(da.from_array(Y.to_numpy(), chunks=(4, 10)), A.to_numpy(), rank=1)
    assert g.loglik == pytest.approx(f.loglik, rel=1e-12)
    np.testing.assert_allclose(g.theta.values, f.theta.values, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(g.U), f.U.values, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(g.infer(n_boot=50).se, f.infer(n_boot=50).se, rtol=1e-7)
    # the observed entries, not P N: BIC and R-squared as in memory (dask once counted the
    # missing entries as observed, and its R-squared was NaN)
    assert g.n_obs == f.n_obs == int(np.sum(~np.isnan(Y.to_numpy())))
    assert g.bic == pytest.approx(f.bic, rel=1e-12)
    for name in ("r_squared", "r_squared_fixed", "r_squared_uncentered", "r_squared_fixed_uncentered"):
        assert getattr(g, name) == pytest.approx(getattr(f, name), rel=1e-8), name


@pytest.mark.parametrize("c", [1e-40, 1e6, 1e40])
def test_loglik_with_missing_entries_is_equivariant_to_the_units(masked, c):
    """Y in other units (times c), rescaled internally: the loglik shifts by -n_obs log c with
    n_obs the observed entries (it once used P N, off by log c per missing entry: Orthodont
    times 1e6 with one entry missing, 17.3), and equals the direct likelihood there."""
    Y, A, f = masked
    g = nmfre.fit(Y * c, A, rank=1)
    assert g.loglik == pytest.approx(f.loglik - f.n_obs * np.log(c), rel=1e-12, abs=1e-8)
    direct = _direct_loglik(Y.to_numpy() * c, A.to_numpy(), g.X.values, g.theta.values, g.sigma2, g.tau2)
    assert g.loglik == pytest.approx(direct, rel=1e-10)


def test_from_long(orthodont):
    long = nmfre.load_orthodont(long=True)
    Y, A = nmfre.from_long(long, unit="Subject", feature="age", value="distance", formula="~ Sex")
    np.testing.assert_array_equal(Y.to_numpy(), orthodont[0].to_numpy())
    assert list(A.index) == ["intercept", "Sex[T.Male]"]
    np.testing.assert_array_equal(A.to_numpy()[1], orthodont[1].to_numpy()[1])
    dropped = long.drop(index=[1, 6, 11])  # three visits missing
    Yd, _ = nmfre.from_long(dropped, unit="Subject", feature="age", value="distance", covariates=["Sex"])
    assert int(Yd.isna().sum().sum()) == 3
    bad = long.copy()
    bad.loc[5, "Sex"] = "Female" if bad.loc[5, "Sex"] == "Male" else "Male"
    with pytest.raises(ValueError, match=r"not constant within unit .*M02.*|not constant within unit"):
        nmfre.from_long(bad, unit="Subject", feature="age", value="distance", covariates=["Sex"])
    with pytest.raises(ValueError, match="repeated"):
        nmfre.from_long(pd.concat([long, long.iloc[:1]]), unit="Subject", feature="age", value="distance")
    with pytest.raises(ValueError, match="no column"):
        nmfre.from_long(long, unit="child", feature="age", value="distance")


def test_bad_missing_input(orthodont):
    Y, A = orthodont
    Ym = Y.copy()
    Ym.iloc[:, 3] = np.nan
    with pytest.raises(ValueError, match=r"no observed entry for unit\(s\) 'M04'"):
        nmfre.fit(Ym, A, rank=1)
    Yf = Y.copy()
    Yf.iloc[2] = np.nan
    with pytest.raises(ValueError, match=r"no observed entry for feature\(s\) 'age12'"):
        nmfre.fit(Yf, A, rank=1)
    Yp = Y.copy()
    Yp.iat[1, 1] = np.nan
    with pytest.raises(ValueError, match="method='paper' has no missing-data path"):
        nmfre.fit(Yp, A, rank=1, method="paper")
    Yi = Y.copy()
    Yi.iat[1, 1] = np.inf
    with pytest.raises(ValueError, match="Inf"):
        nmfre.fit(Yi, A, rank=1)


def test_ecv_masks_cells_and_picks_rank_one(orthodont):
    Y, A = orthodont
    res = nmfre.ecv(Y, A, ranks=(1, 2), seed=0)
    assert res.best_rank == 1 and res.table.n_cells.tolist() == [108, 108]


def test_simulated_missingness():
    for mech in ("mcar", "dropout"):
        m = simulate.mask((4, 20000), 0.3, mech, seed=1)
        assert abs((1 - m.mean()) - 0.3) < 0.01 and m[0].all()
        if mech == "dropout":  # monotone: once missing, missing after
            assert (np.diff(m.astype(int), axis=0) <= 0).all()
    d = simulate.baseline(N=100, missing=0.1, seed=2)
    assert d["fit_kwargs"] == {"method": "ml"} and np.isnan(d["Y"].values).any()
    np.testing.assert_array_equal(simulate.baseline(N=60, seed=4)["Y"], simulate.baseline(N=60, seed=4, missing=0)["Y"])
