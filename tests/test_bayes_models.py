"""bayes.models: plain NumPyro functions, callable without Y, priors from the data by default."""

import jax
import numpy as np
import pytest
from helpers import rank2
from numpyro.infer import Predictive
from numpyro.infer.util import log_density

import bayes
from bayes import models


@pytest.fixture(scope="module")
def data(orthodont):
    Y, A = (d.to_numpy() for d in orthodont)
    return Y, A


def test_priors_default_to_the_data(data):
    Y, A = data
    p = models.resolve_priors(Y, 1, None)
    assert p == bayes.default_priors(Y, 1)
    assert models.resolve_priors(Y, 1, {"sigma_scale": 3.0})["sigma_scale"] == 3.0
    with pytest.raises(ValueError, match="unknown keys"):
        models.resolve_priors(Y, 1, {"nu": 1})
    with pytest.raises(ValueError, match="Y=None"):
        models.resolve_priors(None, 1, None)


def test_joint_without_priors_runs_and_matches_explicit_defaults(data):
    """joint(Y, A, rank) without priors used to raise KeyError."""
    Y, A = data
    params = {"X_columns": np.full((1, 4), 0.25), "theta": np.array([[90.0, 9.0]]), "sigma": 1.4, "tau": 7.0}
    with jax.enable_x64(True):
        a, _ = log_density(models.joint, (Y, A, 1), {}, params)
        b, _ = log_density(models.joint, (Y, A, 1), {"priors": bayes.default_priors(Y, 1)}, params)
    assert float(a) == pytest.approx(float(b), rel=1e-14)


def test_prior_predictive_through_predictive(data):
    """With Y=None the models draw Y: numpyro.infer.Predictive gives prior predictive data."""
    Y, A = data
    priors = bayes.default_priors(Y, 1)
    with jax.enable_x64(True):
        out = Predictive(models.joint, num_samples=200)(jax.random.PRNGKey(0), None, A, 1, priors=priors,
                                                         P=4)
        assert out["Y"].shape == (200, 27, 4) and out["theta"].shape == (200, 1, 2)
        X = np.array([[0.25], [0.25], [0.25], [0.25]])
        cond = Predictive(models.conditional, num_samples=50)(jax.random.PRNGKey(1), None, A, X, 2.0, 50.0,
                                                               priors={"theta_scale": 100.0})
    assert cond["Y"].shape == (50, 27, 4)
    with pytest.raises(ValueError, match="needs P"):
        Predictive(models.joint, num_samples=2)(jax.random.PRNGKey(0), None, A, 1, priors=priors)


def test_prior_predictive_has_the_model_moments(data):
    """Given theta, sigma, tau the replicated y_n has mean X theta a_n and covariance
    sigma^2 I + tau^2 X X' (checked on 20000 draws of the conditional model)."""
    _, A = data
    X = np.array([[0.1], [0.2], [0.3], [0.4]])
    theta = np.array([[50.0, 10.0]])
    with jax.enable_x64(True):
        pred = Predictive(models.conditional, posterior_samples={"theta": np.broadcast_to(theta, (20000, 1, 2))})
        y = np.asarray(pred(jax.random.PRNGKey(3), None, A, X, 2.0, 30.0)["Y"])[:, 0, :]  # unit 1 (male)
    mean = (X @ theta @ A[:, :1]).ravel()
    cov = 2.0 * np.eye(4) + 30.0 * X @ X.T
    se = np.sqrt(np.diag(cov) / 20000)
    assert np.all(np.abs(y.mean(axis=0) - mean) < 4 * se)
    np.testing.assert_allclose(np.cov(y.T), cov, rtol=0.05, atol=0.05)


def test_u_conditional_is_the_blup(ml_fit, data):
    Y, A = data
    mean, cov = bayes.u_conditional(Y, A, ml_fit.X.values, ml_fit.theta.values, ml_fit.sigma2, ml_fit.tau2)
    np.testing.assert_allclose(mean, ml_fit.U.values, rtol=1e-10)
    assert cov.shape == (1, 1) and cov[0, 0] > 0


def _random_params(rng, P, Q, K, simplex="ilr", nonneg=False):
    theta = rng.uniform(5, 50, (Q, K)) if nonneg else rng.normal(30, 20, (Q, K))
    params = {"sigma": rng.uniform(0.5, 3.0), "tau": rng.uniform(1.0, 10.0)}
    if simplex == "folded":
        params["X_raw"] = rng.normal(0, 1, (Q, P)) * rng.uniform(0.5, 2.0)
        params["theta_raw" if nonneg else "theta"] = theta * (rng.choice([-1, 1], theta.shape) if nonneg else 1)
    else:
        params["X_columns"] = rng.dirichlet(np.ones(P), Q)
        params["theta"] = theta
    return params


