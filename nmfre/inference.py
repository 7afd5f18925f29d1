"""Inference on Theta conditional on the fitted basis: the labelled result
(:class:`Inference`) and the driver (:func:`infer`).

The algebra lives in :mod:`nmfre.core.covariance` (information, CR1 sandwich) and
:mod:`nmfre.core.bootstrap` (multipliers, one-step replicates); the refit bootstrap in
:func:`nmfre.engine.refit_draws`. This module labels their output.
"""

from __future__ import annotations

import json
import os
import warnings
from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import norm
from scipy.stats import t as student_t

from . import validation as v
from .core.bootstrap import (
    ALTERNATIVES,
    CHUNK_UNITS,
    DISTS,
    STREAM_UNITS,
    draw_multipliers,
    multiplier_matrix,
    onestep_draws,
    onestep_sum,
    p_values,
    studentized_se,
)
from .core.covariance import COV_RIDGE, ILL_CONDITIONED, Conditional, cr2, from_pieces, scaled_condition
from .core.passes import conditional_pieces
from .engine import covariate_frame, ended_degenerate, refit_draws
from .exceptions import ConvergenceWarning, DegenerateFitWarning, IllConditionedWarning
from .labels import label_order, percent, significance_code

if TYPE_CHECKING:
    from .results import NMFREFit

METHODS = ("onestep", "refit")
#: multiplier laws, as printed
LAWS = {"exp": "Exp(1) - 1", "rademacher": "Rademacher", "mammen": "Mammen", "normal": "N(0, 1)",
        "user": "user-supplied"}


def provenance(attrs: dict) -> dict[str, str]:
    """Human-readable labels of how an inference was computed, derived from its settings
    (the attributes written by :func:`infer`); every title, column name and caption of an
    :class:`Inference` comes from here.

    Keys: ``vcov`` ("CR2 sandwich"), ``statistic`` ("z" or "t"), ``reference`` ("normal",
    "t with Satterthwaite df per coefficient", "t with df = 5"), ``alternative``, ``p_column``
    (R's ``Pr(>|t|)`` style), ``bootstrap`` ("one-step wild bootstrap, B = 1000, Exp(1) - 1
    multipliers"), ``ci`` ("95% percentile interval"/"95% bootstrap-t interval ..."),
    ``wald`` (the Wald interval of the same SE and reference), ``short`` (legend labels of
    both intervals, e.g. "Wald (CR2, t)", "bootstrap-t (one-step bootstrap)") and
    ``description`` (all of it in one line; it names the missing entries of Y where there
    were some: ``n_missing``).
    """
    vcov = attrs.get("vcov", "CR1")
    df_kind = attrs.get("df_kind", "normal")
    stat = "z" if df_kind == "normal" else "t"
    reference = {"normal": "normal", "satterthwaite": "t with Satterthwaite df per coefficient",
                 "fixed": f"t with df = {attrs.get('df_value', '?')}"}[df_kind]
    alt = attrs.get("alternative", "two-sided")
    p_col = {"two-sided": f"Pr(>|{stat}|)", "greater": f"Pr(>{stat})", "less": f"Pr(<{stat})"}[alt]
    kind = "one-step" if attrs.get("method") == "onestep" else "refit"
    law = LAWS.get(attrs.get("dist", "user"), str(attrs.get("dist")))
    n_failed, reasons = int(attrs.get("refit_failed", 0)), attrs.get("refit_failed_reasons")
    dropped = n_failed and attrs.get("refit_failed_rule") == "drop"
    size = (f"{attrs.get('n_boot')} of {attrs.get('n_boot_requested')} ({n_failed} refits that did not converge "
            f"left out: {reasons})" if dropped else f"{attrs.get('n_boot')}")
    boot = f"{kind} wild bootstrap, B = {size}, {law} multipliers"
    if n_failed and not dropped:
        boot += f", {n_failed} of them refits that did not converge ({reasons})"
    if attrs.get("theta_kind") == "nonneg":  # refits are constrained fits: nothing to project
        boot += ", replicates projected onto Theta >= 0" if kind == "one-step" else ", refits with Theta >= 0"
    n_missing = int(attrs.get("n_missing", 0))
    missing = (f"; scores and information from each unit's observed entries ({n_missing} missing "
               f"entr{'y' if n_missing == 1 else 'ies'} of Y)") if n_missing else ""
    pct = percent(attrs.get('level', 0.95))
    if attrs.get("ci_kind", "percentile") == "studentized":
        ci = f"{pct} bootstrap-t interval (each replicate studentized by its own {vcov} sandwich)"
    else:
        ci = f"{pct} percentile interval"
    short = {"wald": f"Wald ({vcov}, {'normal' if stat == 'z' else 't'})",
             "ci": (f"{'bootstrap-t' if attrs.get('ci_kind') == 'studentized' else 'percentile'} "
                    f"({kind} bootstrap)")}
    return {"vcov": f"{vcov} sandwich", "statistic": stat, "reference": reference, "alternative": alt,
            "p_column": p_col, "bootstrap": boot, "ci": ci, "short": short,
            "wald": f"{pct} Wald interval (estimate -+ q {vcov} sandwich SE, q from the {reference})",
            "description": f"{vcov} sandwich SE; {stat} statistic against the {reference}; {alt} p-value; {ci}; "
                           f"{boot}{missing}"}


