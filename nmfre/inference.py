"""Inference on Theta conditional on the fitted basis: the labelled result
(:class:`Inference`) and the driver (:func:`infer`).

The algebra lives in :mod:`nmfre.core.covariance` (information, CR1 sandwich) and
:mod:`nmfre.core.bootstrap` (multipliers, one-step replicates); the refit bootstrap in
:func:`nmfre.engine.refit_draws`. This module labels their output.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import norm
from scipy.stats import t as student_t

from . import validation as v
from .core.bootstrap import (
    ALTERNATIVES,
    DISTS,
    STREAM_UNITS,
    draw_multipliers,
    multiplier_matrix,
    onestep_draws,
    onestep_sum,
    p_values,
    studentized_se,
)
from .core.covariance import Conditional, cr2, from_pieces
from .core.passes import conditional_pieces
from .engine import refit_draws

if TYPE_CHECKING:
    from .results import NMFREFit

METHODS = ("onestep", "refit")
_TABLE = ("estimate", "se", "se_model", "boot_se", "z", "p_value")


class Inference:
    """Inference on Theta (see :meth:`nmfre.NMFREFit.infer`).

    Parameters
    ----------
    dataset : xarray.Dataset
        The labelled results (as written by :meth:`to_netcdf`).

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

    def __init__(self, dataset: xr.Dataset):
        self._ds = dataset

    @property
    def dataset(self) -> xr.Dataset:
        """All results as one ``xarray.Dataset`` (a copy)."""
        return self._ds.copy()

    # -- labelled pieces
    @property
    def draws(self) -> xr.DataArray:
        """Bootstrap replicates (draw, component, covariate)."""
        return self._ds["draws"]

    @property
    def estimate(self) -> xr.DataArray:
        """Point estimate (component, covariate)."""
        return self._ds["estimate"]

    @property
    def se(self) -> xr.DataArray:
        """Sandwich (CR1) standard error."""
        return self._ds["se"]

    @property
    def se_model(self) -> xr.DataArray:
        """Model-based standard error (I^-1)."""
        return self._ds["se_model"]

    @property
    def boot_se(self) -> xr.DataArray:
        """Bootstrap standard error."""
        return self._ds["boot_se"]

    @property
    def z(self) -> xr.DataArray:
        """estimate / se."""
        return self._ds["z"]

    @property
    def p_value(self) -> xr.DataArray:
        """Normal p-value (see ``alternative``)."""
        return self._ds["p_value"]

    @property
    def cov(self) -> xr.DataArray:
        """Sandwich covariance of vec(Theta)."""
        return self._ds["cov"]

    @property
    def cov_model(self) -> xr.DataArray:
        """Model-based covariance I^-1."""
        return self._ds["cov_model"]

    @property
    def info(self) -> xr.DataArray:
        """Information I of vec(Theta)."""
        return self._ds["info"]

    @property
    def ci(self) -> xr.DataArray:
        """Percentile interval with dim ``ci_bound`` (lower/upper)."""
        return self._ds["ci"]

    @property
    def level(self) -> float:
        """Interval level."""
        return float(self._ds.attrs["level"])

    @property
    def alternative(self) -> str:
        """Alternative of the p-values."""
        return str(self._ds.attrs["alternative"])

    @property
    def sigma2_used(self) -> float:
        """RSS / residual df."""
        return float(self._ds.attrs["sigma2_used"])

    @property
    def method(self) -> str:
        """``'onestep'`` or ``'refit'``."""
        return str(self._ds.attrs["method"])


    @property
    def attrs(self) -> dict:
        """Settings and diagnostics of the run (a copy)."""
        return dict(self._ds.attrs)

    @property
    def table(self) -> pd.DataFrame:
        """One row per (component, covariate); see the class docstring."""
        ds = self._ds
        cols = {k: ds[k] for k in _TABLE}
        df = xr.Dataset(cols).to_dataframe()[list(cols)]
        ci = ds["ci"].to_dataset("ci_bound").to_dataframe()
        df["ci_low"], df["ci_high"] = ci["lower"], ci["upper"]
        order = pd.MultiIndex.from_product([ds["component"].values, ds["covariate"].values],
                                           names=["component", "covariate"])
        return df.reindex(order)

    def selection(self, alpha: float = 0.05) -> xr.Dataset:
        """The paper's covariate-side selection: which covariates significantly move
        which components (``significant = p_value < alpha``), labelled component x covariate."""
        alpha = v.open_unit(alpha, "alpha")
        p = self._ds["p_value"]
        return xr.Dataset({"significant": p < alpha, "p_value": p, "estimate": self._ds["estimate"]},
                          attrs={"alpha": alpha, "alternative": self.alternative})

    def describe(self) -> str:
        """One line saying which standard errors, bootstrap and intervals these are."""
        a = self._ds.attrs
        kind = "one-step" if a["method"] == "onestep" else "refit"
        return (f"sandwich SE (CR1); {kind} wild bootstrap, B={a['n_boot']} ({a['dist']} multipliers); "
                f"{100 * a['level']:g}% percentile CI; p-value {a['alternative']}")

    def summary_table(self) -> pd.DataFrame:
        """The R-style coefficient table (rounded, with significance stars)."""
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
        from .plotting import effects

        return effects(self.estimate, self.p_value, v.open_unit(alpha, "alpha"), ax=ax)

    # -- ArviZ and IO
    def to_datatree(self, chains: int = 1) -> xr.DataTree:
        """The replicates as an ArviZ-ready ``xarray.DataTree``: group ``posterior`` with
        ``theta`` of dims ``(chain, draw, component, covariate)`` (``chains`` equal blocks
        of replicates, so they can be shaped like a posterior for one forest plot)."""
        n = self.draws.sizes["draw"]
        chains = v.integer(chains, "chains")
        if n % chains:
            raise ValueError(f"chains must be a positive divisor of n_boot={n}, got {chains}")
        d = self.draws
        B = n // chains
        theta = xr.DataArray(d.values.reshape(chains, B, *d.shape[1:]),
                             dims=("chain", "draw", "component", "covariate"),
                             coords={"chain": np.arange(chains), "draw": np.arange(B),
                                     "component": d["component"].values, "covariate": d["covariate"].values})
        post = xr.Dataset({"theta": theta}, attrs={"source": f"nmfre {self.method} bootstrap",
                                                   "inference": self.describe()})
        point = xr.Dataset({"theta": self.estimate})
        return xr.DataTree.from_dict({"posterior": post, "point_estimate": point})

    def to_dataset(self) -> xr.Dataset:
        """The results as an ``xarray.Dataset`` (a copy; same as :attr:`dataset`)."""
        return self._ds.copy()

    def to_netcdf(self, path, **kwargs) -> Any:
        """Write to netCDF; read back with :func:`load_inference`."""
        return self._ds.to_netcdf(path, **kwargs)


