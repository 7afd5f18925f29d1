"""Bootstrap-versus-posterior comparison: a table and a forest plot, plus sampler plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from nmfre import validation as v
from nmfre.inference import provenance
from nmfre.labels import percent

from .datatree import varies


def _posteriors(posteriors, names):
    if not posteriors:
        raise ValueError("give at least one posterior (an xarray.DataTree from bayes.sample)")
    for p in posteriors:
        if not isinstance(p, xr.DataTree) or "posterior" not in p.children or "theta" not in p["posterior"]:
            raise TypeError("each posterior must be an xarray.DataTree with a posterior group holding theta")
    if isinstance(names, str):  # read as one name per character before
        raise ValueError(f"names must be a list of names, one per posterior, got the string {names!r}")
    if names is None:
        names = [p["posterior"].attrs.get("model", f"posterior{i + 1}") for i, p in enumerate(posteriors)]
        if len(set(names)) < len(names):
            names = [f"{n}{i + 1}" for i, n in enumerate(names)]
    if len(names) != len(posteriors):
        raise ValueError(f"{len(names)} names for {len(posteriors)} posteriors")
    taken = {"wald", "boot", "estimate"} & set(names)
    if taken or len(set(names)) < len(names):
        raise ValueError(f"names must be distinct and not 'wald', 'boot' or 'estimate' (the inference's columns), "
                         f"got {list(names)}")
    return list(names)


def _check_coords(inference, post):
    """The same labels, and the same constraint on Theta (a non-negative posterior beside a
    sign-free inference was accepted)."""
    kinds = inference.attrs.get("theta_kind"), post["posterior"].attrs.get("theta_kind")
    if None not in kinds and kinds[0] != kinds[1]:
        raise ValueError(f"the inference has theta_kind={kinds[0]!r} and the posterior theta_kind={kinds[1]!r}: "
                         "compare posteriors of the same model (bayes.sample(..., theta=fit.theta_kind))")
    for dim in ("component", "covariate"):
        a = [str(v) for v in inference.estimate[dim].values]
        b = [str(v) for v in post["posterior"]["theta"][dim].values]
        if a != b:
            raise ValueError(f"{dim} labels differ between inference {a} and posterior {b}")


def _overlap(lo1, hi1, lo2, hi2):
    inter = np.maximum(0.0, np.minimum(hi1, hi2) - np.maximum(lo1, lo2))
    union = np.maximum(hi1, hi2) - np.minimum(lo1, lo2)
    return inter / union


def compare(inference, *posteriors, level: float | None = None, names=None) -> pd.DataFrame:
    """Intervals for Theta side by side, one row per (component, covariate).

    The frequentist intervals are the inference's own (:meth:`nmfre.inference.Inference.interval`):
    ``wald_low/high`` is its Wald interval (its sandwich, CR1 or CR2, with its normal or t
    quantiles) and ``boot_low/high`` its bootstrap interval (percentile or bootstrap-t, as it
    was computed), with ``boot_width_ratio`` (bootstrap / Wald width). For each posterior:
    ``<name>_mean``, ``<name>_low/high`` (equal-tailed), ``<name>_width_ratio`` (posterior /
    Wald width) and ``<name>_overlap`` (length of the intersection of the posterior and
    bootstrap intervals over that of their union). ``attrs["intervals"]`` says what each
    interval is, derived from the inference's settings.

    Parameters
    ----------
    inference : nmfre.inference.Inference
    *posteriors : xarray.DataTree
        Results of :func:`bayes.sample` (or :func:`bayes.fit_vi`).
    level : float, optional
        Interval level; defaults to the inference's. At another level the Wald and
        percentile intervals are recomputed; a bootstrap-t interval cannot be (re-run
        ``infer`` at that level).
    names : list of str, optional
        Column prefixes of the posteriors (default: their ``model`` attribute).
    """
    names = _posteriors(posteriors, names)
    level = inference.level if level is None else v.open_unit(level, "level")
    a = (1 - level) / 2
    wald, boot = inference.interval("wald", level), inference.interval("bootstrap", level)
    est = inference.estimate.values.ravel()
    wl, wh = wald.values.reshape(2, -1)
    bl, bh = boot.values.reshape(2, -1)
    idx = pd.MultiIndex.from_product([inference.estimate["component"].values, inference.estimate["covariate"].values],
                                     names=["component", "covariate"])
    out = pd.DataFrame({"estimate": est, "wald_low": wl, "wald_high": wh, "boot_low": bl, "boot_high": bh,
                        "boot_width_ratio": (bh - bl) / (wh - wl)}, index=idx)
    lab = provenance(inference.attrs)
    kinds = {"wald": wald.attrs["description"], "boot": f"{boot.attrs['description']}; {lab['bootstrap']}"}
    for name, post in zip(names, posteriors, strict=True):
        _check_coords(inference, post)
        th = post["posterior"]["theta"].transpose(..., "component", "covariate")
        q = th.quantile([a, 1 - a], dim=("chain", "draw")).values.reshape(2, -1)
        out[f"{name}_mean"] = th.mean(("chain", "draw")).values.ravel()
        out[f"{name}_low"], out[f"{name}_high"] = q[0], q[1]
        out[f"{name}_width_ratio"] = (q[1] - q[0]) / (wh - wl)
        out[f"{name}_overlap"] = _overlap(q[0], q[1], bl, bh)
        approx = " (variational approximation)" if post["posterior"].attrs.get("approximate") else ""
        kinds[name] = f"{percent(level)} equal-tailed posterior interval{approx}"
    out.attrs.update(level=level, intervals=kinds)
    return out


def plot_compare(inference, *posteriors, level: float | None = None, names=None):
    """Forest plot of Theta: the inference's Wald and bootstrap intervals and the posterior
    intervals side by side.

    One panel per covariate, each with its own x scale (an intercept of 90 and an effect
    of 9 do not share an axis); rows are components, sources are stacked within a row.
    Intervals are those of :func:`compare` at ``level`` (default: the inference's), each
    labelled with what it is (e.g. "Wald (CR2, t)", "bootstrap-t (one-step)"); the dotted
    mark is the estimate. Posteriors whose ``posterior`` group has ``attrs["approximate"]``
    (variational fits) are labelled "(approx.)". Returns the matplotlib Figure.
    """
    from nmfre.plotting import intervals

    names = _posteriors(posteriors, names)
    table = compare(inference, *posteriors, level=level, names=names)
    level = table.attrs["level"]
    short = provenance(inference.attrs)["short"]
    sources = {short["wald"]: ("wald_low", "wald_high"), short["ci"]: ("boot_low", "boot_high")}
    approx = []
    for name, post in zip(names, posteriors, strict=True):
        sources[name] = (f"{name}_low", f"{name}_high")
        if post["posterior"].attrs.get("approximate"):
            approx.append(name)
    return intervals(table, sources, title=f"Theta: {percent(level)} intervals", approximate=tuple(approx))


def plot_diagnostics(posterior, var_names=("theta", "sigma", "tau"), kind: str = "trace"):
    """Trace (``kind="trace"``) or rank (``kind="rank"``) plots of the sampler; returns the Figure."""
    import arviz as az

    names = [name for name in var_names if name in posterior["posterior"].data_vars
             and varies(posterior["posterior"][name].values)]
    if kind == "trace":
        pc = az.plot_trace_dist(posterior, var_names=names)
    elif kind == "rank":
        pc = az.plot_rank(posterior, var_names=names)
    else:
        raise ValueError(f"kind must be 'trace' or 'rank', got {kind!r}")
    return pc.viz["figure"].item()


def compare_loadings(inference, *posteriors, threshold: float | None = None, level: float | None = None,
                     names=None) -> pd.DataFrame:
    """The loading selection side by side: refit-bootstrap and posterior intervals and support
    for X, one row per (feature, component).

    Columns: ``estimate`` (the fit's X), ``boot_low/high``, ``boot_support``,
    ``boot_selected`` (:meth:`nmfre.Inference.loadings`: the refit replicates, which need
    ``fit.infer(method="refit", keep_X=True)``), and for each posterior ``<name>_mean``,
    ``<name>_low/high``, ``<name>_support``, ``<name>_selected``, ``<name>_width_ratio``
    (posterior / bootstrap width) and ``<name>_overlap`` (intersection over union of the
    two intervals). ``attrs`` hold the threshold, level and what each interval is. The
    columns of :func:`compare` (Theta) are not changed.

    Parameters
    ----------
    inference : nmfre.Inference
        A refit-bootstrap inference that kept X.
    *posteriors : xarray.DataTree
        Joint posteriors (X sampled) of the same fit.
    threshold : float, optional
        Default ``1/P``.
    level : float, optional
        Default: the inference's.
    names : list of str, optional
    """
    from .loadings import loadings, posterior_X

    names = _posteriors(posteriors, names)
    level = inference.level if level is None else level
    boot = inference.loadings(threshold=threshold, level=level)
    idx = pd.MultiIndex.from_product([boot["feature"].values, boot["component"].values],
                                     names=["feature", "component"])
    bl, bh = boot["ci"].values.reshape(2, -1)
    out = pd.DataFrame({"estimate": boot["estimate"].values.ravel(), "boot_low": bl, "boot_high": bh,
                        "boot_support": boot["support"].values.ravel(),
                        "boot_selected": boot["selected"].values.ravel()}, index=idx)
    kinds = {"boot": boot.attrs["description"]}
    for name, post in zip(names, posteriors, strict=True):
        X = posterior_X(post)
        for dim in ("feature", "component"):
            if [str(a) for a in X[dim].values] != [str(b) for b in boot[dim].values]:
                raise ValueError(f"{dim} labels differ between inference and posterior {name!r}")
        s = loadings(post, threshold=boot.attrs["threshold"], level=level, min_support=boot.attrs["min_support"])
        lo, hi = s["ci"].values.reshape(2, -1)
        out[f"{name}_mean"] = s["mean"].values.ravel()
        out[f"{name}_low"], out[f"{name}_high"] = lo, hi
        out[f"{name}_support"] = s["support"].values.ravel()
        out[f"{name}_selected"] = s["selected"].values.ravel()
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"{name}_width_ratio"] = (hi - lo) / (bh - bl)
        out[f"{name}_overlap"] = _overlap(lo, hi, bl, bh)
        kinds[name] = s.attrs["description"]
    out.attrs.update(level=level, threshold=boot.attrs["threshold"], min_support=boot.attrs["min_support"],
                     intervals=kinds)
    return out
