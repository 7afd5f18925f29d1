"""Simulation designs with known truth (labelled data plus the parameters used)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import validation as v


def _components(Q: int) -> list[str]:
    """``Basis1..BasisQ``, the names a fit's components get (:func:`nmfre.validation.component_labels`)."""
    return list(v.component_labels(Q))


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
    P, N, rank, K = (v.integer(x, name) for x, name in ((P, "P"), (N, "N"), (rank, "rank"), (K, "K")))
    if rank > P:
        raise ValueError(f"rank ({rank}) must be at most P ({P}): each component loads on its own block of features")
    theta_scale = v.nonnegative_float(theta_scale, "theta_scale")  # 0: a null design
    tau2, noise_sd = v.nonnegative_float(tau2, "tau2"), v.nonnegative_float(noise_sd, "noise_sd")
    clip = v.boolean(clip, "clip")
    rng = v.rng(seed)
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
              "component": _components(rank)}
    return {
        "Y": xr.DataArray(Y, dims=("feature", "unit"), coords={k: coords[k] for k in ("feature", "unit")}),
        "A": xr.DataArray(A, dims=("covariate", "unit"), coords={k: coords[k] for k in ("covariate", "unit")}),
        "X": xr.DataArray(X, dims=("feature", "component"),
                          coords={k: coords[k] for k in ("feature", "component")}),
        "theta": xr.DataArray(theta, dims=("component", "covariate"),
                              coords={k: coords[k] for k in ("component", "covariate")}),
        "U": U, "sigma2": noise_sd**2, "tau2": tau2,
    }


#: the paper's baseline truth (Orthodont-based)
BASELINE_X = np.array([0.2308, 0.2409, 0.2566, 0.2717])
BASELINE_THETA = np.array([[90.502, 9.4285]])
#: the paper's stress-test basis (P = 4, Q = 3)
STRESS_X = np.array([[0.45, 0.25, 0.10], [0.30, 0.25, 0.15], [0.15, 0.25, 0.30], [0.10, 0.25, 0.45]])
STRESS_ARMS = {"cap0.21": 0.21, "cap0.99": 0.99, "off": None}


def _errors(kind: str, size, rng) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(size)
    if kind == "exp":
        return rng.exponential(size=size) - 1.0
    raise ValueError(f"errors must be 'normal' or 'exp', got {kind!r}")


def _paper_design(X, theta, N, errors, hypothesis, seed, fit_kwargs, design, params, missing=0.0,
                  mechanism="mcar") -> dict:
    """Shared generator of the paper's designs: A = intercept + male (Orthodont's share of
    boys, the first ``round(16 N / 27)`` units), ``U ~ N(0, 1)``, the male effect set to 0
    under ``"null"``, errors N(0, 1) or Exp(1) - 1; then missing entries (:func:`mask`)."""
    v.choice(hypothesis, "hypothesis", ("alt", "null"))
    v.choice(errors, "errors", ("normal", "exp"))
    N = v.integer(N, "N", minimum=4)
    rng = v.rng(seed)
    theta = theta.copy()
    if hypothesis == "null":
        theta[:, 1] = 0.0
    A = np.vstack([np.ones(N), (np.arange(N) < round(16 * N / 27)).astype(float)])
    U = rng.standard_normal((X.shape[1], N))
    Y = X @ (theta @ A + U) + _errors(errors, (X.shape[0], N), rng)
    if missing:
        Y = np.where(mask(Y.shape, missing, mechanism, rng), Y, np.nan)
        fit_kwargs = {"method": "ml"}  # the paper's algorithm has no missing-data path
    return _labelled(Y, A, X.copy(), theta, U, 1.0, 1.0, fit_kwargs, design, params)


def mask(shape: tuple[int, int], rate: float, mechanism: str = "mcar", seed=0) -> np.ndarray:
    """Observed-entry mask (``True`` = observed) with a share ``rate`` of the later features
    missing; the first feature (a baseline visit) is always observed.

    ``"mcar"``: each of the other entries is missing independently with probability
    ``rate P / (P - 1)`` (so that ``rate`` of all entries are missing); ``"dropout"``: each
    unit leaves for good after visit ``t`` (monotone), with a constant hazard chosen so that
    ``rate`` of all entries are missing on average.
    """
    v.choice(mechanism, "mechanism", ("mcar", "dropout"))
    P, N = shape
    if not (0 <= rate < (P - 1) / P):
        raise ValueError(f"missing must be in [0, {(P - 1) / P:.3g}) with the first feature always observed, "
                         f"got {rate!r}")
    rng = v.rng(seed)
    if mechanism == "mcar":
        obs = rng.random((P, N)) >= rate * P / (P - 1)
    else:
        h = _dropout_hazard(P, rate)
        last = np.minimum(1 + rng.geometric(h, size=N) - 1, P)  # visits kept (>= 1)
        obs = np.arange(P)[:, None] < last[None, :]
    obs[0] = True
    return obs


def _dropout_hazard(P: int, rate: float) -> float:
    """Per-visit hazard ``h`` whose expected missing share after the first visit is ``rate``."""
    from scipy.optimize import brentq

    def share(h):
        k = np.arange(1, P)  # P(missing at visit k+1) = 1 - (1 - h)^k
        return float(np.sum(1 - (1 - h) ** k)) / P - rate

    return 0.0 if rate == 0 else brentq(share, 1e-12, 1 - 1e-12)


