"""Bootstrap-versus-posterior comparison: a table and a forest plot, plus sampler plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import norm


def _posteriors(posteriors, names):
    if not posteriors:
        raise ValueError("give at least one posterior (an xarray.DataTree from bayes.sample)")
    for p in posteriors:
        if not isinstance(p, xr.DataTree) or "posterior" not in p.children or "theta" not in p["posterior"]:
            raise TypeError("each posterior must be an xarray.DataTree with a posterior group holding theta")
    if names is None:
        names = [p["posterior"].attrs.get("model", f"posterior{i + 1}") for i, p in enumerate(posteriors)]
        if len(set(names)) < len(names):
            names = [f"{n}{i + 1}" for i, n in enumerate(names)]
    if len(names) != len(posteriors):
        raise ValueError(f"{len(names)} names for {len(posteriors)} posteriors")
    return list(names)


def _check_coords(inference, post):
    for dim in ("component", "covariate"):
        a = [str(v) for v in inference.estimate[dim].values]
        b = [str(v) for v in post["posterior"]["theta"][dim].values]
        if a != b:
            raise ValueError(f"{dim} labels differ between inference {a} and posterior {b}")


def _overlap(lo1, hi1, lo2, hi2):
    inter = np.maximum(0.0, np.minimum(hi1, hi2) - np.maximum(lo1, lo2))
    union = np.maximum(hi1, hi2) - np.minimum(lo1, lo2)
    return inter / union


def compare(inference, *posteriors, level: float = 0.95, names=None) -> pd.DataFrame:
    """Intervals for Theta side by side, one row per (component, covariate).

    Columns: ``estimate``; ``wald_low/high`` (estimate +- z * sandwich SE);
    ``boot_low/high`` (bootstrap percentile) and ``boot_width_ratio`` (bootstrap / Wald
    width); for each posterior ``<name>_mean``, ``<name>_low/high`` (equal-tailed),
    ``<name>_width_ratio`` (posterior / Wald width) and ``<name>_overlap`` (length of the
    intersection of the posterior and bootstrap intervals over that of their union).
    Several posteriors (e.g. conditional and joint) give the ladder of DESIGN.md.
    """
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    names = _posteriors(posteriors, names)
    a = (1 - level) / 2
    est = inference.estimate.values.ravel()
    se = inference.se.values.ravel()
    z = norm.ppf(1 - a)
    wl, wh = est - z * se, est + z * se
    bq = inference.draws.quantile([a, 1 - a], dim="draw").values.reshape(2, -1)
    idx = pd.MultiIndex.from_product([inference.estimate["component"].values, inference.estimate["covariate"].values],
                                     names=["component", "covariate"])
    out = pd.DataFrame({"estimate": est, "wald_low": wl, "wald_high": wh, "boot_low": bq[0], "boot_high": bq[1],
                        "boot_width_ratio": (bq[1] - bq[0]) / (wh - wl)}, index=idx)
    for name, post in zip(names, posteriors, strict=True):
        _check_coords(inference, post)
        th = post["posterior"]["theta"].transpose(..., "component", "covariate")
        q = th.quantile([a, 1 - a], dim=("chain", "draw")).values.reshape(2, -1)
        out[f"{name}_mean"] = th.mean(("chain", "draw")).values.ravel()
        out[f"{name}_low"], out[f"{name}_high"] = q[0], q[1]
        out[f"{name}_width_ratio"] = (q[1] - q[0]) / (wh - wl)
        out[f"{name}_overlap"] = _overlap(q[0], q[1], bq[0], bq[1])
    out.attrs.update(level=level, interval_kinds="wald: sandwich SE; boot: percentile; posterior: equal-tailed")
    return out


def plot_compare(inference, *posteriors, level: float = 0.95, names=None):
    """Forest plot of Theta: Wald, bootstrap and posterior intervals side by side.

    One panel per covariate, each with its own x scale (an intercept of 90 and an effect
    of 9 do not share an axis); rows are components, sources are stacked within a row.
    Intervals are those of :func:`compare` (Wald: estimate +- z sandwich SE; bootstrap:
    percentile; posteriors: equal-tailed) at ``level``; the dotted mark is the estimate.
    Posteriors whose ``posterior`` group has ``attrs["approximate"]`` (variational
    fits) are labelled "(approx.)". Returns the matplotlib Figure.
    """
    from nmfre.plotting import intervals

    names = _posteriors(posteriors, names)
    table = compare(inference, *posteriors, level=level, names=names)
    sources = {"Wald (sandwich)": ("wald_low", "wald_high"),
               f"bootstrap ({inference.method})": ("boot_low", "boot_high")}
    approx = []
    for name, post in zip(names, posteriors, strict=True):
        sources[name] = (f"{name}_low", f"{name}_high")
        if post["posterior"].attrs.get("approximate"):
            approx.append(name)
    return intervals(table, sources, title=f"Theta: {100 * level:g}% intervals", approximate=tuple(approx))


def plot_diagnostics(posterior, var_names=("theta", "sigma", "tau"), kind: str = "trace"):
    """Trace (``kind="trace"``) or rank (``kind="rank"``) plots of the sampler; returns the Figure."""
    import arviz as az

    names = [v for v in var_names if v in posterior["posterior"].data_vars
             and float(posterior["posterior"][v].std()) > 0]
    if kind == "trace":
        pc = az.plot_trace_dist(posterior, var_names=names)
    elif kind == "rank":
        pc = az.plot_rank(posterior, var_names=names)
    else:
        raise ValueError(f"kind must be 'trace' or 'rank', got {kind!r}")
    return pc.viz["figure"].item()
