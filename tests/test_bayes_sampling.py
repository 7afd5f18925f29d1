"""bayes.sampling: closed form, mixing, alignment, calibration, the DataTree, bad input."""

import warnings

import numpy as np
import pytest
from helpers import rank2

import bayes
import nmfre


@pytest.fixture(scope="session")
def inf_ortho(ml_fit):
    return ml_fit.infer(n_boot=4000, seed=1)


@pytest.fixture(scope="session")
def post_conditional(orthodont, ml_fit):
    Y, A = orthodont
    return bayes.sample(Y, A, 1, model="conditional", fit=ml_fit, num_warmup=500, num_samples=1000, seed=1)


@pytest.fixture(scope="session")
def post_joint(orthodont, ml_fit):
    Y, A = orthodont
    return bayes.sample(Y, A, 1, model="joint", fit=ml_fit, seed=2, draw_U=True, posterior_predictive=True)


def _mcse(post, method):
    import arviz as az

    return az.mcse(post, var_names=["theta"], method=method)["theta"]


def test_conditional_posterior_matches_closed_form(post_conditional, ml_fit, inf_ortho):
    """Flat prior, X and variances fixed: posterior = N(theta_hat, I^-1). Mean and sd agree
    with the closed form within 4 Monte Carlo standard errors."""
    th = post_conditional["posterior"]["theta"]
    se = inf_ortho.se_model
    assert (np.abs(th.mean(("chain", "draw")) - ml_fit.theta) <= 4 * _mcse(post_conditional, "mean")).all()
    assert (np.abs(th.std(("chain", "draw")) - se) <= 4 * _mcse(post_conditional, "sd")).all()
    cov = np.cov(th.stack(s=("chain", "draw")).transpose("s", "covariate", "component").values.reshape(-1, 2).T)
    np.testing.assert_allclose(cov, inf_ortho.cov_model.values, rtol=0.12)


def test_joint_mixes_on_orthodont(post_joint, ml_fit):
    d = bayes.diagnostics(post_joint)
    assert d["max_r_hat"] <= 1.01 and d["min_ess_bulk"] >= 400 and d["divergences"] == 0
    th = post_joint["posterior"]["theta"]
    # posterior mean within 0.25 posterior sd (asymptotically O(sd / sqrt(N)) apart) plus
    # 4 Monte Carlo SE of the MLE (measured on Orthodont: 0.01 sd)
    gap = np.abs(th.mean(("chain", "draw")) - ml_fit.theta)
    assert (gap <= 0.25 * th.std(("chain", "draw")) + 4 * _mcse(post_joint, "mean")).all()


def test_datatree_layout(post_joint, ml_fit):
    post = post_joint["posterior"]
    assert set(post_joint.children) >= {"posterior", "sample_stats", "observed_data", "posterior_predictive"}
    assert post["theta"].dims == ("chain", "draw", "component", "covariate")
    assert post["X"].dims == ("chain", "draw", "feature", "component")
    assert post["U"].dims == ("chain", "draw", "component", "unit")
    for dim in ("component", "covariate", "feature"):
        assert list(post[dim].values) == list(ml_fit.coords[dim])
    assert list(post["unit"].values) == list(ml_fit.coords["unit"])
    np.testing.assert_allclose(post["X"].sum("feature"), 1.0, atol=1e-10)
    # U's posterior mean is close to the BLUP at the ML fit
    assert float(np.corrcoef(post["U"].mean(("chain", "draw")).values.ravel(), ml_fit.U.values.ravel())[0, 1]) > 0.99
    yrep = post_joint["posterior_predictive"]["Y"]
    assert yrep.dims == ("chain", "draw", "unit", "feature")
    assert abs(float(yrep.mean()) - float(ml_fit.Y.mean())) < 0.5


