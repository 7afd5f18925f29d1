"""Likelihood-ratio tests and information criteria (nmfre.likelihood_tests, NMFREFit.aic/bic)."""

import warnings

import numpy as np
import pytest
from helpers import record, seed
from scipy.stats import binomtest, chi2, kstest

import nmfre
from nmfre.likelihood_tests import mixture_p_value

BASE_X = np.array([0.2308, 0.2409, 0.2566, 0.2717])
BASE_THETA = np.array([90.502, 9.4285])


@pytest.fixture(scope="module")
def fits(orthodont):
    Y, A = orthodont
    return nmfre.fit(Y, A, rank=1), nmfre.fit(Y, A.iloc[[0]], rank=1)


def test_parameter_count_and_criteria(fits):
    """Orthodont rank 1: Q (P - 1) + Q K + 2 = 3 + 2 + 2 = 7; AIC and BIC by hand (n = P N = 108)."""
    f, _ = fits
    assert f.n_params == 7 and f.n_obs == 108
    assert f.aic == pytest.approx(-2 * f.loglik + 14)
    assert f.bic == pytest.approx(-2 * f.loglik + 7 * np.log(108))


def test_covariate_dropped(fits):
    """Dropping male: df 1, LR = 2 (l_big - l_small), chi2_1 p-value."""
    big, small = fits
    res = nmfre.lrt(small, big)
    assert res.df == 1
    assert res.statistic == pytest.approx(2 * (big.loglik - small.loglik))
    assert res.p_value == pytest.approx(chi2.sf(res.statistic, 1))
    assert 0.001 < res.p_value < 0.01
    with pytest.raises(ValueError, match="not nested"):
        nmfre.lrt(big, small)


def test_fixed_variances_must_be_equal(orthodont):
    """Fits that fix sigma2 (or tau2) at different values are not nested (lrt returned LR 181
    for sigma2 fixed at 1 against 50); at equal values the test runs."""
    Y, A = orthodont
    for name in ("sigma2", "tau2"):
        big = nmfre.fit(Y, A, rank=1, **{name: 1.0, f"fix_{name}": True})
        small = nmfre.fit(Y, A.iloc[[0]], rank=1, **{name: 50.0, f"fix_{name}": True})
        with pytest.raises(ValueError, match=f"fix {name} at different values"):
            nmfre.lrt(small, big)
        same = nmfre.fit(Y, A.iloc[[0]], rank=1, **{name: 1.0, f"fix_{name}": True})
        assert nmfre.lrt(same, big).statistic == pytest.approx(2 * (big.loglik - same.loglik))


def test_rank_reduction_warns(orthodont):
    Y, A = orthodont
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f2 = nmfre.fit(Y, A, rank=2, theta="nonneg", max_iter=200)
        f1 = nmfre.fit(Y, A, rank=1, theta="nonneg")
    with pytest.warns(UserWarning, match="not valid for a rank"):
        res = nmfre.lrt(f1, f2)
    assert res.df == f2.n_params - f1.n_params == 5


def test_tau2_on_orthodont(fits):
    """Orthodont's children differ: LR about 48 for tau2 = 0, p = sf/2."""
    f, _ = fits
    res = nmfre.lrt_tau2(f)
    assert res.df == 1 and res.statistic > 40
    assert res.p_value == pytest.approx(0.5 * chi2.sf(res.statistic, 1))
    assert res.loglik_big == pytest.approx(f.loglik, abs=1e-8)


def test_mixture_p_value():
    assert mixture_p_value(0.0) == 1.0
    assert mixture_p_value(chi2.ppf(0.9, 1)) == pytest.approx(0.05)
    np.testing.assert_allclose(mixture_p_value([0.0, 2.705543454095404]), [1.0, 0.05])


def test_bad_arguments(fits, orthodont):
    big, small = fits
    Y, A = orthodont
    with pytest.raises(ValueError, match="fit"):
        nmfre.lrt_tau2(nmfre.fit(Y, A, rank=1, df_cap=0.5))
    with pytest.raises(ValueError, match="fit must be an NMFREFit"):
        nmfre.lrt_tau2("x")
    with pytest.raises(ValueError, match="tol must be a positive"):
        nmfre.lrt_tau2(big, tol=-1)
    with pytest.raises(ValueError, match="fit_small"):
        nmfre.lrt("a", big)
    with pytest.raises(ValueError, match="same Y"):
        nmfre.lrt(nmfre.fit(np.asarray(Y) + 1.0, A.iloc[[0]], rank=1), big)
    # a rank reduction whose fits share the covariates' names but not their values
    A2 = A.copy()
    A2.loc["male"] = np.roll(A.loc["male"].to_numpy(), 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmfre.DegenerateFitWarning)
        rank2 = nmfre.fit(Y, A, rank=2)
    with pytest.raises(ValueError, match="different values of A"):
        nmfre.lrt(nmfre.fit(Y, A2, rank=1), rank2)
    # a fit's summary with another fit's inference
    with pytest.raises(ValueError, match="inference is not of this fit"):
        big.summary(small.infer(n_boot=20))
    with pytest.raises(ValueError, match="inference is not of this fit: its estimates"):
        big.summary(nmfre.fit(Y, A, rank=1, method="paper").infer(n_boot=20))
    with pytest.raises(ValueError, match="must be an Inference"):
        big.summary("table")


def _null_p_values(R: int, N: int, s: int) -> np.ndarray:
    """p-values of the tau2 = 0 test on R data sets simulated without random effects (the
    paper's baseline mean, P = 4, rank 1, sigma2 = 1)."""
    rng = np.random.default_rng(s)
    A = np.vstack([np.ones(N), np.arange(N) % 2])
    out = np.empty(R)
    for r in range(R):
        Y = np.outer(BASE_X, BASE_THETA @ A) + rng.normal(0.0, 1.0, (4, N))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[r] = nmfre.lrt_tau2(nmfre.fit(Y, A, rank=1)).p_value
    return out


def _check_null(p: np.ndarray, alpha: float = 1e-4):
    """Under tau2 = 0 the p-value is 1 with probability 1/2 (LR = 0) and otherwise 2p ~ U(0, 1).
    Two tests at alpha/2 each (Bonferroni: false alarm <= alpha): the count of p < 1/2 is
    Binomial(R, 1/2) (exact two-sided binomial test) and 2p on those is uniform (KS, exact)."""
    inner = p[p < 0.5]
    b = binomtest(inner.size, p.size, 0.5).pvalue
    k = kstest(2 * inner, "uniform").pvalue
    return b, k, b > alpha / 2 and k > alpha / 2


def test_tau2_null_uniform():
    """The tau2 = 0 test's null distribution (150 data sets, N = 60): false alarm <= 1e-4 by
    design (asymptotically exact reference; finite-sample atom at 0 about 0.52 at N = 60).
    Power against the fault 'chi2_1 reference without the boundary correction' (p doubled,
    so about R/4 instead of R/2 below 1/2): 0.986 by the binomial part at R = 150 (exact binomial)."""
    p = _null_p_values(150, 60, seed(19))
    b, k, ok = _check_null(p)
    record("lrt_tau2_null", binom_p=b, ks_p=k, share_inner=np.mean(p < 0.5))
    assert ok, (b, k)


@pytest.mark.slow
def test_tau2_null_uniform_long():
    """As test_tau2_null_uniform with 1000 data sets (power against the fault above: 1.0)."""
    p = _null_p_values(1000, 60, seed(20))
    b, k, ok = _check_null(p)
    record("lrt_tau2_null_long", binom_p=b, ks_p=k, share_inner=np.mean(p < 0.5))
    assert ok, (b, k)
