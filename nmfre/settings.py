"""Validated estimation settings shared by :func:`nmfre.fit`, :func:`nmfre.df_scan`, the
refit bootstrap and cross-validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from . import validation as v

METHODS = ("ml", "paper")
THETAS = ("free", "nonneg")
INITS = ("nndsvd", "nndsvd-tail", "random")
DEFAULT_TOL = {"ml": 1e-10, "paper": 1e-5}
DEFAULT_MAX_ITER = {"ml": 5000, "paper": 50000}


@dataclass(frozen=True)
class FitSettings:
    """How to estimate NMF-RE (everything but the data and the starting values).

    Build it with :meth:`create`, which checks every value and fills the
    method-dependent defaults.

    Attributes
    ----------
    method : {"ml", "paper"}
    theta : {"free", "nonneg"}
    df_cap : None, float in (0, 1] or "auto"
    init : {"nndsvd", "nndsvd-tail", "random", "custom"}
        ``"custom"`` when explicit starting values are given.
    n_init : int
    max_iter : int
    tol : float
    sigma2, tau2 : float
        Starting (or fixed) variances.
    fix_sigma2, fix_tau2 : bool
    """

    method: str = "ml"
    theta: str = "free"
    df_cap: float | str | None = None
    init: str = "nndsvd"
    n_init: int = 1
    max_iter: int = DEFAULT_MAX_ITER["ml"]
    tol: float = DEFAULT_TOL["ml"]
    sigma2: float = 1.0
    tau2: float = 1.0
    fix_sigma2: bool = False
    fix_tau2: bool = False

    @classmethod
    def create(cls, *, method: str = "ml", theta: str | None = None, df_cap: Any = None, init: Any = "nndsvd",
               n_init: int = 1, max_iter: int | None = None, tol: float | None = None, sigma2: float = 1.0,
               tau2: float = 1.0, fix_sigma2: bool = False, fix_tau2: bool = False) -> FitSettings:
        """Check the user's values and fill defaults (``theta``: ``"free"`` for ML,
        ``"nonneg"`` for the paper method; ``max_iter``/``tol``: 5000/1e-10 for ML,
        50000/1e-5 for the paper method)."""
        method = v.choice(method, "method", METHODS)
        theta = ("free" if method == "ml" else "nonneg") if theta is None else v.choice(theta, "theta", THETAS)
        if method == "paper" and theta == "free":
            raise ValueError("theta='free' is not available with method='paper' "
                             "(multiplicative updates need Theta >= 0)")
        if isinstance(init, str):
            init = v.choice(init, "init", INITS)
        elif isinstance(init, dict):
            init = "custom"
        else:
            raise v.ArgumentTypeError(f"init must be one of {INITS} or a dict of starting values, "
                                      f"got {type(init).__name__}")
        n_init = v.integer(n_init, "n_init")
        if init == "custom" and n_init > 1:
            raise ValueError("n_init > 1 needs init='nndsvd', 'nndsvd-tail' or 'random', not explicit "
                             "starting values")
        df_cap = check_df_cap(df_cap)
        fix_sigma2, fix_tau2 = v.boolean(fix_sigma2, "fix_sigma2"), v.boolean(fix_tau2, "fix_tau2")
        if df_cap == "auto" and n_init > 1:
            raise ValueError("n_init > 1 with df_cap='auto': the rate scan runs from one start; fit with "
                             "df_cap='auto' first, then with the rate it chose (fit.df_cap_rate) and n_init")
        if df_cap is not None and fix_sigma2 and fix_tau2:
            raise ValueError("df_cap with fix_sigma2 and fix_tau2: the cap acts by raising lambda = sigma2 / tau2, "
                             "which fixing both variances fixes (the cap would move tau2 away from its fixed "
                             "value); fix one variance, or drop df_cap")
        if df_cap is not None and method == "paper" and fix_tau2:
            raise ValueError("df_cap with fix_tau2 and method='paper': the paper's algorithm meets the cap by "
                             "setting tau2 = sigma2 / lambda_cap, away from its fixed value; use method='ml' "
                             "(where sigma2 moves instead) or drop df_cap")
        return cls(method=method, theta=theta, df_cap=df_cap, init=init, n_init=n_init,
                   max_iter=DEFAULT_MAX_ITER[method] if max_iter is None else v.integer(max_iter, "max_iter"),
                   tol=DEFAULT_TOL[method] if tol is None else v.positive_float(tol, "tol"),
                   sigma2=v.positive_float(sigma2, "sigma2"), tau2=v.positive_float(tau2, "tau2"),
                   fix_sigma2=fix_sigma2, fix_tau2=fix_tau2)

    @property
    def nonneg(self) -> bool:
        return self.theta == "nonneg"

    @property
    def variance_mode(self) -> str:
        """``"free"``, ``"sigma2"`` (sigma2 fixed), ``"tau2"`` (tau2 fixed) or ``"fixed"``."""
        return {(False, False): "free", (True, False): "sigma2", (False, True): "tau2",
                (True, True): "fixed"}[(self.fix_sigma2, self.fix_tau2)]

    def replace(self, **changes) -> FitSettings:
        """A copy with some fields changed (not re-validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FitSettings:
        """Inverse of :meth:`to_dict` (unknown keys are an error; missing keys take defaults)."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        return cls(**d)


def check_df_cap(df_cap: Any) -> float | str | None:
    """``None``, ``"auto"`` or a rate in ``(0, 1]``."""
    if df_cap is None or (isinstance(df_cap, str) and df_cap == "auto"):
        return df_cap
    if isinstance(df_cap, str):
        raise ValueError(f"df_cap must be None, a rate in (0, 1] or 'auto', got {df_cap!r}")
    return v.rate(df_cap, "df_cap (cap = rate N Q)")


def check_start_values(init: dict, P: int, Q: int, K: int, N: int, nonneg: bool = False) -> dict[str, np.ndarray]:
    """Explicit starting values ``{"X": P x Q, "theta": Q x K, "U": Q x N}`` (theta, U optional;
    ``nonneg``: Theta is constrained to be non-negative, so its start must be)."""
    unknown = set(init) - {"X", "theta", "U"}
    if unknown:
        raise ValueError(f"init has unknown keys {sorted(unknown)}; allowed: X, theta, U")
    if init.get("X") is None:
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
    if nonneg and "theta" in out and np.any(out["theta"] < 0):
        raise ValueError(f"init['theta'] has negative entries (min {out['theta'].min():.4g}) but Theta is "
                         "non-negative (theta='nonneg', the paper method's default), and a start is not projected "
                         "silently: give a non-negative one (e.g. np.maximum(theta, 0) of a sign-free fit)")
    return out
