"""NumPyro models of NMF-RE: plain model functions with plates named like nmfre's dims.

All three share the likelihood ``y_n ~ N(X Theta a_n, sigma^2 I_P + tau^2 X X')`` with
U marginalised out (a low-rank-plus-diagonal normal), so NUTS never sees the ``N Q``
random effects; :func:`u_conditional` gives U's Gaussian conditional afterwards. Each
model takes ``Y=None`` (then ``Y`` is a sampled site, for prior and posterior predictive
draws through ``numpyro.infer.Predictive``; give ``n_features`` for the joint model).

* :func:`joint`: columns of X ~ Dirichlet, Theta ~ Normal (free) or HalfNormal
  (non-negative), sigma and tau ~ HalfNormal.
* :func:`conditional_x`: X fixed (at the frequentist X-hat); sigma, tau, Theta sampled.
* :func:`conditional`: X and (sigma^2, tau^2) fixed; Theta with a flat prior by default.
  Its posterior is Gaussian with mean Theta-hat (GLS = OLS) and covariance the inverse of
  the information ``AA' (x) X' Sigma^-1 X`` that nmfre's inference uses.

Priors (``priors`` dict, every key optional; ``None`` means :func:`default_priors` of
``Y``): ``x_concentration`` (Dirichlet concentration, 1), ``theta_scale``,
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
    Y = np.asarray(Y, dtype=float)
    P = Y.shape[0]
    sd = float(np.std(Y)) or 1.0
    rms = float(np.sqrt(np.mean(Y**2))) or 1.0
    return {"x_concentration": 1.0, "theta_scale": 10.0 * P * rms, "sigma_scale": 2.0 * sd,
            "tau_scale": 2.0 * P * sd}


def resolve_priors(Y, rank: int, priors: dict | None) -> dict:
    """``default_priors(Y, rank)`` updated with ``priors`` (unknown keys are an error).

    When ``priors`` gives every scale, ``Y`` is not looked at (so models can be traced
    with ``Y`` as a JAX array or ``None``).
    """
    given = dict(priors or {})
    unknown = set(given) - set(PRIOR_KEYS)
    if unknown:
        raise ValueError(f"priors has unknown keys {sorted(unknown)}; allowed {PRIOR_KEYS}")
    missing = [k for k in PRIOR_KEYS[1:] if k not in given]
    if not missing:
        return {"x_concentration": 1.0, **given}
    if Y is None:
        raise ValueError(f"with Y=None the priors cannot be set from the data: give priors with {missing} "
                         "(e.g. bayes.default_priors(Y, rank) of a data set)")
    return {**default_priors(Y, rank), **given}


def _likelihood(Y, A, X, theta, sigma2, tau2, P: int):
    N = A.shape[1]
    mean = (X @ theta @ A).T  # (N, P)
    with numpyro.plate("unit", N):
        numpyro.sample("Y", dist.LowRankMultivariateNormal(mean, jnp.sqrt(tau2) * X, sigma2 * jnp.ones(P)),
                       obs=None if Y is None else Y.T)


def _theta(rank, K, nonneg, scale):
    with numpyro.plate("covariate", K, dim=-1), numpyro.plate("component", rank, dim=-2):
        if scale is None:
            support = constraints.positive if nonneg else constraints.real
            return numpyro.sample("theta", dist.ImproperUniform(support, (), ()))
        return numpyro.sample("theta", dist.HalfNormal(scale) if nonneg else dist.Normal(0.0, scale))


def _variances(p: dict):
    sigma = numpyro.sample("sigma", dist.HalfNormal(p["sigma_scale"]))
    tau = numpyro.sample("tau", dist.HalfNormal(p["tau_scale"]))
    return sigma**2, tau**2


def joint(Y, A, rank: int, nonneg: bool = False, priors: dict | None = None, *, n_features: int | None = None):
    """Full joint model: X, Theta, sigma, tau all sampled.

    Parameters
    ----------
    Y : array (P, N) or None
        Data; None to draw Y (then give ``n_features`` and ``priors``).
    A : array (K, N)
    rank : int
    nonneg : bool
        Theta half-normal (>= 0) instead of normal.
    priors : dict, optional
        See the module docstring.
    n_features : int, optional
        P, when ``Y`` is None.
    """
    if Y is None and n_features is None:
        raise ValueError("joint(Y=None, ...) needs n_features (the number of features P)")
    P = Y.shape[0] if Y is not None else int(n_features)
    p = resolve_priors(Y, rank, priors)
    with numpyro.plate("component", rank):
        Xc = numpyro.sample("X_columns", dist.Dirichlet(p["x_concentration"] * jnp.ones(P)))
    X = numpyro.deterministic("X", Xc.T)
    theta = _theta(rank, A.shape[0], nonneg, p["theta_scale"])
    sigma2, tau2 = _variances(p)
    _likelihood(Y, A, X, theta, sigma2, tau2, P)


def conditional_x(Y, A, X, nonneg: bool = False, priors: dict | None = None):
    """X fixed; Theta, sigma, tau sampled (``Y`` may be None)."""
    p = resolve_priors(Y, X.shape[1], priors)
    theta = _theta(X.shape[1], A.shape[0], nonneg, p["theta_scale"])
    sigma2, tau2 = _variances(p)
    _likelihood(Y, A, X, theta, sigma2, tau2, X.shape[0])


def conditional(Y, A, X, sigma2: float, tau2: float, nonneg: bool = False, priors: dict | None = None):
    """X, sigma^2 and tau^2 fixed; Theta flat (``priors`` None or ``theta_scale`` None) or normal."""
    scale = (priors or {}).get("theta_scale")
    theta = _theta(X.shape[1], A.shape[0], nonneg, scale)
    _likelihood(Y, A, X, theta, sigma2, tau2, X.shape[0])


def u_conditional(Y, A, X, theta, sigma2, tau2):
    """Mean (Q x N) and covariance (Q x Q) of U given the data and the parameters."""
    Q = X.shape[1]
    M = X.T @ X + (sigma2 / tau2) * np.eye(Q)
    Minv = np.linalg.inv(M)
    return Minv @ X.T @ (Y - X @ theta @ A), sigma2 * Minv
