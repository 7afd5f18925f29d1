"""Simulation studies: many replicates over a grid of settings, in-process or on dask.

:func:`run` evaluates one design over a grid; every replicate's seed is derived from
``(seed, setting, replicate)`` by ``numpy.random.SeedSequence``, so results do not
depend on the scheduler: in-process and on any dask cluster they are identical.
:func:`summarize` gives the paper's metrics.
"""

from __future__ import annotations

import itertools
import json
import time
import warnings
from collections.abc import Callable, Iterable

import numpy as np
import xarray as xr

from . import plotting, simulate
from . import validation as v
from ._version import __version__
from .core.bootstrap import align_components
from .exceptions import ArgumentTypeError
from .inference import FAILED
from .labels import component_labels
from .model import fit as nmfre_fit
from .performance import performance
from .store import Store, canonical, in_process, read_spec

DESIGNS = {"baseline": simulate.baseline, "stress": simulate.stress}
FIELDS = ("estimate", "se", "boot_se", "ci_low", "ci_high", "p_value")
SCALARS = ("df_u_frac", "sigma2", "tau2", "lam", "converged", "cap_hit", "nll", "n_iter", "missing_share")
#: interval methods built into nmfre (the posterior ones come from :mod:`bayes.study`)
METHODS = ("wald", "percentile", "cr2", "studentized", "refit", "profile")
#: per replicate and method (NaN for the frequentist methods)
SAMPLER_FIELDS = ("r_hat", "ess_bulk", "divergences")
#: a sampler's diagnostics fail when r_hat exceeds or bulk ESS falls below these (or any divergence);
#: the one definition of :func:`summarize`'s ``warning_share`` and of bayes's ``SamplingWarning``
SAMPLER_THRESHOLDS = {"max_r_hat": 1.01, "min_ess_bulk": 400}
#: per replicate and method: wall seconds of the computation that gave the interval (Wald and
#: percentile share one bootstrap, CR2 and studentized another: each shows the shared time)
TIMING = "seconds"
#: per replicate and method: the bootstrap draws behind the interval (the percentile and
#: studentized bootstraps: ``n_boot``; the refit bootstrap: the refits used, fewer than
#: ``n_boot_refit`` where refits that did not converge were left out); NaN for the methods
#: that draw none (Wald, CR2, profile) and for callables
DRAWS = "n_draws"
#: the methods whose interval comes from bootstrap draws
BOOTSTRAP_METHODS = ("percentile", "studentized", "refit")
#: an in-memory study keeps at most this many finished replicates as dicts before packing
#: them into arrays (the client holds the result's size, not the records')
_COMPACT = 1000
#: on a cluster, replicates are sent in batches of about this many seconds of work (at most
#: ``_BATCH_MAX`` replicates): cheap replicates then do not pay the scheduler's cost one by one
_BATCH_SECONDS = 1.0
_BATCH_MAX = 100
#: every this many flushes the newest this many batches of a store are merged into one (and
#: at the end of a run all of them): opening a store costs a fixed time per batch, and a merge
#: holds only the batches it merges
_STORE_BATCHES = 32


def _interval(inf, kind: str, perm, Q: int, K: int) -> dict:
    """Point estimate and interval of one method from an :class:`~nmfre.inference.Inference`."""
    ci = inf.dataset["ci_wald" if kind == "wald" else "ci"].transpose("ci_bound", "component", "covariate").values
    return {"point": inf.estimate.values.reshape(Q, K)[perm], "lower": ci[0][perm], "upper": ci[1][perm]}


def _frequentist(f, methods: tuple, boot_seed, n_boot: int, n_boot_refit: int, level: float, perm,
                 refit_failed: str = "drop") -> tuple:
    """The requested built-in methods on one fit: CR1 Wald and percentile share one
    bootstrap; CR2-t (Satterthwaite) and the studentized bootstrap share another with the
    same multipliers; the refit bootstrap draws its own (``failed=refit_failed``). Each
    computation's failure and warnings are recorded on the methods it serves (``error``,
    ``warnings``), and each bootstrap method's number of draws used (:data:`DRAWS`)."""
    Q, K = f.shape["Q"], f.shape["K"]
    out: dict = {}
    # the bootstrap seed's first child (boot_seed.spawn(1)[0], without spawning from it)
    refit_seed = np.random.SeedSequence(boot_seed.entropy, spawn_key=(*boot_seed.spawn_key, 0))
    groups = [(("wald", "percentile"), dict(n_boot=n_boot, seed=boot_seed)),
              (("cr2", "studentized"), dict(n_boot=n_boot, seed=boot_seed, vcov="CR2", df="satterthwaite",
                                            ci="studentized")),
              (("refit",), dict(n_boot=n_boot_refit, seed=refit_seed, method="refit", failed=refit_failed))]
    base = None
    for members, kw in groups:
        wanted = [m for m in members if m in methods]
        if not wanted and members[0] != "wald":  # the CR1 bootstrap always runs: it gives FIELDS
            continue
        t0 = time.perf_counter()
        inf, w, err = _caught("/".join(members), f.infer, **{**kw, "seed": np.random.default_rng(kw["seed"])},
                              level=level)
        secs = time.perf_counter() - t0
        if members[0] == "wald":
            base = inf
        for m in wanted:
            kind = {"wald": "wald", "cr2": "wald"}.get(m, m)
            got = _interval(inf, kind, perm, Q, K) if inf is not None else {}
            if inf is not None and m in BOOTSTRAP_METHODS:
                got[DRAWS] = float(inf.dataset.attrs["n_boot"])
            out[m] = {**got, "seconds": secs, "error": err, "warnings": _warning_text(w)}
    if "profile" in methods:  # profile-likelihood intervals, X re-estimated (nmfre.profile; issue 19)
        out["profile"] = _profile_interval(f, level, perm)
    return base, out


