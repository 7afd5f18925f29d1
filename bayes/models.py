"""NumPyro models of NMF-RE: plain model functions with plates named like nmfre's dims.

All three share the likelihood ``y_n ~ N(X Theta a_n, sigma^2 I_P + tau^2 X X')`` with
U marginalised out (a low-rank-plus-diagonal normal), so NUTS never sees the ``N Q``
random effects; :func:`u_conditional` gives U's Gaussian conditional afterwards.

* :func:`joint`: columns of X ~ Dirichlet, Theta ~ Normal (free) or HalfNormal
  (non-negative), sigma and tau ~ HalfNormal.
* :func:`conditional_x`: X fixed (at the frequentist X-hat); sigma, tau, Theta sampled.
* :func:`conditional`: X and (sigma^2, tau^2) fixed; Theta with a flat prior by default.
  Its posterior is Gaussian with mean Theta-hat (GLS = OLS) and covariance the inverse of
  the information ``AA' (x) X' Sigma^-1 X`` that nmfre's inference uses.

Priors (``priors`` dict, every key optional; defaults from the data, see
:func:`default_priors`): ``x_concentration`` (Dirichlet concentration, 1), ``theta_scale``,
``sigma_scale``, ``tau_scale`` (half-normal/normal scales) and, for ``conditional``,
``theta_scale=None`` meaning a flat prior.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

PRIOR_KEYS = ("x_concentration", "theta_scale", "sigma_scale", "tau_scale")


def default_priors(Y: np.ndarray, rank: int) -> dict:
    """Data-based weakly informative scales.

    ``sigma_scale = 2 sd(Y)``; ``tau_scale = 2 P sd(Y)`` (U lives on the scale of
    ``Theta a``, which is about P times that of Y because X's columns sum to 1);
    ``theta_scale = 10 P rms(Y)``; ``x_concentration = 1`` (uniform on the simplex).
    """
    P = Y.shape[0]
    sd = float(np.std(Y)) or 1.0
    rms = float(np.sqrt(np.mean(Y**2))) or 1.0
    return {"x_concentration": 1.0, "theta_scale": 10.0 * P * rms, "sigma_scale": 2.0 * sd,
            "tau_scale": 2.0 * P * sd}


def _likelihood(Y, A, X, theta, sigma2, tau2):
    P, N = Y.shape
    mean = (X @ theta @ A).T  # (N, P)
    with numpyro.plate("unit", N):
        numpyro.sample("Y", dist.LowRankMultivariateNormal(mean, jnp.sqrt(tau2) * X, sigma2 * jnp.ones(P)),
                       obs=Y.T)


def _theta(rank, K, nonneg, scale):
    with numpyro.plate("covariate", K, dim=-1), numpyro.plate("component", rank, dim=-2):
        if scale is None:
            support = constraints.positive if nonneg else constraints.real
            return numpyro.sample("theta", dist.ImproperUniform(support, (), ()))
        return numpyro.sample("theta", dist.HalfNormal(scale) if nonneg else dist.Normal(0.0, scale))


def joint(Y, A, rank: int, nonneg: bool = False, priors: dict | None = None):
    """Full joint model: X, Theta, sigma, tau all sampled."""
    p = priors or {}
    P, _ = Y.shape
    K = A.shape[0]
    with numpyro.plate("component", rank):
        Xc = numpyro.sample("X_columns", dist.Dirichlet(p.get("x_concentration", 1.0) * jnp.ones(P)))
    X = numpyro.deterministic("X", Xc.T)
    theta = _theta(rank, K, nonneg, p["theta_scale"])
    sigma = numpyro.sample("sigma", dist.HalfNormal(p["sigma_scale"]))
    tau = numpyro.sample("tau", dist.HalfNormal(p["tau_scale"]))
    _likelihood(Y, A, X, theta, sigma**2, tau**2)


def conditional_x(Y, A, X, nonneg: bool = False, priors: dict | None = None):
    """X fixed; Theta, sigma, tau sampled."""
    p = priors or {}
    theta = _theta(X.shape[1], A.shape[0], nonneg, p["theta_scale"])
    sigma = numpyro.sample("sigma", dist.HalfNormal(p["sigma_scale"]))
    tau = numpyro.sample("tau", dist.HalfNormal(p["tau_scale"]))
    _likelihood(Y, A, X, theta, sigma**2, tau**2)


def conditional(Y, A, X, sigma2: float, tau2: float, nonneg: bool = False, priors: dict | None = None):
    """X, sigma^2 and tau^2 fixed; Theta flat (``priors["theta_scale"]`` None) or normal."""
    p = priors or {}
    theta = _theta(X.shape[1], A.shape[0], nonneg, p.get("theta_scale"))
    _likelihood(Y, A, X, theta, sigma2, tau2)


def u_conditional(Y, A, X, theta, sigma2, tau2):
    """Mean (Q x N) and covariance (Q x Q) of U given the data and the parameters."""
    Q = X.shape[1]
    M = X.T @ X + (sigma2 / tau2) * np.eye(Q)
    Minv = np.linalg.inv(M)
    return Minv @ X.T @ (Y - X @ theta @ A), sigma2 * Minv
