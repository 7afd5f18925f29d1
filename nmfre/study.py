"""Simulation studies: many replicates over a grid of settings, in-process or on dask.

:func:`run` evaluates one design over a grid; every replicate's seed is derived from
``(seed, setting, replicate)`` by ``numpy.random.SeedSequence``, so results do not
depend on the scheduler: in-process and on any dask cluster they are identical.
:func:`summarize` gives the paper's metrics.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import numpy as np
import xarray as xr

from . import simulate
from . import validation as v
from .core.bootstrap import align_components
from .model import fit as nmfre_fit

DESIGNS = {"baseline": simulate.baseline, "stress": simulate.stress}
FIELDS = ("estimate", "se", "boot_se", "ci_low", "ci_high", "p_value")
SCALARS = ("df_u_frac", "sigma2", "tau2", "lam", "converged", "cap_hit", "nll", "n_iter", "missing_share")


def _replicate(design, params: dict, seeds: tuple, n_boot: int, fit_overrides: dict, level: float) -> dict:
    """Simulate, fit, infer one replicate; components aligned to the truth."""
    ss = np.random.SeedSequence(list(seeds))
    data_seed, boot_seed = ss.spawn(2)
    d = design(**params, seed=np.random.default_rng(data_seed))
    kw = {**d["fit_kwargs"], **fit_overrides}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = nmfre_fit(d["Y"], d["A"], rank=d["rank"], **kw)
        inf = f.infer(n_boot=n_boot, seed=np.random.default_rng(boot_seed), level=level)
    perm, _ = align_components(d["X"].values, f.X.values)
    t = inf.table
    Q, K = d["theta"].shape
    out = {k: t[k].to_numpy().reshape(Q, K)[perm] for k in FIELDS}
    out.update(missing_share=float(np.isnan(d["Y"].values).mean()))
    out.update(truth=d["theta"].values, df_u_frac=f.df_u / (f.shape["N"] * Q), sigma2=f.sigma2, tau2=f.tau2,
               lam=f.lam, converged=f.converged, cap_hit=f.cap_hit, nll=-f.loglik, n_iter=f.n_iter)
    return out


def _task(args: tuple) -> dict:
    return _replicate(*args)


def _settings(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def _subset(grid: dict, subset: dict | None) -> dict:
    """The sub-grid ``subset`` selects (every key must be a grid key, every value in the grid)."""
    if not subset:
        return grid
    unknown = set(subset) - set(grid)
    if unknown:
        raise ValueError(f"subset has keys {sorted(unknown)} that are not in the grid {sorted(grid)}")
    out = dict(grid)
    for k, vals in subset.items():
        vals = list(vals) if isinstance(vals, list | tuple) else [vals]
        missing = [x for x in vals if x not in grid[k]]
        if missing:
            raise ValueError(f"subset[{k!r}] has values {missing} that are not in the grid's {grid[k]}")
        out[k] = [x for x in grid[k] if x in vals]
    return out


def run(design: str | Callable = "baseline", grid: dict | None = None, n_rep: int = 100, seed: int = 0,
        client=None, *, n_boot: int = 1000, level: float = 0.95, progress: bool = False,
        fit_kwargs: dict | None = None, subset: dict | None = None) -> xr.Dataset:
    """Run a simulation study.

    Parameters
    ----------
    design : "baseline", "stress" or callable
        A callable takes the grid's parameters plus ``seed`` and returns a dict like
        :func:`nmfre.simulate.baseline` (``Y``, ``A``, ``X``, ``theta``, ``rank``,
        ``fit_kwargs``).
    grid : dict of lists
        Settings to cross, e.g. ``{"N": [27, 100], "errors": ["normal", "exp"]}``.
    n_rep : int
        Replicates per setting.
    seed : int
        Master seed; replicate ``r`` of setting ``s`` (its position in the full grid, in
        ``itertools.product`` order) uses ``SeedSequence([seed, s, r])``. A different grid
        therefore gives other seeds; to re-run part of a study, pass the same grid and
        ``subset``.
    client : dask.distributed.Client, optional
        Run on that cluster (``client.map``); None runs in this process.
    n_boot, level :
        One-step bootstrap size and interval level of each replicate's inference.
    progress : bool
        tqdm progress bar (in-process runs).
    fit_kwargs : dict, optional
        Overrides of the design's fit settings (e.g. ``{"method": "ml", "df_cap": None}``).
    subset : dict, optional
        Run only these values of some grid keys (e.g. ``{"N": [27]}``), with the seeds
        they have in the full grid: the result equals the matching cells of the full run.

    Returns
    -------
    xarray.Dataset
        Dims: one per grid key, ``replicate``, ``component``, ``covariate``; variables
        ``estimate, se, boot_se, ci_low, ci_high, p_value, truth`` and per replicate
        ``df_u_frac, sigma2, tau2, lam, converged, cap_hit, nll, n_iter``.
    """
    if isinstance(design, str) and design not in DESIGNS or not (isinstance(design, str) or callable(design)):
        raise ValueError(f"design must be one of {tuple(DESIGNS)} or a callable, got {design!r}")
    fn = DESIGNS[design] if isinstance(design, str) else design
    grid = {k: list(x) for k, x in (grid or {}).items()}
    if any(len(x) == 0 for x in grid.values()):
        raise ValueError("every grid entry needs at least one value")
    n_rep = v.integer(n_rep, "n_rep")
    n_boot = v.integer(n_boot, "n_boot", minimum=2)
    level = v.open_unit(level, "level")
    full = _settings(grid)
    grid = _subset(grid, subset)
    settings = _settings(grid)
    index = [full.index(st) for st in settings]  # seeds follow the position in the full grid
    over = dict(fit_kwargs or {})
    args = [(fn, settings[i], (seed, index[i], r), n_boot, over, level)
            for i in range(len(settings)) for r in range(n_rep)]
    if client is None:
        from tqdm.auto import tqdm

        results = [_replicate(*a) for a in tqdm(args, disable=not progress, desc="study")]
    else:
        futures = client.map(_task, args, pure=False)
        results = client.gather(futures)
    first = results[0]
    Q, K = first["truth"].shape
    shape = [len(x) for x in grid.values()] + [n_rep]
    dims = list(grid) + ["replicate"]
    data = {}
    for k in FIELDS + ("truth",):
        arr = np.stack([r[k] for r in results]).reshape(*shape, Q, K)
        data[k] = (dims + ["component", "covariate"], arr)
    for k in SCALARS:
        data[k] = (dims, np.array([r[k] for r in results]).reshape(shape))
    coords = dict(grid)
    coords["replicate"] = np.arange(n_rep)
    coords["component"] = [f"Basis{q + 1}" for q in range(Q)]
    coords["covariate"] = ["intercept", "male"][:K] if K <= 2 else [f"covariate{k + 1}" for k in range(K)]
    ds = xr.Dataset(data, coords=coords)
    ds["truth"] = ds["truth"].isel(replicate=0, drop=True)
    ds.attrs.update(design=design if isinstance(design, str) else getattr(design, "__name__", "custom"),
                    seed=seed, n_boot=n_boot, level=level, fit_overrides=str(over))
    return ds


def summarize(ds: xr.Dataset, alpha: float = 0.05) -> xr.Dataset:
    """The paper's metrics per setting and (component, covariate).

    ``bias, sd, rmse`` of the estimate; ``mean_se`` (sandwich), ``mean_boot_se``;
    ``reject`` (p < alpha); ``cover_wald`` (``|est - truth| <= z se``) and ``cover_pct``
    (truth in the percentile interval); per setting ``df_u_frac_q05/q50/q95``,
    ``cap_hit_rate``, ``converged_rate``, ``mean_sigma2``.
    """
    from scipy.stats import norm

    z = norm.ppf(1 - (1 - ds.attrs.get("level", 0.95)) / 2)
    err = ds["estimate"] - ds["truth"]
    out = xr.Dataset({
        "bias": err.mean("replicate"),
        "sd": ds["estimate"].std("replicate", ddof=1),
        "rmse": np.sqrt((err**2).mean("replicate")),
        "mean_se": ds["se"].mean("replicate"),
        "mean_boot_se": ds["boot_se"].mean("replicate"),
        "reject": (ds["p_value"] < alpha).mean("replicate"),
        "cover_wald": (np.abs(err) <= z * ds["se"]).mean("replicate"),
        "cover_pct": ((ds["ci_low"] <= ds["truth"]) & (ds["truth"] <= ds["ci_high"])).mean("replicate"),
        "df_u_frac_q05": ds["df_u_frac"].quantile(0.05, "replicate").drop_vars("quantile"),
        "df_u_frac_q50": ds["df_u_frac"].quantile(0.50, "replicate").drop_vars("quantile"),
        "df_u_frac_q95": ds["df_u_frac"].quantile(0.95, "replicate").drop_vars("quantile"),
        "cap_hit_rate": ds["cap_hit"].astype(float).mean("replicate"),
        "converged_rate": ds["converged"].astype(float).mean("replicate"),
        "mean_sigma2": ds["sigma2"].mean("replicate"),
    })
    out.attrs.update(ds.attrs, alpha=alpha)
    return out
