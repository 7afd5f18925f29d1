"""Performance measures of a simulation study with their Monte Carlo standard errors.

The ADEMP measures of Morris, White & Crowther (2019, "Using simulation studies to evaluate
statistical methods", Statistics in Medicine 38:2074-2102, Table 6), as R's rsimsum computes
them, on labelled arrays: every measure is reduced over one dim (``"replicate"``) and keeps
all others (grid settings, component, covariate, interval method). Replicates whose value is
NaN (a failed fit, a method that raised) are left out of that cell, and ``n_valid`` says how
many were used.

With ``n`` valid replicates, estimates ``t_i`` of the truth ``theta``, their mean ``t``:

* ``bias = t - theta``; MCSE ``empse / sqrt(n)``;
* ``empse = sqrt(sum (t_i - t)^2 / (n - 1))``; MCSE ``empse / sqrt(2 (n - 1))``;
* ``mse = sum (t_i - theta)^2 / n``; MCSE ``sqrt(sum ((t_i - theta)^2 - mse)^2 / (n (n - 1)))``;
* ``modse = sqrt(mean(se_i^2))``; MCSE ``sqrt(var(se_i^2) / (4 n modse^2))`` (here ``n`` counts
  the SEs, which can be fewer than the estimates);
* ``modse_relerr = 100 (modse / empse - 1)`` (percent); MCSE
  ``100 (modse / empse) sqrt(var(se_i^2) / (4 n modse^4) + 1 / (2 (n - 1)))``;
* ``coverage``: share of ``lower_i <= theta <= upper_i``; ``be_coverage`` (bias-eliminated):
  share of ``lower_i <= t <= upper_i``; ``rejection``: share of ``p_i < alpha``; each with
  MCSE ``sqrt(c (1 - c) / n)``;
* ``width``: mean of ``upper_i - lower_i``; ``interval_score``: mean of Gneiting & Raftery's
  score; each with MCSE ``sd_i / sqrt(n)``.

(``var`` is the sample variance with ``n - 1``; the interval score at level ``1 - a`` is
``(u - l) + (2 / a) (l - theta) 1{theta < l} + (2 / a) (theta - u) 1{theta > u}``.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

#: measures in the order they are reported, with the inputs each needs
MEASURES = {"bias": "estimate", "empse": "estimate", "mse": "estimate", "modse": "se", "modse_relerr": "se",
            "coverage": "interval", "be_coverage": "interval", "rejection": "p_value", "width": "interval",
            "interval_score": "interval"}


def performance(estimate: xr.DataArray, truth: xr.DataArray, *, se: xr.DataArray | None = None,
                lower: xr.DataArray | None = None, upper: xr.DataArray | None = None,
                p_value: xr.DataArray | None = None, alpha: float = 0.05, level: float = 0.95,
                dim: str = "replicate") -> xr.Dataset:
    """ADEMP performance measures and their Monte Carlo SEs (see the module docstring).

    Parameters
    ----------
    estimate : xarray.DataArray
        Point estimates with dim ``dim``.
    truth : xarray.DataArray
        The estimand (broadcast against ``estimate``; no ``dim``).
    se : xarray.DataArray, optional
        Model standard errors (``modse``, ``modse_relerr``).
    lower, upper : xarray.DataArray, optional
        Interval bounds (``coverage``, ``be_coverage``, ``width``, ``interval_score``).
        ``be_coverage`` uses the mean of ``estimate`` over ``dim`` as the centre, so a
        method's own point estimate belongs with its own interval.
    p_value : xarray.DataArray, optional
        p-values (``rejection``: power or type I error at ``alpha``).
    alpha : float
        Test level of ``rejection``.
    level : float
        Interval level (the interval score's penalty ``2 / (1 - level)``).
    dim : str
        The replicate dim reduced over.

    Returns
    -------
    xarray.Dataset
        ``<measure>`` and ``<measure>_mcse`` for each measure the inputs allow, and
        ``n_valid`` (replicates with a finite estimate).
    """
    if dim not in estimate.dims:
        raise ValueError(f"estimate has no dim {dim!r} (dims {estimate.dims})")
    if dim in truth.dims:
        raise ValueError(f"truth must not vary over {dim!r}")
    if (lower is None) != (upper is None):
        raise ValueError("give both lower and upper, or neither")
    if not 0 < alpha < 1 or not 0 < level < 1:
        raise ValueError(f"alpha and level must be in (0, 1), got {alpha!r}, {level!r}")
    ok = estimate.notnull()
    n = ok.sum(dim)
    t = estimate.mean(dim)
    dev = estimate - t
    empse = np.sqrt((dev**2).sum(dim) / (n - 1))
    sq = (estimate - truth) ** 2
    mse = sq.mean(dim)
    out = {
        "bias": t - truth, "bias_mcse": empse / np.sqrt(n),
        "empse": empse, "empse_mcse": empse / np.sqrt(2 * (n - 1)),
        "mse": mse, "mse_mcse": np.sqrt(((sq - mse) ** 2).sum(dim) / (n * (n - 1))),
    }
    if se is not None:
        v = (se**2).where(ok)
        ns = v.notnull().sum(dim)  # the SEs averaged (an SE can be missing where the estimate is not)
        mv = v.mean(dim)
        var_v = v.var(dim, ddof=1)
        modse = np.sqrt(mv)
        ratio = modse / empse
        out.update(modse=modse, modse_mcse=np.sqrt(var_v / (4 * ns * mv)),
                   modse_relerr=100 * (ratio - 1),
                   modse_relerr_mcse=100 * ratio * np.sqrt(var_v / (4 * ns * mv**2) + 1 / (2 * (n - 1))))
    if lower is not None:
        valid = ok & lower.notnull() & upper.notnull()
        m = valid.sum(dim)

        def share(hit):
            c = hit.where(valid).sum(dim) / m
            return c, np.sqrt(c * (1 - c) / m)

        out["coverage"], out["coverage_mcse"] = share((lower <= truth) & (truth <= upper))
        out["be_coverage"], out["be_coverage_mcse"] = share((lower <= t) & (t <= upper))
        a = 1 - level
        width = (upper - lower).where(valid)
        score = (width + 2 / a * (lower - truth).clip(min=0) + 2 / a * (truth - upper).clip(min=0)).where(valid)
        for name, x in (("width", width), ("interval_score", score)):
            out[name] = x.mean(dim)
            out[f"{name}_mcse"] = x.std(dim, ddof=1) / np.sqrt(m)
    if p_value is not None:
        valid = ok & p_value.notnull()
        m = valid.sum(dim)
        r = (p_value < alpha).where(valid).sum(dim) / m
        out["rejection"], out["rejection_mcse"] = r, np.sqrt(r * (1 - r) / m)
    out["n_valid"] = n
    ds = xr.Dataset(out)
    ds.attrs.update(alpha=float(alpha), level=float(level),
                    reference="Morris, White & Crowther (2019), Statistics in Medicine 38:2074-2102, Table 6")
    return ds


def tidy(perf: xr.Dataset) -> pd.DataFrame:
    """A :func:`performance` Dataset as a long frame: one row per cell and measure, columns
    for every remaining dim, ``measure``, ``value``, ``mcse`` (as rsimsum's ``tidy``)."""
    names = [m for m in perf.data_vars if f"{m}_mcse" in perf.data_vars]
    if not names:
        raise ValueError("perf has no <measure> / <measure>_mcse pairs")
    frames = []
    for m in names:
        f = xr.Dataset({"value": perf[m], "mcse": perf[f"{m}_mcse"]}).to_dataframe()[["value", "mcse"]]
        frames.append(f.reset_index().assign(measure=m))
    out = pd.concat(frames, ignore_index=True)
    keys = [c for c in out.columns if c not in ("measure", "value", "mcse")]
    return out[keys + ["measure", "value", "mcse"]]