def _profile_interval(f, level: float, perm) -> dict:
    """The ``"profile"`` method: :meth:`~nmfre.NMFREFit.profile` of every entry of Theta."""
    t0 = time.perf_counter()
    prof, w, err = _caught("profile", f.profile, params="theta", level=level)
    got = {} if prof is None else {"point": prof["estimate"].values[perm], "lower": prof["ci"].values[0][perm],
                                   "upper": prof["ci"].values[1][perm]}
    return {**got, "seconds": time.perf_counter() - t0, "error": err, "warnings": _warning_text(w)}


class StudyError(RuntimeError):
    """A study stopped because too many replicates of a cell failed (see ``max_errors``)."""


def _caught(stage: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with its warnings counted and its exception kept:
    ``(value or None, warnings as {category: count}, error message or "")``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value, err = fn(*args, **kwargs), ""
        except Exception as exc:  # noqa: BLE001 - a study records every failure and goes on
            value, err = None, f"{stage}: {type(exc).__name__}: {exc}"
    counts: dict[str, int] = {}
    for w in caught:
        counts[w.category.__name__] = counts.get(w.category.__name__, 0) + 1
    return value, counts, err


def _warning_text(counts: dict) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))


#: the replicate's seed sequence's child that seeds its fit (random starts), apart from those
#: ``_replicate`` spawns (data, bootstrap, extra methods), so that adding it changed none of them
_FIT_CHILD = 1_000_000


def _fit_kwargs(d: dict, seeds: tuple, fit_overrides: dict) -> dict:
    """The replicate's fit keywords: the design's, the study's overrides, and a seed from the
    replicate's seeds (without one, random starts drew fresh entropy and a study, or a resumed
    one, was not reproducible; ``run`` refuses a seed among the overrides)."""
    fit_seed = np.random.SeedSequence(list(seeds), spawn_key=(_FIT_CHILD,))
    return {"seed": np.random.default_rng(fit_seed), **d["fit_kwargs"], **fit_overrides}


def _replicate(design, params: dict, seeds: tuple, n_boot: int, fit_overrides: dict, level: float,
               methods: tuple = ("wald", "percentile"), extra: tuple = (), n_boot_refit: int = 200,
               shape: tuple | None = None, refit_failed: str = "drop") -> dict:
    """Simulate, fit, infer one replicate; components aligned to the truth.

    Failures are isolated: an exception in the simulation or the fit leaves the whole
    replicate NaN, one in a method leaves that method NaN, and each is recorded (``error``,
    ``fit_error``) with the warnings of each stage counted (``warnings``, ``fit_warnings``).
    ``shape`` is ``(Q, K)`` (needed to fill a replicate whose simulation failed)."""
    data_seed, boot_seed, *method_seeds = np.random.SeedSequence(list(seeds)).spawn(2 + len(extra))
    names = list(methods) + [n for n, _ in extra]
    d, fit_w, fit_err = _caught("simulate", design, **params, seed=np.random.default_rng(data_seed))
    f = None
    if d is not None:
        Q, K = d["theta"].shape
        kw = _fit_kwargs(d, seeds, fit_overrides)
        f, w, fit_err = _caught("fit", nmfre_fit, d["Y"], d["A"], rank=d["rank"], **kw)
        fit_w.update(w)
    else:
        Q, K = shape
    out = {k: np.full((Q, K), np.nan) for k in FIELDS}
    out.update({k: np.nan for k in SCALARS}, truth=np.full((Q, K), np.nan) if d is None else d["theta"].values)
    nan = {"point": np.full((Q, K), np.nan), "lower": np.full((Q, K), np.nan), "upper": np.full((Q, K), np.nan),
           "seconds": np.nan}
    intervals = {m: {**nan, "error": fit_err, "warnings": ""} for m in names}
    if f is not None:
        perm, _ = align_components(d["X"].values, f.X.values)
        inf, found = _frequentist(f, methods, boot_seed, n_boot, n_boot_refit, level, perm, refit_failed)
        for m in methods:
            intervals[m].update(found[m])
        for (name, fn), ms in zip(extra, method_seeds, strict=True):
            t0 = time.perf_counter()
            r, w, err = _caught(name, fn, f, seed=int(ms.generate_state(1)[0]), level=level)
            intervals[name].update(error=err, warnings=_warning_text(w), seconds=time.perf_counter() - t0)
            if r is not None:
                intervals[name].update({k: np.asarray(r[k], dtype=float)[perm] for k in ("point", "lower", "upper")})
                intervals[name].update({k: float(r.get(k, np.nan)) for k in SAMPLER_FIELDS})
        if inf is not None:  # the inference's own arrays (its table, without building the frame)
            ds = inf.dataset
            got = {k: ds[k] for k in ("estimate", "se", "boot_se", "p_value")}
            got.update(ci_low=ds["ci"].sel(ci_bound="lower"), ci_high=ds["ci"].sel(ci_bound="upper"))
            out.update({k: got[k].transpose("component", "covariate").values[perm] for k in FIELDS})
        out.update(df_u_frac=f.df_u / (f.shape["N"] * Q), sigma2=f.sigma2, tau2=f.tau2, lam=f.lam,
                   converged=f.converged, cap_hit=f.cap_hit, nll=-f.loglik, n_iter=f.n_iter)
    if d is not None:
        out.update(missing_share=float(np.isnan(d["Y"].values).mean()), labels=_design_labels(d, Q, K))
    out["intervals"] = intervals
    out.update(fit_error=fit_err, fit_warnings=_warning_text(fit_w))
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


