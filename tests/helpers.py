"""Helpers shared by the tests (``from helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

import numpy as np
from scipy.stats import multivariate_normal

from nmfre import simulate
from nmfre.core import stats
from nmfre.core.ml import Problem, State, kkt_decrement


def rank2(seed: int = 0, N: int = 150, P: int = 8):
    """``(Y, A, X, theta)`` as numpy arrays from :func:`nmfre.simulate.rank2`."""
    d = simulate.rank2(N=N, P=P, seed=seed)
    return d["Y"].values, d["A"].values, d["X"].values, d["theta"].values


def rel(a, b) -> float:
    """Largest relative difference of ``a`` from ``b``."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def direct_nll(Y, X, theta, A, sigma2, tau2) -> float:
    """Marginal nll summed over units with dense Gaussian densities (independent of nmfre)."""
    P = Y.shape[0]
    Sigma = sigma2 * np.eye(P) + tau2 * X @ X.T
    mean = X @ theta @ A
    return -sum(multivariate_normal(mean[:, n], Sigma).logpdf(Y[:, n]) for n in range(Y.shape[1]))


def kkt(fit) -> float:
    """The KKT stationarity measure (predicted remaining nll decrease) at an ML fit."""
    s, d = fit.solution, fit.data
    cap = fit.df_cap
    prob = Problem(stats.from_arrays(d.Y, d.A), s.X.shape[1], fit.theta_kind == "nonneg", fit.settings.variance_mode,
                   fit.settings.sigma2, fit.settings.tau2, cap)
    return kkt_decrement(prob, State(s.X, s.theta, s.sigma2, s.lam, s.nll))