@pytest.mark.parametrize("simplex", ["ilr", "stickbreaking", "folded"])
@pytest.mark.parametrize("nonneg", [False, True])
def test_compressed_likelihood_equals_lowrank_normal_joint(simplex, nonneg):
    """The joint model's likelihood on G = YY', YA', AA' (numpyro.factor) equals the
    LowRankMultivariateNormal over the units (the Y=None model conditioned on Y) to 1e-10."""
    from numpyro import handlers

    rng = np.random.default_rng(7)
    Y, A, _, _ = rank2(3, N=60)
    P = Y.shape[0]
    priors = bayes.default_priors(Y, 2)
    kw = {"priors": priors, "simplex": simplex, "nonneg": nonneg}
    with jax.enable_x64(True):
        for _ in range(4):
            params = _random_params(rng, P, 2, 2, simplex, nonneg)
            a, _ = log_density(models.joint, (Y, A, 2), kw, params)
            b, _ = log_density(handlers.condition(models.joint, {"Y": Y.T}), (None, A, 2), {**kw, "P": P},
                               params)
            assert abs(float(a) - float(b)) <= 1e-10 * abs(float(b))


@pytest.mark.parametrize("model", ["conditional_x", "conditional"])
def test_compressed_likelihood_equals_lowrank_normal_conditional(model, data):
    from numpyro import handlers

    Y, A = data
    rng = np.random.default_rng(3)
    X = rng.dirichlet(np.ones(4), 1).T
    with jax.enable_x64(True):
        for _ in range(4):
            params = {"theta": rng.normal(50, 20, (1, 2))}
            if model == "conditional_x":
                params.update(sigma=rng.uniform(0.5, 3), tau=rng.uniform(1, 10))
                args, kw = (A, X), {"priors": bayes.default_priors(Y, 1)}
            else:
                args, kw = (A, X, rng.uniform(0.5, 3), rng.uniform(1, 50)), {"priors": {"theta_scale": 100.0}}
            fn = getattr(models, model)
            a, _ = log_density(fn, (Y,) + args, kw, params)
            b, _ = log_density(handlers.condition(fn, {"Y": Y.T}), (None,) + args, kw, params)
            assert abs(float(a) - float(b)) <= 1e-10 * abs(float(b))