def _task(batch: list) -> tuple[list, float]:
    """A cluster task: several replicates (``[(key, args), ...]``) in a row; their records
    and the batch's wall time (the client sizes later batches by it)."""
    t0 = time.perf_counter()
    out = [(key, _replicate(*args)) for key, args in batch]
    return out, time.perf_counter() - t0


def _check_grid(grid) -> dict:
    """``grid`` as ``{key: list of values}``: None or ``{}`` is one cell; each value must be a
    non-empty sequence (a string or a scalar is refused, not iterated)."""
    if grid is None:
        return {}
    if not isinstance(grid, dict):
        raise ArgumentTypeError(f"grid must be a dict of lists, e.g. {{'N': [27, 100]}}, got {type(grid).__name__}")
    out = {}
    for k, x in grid.items():
        one_d = (isinstance(x, Iterable) and not isinstance(x, (str, bytes, dict))
                 and not (isinstance(x, np.ndarray) and x.ndim != 1))
        if not one_d:
            raise ValueError(f"grid[{k!r}] must be a list of values (e.g. [{x!r}]), got {type(x).__name__} {x!r}")
        out[k] = list(x)
        if not out[k]:
            raise ValueError(f"grid[{k!r}] needs at least one value")
    return out


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
        methods=("wald", "percentile"), n_boot_refit: int = 200, store=None, max_errors=0.05,
        flush_seconds: float = 2.0, refit_failed: str = "drop") -> xr.Dataset:
    """Run a simulation study.

    Parameters
    ----------
    design : "baseline", "stress" or callable
        A callable takes the grid's parameters plus ``seed`` and returns a dict like
        :func:`nmfre.simulate.baseline` (``Y``, ``A``, ``X``, ``theta``, ``rank``,
        ``fit_kwargs``).
    grid : dict of lists, optional
        Settings to cross, e.g. ``{"N": [27, 100], "errors": ["normal", "exp"]}``; None (or
        ``{}``): one cell, the design's defaults (the result has no grid dims).
    n_rep : int
        Replicates per setting.
    seed : int
        Master seed (>= 0); replicate ``r`` of setting ``s`` (its position in the full grid, in
        ``itertools.product`` order) uses ``SeedSequence([seed, s, r])``. A different grid
        therefore gives other seeds; to re-run part of a study, pass the same grid and
        ``subset``.
    client : dask.distributed.Client, optional
        Run on that cluster; None runs in this process. Replicates go out in batches of
        about a second of work each (sized by the measured time per replicate), a few
        batches per worker thread at a time, and come back as they finish: the client
        never holds more than those, and cheap replicates do not pay the scheduler's
        per-task cost one by one. Results do not depend on the batching (seeds are per
        replicate).
    progress : bool
        tqdm progress bar with rate and ETA (in-process and on a cluster, as replicates
        arrive).
    n_boot, level :
        One-step bootstrap size and interval level of each replicate's inference.
    fit_kwargs : dict, optional
        Overrides of the design's fit settings (e.g. ``{"method": "ml", "df_cap": None}``);
        not ``seed``: each replicate's fit is seeded from its own seeds.
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
    refit_failed : {"drop", "keep"}
        What ``"refit"`` does with refits that did not converge (``failed`` of
        :meth:`~nmfre.NMFREFit.infer`): left out of its draws, SE and interval (default), or
        kept. The refits used are recorded per replicate (``n_draws``); with ``"drop"``, a
        replicate where fewer than two refits converged has no refit interval (its
        ``error`` says why).
    store : str or path, optional
        A directory (:mod:`nmfre.store`) where finished replicates are written as they
        arrive (at most every ``flush_seconds``), from this process or as a cluster's futures
        complete. Running the same call again skips the replicates already there; a store
        of a study with another design, grid, seed, methods, settings or nmfre version is
        refused, naming what differs. A function (design or method) is recorded by its
        module, name, code, defaults and the values its closure captured (a
        ``functools.partial`` by its function and arguments), not by the globals it reads.
        :func:`open` reads it, also while the study runs.
    max_errors : float, int or None
        Failed replicates allowed per cell before the study stops with :class:`StudyError`:
        a share of ``n_rep`` (default 0.05), a count, or None (no limit). A replicate
        fails when its simulation, fit or any method raises; it is recorded (``fit_error``,
        ``error``) with NaN values, and the study goes on.
    flush_seconds : float
        With a store, write finished replicates at least this often (0: each one).

    Returns
    -------
    xarray.Dataset
        Dims: one per grid key, ``replicate``, ``component``, ``covariate``; variables
        ``estimate, se, boot_se, ci_low, ci_high, p_value, truth`` and per replicate
        ``df_u_frac, sigma2, tau2, lam, converged, cap_hit, nll, n_iter``; per method
        (dim ``interval``, labelled by method name) ``point, lower, upper``, ``r_hat,
        ess_bulk, divergences`` and ``seconds`` (wall time of the computation behind the
        interval; Wald and percentile share one bootstrap, CR2 and studentized another)
        (the sampler's diagnostics NaN for the frequentist methods), and ``n_draws``, the
        bootstrap draws behind the interval (percentile, studentized, refit: for the refit
        bootstrap the refits used, which ``refit_failed="drop"`` makes fewer than
        ``n_boot_refit`` when some did not converge; NaN for the other methods). Components
        and covariates carry the design's labels (those of its ``theta``). Failures and warnings: ``fit_error``,
        ``fit_warnings`` per replicate (simulation and fit) and ``error``, ``warnings`` per
        replicate and method (text; warnings as ``"ConvergenceWarning x2, ..."``, empty when
        none); ``done`` marks replicates that ran (with a store: are in it). With a store
        the variables are dask-backed (lazy).
    """
    if isinstance(design, str) and design not in DESIGNS or not (isinstance(design, str) or callable(design)):
        raise ValueError(f"design must be one of {tuple(DESIGNS)} or a callable, got {design!r}")
    fn = DESIGNS[design] if isinstance(design, str) else design
    grid = _check_grid(grid)
    seed = v.seed_key(seed)
    n_rep = v.integer(n_rep, "n_rep")
    n_boot = v.integer(n_boot, "n_boot", minimum=2)
    level = v.open_unit(level, "level")
    n_boot_refit = v.integer(n_boot_refit, "n_boot_refit", minimum=2)
    refit_failed = v.choice(refit_failed, "refit_failed", FAILED)
    allowed = _allowed_errors(max_errors, n_rep)
    flush_seconds = v.positive_float(flush_seconds, "flush_seconds") if flush_seconds else 0.0
    builtin, extra = _methods(methods)
    full = _settings(grid)
    sub = _subset(grid, subset)
    settings = _settings(sub)
    index = [full.index(st) for st in settings]  # seeds follow the position in the full grid
    over = dict(fit_kwargs or {})
    if "seed" in over:  # one seed (or one Generator, advancing) for every replicate was not reproducible
        raise ValueError("fit_kwargs cannot hold seed: each replicate's fit is seeded from the replicate's own "
                         "seeds (seed, cell, replicate), so that a study and a resumed one give the same fits")
    names = list(builtin) + [n for n, _ in extra]
    # the design's shape and labels, from the first replicate's simulated data (no fit)
    probe = fn(**full[0], seed=np.random.default_rng(np.random.SeedSequence([seed, 0, 0]).spawn(1)[0]))
    Q, K = probe["theta"].shape
    labels = _design_labels(probe, Q, K)
    design_name = design if isinstance(design, str) else getattr(design, "__name__", "custom")
    spec = {"design": design_name, "grid": grid, "n_rep": n_rep, "seed": seed, "methods": names,
            "method_specs": [m for _, m in extra],  # JSON by the store (a function by its name)
            "n_boot": n_boot, "level": level,
            "fit_overrides": over, "n_boot_refit": n_boot_refit, "refit_failed": refit_failed,
            "nmfre_version": __version__,
            "component": labels[0], "covariate": labels[1]}
    if not isinstance(design, str):  # by its code and what it carries, not its name alone
        spec["design_spec"] = design
    st = Store(store, spec) if store is not None else None
    if st is not None:
        st.clean()  # the writer, not a reader, removes what a killed writer left
    done = st.done() if st is not None else set()
    tasks = [((index[i], r), (fn, settings[i], (seed, index[i], r), n_boot, over, level, builtin, extra,
                              n_boot_refit, (Q, K), refit_failed))
             for i in range(len(settings)) for r in range(n_rep) if (index[i], r) not in done]
    ctx = {"names": names, "Q": Q, "K": K, "labels": labels}
    records: list[dict] = []
    parts: list[xr.Dataset] = []
    failed = _stored_failures(st) if st is not None and done else {}  # a resumed cell's count goes on
    for cell in sorted(set(failed) & set(index)):  # this run's cells holding too many stop it before any work
        if any((cell, r) not in done for r in range(n_rep)):
            _check_failures(failed, cell, allowed, full, seed, n_rep, st)
    last = time.monotonic()
    written = 0
    total = len(settings) * n_rep
    try:
        for (cell, r), rec in _execute(tasks, client, progress, total, total - len(tasks)):
            rec.update(cell=cell, replicate=r)
            records.append(rec)
            msg = _first_error(rec["fit_error"], [iv["error"] for iv in rec["intervals"].values()])
            if msg is not None:
                failed.setdefault(cell, []).append((r, msg))
                _check_failures(failed, cell, allowed, full, seed, n_rep, st)
            if st is not None and time.monotonic() - last >= flush_seconds:
                st.write(_flat(records, ctx))
                written += 1
                if written % _STORE_BATCHES == 0:  # keep the store quick to open, the client's memory flat
                    st.compact(_STORE_BATCHES, newest=_STORE_BATCHES)
                records, last = [], time.monotonic()
            elif st is None and len(records) >= _COMPACT:  # compact: arrays instead of per-replicate dicts
                parts.append(_flat(records, ctx))
                records = []
    finally:
        if st is not None and records:
            st.write(_flat(records, ctx))
            records = []
    with in_process():  # the client reads the store itself, not through a cluster
        if st is not None:
            st.compact()
            flat = st.read()
        else:
            parts.append(_flat(records, ctx))
            flat = xr.concat(parts, dim="item") if len(parts) > 1 else parts[0]
        ds = _to_grid(flat, sub, full, n_rep, ctx).drop_encoding()  # the store's zarr v2 codecs stay there
    ds.attrs.update(design=design_name, seed=seed, n_boot=n_boot, level=level, fit_overrides=str(over),
                    n_boot_refit=n_boot_refit, refit_failed=refit_failed, spec=json.dumps(canonical(spec)))
    if st is not None:
        ds.attrs["store"] = str(st.path)
    return ds


