"""The measurement side's selection: which features make up which component, with
uncertainty, from draws of the basis X (refit bootstrap replicates or posterior draws).

A loading ``X[p, q]`` is the share of component ``q`` carried by feature ``p`` (columns sum
to 1). Under a uniform column every loading equals ``1/P``, so ``1/P`` is the natural line
between a feature that belongs to a component (it carries more than its even share) and one
that does not. The **support** of ``(p, q)`` is the share of draws in which ``X[p, q]``
exceeds the threshold; a loading is **selected** when its support is at least
``min_support``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import validation as v
from .labels import label_order, percent

#: default share of draws above the threshold for a loading to be selected
MIN_SUPPORT = 0.95


def summarize(draws: xr.DataArray, estimate: xr.DataArray | None = None, *, threshold: float | None = None,
              level: float = 0.95, min_support: float = MIN_SUPPORT, source: str = "") -> xr.Dataset:
    """Per-loading intervals and support from draws of X.

    Parameters
    ----------
    draws : xarray.DataArray
        Draws of X with dims ``feature`` and ``component`` and one or more sample dims
        (``draw``, or ``chain`` and ``draw``), components aligned across draws.
    estimate : xarray.DataArray (feature, component), optional
        The point estimate (default: the draws' mean), aligned to the draws by its labels.
    threshold : float, optional
        A loading "belongs" when above it; default ``1/P`` (its share under a uniform column).
    level : float
        Level of the equal-tailed intervals.
    min_support : float
        Support at or above which a loading is ``selected``, in (0, 1] (1: every draw above
        the threshold).
    source : str
        What the draws are (written to the attributes).

    Returns
    -------
    xarray.Dataset (feature, component)
        ``estimate``, ``mean``, ``sd``, ``ci`` (``ci_bound`` lower/upper), ``support`` (share of
        draws above the threshold), ``selected`` (support >= ``min_support``); attrs
        ``threshold``, ``level``, ``min_support``, ``n_draws``, ``source``, ``description``,
        ``estimate_kind`` (the point estimate given, or the draws' mean).
    """
    if not isinstance(draws, xr.DataArray) or not {"feature", "component"} <= set(draws.dims):
        raise ValueError("draws must be an xarray.DataArray with dims 'feature' and 'component' (and sample dims)")
    sample = [d for d in draws.dims if d not in ("feature", "component")]
    if not sample:
        raise ValueError("draws needs at least one sample dim (e.g. 'draw')")
    flat = draws.stack(sample_=sample) if len(sample) > 1 else draws.rename({sample[0]: "sample_"})
    flat = flat.transpose("sample_", "feature", "component")
    P = flat.sizes["feature"]
    n = flat.sizes["sample_"]
    if n < 2:
        raise ValueError(f"draws needs at least 2 draws, got {n}")
    if threshold is not None:
        threshold = v.positive_float(threshold, "threshold")
        if threshold >= 1:
            raise ValueError(f"threshold must be below 1 (loadings are shares of a column, at most 1), got "
                             f"{threshold!r}")
    threshold = 1.0 / P if threshold is None else threshold
    level = v.open_unit(level, "level")
    min_support = v.rate(min_support, "min_support")  # 1: every draw above the line
    vals = flat.values
    if np.isnan(vals).any():
        raise ValueError("draws contains NaN; drop the draws that have them (the support counted them as below "
                         "the threshold while n_draws counted them)")
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a], axis=0)
    support = np.mean(vals > threshold, axis=0)
    coords = {"feature": flat["feature"].values, "component": flat["component"].values}
    est = vals.mean(axis=0) if estimate is None else _aligned_estimate(estimate, coords)
    if est.shape != vals.shape[1:]:
        raise ValueError(f"estimate must be feature x component {vals.shape[1:]}, got {est.shape}")
    fc = ("feature", "component")
    src = f" ({source})" if source else ""
    desc = (f"{percent(level)} equal-tailed intervals of the loadings over {n} draws{src}; "
            f"support = share of draws with X[p, q] > {threshold:.4g}"
            f"{' (1/P, the share under a uniform column)' if np.isclose(threshold, 1 / P) else ''}; "
            f"selected when support >= {min_support:g}")
    ds = xr.Dataset(
        {"estimate": (fc, est), "mean": (fc, vals.mean(axis=0)), "sd": (fc, vals.std(axis=0, ddof=1)),
         "ci": (("ci_bound",) + fc, np.stack([lo, hi])), "support": (fc, support),
         "selected": (fc, support >= min_support)},
        coords={**coords, "ci_bound": ["lower", "upper"]},
        attrs={"threshold": float(threshold), "level": float(level), "min_support": float(min_support),
               "n_draws": int(n), "source": source, "description": desc,
               "estimate_kind": "the draws' mean" if estimate is None else "the point estimate"},
    )
    ds["ci"].attrs.update(ci_prob=float(level), description=f"{percent(level)} equal-tailed interval")
    ds["support"].attrs.update(description=f"share of draws with the loading above {threshold:.4g}")
    return ds


def _aligned_estimate(estimate, coords: dict) -> np.ndarray:
    """The estimate as a feature x component array in the draws' order: a DataArray by its
    labels (they must be the draws'; it was read by position, so an estimate with its
    components in another order was filed under the wrong ones), anything else by position."""
    if not isinstance(estimate, xr.DataArray):
        return np.asarray(estimate, float)
    if set(estimate.dims) != {"feature", "component"}:
        raise ValueError(f"estimate must have dims ('feature', 'component'), got {estimate.dims}")
    estimate = estimate.transpose("feature", "component")
    for d in ("feature", "component"):
        if d in estimate.coords and estimate.sizes[d] == len(coords[d]):  # another size: the shape's error
            estimate = estimate.isel({d: label_order(estimate[d].values, coords[d], f"estimate's {d} labels",
                                                     "the draws'")})
    return np.asarray(estimate.values, float)


def selection_error(loadings: xr.Dataset, X_true, tol: float = 0.0, min_loading: float | None = None) -> dict:
    """How a selection does against a known basis: ``false_positive_share`` (true zeros,
    ``X_true <= tol``, that are selected) and ``missed_share`` (true loadings above
    ``min_loading``, default the summary's threshold, that are not selected), with their counts."""
    Xt = np.asarray(getattr(X_true, "values", X_true), float)
    sel = loadings["selected"].transpose("feature", "component").values
    if Xt.shape != sel.shape:
        raise ValueError(f"X_true must be feature x component {sel.shape}, got {Xt.shape}")
    zero = Xt <= tol
    real = Xt > (loadings.attrs["threshold"] if min_loading is None else min_loading)
    return {"false_positive_share": float(sel[zero].mean()) if zero.any() else float("nan"),
            "missed_share": float((~sel[real]).mean()) if real.any() else float("nan"),
            "n_zero": int(zero.sum()), "n_loading": int(real.sum())}


__all__ = ["MIN_SUPPORT", "selection_error", "summarize"]