def test_missing_values_likelihood_matches_per_unit_densities():
    """NaN = missing: units sharing a pattern share statistics; the log-likelihood equals
    the sum over units of the observed rows' normal densities (scipy) to 1e-10."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(11)
    Y, A, _, _ = rank2(5, N=80)
    Y[rng.random(Y.shape) < 0.15] = np.nan
    Y[:, 7] = np.nan  # a unit with nothing observed drops out
    X = rng.dirichlet(np.ones(Y.shape[0]), 2).T
    theta, s2, t2 = rng.normal(20, 5, (2, 2)), 0.7, 3.0
    ref = 0.0
    for n in range(Y.shape[1]):
        o = ~np.isnan(Y[:, n])
        if o.any():
            cov = s2 * np.eye(o.sum()) + t2 * X[o] @ X[o].T
            ref += multivariate_normal(X[o] @ theta @ A[:, n], cov).logpdf(Y[o, n])
    stats = bayes.statistics(Y, A)
    assert 1 < stats.n_patterns < Y.shape[1] and stats.n.sum() == Y.shape[1] - 1
    with jax.enable_x64(True):
        direct = float(bayes.likelihood.loglik(stats, X, theta, s2, t2))
        via_model, _ = log_density(models.conditional, (Y, A, X, s2, t2), {}, {"theta": theta})  # flat prior
    assert abs(direct - ref) <= 1e-10 * abs(ref)
    assert abs(float(via_model) - ref) <= 1e-10 * abs(ref)


def test_statistics_do_not_depend_on_the_number_of_units(data):
    Y, A = data
    s1, s2 = bayes.statistics(Y, A), bayes.statistics(np.hstack([Y, Y]), np.hstack([A, A]))
    assert all(np.shape(a) == np.shape(b) for a, b in zip(s1, s2, strict=True))
    np.testing.assert_allclose(s2.G, 2 * s1.G)
    with jax.enable_x64(True):
        assert float(bayes.likelihood.loglik(bayes.sampling.pad_patterns(s1, 4), np.full((4, 1), 0.25),
                                             np.array([[90.0, 9.0]]), 2.0, 40.0)) == pytest.approx(
            float(bayes.likelihood.loglik(s1, np.full((4, 1), 0.25), np.array([[90.0, 9.0]]), 2.0, 40.0)), rel=1e-14)


def test_ilr_transform_jacobian_and_inverse():
    from bayes.simplex import ILRTransform

    t = ILRTransform()
    z = np.array([0.3, -1.2, 0.8, 2.0])
    with jax.enable_x64(True):
        x = t(z)
        J = jax.jacfwd(lambda u: t(u)[:-1])(z)  # density convention: first P-1 coordinates
        assert float(t.log_abs_det_jacobian(z, x)) == pytest.approx(np.linalg.slogdet(np.asarray(J))[1], rel=1e-12)
        np.testing.assert_allclose(t.inv(x), z, rtol=1e-12)
        assert float(x.sum()) == pytest.approx(1.0, abs=1e-14)


def test_folded_dirichlet_columns_are_dirichlet():
    """|w| / sum|w| ~ Dirichlet(alpha) and the density is Dir(x) LogNormal(G) / (G^(P-1) 2^P)."""
    from scipy.stats import dirichlet, lognorm

    from bayes.simplex import FoldedDirichlet

    alpha = np.array([1.0, 2.0, 0.7, 1.5])
    with jax.enable_x64(True):
        d = FoldedDirichlet(alpha)
        w = np.asarray(d.sample(jax.random.PRNGKey(0), (40000,)))
        lp = np.asarray(d.log_prob(w[:5]))
    x = np.abs(w) / np.abs(w).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(x.mean(axis=0), alpha / alpha.sum(), atol=0.005)
    G = np.abs(w[:5]).sum(axis=1)
    ref = (dirichlet(alpha).logpdf(x[:5].T) + lognorm(0.05, scale=4.0).logpdf(G) - 3 * np.log(G) - 4 * np.log(2))
    np.testing.assert_allclose(lp, ref, rtol=1e-10)


def test_seeds_int_generator_or_key():
    """bayes accepts nmfre's seeds (int, Generator) and JAX keys; a Generator gives a key
    deterministically (one draw of its stream); anything else is a clear error."""
    from bayes.seeds import prng_key
    from nmfre import ArgumentTypeError

    assert (np.asarray(prng_key(3)) == np.asarray(jax.random.PRNGKey(3))).all()
    k1, k2 = prng_key(np.random.default_rng(7)), prng_key(np.random.default_rng(7))
    assert (np.asarray(k1) == np.asarray(k2)).all()
    key = jax.random.PRNGKey(1)
    assert prng_key(key) is key
    typed = jax.random.key(2)
    assert prng_key(typed) is typed
    for bad in (1.5, "1", None, np.zeros(2), -1, 2**64):
        with pytest.raises((ArgumentTypeError, ValueError), match="seed"):
            prng_key(bad)
    # seeds of 2**32 and above keep their high bits (PRNGKey without x64 dropped them, so
    # seeds 2**32 apart gave the same draws): the key of PRNGKey with 64-bit seeds
    with jax.enable_x64(True):
        for big in (2**32, 2**32 + 7, 2**62 + 5):
            assert (np.asarray(prng_key(big)) == np.asarray(jax.random.PRNGKey(big))).all()
    assert not (np.asarray(prng_key(2**32 + 7)) == np.asarray(prng_key(7))).all()


def test_renamed_arguments_warn_and_still_work(data):
    """docs/vocabulary.md: sizes are P, N, K; Theta's constraint is theta_kind; the old
    keywords still work with a FutureWarning naming the new one."""
    Y, A = data
    with pytest.warns(FutureWarning, match="n_features= is deprecated, use P="):
        s = bayes.Sampler("joint", 1, n_features=4, n_units=27, n_covariates=2)
    assert (s.settings.n_features, s.N, s.settings.n_covariates) == (4, 27, 2)
    assert bayes.Sampler("joint", 1, P=4, N=27, K=2).settings == s.settings
    with pytest.warns(FutureWarning, match="theta_kind"):
        assert s.theta == s.theta_kind == "free"
    with pytest.warns(FutureWarning, match="Sampler.N"):
        assert s.n_units == 27
    with pytest.raises(TypeError, match="both"):
        bayes.Sampler("joint", 1, P=4, n_features=4)
    priors = bayes.default_priors(Y, 1)
    with jax.enable_x64(True), pytest.warns(FutureWarning, match="n_features= is deprecated, use P="):
        out = Predictive(models.joint, num_samples=3)(jax.random.PRNGKey(0), None, A, 1, priors=priors,
                                                       n_features=4)
    assert out["Y"].shape == (3, 27, 4)


def test_datatree_layout_matches_nmfre(ml_fit):
    """observed_data and posterior_predictive have nmfre's (feature, unit); the posterior
    has the variances sigma2, tau2 beside sigma, tau."""
    from bayes import datatree

    C, D = 2, 3
    fit = ml_fit
    Q, K = fit.shape["Q"], fit.shape["K"]
    P, N = fit.shape["P"], fit.shape["N"]
    draws = {"theta": np.broadcast_to(fit.theta.values, (C, D, Q, K)), "sigma": np.full((C, D), 1.5),
             "tau": np.full((C, D), 7.0)}
    dt = datatree.build(draws, None, fit, fit.data, "conditional_x", {}, yrep=np.ones((C, D, N, P)))
    assert dt["observed_data"]["Y"].dims == ("feature", "unit")
    np.testing.assert_array_equal(dt["observed_data"]["Y"].values, fit.data.Y)
    assert dt["posterior_predictive"]["Y"].dims == ("chain", "draw", "feature", "unit")
    np.testing.assert_allclose(dt["posterior"]["sigma2"], 2.25)
    np.testing.assert_allclose(dt["posterior"]["tau2"], 49.0)


def test_sbc_vocabulary_and_seeds():
    """sbc/sbc_power speak nmfre's vocabulary (n_rep, P, N; old names warn) and take an int,
    a Generator or a JAX key; an int gives the generator and key it always gave (exact)."""
    import jax

    from bayes import calibration

    with pytest.warns(FutureWarning, match="n_replicates= is deprecated, use n_rep="):
        old = bayes.sbc_power(n_replicates=10, L=9, n_params=1, n_sim=20, seed=3)
    assert old == bayes.sbc_power(n_rep=10, L=9, n_params=1, n_sim=20, seed=3)
    rng, key = calibration._seeds(5)
    assert rng.integers(1000) == np.random.default_rng(5).integers(1000)
    assert np.array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.PRNGKey(5)))
    a, ka = calibration._seeds(np.random.default_rng(7))
    b, kb = calibration._seeds(np.random.default_rng(7))
    assert a.integers(1000) == b.integers(1000) and np.array_equal(ka, kb)
    c, _ = calibration._seeds(jax.random.PRNGKey(1))
    d, _ = calibration._seeds(jax.random.PRNGKey(1))
    assert c.integers(1000) == d.integers(1000)
    with pytest.raises((TypeError, ValueError), match="seed"):
        calibration._seeds("one")


def test_truncated_normal_quantile_solves_its_equation_far_in_the_tail():
    """``log P(Z >= z) - log P(Z >= a) = log u`` (the defining equation, with JAX's log-tail
    function) for bounds up to 1e4 standard units, where ``u P(Z >= a)`` underflows (the
    direct inverse CDF returned inf beyond a = 37 and the Gibbs sweep then NaN)."""
    import jax.numpy as jnp
    from jax.scipy.special import log_ndtr

    with jax.enable_x64(True):
        a = jnp.array([-3.0, 0.0, 2.0, 10.0, 36.0, 37.5, 39.0, 60.0, 200.0, 1e4])[:, None]
        u = jnp.array([1e-300, 1e-10, 0.3, 0.9])[None, :]
        z = np.asarray(models.truncated_normal_quantile(a, u))
        assert np.all(np.isfinite(z)) and np.all(z >= np.asarray(a))
        lhs = np.asarray(log_ndtr(-jnp.asarray(z)) - log_ndtr(-a))
        # rounding z (relative eps) moves the log tail by eps |z| times its slope, about max(a, z)
        tol = 1e-9 + 8 * np.finfo(float).eps * np.abs(z) * np.maximum(np.abs(z), 1.0)
        assert np.all(np.abs(lhs - np.log(np.asarray(u))) <= tol)


def test_theta_truncated_finite_when_the_mean_is_far_below_zero():
    """Conditional means 50 conditional sds below the bound give small non-negative draws."""
    import jax.numpy as jnp

    with jax.enable_x64(True):
        L = jnp.eye(4) * 10.0  # conditional sd 0.1
        mean = jnp.array([-5.0, -8.0, 1.0, 0.3])
        th = np.asarray(models.theta_truncated(mean, L, jax.random.key(0), rank=2))
    assert np.all(np.isfinite(th)) and np.all(th >= 0)
    assert th.reshape(-1, order="F")[:2].max() < 0.01  # the excess over 0 is about sd / a = 0.002


def test_diagnostic_values_print_above_their_thresholds():
    """A failing r_hat is printed with the digits that show it fails (1.0102 printed as
    '1.010 > 1.01')."""
    from bayes.datatree import _above

    assert [_above(x, 1.01) for x in (1.0102, 1.0149, 1.0100001, 1.2)] == ["1.0102", "1.015", "1.0100001", "1.200"]