def open(path) -> xr.Dataset:  # noqa: A001 - study.open(path), as xarray.open_dataset
    """The study in the store at ``path`` as :func:`run` returns it (lazy), also while the
    study is running in another process: replicates not yet written are NaN with ``done``
    False."""
    spec = read_spec(path)
    grid = spec["grid"]
    st = Store(path, spec)
    labels = (spec["component"], spec["covariate"])
    ctx = {"names": spec["methods"], "Q": len(labels[0]), "K": len(labels[1]), "labels": labels}
    with in_process():  # small reads in this process, whatever the default scheduler
        flat = st.read()
        if flat is None:
            flat = _flat([], ctx)
        ds = _to_grid(flat, grid, _settings(grid), spec["n_rep"], ctx).drop_encoding()
    ds.attrs.update(design=spec["design"], seed=spec["seed"], n_boot=spec["n_boot"], level=spec["level"],
                    fit_overrides=str(spec["fit_overrides"]), n_boot_refit=spec["n_boot_refit"],
                    refit_failed=spec.get("refit_failed", "drop"), spec=json.dumps(spec), store=str(st.path))
    return ds


def replicate(ds: xr.Dataset, replicate: int, design: Callable | None = None, **cell) -> dict:
    """Re-create one replicate of a study from its seeds, for debugging: its simulated data,
    its fit (or the exception the fit raised) and its seed triple.

    Parameters
    ----------
    ds : xarray.Dataset
        A result of :func:`run` or :func:`open`.
    replicate : int
    design : callable, optional
        The design function, when the study used one of its own (built-in designs are
        found by name).
    **cell
        The grid values of the cell, e.g. ``N=27, errors="exp"``.

    Returns
    -------
    dict
        ``data`` (the design's output), ``fit`` (an :class:`~nmfre.results.NMFREFit` or None),
        ``fit_error`` (text), ``seeds`` (``(seed, cell, replicate)``).
    """
    spec = json.loads(ds.attrs["spec"])
    grid = spec["grid"]
    if set(cell) != set(grid):
        raise ValueError(f"give the cell's value of every grid key {sorted(grid)}, got {sorted(cell)}")
    full = _settings(grid)
    target = {k: cell[k] for k in grid}
    if target not in full:
        raise ValueError(f"cell {target} is not in the study's grid {grid}")
    if design is None:
        if spec["design"] not in DESIGNS:
            raise ValueError(f"the study used its own design {spec['design']!r}: pass it as design=")
        design = DESIGNS[spec["design"]]
    replicate = v.integer(replicate, "replicate", minimum=0)
    if replicate >= spec["n_rep"]:
        raise ValueError(f"replicate must be below n_rep = {spec['n_rep']}, got {replicate}")
    seeds = (spec["seed"], full.index(target), replicate)
    data_seed = np.random.SeedSequence(list(seeds)).spawn(1)[0]
    d = design(**target, seed=np.random.default_rng(data_seed))
    kw = _fit_kwargs(d, seeds, spec["fit_overrides"])
    f, _, err = _caught("fit", nmfre_fit, d["Y"], d["A"], rank=d["rank"], **kw)
    return {"data": d, "fit": f, "fit_error": err, "seeds": seeds}


