"""Simulation designs with known truth (labelled data plus the parameters used)."""

from __future__ import annotations

import numpy as np
import xarray as xr


def block_sparse(P: int = 100, N: int = 2000, rank: int = 5, K: int = 4, *, theta_scale: float = 10.0,
                 tau2: float = 0.25, noise_sd: float = 0.3, clip: bool = True, seed=0) -> dict:
    """The benchmark design: block-sparse X, non-negative Theta, Gaussian U and noise.

    Feature ``p`` loads only on component ``p * rank // P`` (weights U(0.5, 1.5), columns
    normalised to sum 1); ``Theta ~ U(0, theta_scale)``; ``A`` = intercept plus ``K - 1``
    U(0, 1) covariates; ``U ~ N(0, tau2)``; noise ``N(0, noise_sd^2)``; ``Y`` clipped at 0
    when ``clip``.

    Returns
    -------
    dict with ``Y`` (DataArray feature x unit), ``A`` (covariate x unit) and the truth
    ``X``, ``theta``, ``U``, ``sigma2``, ``tau2``.
    """
    rng = np.random.default_rng(seed)
    X = np.zeros((P, rank))
    blocks = np.arange(P) * rank // P
    X[np.arange(P), blocks] = rng.uniform(0.5, 1.5, P)
    X /= X.sum(axis=0)
    theta = rng.uniform(0.0, theta_scale, (rank, K))
    A = np.vstack([np.ones(N), rng.uniform(0.0, 1.0, (K - 1, N))])
    U = rng.normal(0.0, np.sqrt(tau2), (rank, N))
    Y = X @ (theta @ A + U) + rng.normal(0.0, noise_sd, (P, N))
    if clip:
        Y = np.maximum(Y, 0.0)
    coords = {"feature": [f"f{p + 1}" for p in range(P)], "unit": [f"u{n + 1}" for n in range(N)],
              "covariate": ["intercept"] + [f"a{k}" for k in range(1, K)],
              "component": [f"Basis{q + 1}" for q in range(rank)]}
    return {
        "Y": xr.DataArray(Y, dims=("feature", "unit"), coords={k: coords[k] for k in ("feature", "unit")}),
        "A": xr.DataArray(A, dims=("covariate", "unit"), coords={k: coords[k] for k in ("covariate", "unit")}),
        "X": xr.DataArray(X, dims=("feature", "component"),
                          coords={k: coords[k] for k in ("feature", "component")}),
        "theta": xr.DataArray(theta, dims=("component", "covariate"),
                              coords={k: coords[k] for k in ("component", "covariate")}),
        "U": U, "sigma2": noise_sd**2, "tau2": tau2,
    }
