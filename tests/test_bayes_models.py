"""bayes.models: plain NumPyro functions, callable without Y, priors from the data by default."""

import jax
import numpy as np
import pytest
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
                                                         n_features=4)
        assert out["Y"].shape == (200, 27, 4) and out["theta"].shape == (200, 1, 2)
        X = np.array([[0.25], [0.25], [0.25], [0.25]])
        cond = Predictive(models.conditional, num_samples=50)(jax.random.PRNGKey(1), None, A, X, 2.0, 50.0,
                                                               priors={"theta_scale": 100.0})
    assert cond["Y"].shape == (50, 27, 4)
    with pytest.raises(ValueError, match="n_features"):
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
