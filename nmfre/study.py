"""Simulation studies: many replicates over a grid of settings, in-process or on dask.

:func:`run` evaluates one design over a grid; every replicate's seed is derived from
``(seed, setting, replicate)`` by ``numpy.random.SeedSequence``, so results do not
depend on the scheduler: in-process and on any dask cluster they are identical.
:func:`summarize` gives the paper's metrics.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable

import numpy as np
import xarray as xr

from . import plotting, simulate
from . import validation as v
from .core.bootstrap import align_components
from .labels import component_labels
from .model import fit as nmfre_fit

DESIGNS = {"baseline": simulate.baseline, "stress": simulate.stress}
FIELDS = ("estimate", "se", "boot_se", "ci_low", "ci_high", "p_value")
SCALARS = ("df_u_frac", "sigma2", "tau2", "lam", "converged", "cap_hit", "nll", "n_iter", "missing_share")
#: interval methods built into nmfre (the posterior ones come from :mod:`bayes.study`)
METHODS = ("wald", "percentile", "cr2", "studentized", "refit")
#: per replicate and method (NaN for the frequentist methods)
SAMPLER_FIELDS = ("r_hat", "ess_bulk", "divergences")
#: a sampler's diagnostics fail when r_hat exceeds or bulk ESS falls below these (or any divergence);
#: the one definition of :func:`summarize`'s ``warning_share`` and of bayes's ``SamplingWarning``
SAMPLER_THRESHOLDS = {"max_r_hat": 1.01, "min_ess_bulk": 400}
#: per replicate and method: wall seconds of the computation that gave the interval (Wald and
#: percentile share one bootstrap, CR2 and studentized another: each shows the shared time)
TIMING = "seconds"


def _interval(inf, kind: str, perm, Q: int, K: int) -> dict:
    """Point estimate and interval of one method from an :class:`~nmfre.inference.Inference`."""
    ci = inf.dataset["ci_wald" if kind == "wald" else "ci"].transpose("ci_bound", "component", "covariate").values
    return {"point": inf.estimate.values.reshape(Q, K)[perm], "lower": ci[0][perm], "upper": ci[1][perm]}


def _frequentist(f, methods: tuple, boot_seed, n_boot: int, n_boot_refit: int, level: float, perm) -> tuple:
    """The requested built-in methods on one fit: CR1 Wald and percentile share one
    bootstrap; CR2-t (Satterthwaite) and the studentized bootstrap share another with the
    same multipliers; the refit bootstrap draws its own."""
    Q, K = f.shape["Q"], f.shape["K"]
    out: dict = {}
    # the bootstrap seed's first child (boot_seed.spawn(1)[0], without spawning from it)
    refit_seed = np.random.SeedSequence(boot_seed.entropy, spawn_key=(*boot_seed.spawn_key, 0))
    t0 = time.perf_counter()
    base = f.infer(n_boot=n_boot, seed=np.random.default_rng(boot_seed), level=level)
    secs = time.perf_counter() - t0
    for m in ("wald", "percentile"):
        if m in methods:
            out[m] = {**_interval(base, m, perm, Q, K), "seconds": secs}
    if "cr2" in methods or "studentized" in methods:
        t0 = time.perf_counter()
        small = f.infer(n_boot=n_boot, seed=np.random.default_rng(boot_seed), level=level, vcov="CR2",
                        df="satterthwaite", ci="studentized")
        secs = time.perf_counter() - t0
        if "cr2" in methods:
            out["cr2"] = {**_interval(small, "wald", perm, Q, K), "seconds": secs}
        if "studentized" in methods:
            out["studentized"] = {**_interval(small, "studentized", perm, Q, K), "seconds": secs}
    if "refit" in methods:
        t0 = time.perf_counter()
        inf = f.infer(n_boot=n_boot_refit, seed=np.random.default_rng(refit_seed), level=level, method="refit")
        out["refit"] = {**_interval(inf, "refit", perm, Q, K), "seconds": time.perf_counter() - t0}
    return base, out


def _replicate(design, params: dict, seeds: tuple, n_boot: int, fit_overrides: dict, level: float,
               methods: tuple = ("wald", "percentile"), extra: tuple = (), n_boot_refit: int = 200) -> dict:
    """Simulate, fit, infer one replicate; components aligned to the truth."""
    ss = np.random.SeedSequence(list(seeds))
    data_seed, boot_seed, *method_seeds = ss.spawn(2 + len(extra))
    d = design(**params, seed=np.random.default_rng(data_seed))
    kw = {**d["fit_kwargs"], **fit_overrides}
    Q, K = d["theta"].shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = nmfre_fit(d["Y"], d["A"], rank=d["rank"], **kw)
        perm, _ = align_components(d["X"].values, f.X.values)
        inf, intervals = _frequentist(f, methods, boot_seed, n_boot, n_boot_refit, level, perm)
        for (name, fn), ms in zip(extra, method_seeds, strict=True):
            t0 = time.perf_counter()
            r = fn(f, seed=int(ms.generate_state(1)[0]), level=level)
            intervals[name] = {k: np.asarray(r[k], dtype=float)[perm] for k in ("point", "lower", "upper")}
            intervals[name]["seconds"] = time.perf_counter() - t0
            intervals[name].update({k: float(r.get(k, np.nan)) for k in SAMPLER_FIELDS})
    t = inf.table
    out = {k: t[k].to_numpy().reshape(Q, K)[perm] for k in FIELDS}
    out["intervals"] = intervals
    out.update(missing_share=float(np.isnan(d["Y"].values).mean()))
    out["labels"] = _design_labels(d, Q, K)
    out.update(truth=d["theta"].values, df_u_frac=f.df_u / (f.shape["N"] * Q), sigma2=f.sigma2, tau2=f.tau2,
               lam=f.lam, converged=f.converged, cap_hit=f.cap_hit, nll=-f.loglik, n_iter=f.n_iter)
    return out


def _design_labels(d: dict, Q: int, K: int) -> tuple[list, list]:
    """Component and covariate labels of a simulated design: its truth's (or its A's
    covariates) when labelled, else the defaults ``Basis1..`` and ``covariate1..``."""
    def coords(name: str, dim: str):
        c = getattr(d.get(name), "coords", {})
        return list(c[dim].values) if dim in c else None

    comp = coords("theta", "component") or list(component_labels(Q))
    cov = coords("theta", "covariate") or coords("A", "covariate") or [f"covariate{k + 1}" for k in range(K)]
    return comp, cov


def _methods(methods) -> tuple[tuple, tuple]:
    """Split ``methods`` into built-in names and ``(name, callable)`` pairs, checked."""
    if isinstance(methods, str):
        methods = (methods,)
    names, builtin, extra = [], [], []
    for m in methods:
        if isinstance(m, str):
            if m not in METHODS:
                hint = (" (posterior intervals: run bayes.study.run, or pass bayes.study.Posterior(...))"
                        if m in ("conditional", "conditional_x", "joint") else "")
                raise ValueError(f"methods: unknown method {m!r}; nmfre has {METHODS}{hint}")
            builtin.append(m)
            names.append(m)
        elif isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str) and callable(m[1]):
            extra.append(m)
            names.append(m[0])
        elif callable(m) and isinstance(getattr(m, "name", None), str):
            extra.append((m.name, m))
            names.append(m.name)
        else:
            raise ValueError("methods: each entry must be a method name, a (name, callable) pair or a callable "
                             f"with a .name, got {m!r}")
    if not names:
        raise ValueError("methods must name at least one method")
    if len(set(names)) != len(names):
        raise ValueError(f"methods: duplicate names in {names}")
    return tuple(builtin), tuple(extra)


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
        fit_kwargs: dict | None = None, subset: dict | None = None,
        methods=("wald", "percentile"), n_boot_refit: int = 200) -> xr.Dataset:
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
    methods : sequence
        Interval methods compared per replicate, on the same fit: ``"wald"`` (CR1
        sandwich, normal), ``"percentile"`` (one-step wild bootstrap), ``"cr2"`` (CR2
        sandwich, t with Satterthwaite df), ``"studentized"`` (wild bootstrap-t studentised
        by each replicate's CR2 sandwich), ``"refit"`` (refit wild bootstrap,
        ``n_boot_refit`` replicates); and ``(name, callable)`` pairs or callables with a
        ``name`` (e.g. :class:`bayes.study.Posterior`), called as ``fn(fit, seed=int,
        level=float)`` and returning ``point, lower, upper`` (Q x K) and optionally
        ``r_hat, ess_bulk, divergences``. Each callable gets its own seed, child ``2 + i``
        of the replicate's ``SeedSequence``, so adding one changes no other number.
    n_boot_refit : int
        Bootstrap size of ``"refit"``.

    Returns
    -------
    xarray.Dataset
        Dims: one per grid key, ``replicate``, ``component``, ``covariate``; variables
        ``estimate, se, boot_se, ci_low, ci_high, p_value, truth`` and per replicate
        ``df_u_frac, sigma2, tau2, lam, converged, cap_hit, nll, n_iter``; per method
        (dim ``interval``, labelled by method name) ``point, lower, upper``, ``r_hat,
        ess_bulk, divergences`` and ``seconds`` (wall time of the computation behind the
        interval; Wald and percentile share one bootstrap, CR2 and studentized another)
        (NaN for the frequentist methods). Components and covariates carry the design's
        labels (those of its ``theta``).
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
    n_boot_refit = v.integer(n_boot_refit, "n_boot_refit", minimum=2)
    builtin, extra = _methods(methods)
    full = _settings(grid)
    grid = _subset(grid, subset)
    settings = _settings(grid)
    index = [full.index(st) for st in settings]  # seeds follow the position in the full grid
    over = dict(fit_kwargs or {})
    args = [(fn, settings[i], (seed, index[i], r), n_boot, over, level, builtin, extra, n_boot_refit)
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
    names = list(builtin) + [n for n, _ in extra]
    for k in ("point", "lower", "upper"):
        arr = np.stack([[r["intervals"][m][k] for m in names] for r in results]).reshape(*shape, len(names), Q, K)
        data[k] = (dims + ["interval", "component", "covariate"], arr)
    for k in SAMPLER_FIELDS + (TIMING,):
        arr = np.array([[r["intervals"][m].get(k, np.nan) for m in names] for r in results], dtype=float)
        data[k] = (dims + ["interval"], arr.reshape(*shape, len(names)))
    coords = dict(grid)
    coords["replicate"] = np.arange(n_rep)
    coords["interval"] = names  # (not "method": ds.sel(method=...) is xarray's lookup method)
    coords["component"], coords["covariate"] = first["labels"]  # the design's own labels
    ds = xr.Dataset(data, coords=coords)
    ds["truth"] = ds["truth"].isel(replicate=0, drop=True)
    ds.attrs.update(design=design if isinstance(design, str) else getattr(design, "__name__", "custom"),
                    seed=seed, n_boot=n_boot, level=level, fit_overrides=str(over), n_boot_refit=n_boot_refit)
    return ds


def summarize(ds: xr.Dataset, alpha: float = 0.05) -> xr.Dataset:
    """The paper's metrics per setting and (component, covariate).

    ``bias, sd, rmse`` of the estimate; ``mean_se`` (sandwich), ``mean_boot_se``;
    ``reject`` (p < alpha); ``cover_wald`` (``|est - truth| <= z se``) and ``cover_pct``
    (truth in the percentile interval); per setting ``df_u_frac_q05/q50/q95``,
    ``cap_hit_rate``, ``converged_rate``, ``mean_sigma2``.

    Per method (dim ``interval``, when the study ran ``methods``): ``coverage`` (truth in ``[lower,
    upper]``) with its Monte Carlo standard error ``coverage_mcse = sqrt(c (1 - c) / R)``,
    ``width`` (mean), ``width_ratio`` (mean width over that of ``"wald"``, or of the first
    method), ``interval_score`` (mean of Gneiting & Raftery's ``(u - l) + (2 / a) (l - x)
    1{x < l} + (2 / a) (x - u) 1{x > u}``, ``a = 1 - level``: width plus a penalty for
    missing; lower is better), ``point_bias`` and ``point_rmse`` of the method's point
    estimate, and ``warning_share``: replicates with r_hat > 1.01, bulk ESS < 400 or a
    divergence (NaN for methods without a sampler); ``seconds``, the mean wall time per
    replicate.
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
    if "interval" in ds.dims:
        out = out.merge(_method_metrics(ds))
    out.attrs.update(ds.attrs, alpha=alpha)
    return out


