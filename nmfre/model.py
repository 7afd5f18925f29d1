"""User-facing estimation: :func:`fit` and :func:`df_scan`.

Validates everything first, builds starting values, runs one of the two algorithms in
:mod:`nmfre.fitting` (with restarts) and wraps the result in :class:`nmfre.results.NMFREFit`.
"""

from __future__ import annotations

import warnings
from numbers import Real

import numpy as np
import pandas as pd

from . import dfcap, fitting
from .exceptions import ConvergenceWarning, IdentifiabilityWarning
from .labels import check_rank, coerce
from .likelihood import icc
from .results import NMFREFit

METHODS = ("ml", "paper")
THETAS = ("free", "nonneg")
INITS = ("nndsvd", "random")
DEFAULT_TOL = {"ml": 1e-10, "paper": 1e-5}
DEFAULT_MAX_ITER = {"ml": 5000, "paper": 50000}


def _check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_df_cap(df_cap):
    if df_cap is None or (isinstance(df_cap, str) and df_cap == "auto"):
        return df_cap
    if isinstance(df_cap, str):
        raise ValueError(f"df_cap must be None, a rate in (0, 1] or 'auto', got {df_cap!r}")
    if isinstance(df_cap, bool) or not isinstance(df_cap, Real) or not (0 < df_cap <= 1):
        raise ValueError(f"df_cap must be a rate in (0, 1] (cap = rate N Q), got {df_cap!r}")
    return float(df_cap)


