"""Inference on Theta conditional on the fitted basis X (and random effects U).

Numerical kernels on plain arrays (:func:`conditional_kernel`, :func:`draw_multipliers`,
:func:`onestep_draws`) and the labelled :class:`Inference` result on top.

With ``Ys = Y - X U``, ``Rc = Ys - X Theta A``, ``M = X'X + lambda I``:

* ``sigma2_used = ||Rc||^2 / max(P N - df_U - Q K, 1)``, ``df_U = N tr(M^-1 X'X)``;
* information ``I = AA' (x) (X'X - X'X M^-1 X'X) / sigma2_used + 1e-8 I`` (vec stacks
  Theta's columns) and model-based covariance ``I^-1``;
* unit scores ``s_n = -vec(X' r_n a_n') / sigma2_used``, meat ``J = N/(N-1) sum s_n s_n'``
  (CR1) and sandwich ``V = I^-1 J I^-1``;
* one-step wild bootstrap ``theta_b = theta_hat - I^-1 S w_b`` for all B replicates in one
  matrix product, projected onto ``>= 0`` for non-negative Theta.
"""

from __future__ import annotations

import json
import warnings
from numbers import Integral, Real

import numpy as np
import pandas as pd
import xarray as xr
from scipy.optimize import linear_sum_assignment
from scipy.stats import norm

DISTS = ("exp", "rademacher", "mammen", "normal")
METHODS = ("onestep", "refit")
ALTERNATIVES = ("two-sided", "greater", "less")
COV_RIDGE = 1e-8


# ----------------------------------------------------------------------------- kernels
def conditional_kernel(Y, A, X, theta, U, lam) -> dict:
    """Sandwich ingredients for vec(Theta) conditional on ``(X, U)`` (numpy in, numpy out)."""
    P, N = Y.shape
    Q, K = theta.shape
    Rc = Y - X @ U - X @ (theta @ A)
    XtX = X.T @ X
    M = XtX + max(lam, 1e-12) * np.eye(Q)
    Minv = np.linalg.inv(M)
    df_u = N * float(np.trace(Minv @ XtX))
    sigma2_used = float(np.sum(Rc**2)) / max(P * N - df_u - Q * K, 1)
    s2 = max(sigma2_used, 1e-12)
    core = XtX - XtX @ Minv @ XtX
    info = np.kron(A @ A.T, core) / s2 + COV_RIDGE * np.eye(Q * K)
    Hinv = np.linalg.inv(info)
    G = X.T @ Rc  # Q x N
    S = -(A[:, None, :] * G[None, :, :]).reshape(Q * K, N) / s2  # rows k*Q + q (column-major vec)
    J = S @ S.T
    if N > 1:
        J *= N / (N - 1)
    V = Hinv @ J @ Hinv
    return {"sigma2_used": sigma2_used, "df_u": df_u, "info": info, "cov_model": Hinv,
            "scores": S, "meat": J, "cov": V}


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