def load_inference(path) -> Inference:
    """Load an :class:`Inference` written by :meth:`Inference.to_netcdf`."""
    with xr.open_dataset(path) as ds:
        return Inference(ds.load())


# ----------------------------------------------------------------------------- driver
def _multipliers(n_boot, multipliers, N):
    """Validated user multipliers (N x B), or None when they are to be drawn."""
    if multipliers is not None:
        W = np.asarray(getattr(multipliers, "values", multipliers), dtype=float)
        if W.ndim != 2 or W.shape[0] != N:
            raise ValueError(f"multipliers must be an N x B array with N = {N}, got shape {W.shape}")
        if W.shape[1] < 2:
            raise ValueError("multipliers must have at least 2 columns (replicates)")
        if not np.all(np.isfinite(W)):
            raise ValueError("multipliers contains NaN or Inf")
        return W
    v.integer(n_boot, "n_boot", minimum=2)
    return None


VCOVS = ("CR1", "CR2")
CIS = ("percentile", "studentized")


def infer(fit: NMFREFit, n_boot: int = 1000, seed: Any = 123, multipliers: Any = None, dist: str = "exp",
          method: str = "onestep", level: float = 0.95, alternative: str | None = None,
          progress: bool = False, max_iter: int | None = None, chunk_size: int = 1024, vcov: str = "CR1",
          df: str | int | None = None, ci: str = "percentile") -> Inference:
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
    chunk_size : int
        Units whose multipliers are held at once (memory ``chunk_size x n_boot`` per
        thread, never ``N x n_boot``). The draws for a given seed do not depend on it.
    vcov : {"CR1", "CR2"}
        Sandwich: CR1 (nmfkc's; ``N/(N-1)``) or CR2, the bias-reduced linearisation of Bell
        & McCaffrey (2002) for the GLS estimating equation (:func:`nmfre.core.covariance.cr2`).
    df : None, "satterthwaite" or int
        Reference distribution of ``z`` and of the Wald interval: normal (None), Student t
        with Satterthwaite degrees of freedom per coefficient (Bell-McCaffrey /
        Pustejovsky-Tipton, under the working model), or t with the given df.
    ci : {"percentile", "studentized"}
        Bootstrap interval: percentile of the replicates, or the wild bootstrap-t
        ``[theta - q_{1-a/2}(t*) se, theta - q_{a/2}(t*) se]`` with
        ``t*_b = (theta_b - theta) / se_b``, each replicate studentised by its own sandwich
        (``vcov``); needs the multipliers in memory (N <= 4096 or ``multipliers``).

    Returns
    -------
    Inference

    Notes
    -----
    Multipliers for unit ``n`` and replicate ``b`` are ``W[n, b]`` of
    ``draw_multipliers(dist, N, n_boot, rng)`` for ``N <= 4096``; beyond, units come in
    streams of 4096, the first drawn from ``rng``, the others from generators spawned from
    it, so that streams can be drawn in parallel and in chunks
    (:func:`nmfre.core.bootstrap.onestep_sum`).
    """
    data, sol = fit.data, fit.solution
    method = v.choice(method, "method", METHODS)
    dist = v.choice(dist, "dist", DISTS)
    vcov = v.choice(vcov, "vcov", VCOVS)
    ci = v.choice(ci, "ci", CIS)
    df_kind = _check_df(df)
    if alternative is not None:
        v.choice(alternative, "alternative", ALTERNATIVES)
    level = v.open_unit(level, "level")
    W = _multipliers(n_boot, multipliers, data.N)
    chunk_size = v.integer(chunk_size, "chunk_size")
    if method == "refit" and data.kind != "dense":
        raise ValueError(f"method='refit' re-fits the model on B perturbed copies of a dense Y; with a {data.kind} "
                         "Y use the one-step bootstrap (method='onestep')")
    streamed = W is None and method == "onestep" and data.N > STREAM_UNITS
    if streamed and ci == "studentized":
        raise ValueError(f"ci='studentized' studentises each replicate, which needs its multipliers in memory: "
                         f"N <= {STREAM_UNITS} units (here {data.N}) or explicit multipliers")
    nonneg = fit.theta_kind == "nonneg"
    alternative = alternative or ("greater" if nonneg else "two-sided")
    pc = conditional_pieces(data.Y, data.A, sol.X, sol.theta, sol.U, fit.lam)
    ker = from_pieces(pc, data.A, sol.theta)
    sand = _sandwich(ker, pc, data.A, sol.X, fit.lam, vcov, df, need_units=ci == "studentized")
    rng = v.rng(seed)
    if W is not None:
        dist = "user"
    elif method == "refit":
        W = multiplier_matrix(dist, data.N, int(n_boot), rng)
    elif not streamed:
        W = draw_multipliers(dist, data.N, int(n_boot), rng)
    tvec = sol.theta.reshape(-1, order="F")
    extra, rep_se = {}, None
    if streamed:
        raw = tvec[:, None] - ker.cov_model @ onestep_sum(ker.scores, dist, int(n_boot), rng, chunk_size)
    elif method == "onestep":
        _, raw = onestep_draws(tvec, ker.cov_model, ker.scores, W, nonneg)
        if ci == "studentized":
            rep_se = studentized_se(sand["scores"], sand["C"], data.A, ker.cov_model, raw - tvec[:, None], W)
    else:
        settings = fit.settings if max_iter is None else fit.settings.replace(max_iter=v.integer(max_iter, "max_iter"))
        raw, extra, rep_se = refit_draws(data.Y, data.A, sol, W, fit.df_cap_rate, settings, progress,
                                         vcov=vcov if ci == "studentized" else None)
        extra["refit_settings"] = json.dumps(settings.to_dict())
    draws = np.maximum(raw, 0.0) if nonneg else raw
    lo, hi = _interval(ci, level, tvec, sand["se"], draws, raw, rep_se, nonneg)
    attrs = {"method": method, "dist": dist, "n_boot": int(draws.shape[1]), "level": float(level),
             "alternative": alternative, "sigma2_used": ker.sigma2_used, "df_u": ker.df_u,
             "theta_kind": fit.theta_kind, "fit_method": fit.method, "ci_kind": ci, "ci_prob": float(level),
             "vcov": vcov, "df_kind": df_kind, **extra}
    return Inference(_label(fit.coords, tvec, ker, sand, draws, (lo, hi), level, alternative, attrs))


def _check_df(df) -> str:
    """``"normal"``, ``"satterthwaite"`` or ``"fixed"`` for ``df`` = None, the string, an int >= 1."""
    if df is None:
        return "normal"
    if isinstance(df, str):
        v.choice(df, "df", ("satterthwaite",))
        return "satterthwaite"
    v.integer(df, "df")
    return "fixed"


def _sandwich(ker: Conditional, pc, A, X, lam, vcov: str, df, need_units: bool) -> dict:
    """``se``, ``cov``, per-coefficient ``df`` (inf: normal) and, when needed, the unit
    scores and ``C_n`` a replicate's own sandwich uses."""
    QK = ker.cov.shape[0]
    out = {"cov": ker.cov, "df": np.full(QK, np.inf), "scores": None, "C": None}
    if vcov == "CR2" or df == "satterthwaite" or need_units:
        cov, dfs, scores, C = cr2(ker, pc, A, X, lam, satterthwaite=df == "satterthwaite", kind=vcov)
        out.update(scores=scores, C=C)
        if vcov == "CR2":
            out["cov"] = cov
        if df == "satterthwaite":
            out["df"] = dfs
    if isinstance(df, int | np.integer) and not isinstance(df, bool):
        out["df"] = np.full(QK, float(df))
    out["se"] = np.sqrt(np.maximum(np.diag(out["cov"]), 0.0))
    return out


def _interval(ci: str, level: float, tvec, se, draws, raw, rep_se, nonneg: bool):
    """The bootstrap interval: percentile of the (projected) draws, or bootstrap-t."""
    a = (1 - level) / 2
    if ci == "percentile":
        return np.quantile(draws, [a, 1 - a], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (raw - tvec[:, None]) / rep_se
    qlo, qhi = np.nanquantile(t, [a, 1 - a], axis=1)
    lo, hi = tvec - qhi * se, tvec - qlo * se
    return (np.maximum(lo, 0.0), np.maximum(hi, 0.0)) if nonneg else (lo, hi)


def _label(coords: dict, tvec: np.ndarray, ker: Conditional, sand: dict, draws: np.ndarray, ci: tuple,
           level: float, alternative: str, attrs: dict) -> xr.Dataset:
    """The labelled dataset: summaries per (component, covariate), draws, covariances."""
    comp, cov = coords["component"], coords["covariate"]
    Q, K = len(comp), len(cov)
    B = draws.shape[1]
    se = sand["se"]
    dfs = sand["df"]
    se_model = np.sqrt(np.maximum(np.diag(ker.cov_model), 0.0))
    lo, hi = ci
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, tvec / se, np.nan)
    q = np.where(np.isfinite(dfs), student_t.ppf(1 - (1 - level) / 2, np.where(np.isfinite(dfs), dfs, 1.0)),
                 norm.ppf(1 - (1 - level) / 2))

    def qk(vec):
        return xr.DataArray(np.asarray(vec).reshape(Q, K, order="F"), dims=("component", "covariate"))

    params = [f"{c}|{k}" for k in cov for c in comp]
    pc = {"param": params, "component_of": ("param", np.tile(comp, K)), "covariate_of": ("param", np.repeat(cov, Q))}

    def square(M):
        return xr.DataArray(M, dims=("param", "param_2"), coords={**pc, "param_2": params})

    ds = xr.Dataset(
        {"estimate": qk(tvec), "se": qk(se), "se_model": qk(se_model), "boot_se": qk(draws.std(axis=1, ddof=1)),
         "z": qk(z), "p_value": qk(p_values(z, alternative, dfs)), "df": qk(dfs),
         "ci": xr.concat([qk(lo), qk(hi)], dim="ci_bound"),
         "ci_wald": xr.concat([qk(tvec - q * se), qk(tvec + q * se)], dim="ci_bound"),
         "draws": xr.DataArray(draws.T.reshape(B, Q, K, order="F"), dims=("draw", "component", "covariate")),
         "cov": square(sand["cov"]), "cov_model": square(ker.cov_model), "info": square(ker.info)},
        coords={"component": comp, "covariate": cov, "ci_bound": ["lower", "upper"], "draw": np.arange(B)},
        attrs=attrs,
    )
    ds["ci"].attrs.update(ci_kind=attrs["ci_kind"], ci_prob=float(level))
    ds["ci_wald"].attrs.update(ci_kind="wald", ci_prob=float(level))
    return ds