def _labelled(Y, A, X, theta, U, sigma2, tau2, fit_kwargs, design, params, covariates=("intercept", "male")):
    P, N = Y.shape
    Q, K = theta.shape
    feat = [f"f{p + 1}" for p in range(P)]
    units = [f"u{n + 1}" for n in range(N)]
    comp = _components(Q)
    cov = list(covariates)[:K]
    return {
        "Y": xr.DataArray(Y, dims=("feature", "unit"), coords={"feature": feat, "unit": units}),
        "A": xr.DataArray(A, dims=("covariate", "unit"), coords={"covariate": cov, "unit": units}),
        "X": xr.DataArray(X, dims=("feature", "component"), coords={"feature": feat, "component": comp}),
        "theta": xr.DataArray(theta, dims=("component", "covariate"), coords={"component": comp, "covariate": cov}),
        "U": xr.DataArray(U, dims=("component", "unit"), coords={"component": comp, "unit": units}),
        "sigma2": sigma2, "tau2": tau2, "rank": Q, "fit_kwargs": fit_kwargs, "design": design, "params": params,
    }


def baseline(N: int = 100, errors: str = "normal", hypothesis: str = "alt", seed=0, missing: float = 0.0,
             mechanism: str = "mcar") -> dict:
    """The paper's baseline design: P = 4, Q = 1, Orthodont-based truth.

    ``X = (0.2308, 0.2409, 0.2566, 0.2717)``, ``Theta = (90.502, 9.4285)`` (``"alt"``) or
    male effect 0 (``"null"``); ``A`` = intercept + male, with the first ``round(16 N / 27)``
    units male (Orthodont's share); ``U ~ N(0, 1)``; errors ``N(0, 1)`` (``"normal"``) or
    ``Exp(1) - 1`` (``"exp"``). ``fit_kwargs`` holds the paper's fit (its algorithm with the
    df cap at 0.21). With ``missing > 0`` a share of the entries is set to NaN (:func:`mask`,
    ``mechanism`` ``"mcar"`` or ``"dropout"``) and ``fit_kwargs`` is maximum likelihood
    (the paper's algorithm has no missing-data path).
    """
    params = {"N": N, "errors": errors, "hypothesis": hypothesis}
    if missing:
        params.update(missing=missing, mechanism=mechanism)
    return _paper_design(BASELINE_X[:, None], BASELINE_THETA, N, errors, hypothesis, seed,
                         {"method": "paper", "df_cap": 0.21}, "baseline", params, missing, mechanism)


def stress(arm: str = "cap0.21", errors: str = "normal", hypothesis: str = "alt", N: int = 100, seed=0) -> dict:
    """The paper's df-cap stress test: P = 4, Q = 3, N = 100.

    X's columns (.45,.30,.15,.10), (.25,.25,.25,.25), (.10,.15,.30,.45); intercepts
    90.502/3 on every component, male 9.4285 on component 1 only (``"alt"``) or 0;
    ``U ~ N(0, 1)``, errors as in :func:`baseline`. The arms fit the paper's algorithm from
    ``tau2 = 1000`` with the cap at 0.21 (``"cap0.21"``), 0.99 (``"cap0.99"``) or without a
    cap and with tau2 frozen (``"off"``), as in ``fit_kwargs``.
    """
    v.choice(arm, "arm", tuple(STRESS_ARMS))
    theta = np.array([[90.502 / 3, 9.4285], [90.502 / 3, 0.0], [90.502 / 3, 0.0]])
    kw = {"method": "paper", "df_cap": STRESS_ARMS[arm], "tau2": 1000.0, "fix_tau2": arm == "off"}
    return _paper_design(STRESS_X, theta, N, errors, hypothesis, seed, kw, "stress",
                         {"arm": arm, "errors": errors, "hypothesis": hypothesis, "N": N})


def rank2(N: int = 150, P: int = 8, seed=0) -> dict:
    """A small, well-separated rank-2 problem with known truth (used by the tests and examples).

    Component 1 loads on the first ``P // 2 + 1`` features, component 2 on the last
    ``P - P // 2 + 1`` (two shared), weights U(0.5, 1.5), columns summing to 1;
    ``A`` = intercept + a Bernoulli(1/2) ``group``; ``Theta = [[20, 5], [30, 0]]``;
    ``U ~ N(0, 4)``; noise ``N(0, 0.25)``. The fit settings are ML's defaults.
    """
    N, P = v.integer(N, "N", minimum=4), v.integer(P, "P", minimum=4)
    rng = v.rng(seed)
    X = np.zeros((P, 2))
    X[: P // 2 + 1, 0] = rng.uniform(0.5, 1.5, P // 2 + 1)
    X[P // 2 - 1:, 1] = rng.uniform(0.5, 1.5, P - P // 2 + 1)
    X /= X.sum(axis=0)
    A = np.vstack([np.ones(N), rng.binomial(1, 0.5, N)]).astype(float)
    theta = np.array([[20.0, 5.0], [30.0, 0.0]])
    U = rng.normal(0, 2.0, (2, N))
    Y = X @ (theta @ A + U) + rng.normal(0, 0.5, (P, N))
    return _labelled(Y, A, X, theta, U, 0.25, 4.0, {}, "rank2", {"N": N, "P": P}, ("intercept", "group"))