# ----------------------------------------------------------------------------- result
class Inference:
    """Inference on Theta (see :meth:`nmfre.NMFREFit.infer`).

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (component, covariate): ``estimate, se (sandwich, CR1), se_model
        (I^-1), boot_se, z, p_value, ci_low, ci_high`` (percentile bootstrap interval).
    draws : xarray.DataArray (draw, component, covariate)
        Bootstrap replicates (aligned to the point estimate for ``method="refit"``).
    cov, cov_model : xarray.DataArray (param, param_2)
        Sandwich and model-based covariance of vec(Theta) (column-major vec).
    """

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    # -- labelled pieces
    @property
    def draws(self) -> xr.DataArray:
        return self._ds["draws"]

    @property
    def estimate(self) -> xr.DataArray:
        return self._ds["estimate"]

    @property
    def cov(self) -> xr.DataArray:
        return self._ds["cov"]

    @property
    def cov_model(self) -> xr.DataArray:
        return self._ds["cov_model"]

    @property
    def ci(self) -> xr.DataArray:
        """Percentile interval with dim ``ci_bound`` (``lower``/``upper``)."""
        return self._ds["ci"]

    @property
    def attrs(self) -> dict:
        return dict(self._ds.attrs)

    level = property(lambda self: float(self._ds.attrs["level"]))
    alternative = property(lambda self: str(self._ds.attrs["alternative"]))
    sigma2_used = property(lambda self: float(self._ds.attrs["sigma2_used"]))
    method = property(lambda self: str(self._ds.attrs["method"]))

    @property
    def table(self) -> pd.DataFrame:
        ds = self._ds
        cols = {k: ds[k] for k in ("estimate", "se", "se_model", "boot_se", "z", "p_value")}
        df = xr.Dataset(cols).to_dataframe()[list(cols)]
        ci = ds["ci"].to_dataset("ci_bound").to_dataframe()
        df["ci_low"], df["ci_high"] = ci["lower"], ci["upper"]
        order = pd.MultiIndex.from_product([ds["component"].values, ds["covariate"].values],
                                           names=["component", "covariate"])
        return df.reindex(order)

    def selection(self, alpha: float = 0.05) -> xr.Dataset:
        """The paper's covariate-side selection: which covariates significantly move
        which components (``significant = p_value < alpha``), labelled component x covariate."""
        if not (0 < alpha < 1):
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        p = self._ds["p_value"]
        return xr.Dataset({"significant": p < alpha, "p_value": p, "estimate": self._ds["estimate"]},
                          attrs={"alpha": alpha, "alternative": self.alternative})

    def describe(self) -> str:
        a = self._ds.attrs
        boot = (f"one-step wild bootstrap, B={a['n_boot']} ({a['dist']} multipliers)"
                if a["method"] == "onestep" else f"refit wild bootstrap, B={a['n_boot']} ({a['dist']} multipliers)")
        return (f"sandwich SE (CR1); {boot}; {100 * a['level']:g}% percentile CI; "
                f"p-value {a['alternative']}")

    def summary_table(self) -> pd.DataFrame:
        t = self.table
        stars = pd.cut(t["p_value"], [-np.inf, 0.001, 0.01, 0.05, 0.1, np.inf],
                       labels=["***", "**", "*", ".", ""], right=False).astype(str)
        out = pd.DataFrame({
            "Estimate": t["estimate"], "Std.Error": t["se"], "Boot.SE": t["boot_se"], "z": t["z"],
            "p": t["p_value"].map(lambda p: "<2e-16" if p < 2.2e-16 else f"{p:.4g}"), "": stars,
            "CI low": t["ci_low"], "CI high": t["ci_high"],
        })
        return out.round(4)

    def __repr__(self) -> str:
        return f"Inference on Theta: {self.describe()}\n{self.summary_table().to_string()}"

    def _repr_html_(self) -> str:
        return f"<p><b>Inference on Theta</b>: {self.describe()}</p>{self.summary_table().to_html()}"

    def plot(self, alpha: float = 0.05, ax=None):
        """Component x covariate effect matrix, coloured by estimate, stars for significance."""
        import matplotlib.pyplot as plt

        sel = self.selection(alpha)
        est = sel["estimate"].values
        if ax is None:
            _, ax = plt.subplots(figsize=(1.2 + 1.1 * est.shape[1], 1.0 + 0.7 * est.shape[0]))
        lim = float(np.max(np.abs(est))) or 1.0
        im = ax.imshow(est, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(est.shape[1]), [str(c) for c in sel["covariate"].values], rotation=30)
        ax.set_yticks(range(est.shape[0]), [str(c) for c in sel["component"].values])
        p = sel["p_value"].values
        for i in range(est.shape[0]):
            for j in range(est.shape[1]):
                s = "***" if p[i, j] < 0.001 else "**" if p[i, j] < 0.01 else "*" if p[i, j] < alpha else ""
                ax.text(j, i, f"{est[i, j]:.3g}\n{s}", ha="center", va="center", fontsize=9)
        ax.figure.colorbar(im, ax=ax, label="Theta")
        ax.set_title(f"Covariate effects (p < {alpha:g} starred)")
        return ax.figure

    # -- ArviZ and IO
    def to_datatree(self, chains: int = 1) -> xr.DataTree:
        """The replicates as an ArviZ-ready ``xarray.DataTree``: group ``posterior`` with
        ``theta`` of dims ``(chain, draw, component, covariate)`` (``chains`` equal blocks
        of replicates, so they can be shaped like a posterior for one forest plot)."""
        if not isinstance(chains, Integral) or chains < 1 or self.draws.sizes["draw"] % chains:
            raise ValueError(f"chains must be a positive divisor of n_boot={self.draws.sizes['draw']}")
        d = self.draws
        B = d.sizes["draw"] // chains
        theta = xr.DataArray(d.values.reshape(chains, B, *d.shape[1:]),
                             dims=("chain", "draw", "component", "covariate"),
                             coords={"chain": np.arange(chains), "draw": np.arange(B),
                                     "component": d["component"].values, "covariate": d["covariate"].values})
        post = xr.Dataset({"theta": theta}, attrs={"source": f"nmfre {self.method} bootstrap",
                                                   "inference": self.describe()})
        point = xr.Dataset({"theta": self.estimate})
        return xr.DataTree.from_dict({"posterior": post, "point_estimate": point})

    def to_dataset(self) -> xr.Dataset:
        return self._ds.copy()

    def to_netcdf(self, path, **kwargs):
        """Write to netCDF; read back with :func:`load_inference`."""
        return self._ds.to_netcdf(path, **kwargs)