class Inference:
    """Inference on Theta (see :meth:`nmfre.NMFREFit.infer`).

    Parameters
    ----------
    dataset : xarray.Dataset
        The labelled results (as written by :meth:`to_netcdf`).

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (component, covariate): ``estimate, se`` (the ``vcov`` sandwich),
        ``se_model`` (I^-1), ``boot_se``, the statistic ``z`` (normal reference) or ``t`` and
        ``df`` (t reference), ``p_value``, ``ci_low, ci_high`` (the bootstrap interval of kind
        ``ci``). :meth:`describe` says which.
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
        """Sandwich standard error (CR1 or CR2: ``attrs["vcov"]``)."""
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
    def statistic(self) -> xr.DataArray:
        """``estimate / se``, named ``z`` (normal reference) or ``t`` (t reference)."""
        return self._ds[self.statistic_name]

    @property
    def statistic_name(self) -> str:
        """``"z"`` or ``"t"``: the reference distribution of :attr:`statistic`."""
        return provenance(self._ds.attrs)["statistic"]

    @property
    def z(self) -> xr.DataArray:
        """``estimate / se`` with a normal reference (an error for a t reference: use
        :attr:`statistic` or :attr:`t`)."""
        return self._named_statistic("z")

    @property
    def t(self) -> xr.DataArray:
        """``estimate / se`` with a t reference (df in :attr:`df`)."""
        return self._named_statistic("t")

    def _named_statistic(self, name: str) -> xr.DataArray:
        if self.statistic_name != name:
            raise AttributeError(f"this inference has a {provenance(self._ds.attrs)['reference']} reference, so its "
                                 f"statistic is {self.statistic_name!r}, not {name!r}: use .statistic")
        return self.statistic

    @property
    def df(self) -> xr.DataArray:
        """Degrees of freedom of the t reference per coefficient (``inf``: normal)."""
        return self._ds["df"]

    @property
    def p_value(self) -> xr.DataArray:
        """p-value of :attr:`statistic` against its reference (normal or t), ``alternative``."""
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
        """The bootstrap interval (percentile or bootstrap-t: ``attrs["ci_kind"]``) with dim
        ``ci_bound`` (lower/upper)."""
        return self._ds["ci"]

    @property
    def ci_wald(self) -> xr.DataArray:
        """Wald interval ``estimate -+ q se`` with the same SE and reference (normal or t)."""
        return self._ds["ci_wald"]

    def interval(self, kind: str = "bootstrap", level: float | None = None) -> xr.DataArray:
        """An interval for Theta (dims ``ci_bound, component, covariate``) with its provenance
        in ``attrs["description"]``.

        Parameters
        ----------
        kind : {"bootstrap", "wald"}
            The bootstrap interval this inference computed (percentile or bootstrap-t), or the
            Wald interval of its SE and reference distribution.
        level : float, optional
            Defaults to the inference's level. At another level the Wald interval and the
            percentile interval are recomputed (from the SEs, from the draws); a bootstrap-t
            interval is not (its replicate SEs are not kept): re-run :func:`infer`.
        """
        kind = v.choice(kind, "kind", ("bootstrap", "wald"))
        own = self.level
        level = own if level is None else v.open_unit(level, "level")
        attrs = {**self._ds.attrs, "level": level}
        lab = provenance(attrs)
        if np.isclose(level, own):
            out = self._ds["ci" if kind == "bootstrap" else "ci_wald"].copy()
        elif kind == "wald":
            q = _wald_quantile(self._ds["df"].values, level)
            est, se = self._ds["estimate"], self._ds["se"]
            out = xr.concat([est - q * se, est + q * se], dim="ci_bound")
        elif self._ds.attrs.get("ci_kind", "percentile") == "percentile":
            a = (1 - level) / 2
            out = self.draws.quantile([a, 1 - a], dim="draw").rename(quantile="ci_bound")
        else:
            raise ValueError(f"the bootstrap-t interval was computed at level {own:g} only (replicate SEs are not "
                             f"kept); got level={level:.10g}: call infer(..., level={level:.10g}, ci='studentized')")
        out = out.assign_coords(ci_bound=["lower", "upper"]).transpose("ci_bound", "component", "covariate")
        out.attrs = {"ci_kind": "wald" if kind == "wald" else attrs.get("ci_kind", "percentile"),
                     "ci_prob": float(level), "description": lab["wald" if kind == "wald" else "ci"]}
        return out.rename("ci" if kind == "bootstrap" else "ci_wald")

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
        stat = self.statistic_name
        names = ["estimate", "se", "se_model", "boot_se", stat] + (["df"] if stat == "t" else []) + ["p_value"]
        df = xr.Dataset({k: ds[k] for k in names}).to_dataframe()[names]
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

    @property
    def X_draws(self) -> xr.DataArray:
        """The refit replicates of X (draw, feature, component), aligned to the estimate
        (``method="refit"`` with ``keep_X``)."""
        if "X_draws" not in self._ds:
            raise AttributeError("this inference kept no draws of X: use fit.infer(method='refit', keep_X=True)")
        return self._ds["X_draws"]

    def loadings(self, threshold: float | None = None, level: float | None = None,
                 min_support: float | None = None) -> xr.Dataset:
        """The measurement-side selection: per-loading intervals and bootstrap support from the
        refit replicates of X (:func:`nmfre.loadings.summarize`).

        Parameters
        ----------
        threshold : float, optional
            A feature belongs to a component when its loading exceeds this; default ``1/P``,
            its share under a uniform column.
        level : float, optional
            Interval level (default: the inference's).
        min_support : float, optional
            Share of replicates above the threshold for ``selected`` (default 0.95).

        Returns
        -------
        xarray.Dataset (feature, component)
            ``estimate``, ``mean``, ``sd``, ``ci``, ``support``, ``selected``.
        """
        from .loadings import MIN_SUPPORT, summarize

        lab = provenance(self._ds.attrs)
        out = summarize(self.X_draws, self._ds["X"], threshold=threshold, level=self.level if level is None else level,
                        min_support=MIN_SUPPORT if min_support is None else min_support, source=lab["bootstrap"])
        # how well the replicates' components matched the estimate's (poorly: not identified)
        attrs = self._ds.attrs
        if "refit_min_alignment_cosine" in attrs:
            cos, moved = float(attrs["refit_min_alignment_cosine"]), float(attrs.get("refit_permuted_fraction", 0))
            out.attrs.update(refit_min_alignment_cosine=cos, refit_permuted_fraction=moved)
            if cos < ALIGNMENT_WARN:
                out.attrs["description"] += (f"; components matched the estimate's poorly in some replicates (least "
                                             f"cosine {cos:.2f}, {100 * moved:.0f}% of replicates relabelled): "
                                             "they may not be identified")
        return out

    def plot_loadings(self, threshold: float | None = None, level: float | None = None, kind: str = "support",
                      ax=None):
        """Feature x component figure of :meth:`loadings`: the support as a heat map
        (``kind="support"``, drawn in ``ax`` when given) or the intervals against the
        threshold (``kind="intervals"``, one panel per component in a new figure)."""
        from .plotting import loadings as plot

        return plot(self.loadings(threshold=threshold, level=level), kind=kind, ax=ax)

    def describe(self) -> str:
        """One line saying which standard errors, reference distribution, bootstrap and
        interval these are (derived from the settings used: :func:`provenance`)."""
        return provenance(self._ds.attrs)["description"]

    def summary_table(self) -> pd.DataFrame:
        """The R-style coefficient table (rounded, with significance stars); column names
        follow the computation (SE kind, ``z`` or ``t`` with ``df``, the p-value's
        alternative, the interval's level)."""
        t = self.table
        lab = provenance(self._ds.attrs)
        stat = lab["statistic"]
        a = (1 - self.level) / 2
        stars = t["p_value"].map(significance_code)
        cols = {"Estimate": t["estimate"], f"SE ({self._ds.attrs.get('vcov', 'CR1')})": t["se"],
                "Boot.SE": t["boot_se"], stat: t[stat]}
        if stat == "t":
            cols["df"] = t["df"]
        cols[lab["p_column"]] = t["p_value"].map(lambda p: "<2e-16" if p < 2.2e-16 else f"{p:.4g}")
        cols[""] = stars
        cols[percent(a)], cols[percent(1 - a)] = t["ci_low"], t["ci_high"]
        return pd.DataFrame(cols).round(4)

    def __repr__(self) -> str:
        return f"Inference on Theta: {self.describe()}\n{self.summary_table().to_string()}"

    def _repr_html_(self) -> str:
        return f"<p><b>Inference on Theta</b>: {self.describe()}</p>{self.summary_table().to_html()}"

    def plot(self, alpha: float = 0.05, ax=None):
        """Component x covariate effect matrix, coloured by estimate, stars for significance
        (the caption names the p-value's SE, reference and alternative)."""
        from .plotting import effects

        alpha = v.open_unit(alpha, "alpha")
        lab = provenance(self._ds.attrs)
        title = (f"Theta; R's codes where p < {alpha:.10g} ({lab['statistic']} on {lab['vcov']} SE, "
                 f"{lab['reference']}, {lab['alternative']})")
        return effects(self.estimate, self.p_value, alpha, ax=ax, title=title)

    # -- ArviZ and IO
    def to_datatree(self, chains: int = 1) -> xr.DataTree:
        """The replicates as an ArviZ-ready ``xarray.DataTree``: group ``posterior`` with
        ``theta`` of dims ``(chain, draw, component, covariate)`` (``chains`` equal blocks
        of replicates, so they can be shaped like a posterior for one forest plot)."""
        n = self.draws.sizes["draw"]
        chains = v.integer(chains, "chains")
        if n % chains:
            kept = (f"the {n} replicates kept (n_boot_requested={self._ds.attrs['n_boot_requested']})"
                    if self._ds.attrs.get("n_boot_requested", n) != n else f"n_boot={n}")
            raise ValueError(f"chains must be a positive divisor of {kept}, got {chains}")
        d = self.draws
        B = n // chains
        theta = xr.DataArray(d.values.reshape(chains, B, *d.shape[1:]),
                             dims=("chain", "draw", "component", "covariate"),
                             coords={"chain": np.arange(chains), "draw": np.arange(B),
                                     "component": d["component"].values, "covariate": d["covariate"].values})
        lab = provenance(self._ds.attrs)
        post = xr.Dataset({"theta": theta}, attrs={"source": f"nmfre {lab['bootstrap']}", "inference": self.describe(),
                                                   "interval": lab["ci"], "vcov": lab["vcov"],
                                                   "reference": lab["reference"], "alternative": lab["alternative"]})
        point = xr.Dataset({"theta": self.estimate})
        return xr.DataTree.from_dict({"posterior": post, "point_estimate": point})

    def to_dataset(self) -> xr.Dataset:
        """The results as an ``xarray.Dataset`` (a copy; same as :attr:`dataset`)."""
        return self._ds.copy()

    def to_netcdf(self, path, **kwargs) -> Any:
        """Write to netCDF; read back with :func:`load_inference`."""
        return self._ds.to_netcdf(path, **kwargs)


#: what every written inference holds (checked by :func:`load_inference`)
_INFERENCE_VARS = {"estimate", "se", "draws", "ci", "cov"}


def load_inference(path) -> Inference:
    """Load an :class:`Inference` written by :meth:`Inference.to_netcdf`; ``ValueError`` for a
    file that is not one (e.g. a fit's: :func:`nmfre.load` reads those)."""
    with xr.open_dataset(path) as ds:
        missing = _INFERENCE_VARS - set(ds.data_vars)
        if missing or "method" not in ds.attrs:
            fit_file = {"X", "theta", "nll_trace"} <= set(ds.data_vars)
            raise ValueError(f"{path} is not an nmfre inference file (missing {sorted(missing) or ['its attributes']})"
                             + ("; it is a fit's: read it with nmfre.load" if fit_file else ""))
        return Inference(ds.load())


# ----------------------------------------------------------------------------- driver
def _multipliers(n_boot, multipliers, units: np.ndarray):
    """Validated user multipliers (N x B, rows in the fit's unit order), or None when they
    are to be drawn. A DataArray needs a ``unit`` dim (any order); labelled units (its
    ``unit`` coordinate, a DataFrame's index unless it is a RangeIndex) are aligned
    to the fit's."""
    if multipliers is None:
        v.integer(n_boot, "n_boot", minimum=2)
        return None
    N = len(units)
    rows = None
    if isinstance(multipliers, xr.DataArray):
        if multipliers.ndim != 2 or "unit" not in multipliers.dims:
            raise ValueError(f"multipliers (a DataArray) must be 2-D with a 'unit' dim, got dims {multipliers.dims}")
        multipliers = multipliers.transpose("unit", ...)
        rows = multipliers["unit"].values if "unit" in multipliers.coords else None
        multipliers = multipliers.values
    elif isinstance(multipliers, pd.DataFrame):
        if not isinstance(multipliers.index, pd.RangeIndex):
            rows = multipliers.index.to_numpy()
        multipliers = multipliers.to_numpy()
    if np.ma.isMaskedArray(multipliers):
        raise ValueError("multipliers is a numpy masked array; give every weight (a plain array)")
    try:
        W = np.asarray(multipliers)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"multipliers must be a numeric N x B array ({exc})") from None
    if W.dtype.kind not in "biuf":
        raise ValueError(f"multipliers must be a numeric N x B array of real numbers, got dtype {W.dtype}")
    W = W.astype(float)
    if W.ndim != 2 or W.shape[0] != N:
        raise ValueError(f"multipliers must be an N x B array with N = {N}, got shape {W.shape}")
    if W.shape[1] < 2:
        raise ValueError("multipliers must have at least 2 columns (replicates)")
    if not np.all(np.isfinite(W)):
        raise ValueError("multipliers contains NaN or Inf")
    if rows is not None:
        W = W[label_order(rows, units, "multipliers' unit labels", "the fit's units")]
    return W


#: least cosine between a refit replicate's component and the estimate's below which the
#: loadings' description says the components may not be identified
ALIGNMENT_WARN = 0.8
VCOVS = ("CR1", "CR2")
CIS = ("percentile", "studentized")
#: nmfre's own folder: warnings point at the first caller outside it (``fit.infer`` or ``infer``)
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: what the refit bootstrap does with replicates whose refit did not converge
FAILED = ("drop", "keep")


def _check_conditioning(info: np.ndarray, fit, frame=None) -> None:
    """:class:`~nmfre.IllConditionedWarning` where the information's scaled condition number
    (:func:`nmfre.core.covariance.scaled_condition`) exceeds
    :data:`nmfre.core.covariance.ILL_CONDITIONED`, naming the coefficients along its weakest
    direction. With ``frame`` (a sign-free ML fit: ``info`` is that of its orthonormal
    covariates, ``N I_K (x) G`` for complete data, where only the basis can be ill-conditioned)
    it names the components, and warns separately where the covariates themselves are nearly
    collinear (:data:`COVARIATES_ILL_CONDITIONED`): mapping Theta and its inference back to them
    then costs up to about ``condition * 2e-15`` relative."""
    cond, V = scaled_condition(info, vectors=True)
    comps, covs = fit.theta.coords["component"].values, fit.theta.coords["covariate"].values
    Q = len(comps)
    if cond > ILL_CONDITIONED:
        w = np.abs(V[:, 0])  # the coefficients in the weakest direction (column-major vec)
        if frame is None:
            names = [f"{comps[i % Q]}|{covs[i // Q]}" for i in np.flatnonzero(w >= 0.1 * w.max())]
            cause = "nearly collinear covariates, or basis columns nearly parallel on the observed features"
        else:  # the direction repeats over the orthonormal covariates: the components are what it is
            wq = w.reshape(len(covs), Q).sum(axis=0)
            names = [str(c) for c in comps[wq >= 0.1 * wq.max()]]
            cause = "basis columns nearly parallel on the observed features"
        warnings.warn(f"the information for Theta is nearly singular (condition number {cond:.2g} with each "
                      f"coefficient scaled to unit information): its standard errors, tests and Wald intervals may "
                      f"be off by up to about {min(cond * COV_RIDGE, 1.0):.0e} relative. The weakest direction "
                      f"combines {', '.join(names)}: {cause}",
                      IllConditionedWarning, skip_file_prefixes=(_PACKAGE,))
    if frame is None:
        return
    scaled = frame.T / np.linalg.norm(frame.T, axis=1, keepdims=True)  # rows: the covariates at unit mean square
    U, sv, _ = np.linalg.svd(scaled)
    cond_a = float(sv[0] / sv[-1]) if sv[-1] > 0 else float("inf")
    if cond_a > COVARIATES_ILL_CONDITIONED:
        u = np.abs(U[:, -1])
        names = [str(c) for c in covs[u >= 0.1 * u.max()]]
        warnings.warn(f"the covariates are nearly collinear (condition number {cond_a:.2g} with each scaled to unit "
                      f"mean square; the combination of {', '.join(names)} is nearly zero): the fit and its inference "
                      "run on orthonormal covariates, and Theta, its standard errors, tests and intervals on the "
                      f"given ones may be off by up to about {min(cond_a * 2e-15, 1.0):.0e} relative",
                      IllConditionedWarning, skip_file_prefixes=(_PACKAGE,))


#: condition number of the covariates (each row of A scaled to unit mean square) above which
#: ``infer`` warns for a sign-free ML fit: its results are mapped back from orthonormal covariates
#: at a relative cost of up to about ``condition * 2e-15`` (measured with a covariate equal to
#: another plus ``delta`` times noise: at conditions 2.6e5, 2.1e9 and 2.2e12 the estimates 2.7e-10,
#: 2.5e-6 and 3.2e-3 off, the SEs 7.9e-12, 1.3e-7 and 7.7e-5). An uncentred covariate ``c + x``
#: (sd 1) has about ``2 c`` (measured: 1.5e-10 at ``c = 1e6``)
COVARIATES_ILL_CONDITIONED = 1e8


def infer(fit: NMFREFit, n_boot: int = 1000, seed: Any = 123, multipliers: Any = None, dist: str = "exp",
          method: str = "onestep", level: float = 0.95, alternative: str | None = None,
          progress: bool = False, max_iter: int | None = None, chunk_size: int = CHUNK_UNITS, vcov: str = "CR1",
          df: str | int | None = None, ci: str = "percentile", keep_X: bool | None = None,
          workers: int | None = None, client=None, failed: str | None = None) -> Inference:
    """Inference on Theta conditional on the fitted basis (and U).

    Parameters
    ----------
    fit : NMFREFit
    n_boot : int
        Number of bootstrap replicates B (ignored when ``multipliers`` is given).
    seed : int or numpy.random.Generator
        Randomness for the multipliers, recorded in the attributes: ``seed`` (an int) or
        ``rng_state`` (the generator's ``bit_generator.state`` as JSON, before the draws).
    multipliers : array (N x B), optional
        Explicit multipliers (e.g. nmfkc's, to reproduce it exactly). A DataFrame indexed by
        unit label or a DataArray with a ``unit`` dim is aligned to the fit's units by label.
    dist : {"exp", "rademacher", "mammen", "normal"}
        Multiplier distribution; ``"exp"`` is Exp(1) - 1 as in nmfkc; ``"rademacher"`` takes
        one generator bit per multiplier (the cheapest law for large ``N x n_boot``).
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
        ``method="refit"`` only: iteration limit of each refit (default: the fit's).
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
    keep_X : bool, optional
        ``method="refit"``: keep every replicate's aligned basis (``X_draws``, draw x
        feature x component) for :meth:`Inference.loadings`. Default: on when
        ``P Q B <= KEEP_X_MAX`` (5e6 values, 40 MB), off above.
    workers : int, optional
        ``method="refit"``: run the replicates on this many threads.
    client : dask.distributed.Client, optional
        ``method="refit"``: run the replicates on this cluster. The draws are the same in a
        loop, on threads or on a client (the multipliers are drawn first, replicate b uses
        column b).
    failed : {"drop", "keep"}, optional
        ``method="refit"`` only: what to do with replicates whose refit did not converge (stopped
        at ``max_iter``, stalled, or degenerate: a sign-free refit whose components cancel
        while their effects diverge, so its Theta is not an estimate). ``"drop"`` (default):
        leave them out of the draws, the bootstrap SEs and the intervals; ``"keep"``: use
        every replicate. Either way a :class:`~nmfre.ConvergenceWarning` says how many did
        not converge and why; the attributes ``n_boot`` (the replicates used),
        ``n_boot_requested``, ``refit_failed`` and ``refit_failed_reasons`` record it, the
        ``draw`` coordinate keeps each used replicate's position among the requested ones (0
        to ``n_boot_requested - 1``) and ``stop_reason`` its refit's stop reason. A sign-free
        refit that converged at a degenerate configuration counts as degenerate. Fewer than
        two converged refits with ``"drop"`` is an error.

    Returns
    -------
    Inference

    Warns
    -----
    IllConditionedWarning
        When the information for Theta, each coefficient scaled to unit information, has a
        condition number above :data:`nmfre.core.covariance.ILL_CONDITIONED` (1e10: the SEs
        may then be off by up to about ``condition * 1e-14`` relative), naming the coefficients
        of its weakest direction. For a sign-free ML fit the information is that of the fit's
        orthonormal covariates (:mod:`nmfre.core.covariates`), where everything is computed
        and mapped back to the given ones, and warns for a basis with nearly parallel columns
        (naming the components); the mapping back costs up to about the covariates' own
        condition number times 2e-15 (about ``2c`` for an uncentred ``c + x`` of sd 1: measured
        1.5e-10 at ``c = 1e6``), and covariates
        with a condition number above :data:`COVARIATES_ILL_CONDITIONED` (1e8) warn
        separately, naming them.

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
    if failed is not None:
        failed = v.choice(failed, "failed", FAILED)
    df_kind = _check_df(df)
    if alternative is not None:
        v.choice(alternative, "alternative", ALTERNATIVES)
    level = v.open_unit(level, "level")
    W = _multipliers(n_boot, multipliers, data.units)
    rng = v.rng(seed)
    chunk_size = v.integer(chunk_size, "chunk_size")
    progress = v.boolean(progress, "progress")
    if workers is not None:
        workers = v.integer(workers, "workers")
    if max_iter is not None:
        max_iter = v.integer(max_iter, "max_iter")
    refit_only = {"max_iter": max_iter, "workers": workers, "client": client, "failed": failed}
    given = [k for k, x in refit_only.items() if x is not None]
    if method != "refit" and given:
        raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to method='refit' only (the "
                         "one-step bootstrap is one matrix product: no refits to limit, distribute or drop)")
    if keep_X is not None:
        keep_X = v.boolean(keep_X, "keep_X")
        if keep_X and method != "refit":
            raise ValueError("keep_X=True needs method='refit' (the one-step bootstrap does not re-estimate X)")
    failed = failed or "drop"
    if method == "refit" and keep_X is None:
        B = int(W.shape[1]) if W is not None else int(n_boot)
        keep_X = data.P * sol.X.shape[1] * B <= KEEP_X_MAX
    if method == "refit" and data.kind != "dense":
        raise ValueError(f"method='refit' re-fits the model on B perturbed copies of a dense Y; with a {data.kind} "
                         "Y use the one-step bootstrap (method='onestep')")
    streamed = W is None and method == "onestep" and data.N > STREAM_UNITS
    if streamed and ci == "studentized":
        raise ValueError(f"ci='studentized' studentises each replicate, which needs its multipliers in memory: "
                         f"N <= {STREAM_UNITS} units (here {data.N}) or explicit multipliers")
    nonneg = fit.theta_kind == "nonneg"
    alternative = alternative or ("greater" if nonneg else "two-sided")
    # sign-free ML: on the fit's own orthonormal covariates (nmfre.core.covariates), mapped back to
    # the given ones (vec(Theta) = M vec(Theta_o)); on the given covariates an uncentred covariate
    # c + x made the information's condition grow as c^2 and its inverse lose digits
    frame = covariate_frame(data.A, fit.settings)
    A_w = data.A if frame is None else frame.A
    th_w = sol.theta if frame is None else frame.inward(sol.theta)
    M = None if frame is None else frame.vec_outward(sol.theta.shape[0])
    pc = conditional_pieces(data.Y, A_w, sol.X, th_w, sol.U, fit.lam)
    ker_w = from_pieces(pc, A_w, th_w)
    _check_conditioning(ker_w.info, fit, frame)
    sand = _sandwich(ker_w, pc, A_w, sol.X, fit.lam, vcov, df, need_units=ci == "studentized", M=M)
    info, cov_model = ker_w.info, ker_w.cov_model  # reported on the given covariates:
    if M is not None:  # M^-T = T kron I_Q maps the information (and the scores, not needed here)
        Mit = np.kron(frame.T, np.eye(sol.theta.shape[0]))
        info, cov_model = Mit @ info @ Mit.T, frame.cov_outward(cov_model, sol.theta.shape[0])
    drawn = {}  # how to draw the same multipliers again
    if W is not None:
        dist = "user"
    elif isinstance(seed, Integral):  # netCDF attributes hold 64-bit integers; larger seeds as text
        drawn = {"seed": int(seed) if int(seed) < 2**63 else str(int(seed))}
    else:  # MT19937's, Philox's and SFC64's states hold arrays: as lists
        drawn = {"rng_state": json.dumps(rng.bit_generator.state,
                                         default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o))}
    if W is None and method == "refit":
        W = multiplier_matrix(dist, data.N, int(n_boot), rng)
    elif W is None and not streamed:
        W = draw_multipliers(dist, data.N, int(n_boot), rng)
    tvec, tvec_w = sol.theta.reshape(-1, order="F"), th_w.reshape(-1, order="F")
    extra, rep_se, X_draws, status = {}, None, None, None
    if streamed:
        raw = tvec_w[:, None] - ker_w.cov_model @ onestep_sum(ker_w.scores, dist, int(n_boot), rng, chunk_size)
    elif method == "onestep":
        _, raw = onestep_draws(tvec_w, ker_w.cov_model, ker_w.scores, W, nonneg)
        if ci == "studentized":  # each replicate's SE of the given coefficients
            rep_se = studentized_se(sand["scores"], sand["C"], A_w,
                                    ker_w.cov_model if M is None else M @ ker_w.cov_model, raw - tvec_w[:, None], W)
    if method == "onestep" and M is not None:
        raw = M @ raw
    if method == "refit":
        settings = fit.settings if max_iter is None else fit.settings.replace(max_iter=max_iter)
        _warn_degenerate_start(fit, settings, failed)
        got = refit_draws(data.Y, data.A, sol, W, fit.df_cap_rate, settings, progress,
                          vcov=vcov if ci == "studentized" else None, keep_X=bool(keep_X), workers=workers,
                          client=client)
        raw, extra, rep_se, X_draws, status = _failed_refits(got, failed)
        extra["refit_settings"] = json.dumps(settings.to_dict())
    draws = np.maximum(raw, 0.0) if nonneg else raw
    lo, hi = _interval(ci, level, tvec, sand["se"], draws, raw, rep_se, nonneg)
    attrs = {"method": method, "dist": dist, "n_boot": int(draws.shape[1]), "level": float(level),
             "alternative": alternative, "sigma2_used": ker_w.sigma2_used, "df_u": ker_w.df_u,
             "theta_kind": fit.theta_kind, "fit_method": fit.method, "ci_kind": ci, "ci_prob": float(level),
             "vcov": vcov, "df_kind": df_kind, **drawn, **extra}
    if int(pc.n_obs) < data.P * data.N:  # scores and information from each unit's observed entries
        attrs["n_missing"] = data.P * data.N - int(pc.n_obs)
    if df_kind == "fixed":
        attrs["df_value"] = int(df)
    attrs["description"] = provenance(attrs)["description"]
    ds = _label(fit.coords, tvec, info, cov_model, sand, draws, (lo, hi), level, alternative, attrs)
    if status is not None:  # each refit replicate's index among the n_boot and its stop reason
        ds = ds.assign_coords(draw=status[0], stop_reason=("draw", status[1].astype(str)))
    if X_draws is not None:
        ds = _with_X(ds, fit, X_draws)
    return Inference(ds)


def _warn_degenerate_start(fit: NMFREFit, settings, failed: str) -> None:
    """Before the refits: a :class:`~nmfre.DegenerateFitWarning` when the estimate they start
    from is degenerate (a sign-free fit stopped by the degeneracy rule, or converged, stalled or
    ran to ``max_iter`` at a degenerate configuration; :func:`nmfre.fit` warned why). Its effects
    are not identified, and refits warm-started there mostly stop degenerate or run to
    ``max_iter`` (docs/methods.md: on a 30 x 300, rank-3 set, 31 of 40 stopped degenerate and 4
    ran to 5000 iterations, 168 s in all, measured before a refit that reaches ``max_iter`` at a
    degenerate configuration was labelled degenerate too)."""
    sol = fit.solution
    ended = ended_degenerate(sol, settings, fit.data.A)
    how = ("stopped by the degeneracy rule" if sol.stop_reason == "degenerate"
           else "ran to max_iter at a degenerate configuration" if ended == "max_iter"
           else f"{ended} at a degenerate configuration" if ended else None)
    if how is None:
        return
    fate = "left out (failed='drop')" if failed == "drop" else "kept (failed='keep')"
    warnings.warn(f"refit bootstrap from a degenerate estimate (the sign-free fit {how}; nmfre.fit warned why): "
                  "its effects are not identified, and refits started there tend to stop degenerate or run to "
                  f"max_iter={settings.max_iter}, each counted as not converged and {fate}. Refit the model first "
                  "(theta='nonneg', a smaller rank or other starts), or bound each refit with max_iter",
                  DegenerateFitWarning, skip_file_prefixes=(_PACKAGE,))


def _failed_refits(got, failed: str) -> tuple:
    """``(raw, attrs, rep_se, X_draws, (draw index, stop reasons))`` of the refit replicates
    that enter the summaries: all of them (``failed="keep"``) or the converged ones
    (``"drop"``); a :class:`~nmfre.ConvergenceWarning` when some did not converge."""
    B = got.draws.shape[1]
    bad = ~got.converged
    keep = np.ones(B, bool) if failed == "keep" else ~bad
    names, counts = np.unique(got.stop_reason[bad].astype(str), return_counts=True)
    reasons = ", ".join(f"{r}: {n}" for r, n in zip(names, counts, strict=True))
    attrs = {**got.report, "n_boot_requested": B, "refit_failed": int(bad.sum()), "refit_failed_reasons": reasons,
             "refit_failed_rule": failed}
    if bad.any():
        if keep.sum() < 2:
            raise RuntimeError(f"refit bootstrap: only {int(keep.sum())} of {B} refits converged ({reasons}); the "
                               "bootstrap needs at least 2 (raise max_iter, or pass failed='keep' to use every "
                               "replicate)")
        what = ("left out of the draws, SEs and intervals (failed='drop')" if failed == "drop"
                else "kept in the draws, SEs and intervals (failed='keep')")
        warnings.warn(f"refit bootstrap: {int(bad.sum())} of {B} refits did not converge ({reasons}); they are "
                      f"{what}", ConvergenceWarning, skip_file_prefixes=(_PACKAGE,))
    pick = (lambda a: None if a is None else a[..., keep])
    return (got.draws[:, keep], attrs, pick(got.se), pick(got.X_draws),
            (np.flatnonzero(keep), got.stop_reason[keep]))


#: largest P x Q x B kept by default as ``X_draws`` (float64: 40 MB)
KEEP_X_MAX = 5_000_000


def _with_X(ds: xr.Dataset, fit: NMFREFit, X_draws: np.ndarray) -> xr.Dataset:
    """Add the refit replicates' aligned bases (draw, feature, component) and the estimate of X."""
    feat, comp = fit.coords["feature"], fit.coords["component"]
    ds = ds.assign_coords(feature=feat)
    ds["X_draws"] = xr.DataArray(np.moveaxis(X_draws, 2, 0), dims=("draw", "feature", "component"),
                                 coords={"draw": ds["draw"].values, "feature": feat, "component": comp})
    ds["X_draws"].attrs["description"] = "refit bootstrap replicates of X, components aligned to the estimate"
    ds["X"] = xr.DataArray(fit.solution.X, dims=("feature", "component"), coords={"feature": feat, "component": comp})
    return ds


def _check_df(df) -> str:
    """``"normal"``, ``"satterthwaite"`` or ``"fixed"`` for ``df`` = None, the string, an int >= 1."""
    if df is None:
        return "normal"
    if isinstance(df, str):
        if df != "satterthwaite":
            raise ValueError(f"df must be None (normal reference), 'satterthwaite' or a positive integer, got {df!r}")
        return "satterthwaite"
    v.integer(df, "df")
    return "fixed"


def _sandwich(ker: Conditional, pc, A, X, lam, vcov: str, df, need_units: bool, M: np.ndarray | None = None) -> dict:
    """``se``, ``cov``, per-coefficient ``df`` (inf: normal) and, when needed, the unit
    scores and ``C_n`` a replicate's own sandwich uses. With ``M``, ``ker``, ``pc`` and ``A``
    are those of the orthonormal covariates and ``se``, ``cov`` and ``df`` are reported for
    ``vec(Theta) = M vec(Theta_o)`` (the scores and ``C_n`` stay on the frame)."""
    QK = ker.cov.shape[0]
    out = {"cov": ker.cov, "df": np.full(QK, np.inf), "scores": None, "C": None}
    if vcov == "CR2" or df == "satterthwaite" or need_units:
        cov, dfs, scores, C = cr2(ker, pc, A, X, lam, satterthwaite=df == "satterthwaite", kind=vcov, contrasts=M)
        out.update(scores=scores, C=C)
        if vcov == "CR2":
            out["cov"] = cov
        if df == "satterthwaite":
            out["df"] = dfs
    if isinstance(df, int | np.integer) and not isinstance(df, bool):
        out["df"] = np.full(QK, float(df))
    if M is not None:
        out["cov"] = M @ out["cov"] @ M.T
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


def _label(coords: dict, tvec: np.ndarray, info: np.ndarray, cov_model: np.ndarray, sand: dict, draws: np.ndarray,
           ci: tuple,
           level: float, alternative: str, attrs: dict) -> xr.Dataset:
    """The labelled dataset: summaries per (component, covariate), draws, covariances."""
    comp, cov = coords["component"], coords["covariate"]
    Q, K = len(comp), len(cov)
    B = draws.shape[1]
    se = sand["se"]
    dfs = sand["df"]
    se_model = np.sqrt(np.maximum(np.diag(cov_model), 0.0))
    lo, hi = ci
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, tvec / se, np.nan)
    q = _wald_quantile(dfs, level)
    lab = provenance(attrs)

    cc = ("component", "covariate")

    def qk(vec):  # (dims, values): a labelled Dataset without per-variable alignment
        return cc, np.asarray(vec).reshape(Q, K, order="F")

    def bounds(a, b):
        return ("ci_bound",) + cc, np.stack([np.asarray(a).reshape(Q, K, order="F"),
                                             np.asarray(b).reshape(Q, K, order="F")])

    params = [f"{c}|{k}" for k in cov for c in comp]
    sq = ("param", "param_2")
    ds = xr.Dataset(
        {"estimate": qk(tvec), "se": qk(se), "se_model": qk(se_model), "boot_se": qk(draws.std(axis=1, ddof=1)),
         lab["statistic"]: qk(z), "p_value": qk(p_values(z, alternative, dfs)), "df": qk(dfs),
         "ci": bounds(lo, hi), "ci_wald": bounds(tvec - q * se, tvec + q * se),
         "draws": (("draw",) + cc, draws.T.reshape(B, Q, K, order="F")),
         "cov": (sq, sand["cov"]), "cov_model": (sq, cov_model), "info": (sq, info)},
        coords={"component": comp, "covariate": cov, "ci_bound": ["lower", "upper"], "draw": np.arange(B),
                "param": params, "component_of": ("param", np.tile(comp, K)),
                "covariate_of": ("param", np.repeat(cov, Q)), "param_2": params},
        attrs=attrs,
    )
    ds["ci"].attrs.update(ci_kind=attrs["ci_kind"], ci_prob=float(level), description=lab["ci"])
    ds["ci_wald"].attrs.update(ci_kind="wald", ci_prob=float(level), description=lab["wald"])
    ds[lab["statistic"]].attrs.update(description=f"estimate / SE ({lab['vcov']}), reference {lab['reference']}")
    ds["p_value"].attrs.update(description=f"{lab['alternative']} p-value of {lab['statistic']}, {lab['reference']}")
    ds["se"].attrs.update(description=f"{lab['vcov']} standard error")
    return ds


def _wald_quantile(dfs, level: float) -> np.ndarray:
    """Upper ``(1 + level)/2`` quantile of the reference: t with ``dfs`` (per entry), normal where
    ``dfs`` is infinite."""
    dfs = np.asarray(dfs, float)
    p = 1 - (1 - level) / 2
    finite = np.isfinite(dfs)
    return np.where(finite, student_t.ppf(p, np.where(finite, dfs, 1.0)), norm.ppf(p))
