"""Wild-bootstrap algebra: multipliers, one-step Newton replicates, p-values, and the
alignment of replicate components to the point estimate."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import norm

DISTS = ("exp", "rademacher", "mammen", "normal")
ALTERNATIVES = ("two-sided", "greater", "less")


def draw_multipliers(dist: str, N: int, B: int, rng: np.random.Generator) -> np.ndarray:
    """``N x B`` iid multipliers with mean 0 and variance 1.

    ``exp``: Exp(1) - 1 (nmfkc); ``rademacher``: +-1; ``mammen``: Mammen's two-point
    distribution; ``normal``: N(0, 1).
    """
    if dist == "exp":
        return rng.exponential(size=(N, B)) - 1.0
    if dist == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=(N, B))
    if dist == "mammen":
        s5 = np.sqrt(5.0)
        lo, hi = -(s5 - 1) / 2, (s5 + 1) / 2
        return np.where(rng.random((N, B)) < (s5 + 1) / (2 * s5), lo, hi)
    if dist == "normal":
        return rng.standard_normal((N, B))
    raise ValueError(f"dist must be one of {DISTS}, got {dist!r}")


def onestep_draws(theta_vec, cov_model, scores, W, nonneg: bool):
    """``theta_b = theta_hat - I^-1 S w_b`` for every column of ``W`` (one product).

    Returns ``(draws, raw)``: ``draws`` projected onto ``>= 0`` when ``nonneg``, ``raw``
    unprojected; both ``QK x B``.
    """
    raw = theta_vec[:, None] - cov_model @ (scores @ W)
    return (np.maximum(raw, 0.0) if nonneg else raw), raw


def p_values(z, alternative: str):
    """Normal p-values for ``z = estimate / se``."""
    if alternative == "greater":
        return norm.sf(z)
    if alternative == "less":
        return norm.cdf(z)
    return 2 * norm.sf(np.abs(z))


def align_components(X_ref: np.ndarray, X_b: np.ndarray):
    """Permutation of ``X_b``'s columns that best matches ``X_ref`` (Hungarian, L1 cost),
    and the cosine similarity of each matched pair."""
    cost = np.abs(X_ref[:, :, None] - X_b[:, None, :]).sum(axis=0)
    _, perm = linear_sum_assignment(cost)
    Xp = X_b[:, perm]
    cos = np.sum(X_ref * Xp, axis=0) / (np.linalg.norm(X_ref, axis=0) * np.linalg.norm(Xp, axis=0))
    return perm, cos