def _check_failures(failed: dict, cell: int, allowed: int | None, full: list, seed, n_rep: int, st) -> None:
    """:class:`StudyError` when ``cell`` has more failed replicates than ``max_errors`` allows."""
    if allowed is None or len(failed.get(cell, ())) <= allowed:
        return
    first, msg = min(failed[cell])
    raise StudyError(f"cell {full[cell]} had {len(failed[cell])} failed replicates (max_errors allows {allowed} of "
                     f"{n_rep}); first: replicate {first} (seeds {(seed, cell, first)}): {msg}. Finished replicates "
                     f"are {'in the store' if st else 'lost (no store)'}; study.replicate(...) re-creates one for "
                     "debugging")


def _stored_failures(st: Store) -> dict[int, list[tuple[int, str]]]:
    """The failed replicates already in a store, per cell: ``(replicate, first error)`` (a
    resumed run counts them against ``max_errors``; it counted only its own)."""
    with in_process():
        flat = st.read()
        if flat is not None:  # the four variables it needs, not the whole store
            flat = flat[["cell", "replicate", "fit_error", "error"]].load()
    out: dict[int, list[tuple[int, str]]] = {}
    if flat is None:
        return out
    fit_err = flat["fit_error"].values.astype(object)
    err = flat["error"].values.astype(object)
    for i, (cell, rep) in enumerate(zip(flat["cell"].values.tolist(), flat["replicate"].values.tolist(),
                                        strict=True)):
        msg = _first_error(fit_err[i], err[i])
        if msg is not None:
            out.setdefault(cell, []).append((rep, msg))
    return out