def test_rank2_joint_aligned_and_mixing():
    Y, A, X, theta = rank2(21, N=150)
    fit = nmfre.fit(Y, A, rank=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bayes.SamplingWarning)
        post = bayes.sample(Y, A, 2, model="joint", fit=fit, num_warmup=500, num_samples=500, seed=3)
    d = bayes.diagnostics(post)
    assert d["max_r_hat"] <= 1.01, d
    assert d["divergences"] == 0
    # chains aligned to the fit: every chain's mean basis matches the fit's columns in order
    from nmfre.core.bootstrap import align_components

    Xc = post["posterior"]["X"].mean("draw").transpose("chain", "feature", "component").values
    for c in range(Xc.shape[0]):
        perm, cos = align_components(fit.X.values, Xc[c])
        assert list(perm) == [0, 1] and cos.min() > 0.98, (perm, cos)


def _sbc(n_rep, L, seed):
    """Simulation-based calibration (Talts et al. 2018) of ``conditional_x`` on a tiny
    problem: ranks of the true theta among L posterior draws, binned into 5 bins."""
    from functools import partial

    import jax
    from numpyro.infer import MCMC, NUTS
    from scipy.stats import chisquare

    rng = np.random.default_rng(seed)
    P, N = 3, 12
    X = np.array([[0.2], [0.3], [0.5]])
    A = np.vstack([np.ones(N), rng.binomial(1, 0.5, N)])
    priors = {"theta_scale": 5.0, "sigma_scale": 1.0, "tau_scale": 2.0}
    model = partial(bayes.conditional_x, nonneg=False, priors=priors)
    ranks = []
    for r in range(n_rep):
        if r % 20 == 0:
            # a fresh sampler and cleared JAX caches every 20 runs: compiled code otherwise
            # accumulates until LLVM cannot map more memory (seen at ~140 runs, jaxlib 0.12)
            jax.clear_caches()
            mcmc = MCMC(NUTS(model), num_warmup=200, num_samples=2 * L, num_chains=1, progress_bar=False,
                        jit_model_args=True)
        theta = rng.normal(0, priors["theta_scale"], (1, 2))
        sigma = abs(rng.normal(0, priors["sigma_scale"]))
        tau = abs(rng.normal(0, priors["tau_scale"]))
        Y = X @ (theta @ A + rng.normal(0, tau, (1, N))) + rng.normal(0, sigma, (P, N))
        mcmc.run(jax.random.PRNGKey(seed * 1000 + r), Y, A, X)
        draws = np.asarray(mcmc.get_samples()["theta"])[::2].reshape(L, -1)  # thinned by 2
        ranks.append((draws < theta.ravel()).sum(axis=0))
    counts = np.bincount(np.array(ranks).ravel() * 5 // (L + 1), minlength=5)
    return chisquare(counts).pvalue, counts


def test_sbc_conditional_x_reduced():
    p, counts = _sbc(n_rep=24, L=49, seed=1)
    assert p > 0.001, counts


@pytest.mark.slow
def test_sbc_conditional_x_full():
    p, counts = _sbc(n_rep=200, L=99, seed=2)
    assert p > 0.001, counts


def test_bad_input(orthodont, ml_fit):
    Y, A = orthodont
    with pytest.raises(ValueError, match="model"):
        bayes.sample(Y, A, 1, model="full")
    with pytest.raises(ValueError, match="rank"):
        bayes.sample(Y, A, 2, fit=ml_fit)
    with pytest.raises(ValueError, match="different data"):
        bayes.sample(Y * 2, A, 1, fit=ml_fit)
    with pytest.raises(ValueError, match="rank"):
        bayes.sample(Y, A, 9)
    with pytest.raises(ValueError, match="priors"):
        bayes.sample(Y, A, 1, fit=ml_fit, priors={"nu": 1.0})
    with pytest.raises(ValueError, match="theta"):
        bayes.sample(Y, A, 1, fit=ml_fit, theta="nonneg")
    with pytest.raises(ValueError, match="num_samples"):
        bayes.sample(Y, A, 1, fit=ml_fit, num_samples=0)
    with pytest.raises(ValueError, match="chain_method"):
        bayes.sample(Y, A, 1, fit=ml_fit, chain_method="threads")
    with pytest.raises(ValueError, match="seed"):
        bayes.sample(Y, A, 1, fit=ml_fit, seed=-1)