def load_inference(path) -> Inference:
    """Load an :class:`Inference` written by :meth:`Inference.to_netcdf`."""
    with xr.open_dataset(path) as ds:
        return Inference(ds.load())


# ----------------------------------------------------------------------------- driver
def _check(n_boot, multipliers_, dist, method, level, alternative, N):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if dist not in DISTS:
        raise ValueError(f"dist must be one of {DISTS}, got {dist!r}")
    if alternative is not None and alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be None or one of {ALTERNATIVES}, got {alternative!r}")
    if isinstance(level, bool) or not isinstance(level, Real) or not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if multipliers_ is not None:
        W = np.asarray(getattr(multipliers_, "values", multipliers_), dtype=float)
        if W.ndim != 2 or W.shape[0] != N:
            raise ValueError(f"multipliers must be an N x B array with N = {N}, got shape {W.shape}")
        if W.shape[1] < 2:
            raise ValueError("multipliers must have at least 2 columns (replicates)")
        if not np.all(np.isfinite(W)):
            raise ValueError("multipliers contains NaN or Inf")
        return W
    if isinstance(n_boot, bool) or not isinstance(n_boot, Integral) or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    return None


def infer(fit, n_boot: int = 1000, seed=123, multipliers=None, dist: str = "exp",
          method: str = "onestep", level: float = 0.95, alternative: str | None = None,
          progress: bool = False, max_iter: int | None = None) -> Inference:
    """Inference on Theta conditional on the fitted basis (and U).

    Parameters
    ----------
    fit : NMFREFit
    n_boot : int
        Number of bootstrap replicates B (ignored when ``multipliers`` is given).
    seed : int or numpy.random.Generator
        Randomness for the multipliers.
    multipliers : array (N x B), optional
        Explicit multipliers (e.g. nmfkc's, to reproduce it exactly).
    dist : {"exp", "rademacher", "mammen", "normal"}
        Multiplier distribution; ``"exp"`` is Exp(1) - 1 as in nmfkc.
    method : {"onestep", "refit"}
        One-step Newton replicates (one matrix product) or the slow gold standard:
        re-fit the whole model on ``Y_b = X Theta A + w_nb (y_n - X Theta a_n)`` (the
        wild cluster bootstrap of the marginal model: each unit's whole residual,
        random effect included, is multiplied by its w), warm-started at the estimate,
        each replicate's components matched to the estimate's columns of X (Hungarian
        assignment) before summarising.
    level : float
        Interval level.
    alternative : {None, "two-sided", "greater", "less"}
        Default one-sided ``"greater"`` for non-negative Theta (boundary null), else
        two-sided.
    progress : bool
        tqdm progress bar for ``method="refit"``.
    max_iter : int, optional
        Iteration limit of each refit.
    """
    Y, A = fit._data.Y, fit._data.A
    P, N = Y.shape
    W = _check(n_boot, multipliers, dist, method, level, alternative, N)
    nonneg = fit.theta_kind == "nonneg"
    alternative = alternative or ("greater" if nonneg else "two-sided")
    X, theta, U = fit._res["X"], fit._res["theta"], fit._res["U"]
    Q, K = theta.shape
    ker = conditional_kernel(Y, A, X, theta, U, fit.lam)
    if W is None:
        W = draw_multipliers(dist, N, int(n_boot), np.random.default_rng(seed))
    else:
        dist = "user"
    tvec = theta.reshape(-1, order="F")
    extra = {}
    if method == "onestep":
        draws, _ = onestep_draws(tvec, ker["cov_model"], ker["scores"], W, nonneg)
    else:
        draws, extra = _refit_draws(fit, W, progress, max_iter)
    B = draws.shape[1]
    se = np.sqrt(np.maximum(np.diag(ker["cov"]), 0.0))
    se_model = np.sqrt(np.maximum(np.diag(ker["cov_model"]), 0.0))
    boot_se = draws.std(axis=1, ddof=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, tvec / se, np.nan)
    p = p_values(z, alternative)
    comp, cov = fit.coords["component"], fit.coords["covariate"]
    QK = lambda v: xr.DataArray(np.asarray(v).reshape(Q, K, order="F"), dims=("component", "covariate"))  # noqa: E731
    params = [f"{c}|{k}" for k in cov for c in comp]
    pc = {"param": params, "component_of": ("param", np.tile(comp, K)), "covariate_of": ("param", np.repeat(cov, Q))}
    covda = lambda M: xr.DataArray(M, dims=("param", "param_2"),  # noqa: E731
                                   coords={**pc, "param_2": params})
    ds = xr.Dataset(
        {"estimate": QK(tvec), "se": QK(se), "se_model": QK(se_model), "boot_se": QK(boot_se),
         "z": QK(z), "p_value": QK(p),
         "ci": xr.concat([QK(lo), QK(hi)], dim="ci_bound"),
         "draws": xr.DataArray(draws.T.reshape(B, Q, K, order="F"), dims=("draw", "component", "covariate")),
         "cov": covda(ker["cov"]), "cov_model": covda(ker["cov_model"])},
        coords={"component": comp, "covariate": cov, "ci_bound": ["lower", "upper"], "draw": np.arange(B)},
        attrs={"method": method, "dist": dist, "n_boot": int(B), "level": float(level),
               "alternative": alternative, "sigma2_used": ker["sigma2_used"], "df_u": ker["df_u"],
               "theta_kind": fit.theta_kind, "fit_method": fit.method,
               "ci_kind": "percentile", "ci_prob": float(level), **extra},
    )
    ds["ci"].attrs.update(ci_kind="percentile", ci_prob=float(level))
    return Inference(ds)