def _allowed_errors(max_errors, n_rep: int) -> int | None:
    """Failed replicates a cell may have: ``max_errors`` as a share of ``n_rep`` (float in
    [0, 1)), a count (int) or no limit (None)."""
    if max_errors is None:
        return None
    if isinstance(max_errors, bool) or not isinstance(max_errors, int | float | np.integer | np.floating):
        raise ValueError(f"max_errors must be a share in [0, 1), a count >= 1 or None, got {max_errors!r}")
    if isinstance(max_errors, int | np.integer):
        return v.integer(max_errors, "max_errors", minimum=0)
    if not 0 <= max_errors < 1:
        raise ValueError(f"max_errors as a share must be in [0, 1), got {max_errors!r} (an int is a count)")
    return int(np.floor(max_errors * n_rep))


def _first_error(fit_error, errors) -> str | None:
    """A replicate's first error (its fit's, else its first method's), None when it has none
    (stored text reads back empty or "nan")."""
    return next((str(m) for m in (fit_error, *errors) if m and str(m) != "nan"), None)


def _execute(tasks: list, client, progress: bool, total: int, initial: int):
    """``(key, record)`` as replicates finish: in this process in order, or on a dask cluster
    as futures complete. On a cluster replicates travel in batches sized to about
    ``_BATCH_SECONDS`` of work each (one replicate per task at first, then by the measured time
    per replicate, at most ``_BATCH_MAX``), with at most a few batches per worker thread in
    flight: the client never holds more than those results, and cheap replicates do not pay
    the scheduler's per-task cost one by one. Seeds are per replicate, so batching does not
    change any result."""
    from tqdm.auto import tqdm

    with tqdm(total=total, initial=initial, disable=not progress, desc="study", unit="rep",
              smoothing=0.05) as bar:
        if client is None:
            for key, args in tasks:
                yield key, _replicate(*args)
                bar.update()
            return
        from distributed import as_completed

        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        limit = max(8, 4 * threads)
        it = iter(tasks)
        spent, ran = 0.0, 0  # worker seconds and replicates so far (sizes the next batch)

        def submit(ac):
            size = 1 if ran == 0 else int(np.clip(_BATCH_SECONDS * ran / max(spent, 1e-9), 1, _BATCH_MAX))
            batch = list(itertools.islice(it, size))
            if batch:
                ac.add(client.submit(_task, batch, pure=False))

        ac = as_completed()
        for _ in range(limit):
            submit(ac)
        try:
            for fut in ac:
                recs, secs = fut.result()
                fut.release()
                spent, ran = spent + secs, ran + len(recs)
                submit(ac)
                for key, rec in recs:
                    bar.update()
                    yield key, rec
        finally:
            for f in list(ac.futures):
                f.cancel()


def _flat(records: list[dict], ctx: dict) -> xr.Dataset:
    """Finished replicates as one Dataset along ``item`` (the store's batch format)."""
    names, Q, K = ctx["names"], ctx["Q"], ctx["K"]
    n = len(records)
    data = {"cell": ("item", np.array([r["cell"] for r in records], dtype=np.int64)),
            "replicate": ("item", np.array([r["replicate"] for r in records], dtype=np.int64))}
    for k in FIELDS + ("truth",):
        data[k] = (("item", "component", "covariate"), np.array([r[k] for r in records], float).reshape(n, Q, K))
    for k in SCALARS:
        data[k] = ("item", np.array([r[k] for r in records], dtype=float))
    for k in ("point", "lower", "upper"):
        arr = np.array([[r["intervals"][m][k] for m in names] for r in records], float).reshape(n, len(names), Q, K)
        data[k] = (("item", "interval", "component", "covariate"), arr)
    for k in SAMPLER_FIELDS + (TIMING, DRAWS):
        arr = np.array([[r["intervals"][m].get(k, np.nan) for m in names] for r in records], dtype=float)
        data[k] = (("item", "interval"), arr.reshape(n, len(names)))
    for k in ("error", "warnings"):
        arr = np.array([[r["intervals"][m][k] for m in names] for r in records], dtype=object)
        data[k] = (("item", "interval"), arr.reshape(n, len(names)))
    for k in ("fit_error", "fit_warnings"):
        data[k] = ("item", np.array([r[k] for r in records], dtype=object))
    return xr.Dataset(data, coords={"interval": names, "component": ctx["labels"][0],
                                    "covariate": ctx["labels"][1]})


