"""Profile-likelihood intervals (nmfre.profile): the X-fixed profile against statsmodels'
MixedLM on Orthodont (rank 1 with X fixed is a linear mixed model), the chi-square cut-off
at the interval's ends, nesting of the X-free and X-fixed profiles, and argument checks.

Every test here is deterministic (Orthodont, no random numbers)."""

import numpy as np
import pytest
from scipy.stats import chi2

import nmfre
from nmfre.profile import Constraint, deviance_at, likelihood_of, start_of


@pytest.fixture(scope="module")
def fit(orthodont):
    Y, A = orthodont
    return nmfre.fit(Y, A, rank=1)


@pytest.fixture(scope="module")
def prof_fixed(fit):
    return fit.profile(x="fixed")


@pytest.fixture(scope="module")
def prof_free(fit):
    return fit.profile(params=[("Basis1", "male"), "tau2"], x="free")


def _mixedlm(fit, offset_col=None, psi=0.0):
    """statsmodels MixedLM of the rank-1 model with X fixed at the estimate: y_pn = x_p (theta'a_n + u_n) + e."""
    sm = pytest.importorskip("statsmodels.api")
    Y, A, x = fit.data.Y, fit.data.A, fit.solution.X[:, 0]
    P, N = Y.shape
    y = Y.T.ravel()
    groups = np.repeat(np.arange(N), P)
    xp = np.tile(x, N)
    exog = np.column_stack([xp * np.repeat(A[k], P) for k in range(A.shape[0])])
    if offset_col is not None:  # theta_k fixed at psi: a known term of the mean (X is fixed)
        y = y - psi * exog[:, offset_col]
        exog = np.delete(exog, offset_col, axis=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sm.MixedLM(y, exog, groups, exog_re=xp[:, None]).fit(reml=False, method="lbfgs")


def test_maximum_matches_mixedlm(fit, prof_fixed):
    """The rank-1 fit's likelihood equals MixedLM's ML fit given X (to MixedLM's optimiser
    tolerance), and so do Theta, sigma2 and tau2."""
    r = _mixedlm(fit)
    assert r.llf == pytest.approx(prof_fixed.attrs["loglik"], abs=1e-5)
    np.testing.assert_allclose(r.fe_params, fit.theta.values.ravel(), rtol=1e-5)
    assert r.scale == pytest.approx(fit.sigma2, rel=1e-4)
    assert float(np.asarray(r.cov_re)[0, 0]) == pytest.approx(fit.tau2, rel=1e-4)


@pytest.mark.parametrize("psi", [5.0, 8.0, 13.0])
def test_theta_profile_matches_mixedlm(fit, psi):
    """l_p(male = psi) with X fixed equals MixedLM's maximum with that effect as an offset."""
    r = _mixedlm(fit, offset_col=1, psi=psi)
    dev, pt = deviance_at(fit, Constraint(theta=((1, psi),)), x="fixed")
    assert -pt.nll == pytest.approx(r.llf, abs=1e-5)


def test_variance_ratio_profile_matches_profile_re(fit):
    """statsmodels' profile_re holds tau2/sigma2 fixed and re-maximises the rest; our
    likelihood at the same ratio (lambda = sigma2/tau2) agrees at every point."""
    r = _mixedlm(fit)
    pr = r.profile_re(0, "re", num_low=2, dist_low=20.0, num_high=2, dist_high=40.0)
    tau2 = float(np.asarray(r.cov_re)[0, 0])  # statsmodels' points: tau2/sigma2 on a grid (its code)
    ratio0 = tau2 / r.scale
    ratios = np.concatenate([np.linspace((tau2 - 20.0) / r.scale, ratio0, 3),
                             np.linspace(ratio0, (tau2 + 40.0) / r.scale, 3)[1:]])
    lik = likelihood_of(fit)
    best = lik.maximise(start_of(fit), Constraint(), x_free=False)
    for ratio, (_, llf) in zip(ratios, pr, strict=True):
        pt = lik.maximise(best, Constraint(kind="lambda", value=1.0 / ratio), x_free=False)
        assert -pt.nll == pytest.approx(llf, abs=1e-5)


@pytest.mark.parametrize("x", ["fixed", "free"])
def test_ends_sit_at_the_cutoff(fit, prof_fixed, prof_free, x):
    """At each end of each interval, 2 (l_max - l_p) equals chi2_1(0.95) (Brent to 1e-7)."""
    ds = prof_fixed if x == "fixed" else prof_free
    q = chi2.ppf(0.95, 1)
    assert ds.attrs["cutoff"] == pytest.approx(q)
    for end in ds["ci"].sel(component="Basis1", covariate="male").values:
        dev, _ = deviance_at(fit, Constraint(theta=((1, float(end)),)), x=x)
        assert dev == pytest.approx(q, abs=1e-4)
    lo, hi = ds["variance_ci"].sel(parameter="tau2").values
    for end in (lo, hi):
        dev, _ = deviance_at(fit, Constraint(kind="tau2", value=float(end)), x=x)
        assert dev == pytest.approx(q, abs=1e-4)
    assert ds["variance_ci_end"].sel(parameter="tau2").values.tolist() == ["cut-off"] * 2
    assert ds["ci_end"].sel(component="Basis1", covariate="male").values.tolist() == ["cut-off"] * 2


def test_an_end_at_the_df_cap_says_so(orthodont):
    """With a binding df cap the ICC's upper end is the cap's edge: the deviance there is 0 and
    beyond it the likelihood is infeasible. It is labelled "df cap" (it read as a profile bound),
    while the lower end and sigma2's and tau2's ends sit at the cut-off."""
    Y, A = orthodont
    capped = nmfre.fit(Y, A, rank=1, df_cap=0.21)
    ds = capped.profile(params=["icc", "tau2"])
    assert ds["variance_ci_end"].sel(parameter="icc").values.tolist() == ["cut-off", "df cap"]
    assert ds["variance_ci_end"].sel(parameter="tau2").values.tolist() == ["cut-off", "cut-off"]
    assert ds["variance_ci_end"].sel(parameter="sigma2").values.tolist() == ["not profiled"] * 2
    hi = float(ds["variance_ci"].sel(parameter="icc", ci_bound="upper"))
    at_edge, _ = deviance_at(capped, Constraint(kind="icc", value=hi))
    past, _ = deviance_at(capped, Constraint(kind="icc", value=hi * 1.001))
    assert at_edge < 0.01 and np.isinf(past)
    # without a cap an infeasible edge is the quantity's own limit (the ICC's 1, lambda = 0),
    # not "df cap" (as it was labelled)
    with pytest.warns(nmfre.IdentifiabilityWarning, match="P = 4 <= Q = 4"):  # lambda -> 0 is allowed here
        free = nmfre.fit(Y, A, rank=4, theta="nonneg")
    ends = free.profile(params=["icc"], x="fixed")["variance_ci_end"].sel(parameter="icc").values.tolist()
    assert "df cap" not in ends


def test_free_contains_fixed(prof_fixed, prof_free):
    """Re-estimating X can only raise l_p, so the X-free interval contains the X-fixed one;
    both contain the estimate, and the Orthodont male interval excludes 0 (LR test p 0.003)."""
    f = prof_fixed["ci"].sel(component="Basis1", covariate="male").values
    g = prof_free["ci"].sel(component="Basis1", covariate="male").values
    assert g[0] <= f[0] + 1e-6 and g[1] >= f[1] - 1e-6
    est = float(prof_fixed["estimate"].sel(component="Basis1", covariate="male"))
    assert f[0] < est < f[1] and f[0] > 0
    tf = prof_fixed["variance_ci"].sel(parameter="tau2").values
    tg = prof_free["variance_ci"].sel(parameter="tau2").values
    assert tg[0] <= tf[0] + 1e-6 and tg[1] >= tf[1] - 1e-6


def test_every_quantity_profiled(prof_fixed, fit):
    """All of Theta and sigma2, tau2, ICC get finite intervals around their estimates; the
    traces are monotone through 0 at the estimate."""
    ci = prof_fixed["ci"].values
    est = prof_fixed["estimate"].values
    assert np.all(np.isfinite(ci)) and np.all(ci[0] < est) and np.all(est < ci[1])
    vci, vest = prof_fixed["variance_ci"].values, prof_fixed["variance_estimate"].values
    assert np.all(np.isfinite(vci)) and np.all(vci[0] < vest) and np.all(vest < vci[1])
    np.testing.assert_allclose(vest, [fit.sigma2, fit.tau2, fit.icc], rtol=1e-6)
    for lab in set(prof_fixed["trace_of"].values.astype(str)):
        m = prof_fixed["trace_of"].values.astype(str) == lab
        z = prof_fixed["trace_zeta"].values[m]
        assert np.all(np.diff(z) >= -1e-8), lab


def test_bad_arguments(fit, orthodont):
    with pytest.raises(ValueError, match="x"):
        fit.profile(x="loose")
    with pytest.raises(ValueError, match="params"):
        fit.profile(params=["rho"])
    with pytest.raises(ValueError, match="level"):
        fit.profile(level=1.5)
    Y, A = orthodont
    Ym = np.array(Y, float)
    Ym[0, 0] = np.nan
    with pytest.raises(ValueError, match="fit"):
        nmfre.fit(Ym, A, rank=1).profile()
    fixed = nmfre.fit(Y, A, rank=1, sigma2=2.0, fix_sigma2=True)
    with pytest.raises(ValueError, match="params"):
        fixed.profile(params="variances")
    # the default profiles what a fit with a fixed variance can: Theta (it raised)
    assert fixed.profile().attrs["profiled"] == "theta[Basis1, intercept], theta[Basis1, male]"
    for params, match in [(3, "params must be None"), ([], "params is empty"),
                          (["sigma2", "sigma2"], "names a parameter twice")]:
        with pytest.raises(ValueError, match=match):
            fit.profile(params=params)
    one = fit.profile(params=("Basis1", "male"), level=0.8)  # one pair alone
    assert one.attrs["profiled"] == "theta[Basis1, male]"
    assert fit.profile(params="tau2", level=0.8)["variance_ci"].attrs["ci_prob"] == 0.8


def test_profile_is_a_study_method():
    """study.run(methods=("wald", "profile")): the profile interval of every entry of Theta per
    replicate, around the ML point (exact given seeds; 2 replicates)."""
    ds = nmfre.study.run("baseline", {"N": [27]}, n_rep=2, seed=1, n_boot=50, methods=("wald", "profile"),
                         fit_kwargs={"method": "ml", "df_cap": None})
    # (the methods are along "interval": .sel(method=...) is xarray's matching option, which
    # once made this test compare every method with itself)
    lo = ds["lower"].sel(interval="profile").values
    hi = ds["upper"].sel(interval="profile").values
    pt = ds["point"].sel(interval="profile").values
    assert np.all(np.isfinite(lo)) and np.all(lo < pt) and np.all(pt < hi)
    np.testing.assert_allclose(pt, ds["point"].sel(interval="wald").values, rtol=1e-6)
    assert not np.allclose(lo, ds["lower"].sel(interval="wald").values)


def test_the_profile_likelihood_has_the_solvers_statistics(orthodont):
    """The profile's gram statistics at a point equal the ML solver's (gram form): the residual
    sum of squares, its terms' size (the rounding guard of ``QUAD_RESOLVED``), ``s`` and ``d``,
    to rounding."""
    from nmfre.core import ml, stats
    from nmfre.profile import Likelihood

    Y, A = (np.asarray(a, float) for a in orthodont)
    f = nmfre.fit(Y, A, rank=2)
    X, theta = f.solution.X, f.solution.theta
    lik = Likelihood(Y, A)  # sign-free: both on the orthonormal covariates
    theta = lik.frame.inward(theta)
    ours = lik.sufficient(X, theta)
    prob = ml.Problem(stats.from_arrays(Y, lik.frame.A, "gram"), 2, False, "free", 1.0, 1.0, None)
    solver = ml.sufficient(prob, X, theta)
    for a, b in ((ours.rss, solver.rss), (ours.scale, solver.scale)):
        assert abs(a - b) <= 1e-10 * abs(b)
    np.testing.assert_allclose(ours.s, solver.s, rtol=1e-8, atol=1e-10 * solver.scale)
    np.testing.assert_allclose(ours.d, solver.d, rtol=1e-10, atol=1e-14)
    assert solver.scale > solver.rss > 0