def align_components(X_ref: np.ndarray, X_b: np.ndarray):
    """Permutation of ``X_b``'s columns that best matches ``X_ref`` (Hungarian, L1 cost),
    and the cosine similarity of each matched pair."""
    cost = np.abs(X_ref[:, :, None] - X_b[:, None, :]).sum(axis=0)
    _, perm = linear_sum_assignment(cost)
    Xp = X_b[:, perm]
    cos = np.sum(X_ref * Xp, axis=0) / (np.linalg.norm(X_ref, axis=0) * np.linalg.norm(Xp, axis=0))
    return perm, cos


def _refit_draws(fit, W, progress: bool, max_iter):
    from tqdm.auto import tqdm

    from .labels import Data
    from .model import _run

    d = fit._data
    X, theta = fit._res["X"], fit._res["theta"]
    fitted = fit.fitted(False).values
    resid = d.Y - fitted
    Q, K = theta.shape
    settings = dict(fit.settings)
    if max_iter is not None:
        settings["max_iter"] = int(max_iter)
    start = {"name": "warm", "X": X, "theta": theta}
    out = np.empty((Q * K, W.shape[1]))
    permuted, min_cos, conv = 0, np.inf, 0
    for b in tqdm(range(W.shape[1]), disable=not progress, desc="refit bootstrap"):
        Yb = fitted + resid * W[:, b][None, :]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = _run(Data(Yb, d.A, d.features, d.units, d.covariates), Q, start, fit.df_cap_rate, settings)
        perm, cos = align_components(X, res["X"])
        permuted += bool(np.any(perm != np.arange(Q)))
        min_cos = min(min_cos, float(cos.min()))
        conv += bool(res["converged"])
        out[:, b] = res["theta"][perm].reshape(-1, order="F")
    B = W.shape[1]
    return out, {"refit_converged_fraction": conv / B, "refit_permuted_fraction": permuted / B,
                 "refit_min_alignment_cosine": min_cos,
                 "refit_settings": json.dumps(settings)}