def _to_grid(flat: xr.Dataset, grid: dict, full: list[dict], n_rep: int, ctx: dict) -> xr.Dataset:
    """Flat replicates (any order, any subset) on the grid: dims grid keys, ``replicate``,
    then ``interval``, ``component``, ``covariate``; cells not (yet) computed are NaN and
    ``done`` is False there."""
    keys = list(grid)
    cells = flat["cell"].values
    wanted = {i for i, st in enumerate(full) if all(st[k] in grid[k] for k in keys)}
    keep = np.flatnonzero(np.isin(cells, sorted(wanted)))
    flat = flat.isel(item=keep)
    cells = cells[keep]
    coords = {k: ("item", [full[c][k] for c in cells]) for k in keys}
    coords["replicate"] = ("item", flat["replicate"].values)
    text = ("error", "warnings", "fit_error", "fit_warnings")
    flat = flat.assign({k: flat[k].astype(object) for k in text})  # (zarr reads text back as StringDType)
    if keys:
        ds = flat.drop_vars(["cell", "replicate"]).assign_coords(coords).set_index(item=keys + ["replicate"])
        ds = ds.unstack("item")
    else:  # one cell (no grid): the replicates are the items
        ds = flat.drop_vars("cell").set_coords("replicate").swap_dims(item="replicate")
    ds = ds.reindex({**{k: grid[k] for k in keys}, "replicate": np.arange(n_rep)})
    ds["done"] = ds["n_iter"].notnull() | (ds["fit_error"].fillna("") != "")
    for k in text:  # small, and read whole: fixed-width text (netCDF- and zarr-friendly)
        ds[k] = ds[k].load().fillna("").astype(str)
    order = keys + ["replicate", "interval", "component", "covariate"]
    ds = ds.transpose(*[d for d in order if d in ds.dims])
    truth = ds["truth"].values  # the estimand per cell: from any simulated replicate
    ok = ~np.isnan(truth)
    first = ok.argmax(axis=len(keys))
    ds["truth"] = (keys + ["component", "covariate"],
                   np.take_along_axis(truth, np.expand_dims(first, len(keys)), axis=len(keys)).squeeze(len(keys)))
    return ds


def summarize(ds: xr.Dataset, alpha: float = 0.05) -> xr.Dataset:
    """The paper's metrics and the ADEMP performance measures with their Monte Carlo SEs
    (:mod:`nmfre.performance`; Morris, White & Crowther 2019, Table 6), per setting and
    (component, covariate). Failed replicates (NaN) are left out cell by cell (``n_valid``).

    ADEMP, of the estimate: ``bias``, ``empse``, ``mse``, ``modse`` (from the sandwich SE)
    and ``modse_relerr`` (percent), ``rejection`` (p < alpha: power, or type I error under
    the null), each with ``<measure>_mcse``; per method: ``coverage``, ``be_coverage``
    (bias-eliminated, centred on the mean of the method's point estimate), ``width``,
    ``interval_score`` and ``point_bias``, each with ``<measure>_mcse``.
    :func:`nmfre.performance.tidy` gives the long frame.

    The paper's:

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
    replicate; ``mean_draws``, the mean number of bootstrap draws behind the interval (NaN
    for methods without draws; below ``n_boot_refit`` for ``"refit"`` where refits that did
    not converge were left out).
    """
    from scipy.stats import norm

    z = norm.ppf(1 - (1 - ds.attrs.get("level", 0.95)) / 2)
    err = ds["estimate"] - ds["truth"]

    def share(hit, *needed):  # share of the replicates with every needed value (failed ones left out)
        ok = needed[0].notnull()
        for x in needed[1:]:
            ok = ok & x.notnull()
        return hit.astype(float).where(ok).mean("replicate")

    out = xr.Dataset({
        "bias": err.mean("replicate"),
        "sd": ds["estimate"].std("replicate", ddof=1),
        "rmse": np.sqrt((err**2).mean("replicate")),
        "mean_se": ds["se"].mean("replicate"),
        "mean_boot_se": ds["boot_se"].mean("replicate"),
        "cover_wald": share(np.abs(err) <= z * ds["se"], err, ds["se"]),
        "cover_pct": share((ds["ci_low"] <= ds["truth"]) & (ds["truth"] <= ds["ci_high"]), ds["ci_low"],
                           ds["ci_high"], ds["truth"]),
        "df_u_frac_q05": ds["df_u_frac"].quantile(0.05, "replicate").drop_vars("quantile"),
        "df_u_frac_q50": ds["df_u_frac"].quantile(0.50, "replicate").drop_vars("quantile"),
        "df_u_frac_q95": ds["df_u_frac"].quantile(0.95, "replicate").drop_vars("quantile"),
        "cap_hit_rate": ds["cap_hit"].astype(float).mean("replicate"),
        "converged_rate": ds["converged"].astype(float).mean("replicate"),
        "mean_sigma2": ds["sigma2"].mean("replicate"),
    })
    level = float(ds.attrs.get("level", 0.95))
    perf = performance(ds["estimate"], ds["truth"], se=ds["se"], p_value=ds["p_value"], alpha=alpha, level=level)
    out = out.assign({k: perf[k] for k in perf.data_vars if k not in out})
    out["bias"], out["reject"] = perf["bias"], perf["rejection"]  # failed (NaN) replicates left out
    if "interval" in ds.dims:
        out = out.merge(_method_metrics(ds))
    out.attrs.update(ds.attrs, alpha=alpha)
    return out