def _check_init(init, P, Q, K, N):
    if isinstance(init, str):
        return _check_choice(init, "init", INITS)
    if not isinstance(init, dict):
        raise ValueError(f"init must be one of {INITS} or a dict of starting values, got {type(init).__name__}")
    unknown = set(init) - {"X", "theta", "U"}
    if unknown:
        raise ValueError(f"init has unknown keys {sorted(unknown)}; allowed: X, theta, U")
    if "X" not in init:
        raise ValueError("init dict must contain 'X' (P x Q starting basis)")
    out = {}
    for key, shape in (("X", (P, Q)), ("theta", (Q, K)), ("U", (Q, N))):
        if key in init and init[key] is not None:
            arr = np.asarray(getattr(init[key], "values", init[key]), dtype=float)
            if arr.shape != shape:
                raise ValueError(f"init['{key}'] has shape {arr.shape}, expected {shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"init['{key}'] contains NaN or Inf")
            out[key] = arr
    if np.any(out["X"] < 0):
        raise ValueError("init['X'] must be non-negative")
    if np.any(out["X"].sum(axis=0) <= 0):
        raise ValueError("init['X'] has a column summing to 0")
    return out


def fit(Y, A=None, rank: int = 2, *, method: str = "ml", theta: str | None = None,
        df_cap=None, init="nndsvd", n_init: int = 1, seed=None, max_iter: int | None = None,
        tol: float | None = None, sigma2: float = 1.0, tau2: float = 1.0,
        fix_sigma2: bool = False, fix_tau2: bool = False, covariates=None,
        formula: str | None = None) -> NMFREFit:
    """Fit NMF-RE, ``Y = X (Theta A + U) + E``.

    Parameters
    ----------
    Y : array-like, pandas.DataFrame or xarray.DataArray
        ``feature x unit`` data. ``method="paper"`` requires ``Y >= 0``.
    A : array-like, DataFrame or DataArray, optional
        ``covariate x unit`` design; default a row of ones (``intercept``).
    rank : int
        Number of components ``Q`` (``1 <= Q <= min(P, N)``).
    method : {"ml", "paper"}
        ``"ml"`` maximises the marginal likelihood (monotone, accelerated);
        ``"paper"`` runs the paper's multiplicative algorithm step for step.
    theta : {"free", "nonneg"}, optional
        Sign of Theta. Default ``"free"`` for ML, ``"nonneg"`` for the paper method
        (which only supports non-negative Theta).
    df_cap : None, float in (0, 1] or "auto"
        The df cap rate (``df_U <= max(rate N Q, 1)``); ``"auto"`` picks the rate with
        nmfkc 0.7.0's scan rule (:func:`df_scan`).
    init : {"nndsvd", "random"} or dict
        Starting basis: deterministic NNDSVD, random simplex columns, or explicit
        values ``{"X": ..., "theta": ..., "U": ...}`` (theta/U optional).
    n_init : int
        Number of starts; starts after the first are random. The fit with the best
        likelihood is kept; all are reported in ``fit.restarts``.
    seed : int or numpy.random.Generator, optional
        Randomness for random starts (global state is never touched).
    max_iter, tol : optional
        Iteration limit and tolerance (defaults: ML 5000 / 1e-10 on the relative nll
        decrease; paper 50000 / 1e-5 on the relative objective change, as nmfkc).
    sigma2, tau2 : float
        Starting (or, with ``fix_*``, fixed) variances.
    fix_sigma2, fix_tau2 : bool
        Hold a variance fixed at its given value.
    covariates, formula : optional
        Build ``A`` from a unit-level DataFrame and a formulaic formula, e.g.
        ``fit(Y, covariates=df, formula="~ male")``.

    Returns
    -------
    NMFREFit
    """
    method = _check_choice(method, "method", METHODS)
    if theta is None:
        theta = "free" if method == "ml" else "nonneg"
    theta = _check_choice(theta, "theta", THETAS)
    if method == "paper" and theta == "free":
        raise ValueError("theta='free' is not available with method='paper' (multiplicative updates need Theta >= 0)")
    df_cap = _check_df_cap(df_cap)
    sigma2 = _check_positive(sigma2, "sigma2")
    tau2 = _check_positive(tau2, "tau2")
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise ValueError(f"n_init must be a positive integer, got {n_init!r}")
    max_iter = DEFAULT_MAX_ITER[method] if max_iter is None else max_iter
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    tol = DEFAULT_TOL[method] if tol is None else _check_positive(tol, "tol")
    data = coerce(Y, A, covariates=covariates, formula=formula)
    P, N = data.Y.shape
    K = data.A.shape[0]
    Q = check_rank(rank, P, N)
    if method == "paper" and np.any(data.Y < 0):
        raise ValueError(f"Y has {int((data.Y < 0).sum())} negative entries; method='paper' needs Y >= 0")
    init = _check_init(init, P, Q, K, N)
    if isinstance(init, dict) and n_init > 1:
        raise ValueError("n_init > 1 needs init='nndsvd' or 'random', not explicit starting values")
    rng = np.random.default_rng(seed)
    if P <= Q and df_cap is None and not (fix_sigma2 or fix_tau2):
        warnings.warn(
            f"P = {P} <= Q = {Q}: sigma2 and tau2 are not separately identifiable (the "
            "likelihood is flat as lambda -> 0); set df_cap or fix a variance",
            IdentifiabilityWarning, stacklevel=2)

    settings = dict(method=method, theta=theta, max_iter=int(max_iter), tol=tol, sigma2=sigma2,
                    tau2=tau2, fix_sigma2=bool(fix_sigma2), fix_tau2=bool(fix_tau2))
    scan = None
    rate = df_cap
    if df_cap == "auto":
        start = _starts(data, Q, init, 1, rng)[0]
        scan = _scan(data, Q, start, dfcap.DEFAULT_RATES, settings)
        rate = scan.attrs["chosen_rate"]
        if rate is None:
            raise ValueError("df_cap='auto': no rate in the scan gives a converged fit with "
                             f"df_U/cap < {dfcap.SAFEGUARD_RATIO}; give a rate explicitly\n{scan}")
        starts = [start]
    else:
        starts = _starts(data, Q, init, n_init, rng)

    runs = [_run(data, Q, s, rate, settings) for s in starts]
    nlls = [r["nll"] for r in runs]
    best = int(np.nanargmin(nlls))
    res = runs[best]
    restarts = pd.DataFrame({
        "init": [s["name"] for s in starts], "nll": nlls,
        "converged": [r["converged"] for r in runs], "n_iter": [r["n_iter"] for r in runs],
    })
    if not res["converged"]:
        warnings.warn(
            f"NMF-RE ({method}) did not converge in {res['n_iter']} iterations "
            f"(max_iter={max_iter}, tol={tol:g}); increase max_iter", ConvergenceWarning, stacklevel=2)
    return NMFREFit(data, res, rate=rate, settings=settings, restarts=restarts, scan=scan)


def _starts(data, Q, init, n_init, rng):
    P = data.Y.shape[0]
    if isinstance(init, dict):
        return [dict(name="custom", **init)]
    first = {"name": "nndsvd", "X": fitting.nndsvd(data.Y, Q)} if init == "nndsvd" else \
        {"name": "random", "X": fitting.random_basis(P, Q, rng)}
    return [first] + [{"name": "random", "X": fitting.random_basis(P, Q, rng)} for _ in range(n_init - 1)]


def _run(data, Q, start, rate, s) -> dict:
    """Run one algorithm from one start; returns the numeric result dict with ``nll``."""
    N = data.Y.shape[1]
    if s["method"] == "paper":
        theta0 = start.get("theta")
        if theta0 is None:
            prob = _problem(data, Q, None, dict(s, theta="nonneg"))
            theta0 = fitting.theta_step(prob, fitting._normalise_columns(start["X"]), s["sigma2"] / s["tau2"])
        out = fitting.fit_paper(
            data.Y, data.A, start["X"], theta0, start.get("U"), rate=rate, sigma2=s["sigma2"],
            tau2=s["tau2"], update_sigma2=not s["fix_sigma2"], update_tau2=not s["fix_tau2"],
            max_iter=s["max_iter"], tol=s["tol"])
        return out
    cap = None if rate is None else dfcap.cap_value(rate, N, Q)
    prob = _problem(data, Q, cap, s)
    X0 = fitting._normalise_columns(start["X"])
    return fitting.fit_ml(prob, X0, start.get("theta"), max_iter=s["max_iter"], tol=s["tol"])


def _problem(data, Q, cap, s):
    mode = {(False, False): "free", (True, False): "sigma2", (False, True): "tau2",
            (True, True): "fixed"}[(s["fix_sigma2"], s["fix_tau2"])]
    return fitting.Problem(data.Y, data.A, Q, s["theta"] == "nonneg", mode, s["sigma2"], s["tau2"], cap)


def _scan(data, Q, start, rates, settings) -> pd.DataFrame:
    N = data.Y.shape[1]
    rows = []
    for rate in rates:
        out = _run(data, Q, start, float(rate), settings)
        d = np.linalg.eigvalsh(out["X"].T @ out["X"])
        df = float(dfcap.df_u(np.maximum(d, 0), N, out["lam"]))
        cap = dfcap.cap_value(float(rate), N, Q)
        rows.append(dict(rate=float(rate), df_cap=cap, df_u=df, safeguard=df / cap < dfcap.SAFEGUARD_RATIO,
                         hit=bool(out["cap_hit"]), converged=bool(out["converged"]),
                         tau2=out["tau2"], sigma2=out["sigma2"],
                         icc=icc(out["X"], out["sigma2"], out["tau2"]),
                         nll=out["nll"]))
    table = pd.DataFrame(rows)
    table.attrs["chosen_rate"] = dfcap.choose_rate(table.rate, table.df_u, table.df_cap, table.hit,
                                                   table.converged)
    return table


def df_scan(Y, A=None, rank: int = 2, *, rates=dfcap.DEFAULT_RATES, method: str = "paper",
            theta: str | None = None, init="nndsvd", seed=None, max_iter: int | None = None,
            tol: float | None = None, sigma2: float = 1.0, tau2: float = 1.0) -> pd.DataFrame:
    """Fit at each df-cap rate from the same start and tabulate the result.

    Columns: ``rate, df_cap, df_u, safeguard (df_u/cap < 0.99), hit (cap bound at some
    iteration), converged, tau2, sigma2, icc, nll``. ``table.attrs["chosen_rate"]`` is
    the rate that ``df_cap="auto"`` uses (nmfkc 0.7.0's rule, see
    :func:`nmfre.dfcap.choose_rate`), or None.
    """
    method = _check_choice(method, "method", METHODS)
    theta = ("free" if method == "ml" else "nonneg") if theta is None else _check_choice(theta, "theta", THETAS)
    rates = np.atleast_1d(np.asarray(rates, dtype=float))
    if rates.size == 0 or np.any(~np.isfinite(rates)) or np.any(rates <= 0) or np.any(rates > 1):
        raise ValueError(f"rates must be non-empty and in (0, 1], got {rates}")
    data = coerce(Y, A)
    P, N = data.Y.shape
    Q = check_rank(rank, P, N)
    if method == "paper" and np.any(data.Y < 0):
        raise ValueError("Y has negative entries; method='paper' needs Y >= 0")
    init = _check_init(init, P, Q, data.A.shape[0], N)
    max_iter = DEFAULT_MAX_ITER[method] if max_iter is None else max_iter
    tol = DEFAULT_TOL[method] if tol is None else _check_positive(tol, "tol")
    settings = dict(method=method, theta=theta, max_iter=int(max_iter), tol=tol,
                    sigma2=_check_positive(sigma2, "sigma2"), tau2=_check_positive(tau2, "tau2"),
                    fix_sigma2=False, fix_tau2=False)
    start = _starts(data, Q, init, 1, np.random.default_rng(seed))[0]
    return _scan(data, Q, start, rates, settings)