def _method_metrics(ds: xr.Dataset) -> xr.Dataset:
    a = 1.0 - float(ds.attrs.get("level", 0.95))
    lo, hi, x = ds["lower"], ds["upper"], ds["truth"]
    R = ds.sizes["replicate"]
    cover = ((lo <= x) & (x <= hi)).mean("replicate")
    width = (hi - lo).mean("replicate")
    ref = "wald" if "wald" in ds["interval"].values else ds["interval"].values[0]
    score = (hi - lo) + 2 / a * (lo - x).clip(min=0) + 2 / a * (x - hi).clip(min=0)
    err = ds["point"] - x
    flagged = ((ds["r_hat"] > SAMPLER_THRESHOLDS["max_r_hat"]) | (ds["ess_bulk"] < SAMPLER_THRESHOLDS["min_ess_bulk"])
               | (ds["divergences"] > 0))
    share = flagged.mean("replicate").where(ds["r_hat"].notnull().any("replicate"))
    return xr.Dataset({
        "coverage": cover,
        "coverage_mcse": np.sqrt(cover * (1 - cover) / R),
        "width": width,
        "width_ratio": width / width.sel(interval=ref, drop=True),
        "interval_score": score.mean("replicate"),
        "point_bias": err.mean("replicate"),
        "point_rmse": np.sqrt((err**2).mean("replicate")),
        "warning_share": share,
        "seconds": ds["seconds"].mean("replicate"),
    })


def plot_coverage(summary: xr.Dataset, component=None, covariate=None):
    """Coverage with Monte Carlo error bars (left) and mean width relative to Wald (right),
    one row per (component, covariate), methods along the x axis and one marker per cell
    of the grid (drawn by :func:`nmfre.plotting.coverage`).

    Parameters
    ----------
    summary : xarray.Dataset
        :func:`summarize` of a study run with ``methods``.
    component, covariate : optional
        Restrict to these labels (default: all).

    Returns
    -------
    matplotlib.figure.Figure
    """
    return plotting.coverage(summary, component=component, covariate=covariate)