def _method_metrics(ds: xr.Dataset) -> xr.Dataset:
    level = float(ds.attrs.get("level", 0.95))
    perf = performance(ds["point"], ds["truth"], lower=ds["lower"], upper=ds["upper"], level=level)
    ref = "wald" if "wald" in ds["interval"].values else ds["interval"].values[0]
    flagged = ((ds["r_hat"] > SAMPLER_THRESHOLDS["max_r_hat"]) | (ds["ess_bulk"] < SAMPLER_THRESHOLDS["min_ess_bulk"])
               | (ds["divergences"] > 0))
    share = flagged.mean("replicate").where(ds["r_hat"].notnull().any("replicate"))
    keep = ("coverage", "be_coverage", "width", "interval_score")
    out = {k: perf[k] for m in keep for k in (m, f"{m}_mcse")}
    ratio = (perf["width"] / perf["width"].sel(interval=ref, drop=True)).assign_attrs(relative_to=str(ref))
    out.update(width_ratio=ratio, point_bias=perf["bias"],
               point_bias_mcse=perf["bias_mcse"], point_rmse=np.sqrt(perf["mse"]), warning_share=share,
               seconds=ds["seconds"].mean("replicate"))
    if DRAWS in ds:  # the bootstrap draws used, on average (fewer than asked where refits were left out)
        out["mean_draws"] = ds[DRAWS].mean("replicate")
    return xr.Dataset(out)


def _choose(obj, dim: str, val, prefix: str = ""):
    """The label ``val`` along ``dim`` (matched as text), or the only one when ``val`` is
    None; otherwise a ``ValueError`` naming the choices."""
    if val is None:
        if obj.sizes[dim] > 1:
            raise ValueError(f"{prefix or 'choose '}{dim}= among {plotting.labels_of(obj, dim)}")
        return obj[dim].values[0]
    return obj[dim].values[plotting.label_position(obj, dim, val, prefix)]


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


def plot_zip(ds: xr.Dataset, interval: str, component=None, covariate=None, **cell):
    """Zip plot (:func:`nmfre.plotting.zip_plot`) of one method's intervals in one cell.

    Parameters
    ----------
    ds : xarray.Dataset
        A study (:func:`run` or :func:`open`).
    interval : str
        The method, e.g. ``"wald"``.
    component, covariate : optional
        Which entry of Theta (default: the only one, else an error naming the choices).
    **cell
        The grid values of the cell, e.g. ``N=27`` (every grid key with more than one value).
    """
    sel = {"interval": _choose(ds, "interval", interval)}
    for dim, val in (("component", component), ("covariate", covariate)):
        sel[dim] = _choose(ds, dim, val)
    grid = [d for d in ds["point"].dims if d not in ("replicate", "interval", "component", "covariate")]
    unknown = set(cell) - set(grid)
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not grid keys of this study ({grid})")
    for d in grid:
        cell[d] = _choose(ds, d, cell.get(d), "choose the cell: ")
    one = ds.sel({**sel, **cell})
    level = float(ds.attrs.get("level", 0.95))
    where = ", ".join(f"{k}={v}" for k, v in cell.items())
    title = f"{interval}: {sel['component']} / {sel['covariate']}" + (f" ({where})" if where else "")
    return plotting.zip_plot(one["point"].values, one["lower"].values, one["upper"].values,
                             float(one["truth"].values), level=level, title=title)


def plot_nested_loop(summary: xr.Dataset, measure: str = "coverage", component=None, covariate=None):
    """Nested-loop plot (:func:`nmfre.plotting.nested_loop`) of one per-method measure of
    :func:`summarize` over all cells of the grid, methods as lines; the nominal level is
    drawn for the coverage measures."""
    if measure not in summary or "interval" not in summary[measure].dims:
        per = sorted(k for k in summary.data_vars if "interval" in summary[k].dims)
        raise ValueError(f"measure must be a per-method measure of the summary, one of {per}; got {measure!r}")
    da = summary[measure]
    for dim, val in (("component", component), ("covariate", covariate)):
        da = da.sel({dim: _choose(da, dim, val)})
    level = float(summary.attrs.get("level", 0.95))
    ref = level if measure in ("coverage", "be_coverage") else (1.0 if measure == "width_ratio" else None)
    return plotting.nested_loop(da, reference=ref, ylabel=measure,
                                title=f"{measure}: {da['component'].item()} / {da['covariate'].item()}")
