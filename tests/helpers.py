"""Helpers shared by the tests (``from helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
from scipy.stats import multivariate_normal

from nmfre import simulate
from nmfre.core import stats
from nmfre.core.covariates import orthonormal_effects
from nmfre.core.ml import Problem, State, degenerating, kkt_decrement

SEED_ENV = "NMFRE_TEST_SEED_OFFSET"
SEED_STRIDE = 1000
SEED_OFFSET = 0  # set by conftest from --seed-offset or $NMFRE_TEST_SEED_OFFSET


def set_seed_offset(k) -> int:
    """Set the suite's seed offset (a non-negative integer)."""
    global SEED_OFFSET
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise ValueError(f"seed offset must be a non-negative integer, got {k!r}") from None
    if k < 0:
        raise ValueError(f"seed offset must be a non-negative integer, got {k}")
    SEED_OFFSET = k
    return k


def seed(n: int) -> int:
    """Seed ``n`` of a stochastic test under the suite's seed offset K: ``n + 1000 K``.

    Every test whose outcome is a random variable (docs/testing.md) takes its seeds from
    here, so ``--seed-offset K`` (or ``NMFRE_TEST_SEED_OFFSET=K``) re-draws it; the stride
    keeps the seeds of different offsets apart as long as a test's own seeds stay below 1000.
    Exact tests keep fixed seeds: their assertions are about those inputs.
    """
    if not 0 <= n < SEED_STRIDE:
        raise ValueError(f"test seeds lie in 0..{SEED_STRIDE - 1}, got {n}")
    return int(n) + SEED_STRIDE * SEED_OFFSET


def record(test: str, **values) -> None:
    """Append the statistics a stochastic test bounds to ``$NMFRE_TEST_RECORD`` (JSON lines),
    when set: the margins of docs/testing.md are measured from these over seed offsets."""
    import json
    import os

    path = os.environ.get("NMFRE_TEST_RECORD")
    if path:
        row = {"test": test, "offset": SEED_OFFSET}
        row.update({k: np.asarray(x, float).round(6).tolist() for k, x in values.items()})
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def rank2(seed: int = 0, N: int = 150, P: int = 8):
    """``(Y, A, X, theta)`` as numpy arrays from :func:`nmfre.simulate.rank2`."""
    d = simulate.rank2(N=N, P=P, seed=seed)
    return d["Y"].values, d["A"].values, d["X"].values, d["theta"].values


def blocky(P: int, N: int, Q: int, seed: int, K: int = 2, scale: float = 10.0):
    """A QA helper's generator: blocky Dirichlet basis columns, an intercept, a 0/1 covariate and
    ``K - 2`` standard normal ones, Theta U(0.5, 1.5) times ``scale``, random effects of sd
    ``scale / 2``, noise sd 0.3. Returns ``(Y, A)``."""
    rng = np.random.default_rng(seed)
    alpha = np.full((P, Q), 0.3)
    for q in range(Q):
        alpha[q * P // Q:(q + 1) * P // Q, q] = 3.0
    X = np.column_stack([rng.dirichlet(alpha[:, q]) for q in range(Q)])
    A = np.vstack([np.ones(N), rng.integers(0, 2, N), rng.normal(size=(K - 2, N))])
    theta = rng.uniform(0.5, 1.5, (Q, K)) * scale
    Y = X @ (theta @ A + rng.normal(0, 0.5 * scale, (Q, N))) + rng.normal(0, 0.3, (P, N))
    return Y, A


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


REPO = Path(__file__).parent.parent


def degenerate(fit) -> bool:
    """Whether a fit's estimate is :func:`~nmfre.core.ml.degenerating` (its effects judged on
    orthonormal covariates, as the fit itself judges them)."""
    sol = fit.solution
    return degenerating(sol.X, orthonormal_effects(sol.theta, fit.data.A))


def load_script(path, name: str | None = None, register: bool = False):
    """A script that is not a package module (``benchmarks/*.py``, ``examples/*.py``; a path
    relative to the repository root or absolute) imported as a module; ``register``: also put
    it in ``sys.modules`` under its name (dataclasses defined in it look their module up)."""
    path = Path(path) if Path(path).is_absolute() else REPO / path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def ridged(F, idx, P: int, Q: int, nV: int):
    """``F`` on the coordinates ``idx`` plus the Newton systems' ridge as its definition states
    it: 1e-10 times the mean absolute diagonal of each block's coordinates among ``idx`` (X's,
    the first ``P Q``; the variances', the last ``nV``; Theta's, the rest) on that block."""
    Ff = F[np.ix_(idx, idx)]
    n = F.shape[0]
    block = np.where(idx < P * Q, 0, np.where(idx >= n - nV, 2, 1))
    d = np.abs(np.diag(Ff)).copy()
    for b in range(3):
        d[block == b] = 1e-10 * d[block == b].mean() if np.any(block == b) else 0.0
    return Ff + np.diag(d)
