"""Studies that survive (issue 16): a zarr store written as replicates finish, resumed after
SIGKILL, refused when the settings differ; failures isolated and counted; one replicate
re-created from its seeds. All checks are exact: the study's numbers are deterministic given
its seeds (wall times aside)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import nmfre
from nmfre import study
from nmfre.exceptions import ConvergenceWarning
from nmfre.store import StoreMismatchError

KW = dict(n_rep=6, seed=11, n_boot=50, methods=("wald", "percentile"))
GRID = {"N": [27, 40]}


def _same(a: xr.Dataset, b: xr.Dataset):
    """Identical studies, wall times and store bookkeeping aside."""
    drop = ["seconds"]
    a, b = a.drop_vars(drop).compute(), b.drop_vars(drop).compute()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())


@pytest.fixture(scope="module")
def plain():
    return study.run("baseline", GRID, **KW)


def test_store_equals_in_memory_and_is_lazy(plain, tmp_path):
    path = tmp_path / "s.zarr"
    ds = study.run("baseline", GRID, store=path, **KW)
    assert ds["estimate"].chunks is not None  # dask-backed
    _same(ds, plain)
    assert bool(ds["done"].all()) and (plain["fit_error"] == "").all()
    again = study.run("baseline", GRID, store=path, **KW)  # nothing left to compute
    _same(again, plain)
    _same(study.open(path), plain)
    with pytest.raises(StoreMismatchError, match="seed: store has 11, this run 12"):
        study.run("baseline", GRID, store=path, **{**KW, "seed": 12})
    with pytest.raises(StoreMismatchError, match="methods"):
        study.run("baseline", GRID, store=path, **{**KW, "methods": ("wald",)})


def test_subset_then_rest(plain, tmp_path):
    path = tmp_path / "s.zarr"
    part = study.run("baseline", GRID, store=path, subset={"N": [40]}, **KW)
    assert list(part["N"].values) == [40]
    mid = study.open(path)
    assert int(mid["done"].sum()) == 6 and bool(mid["estimate"].sel(N=27).isnull().all())
    _same(study.run("baseline", GRID, store=path, **KW), plain)


SCRIPT = """
import sys
from nmfre import study
study.run("baseline", {{"N": [27, 40]}}, store=sys.argv[1], flush_seconds=0, **{kw!r})
"""


def test_sigkill_and_resume(plain, tmp_path):
    """Kill the study process (SIGKILL) while it writes, at several points; each time the
    store stays readable and the resumed study equals the uninterrupted one, no replicate
    missing or stored twice."""
    path = tmp_path / "killed.zarr"
    script = tmp_path / "run_study.py"
    script.write_text(textwrap.dedent(SCRIPT.format(kw=KW)))
    batches = path / "batches"
    for target in (2, 5):  # kill after at least this many replicates are stored
        proc = subprocess.Popen([sys.executable, str(script), str(path)])
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            n = len(list(batches.glob("*.zarr"))) if batches.exists() else 0
            if n >= target or proc.poll() is not None:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        mid = study.open(path)  # readable after the kill
        assert 0 < int(mid["done"].sum()) < 12
    resumed = study.run("baseline", GRID, store=path, **KW)
    _same(resumed, plain)
    flat = xr.concat([xr.open_zarr(p, consolidated=False) for p in sorted(batches.glob("*.zarr"))], "item")
    pairs = list(zip(flat["cell"].values.tolist(), flat["replicate"].values.tolist(), strict=True))
    assert len(pairs) == len(set(pairs)) == 12


def test_half_written_batch_is_ignored(plain, tmp_path):
    path = tmp_path / "s.zarr"
    study.run("baseline", GRID, store=path, subset={"N": [27]}, **KW)
    junk = path / "batches" / "99999999999999999999-deadbeef.zarr.tmp"
    junk.mkdir()
    (junk / "zarr.json").write_text("{ truncated")
    assert int(study.open(path)["done"].sum()) == 6
    assert junk.exists()  # a reader leaves it: it could be the batch a running writer is filling
    _same(study.run("baseline", GRID, store=path, **KW), plain)
    assert not junk.exists()  # the writer removes it


def _method_factory():
    def echo(fit, *, seed, level):
        th = fit.theta.values
        return {"point": th, "lower": th - 1, "upper": th + 1}

    return echo


def test_resume_with_a_function_method_failures_and_reads_during_compaction(tmp_path, monkeypatch):
    """A study with a (name, function) method resumes in another process, where the function
    is another object (its spec held repr's memory address, so every resume was refused);
    failed replicates already in the store count against max_errors (each run counted only its
    own, and a cell ended with 5 of 8 failed under max_errors=1); a read whose batches change
    under it (a writer compacting) lists them again whatever the error; results can be written
    to zarr (they carried the store's zarr v2 codecs)."""
    path = tmp_path / "f.zarr"
    kw = dict(n_rep=4, seed=2, n_boot=20)
    first = study.run("baseline", {"N": [27]}, store=path, methods=("wald", ("echo", _method_factory())), **kw)
    again = study.run("baseline", {"N": [27]}, store=path, methods=("wald", ("echo", _method_factory())), **kw)
    _same(first, again)
    again.to_zarr(tmp_path / "copy.zarr")
    assert json.loads(again.attrs["spec"]) == json.loads(study.open(path).attrs["spec"])
    # another function under the same name (two lambdas) is another study
    other = [lambda fit, *, seed, level: {"point": fit.theta.values, "lower": fit.theta.values - 2,
                                          "upper": fit.theta.values + 2}][0]
    with pytest.raises(StoreMismatchError, match="method_specs"):
        study.run("baseline", {"N": [27]}, store=path, methods=("wald", ("echo", other)), **kw)
    with pytest.raises(ValueError, match="fit_kwargs cannot hold seed"):
        study.run("baseline", {"N": [27]}, fit_kwargs={"seed": 1}, **kw)
    # max_errors across runs: the second run stops before any work, naming the stored failures
    store = tmp_path / "m.zarr"
    mkw = dict(n_rep=12, seed=3, n_boot=20, methods=("wald",), max_errors=1, store=store)
    with pytest.raises(study.StudyError, match=r"had 2 failed replicates") as one:
        study.run(fragile, {"N": [27]}, **mkw)
    n_batches = len(list((store / "batches").glob("*.zarr")))
    with pytest.raises(study.StudyError) as two:
        study.run(fragile, {"N": [27]}, **mkw)
    assert str(two.value) == str(one.value)
    assert len(list((store / "batches").glob("*.zarr"))) == n_batches
    # ... but a run of other cells (subset) is not stopped by this cell's failures (it was)
    grid2 = {"N": [27, 28]}
    store2 = tmp_path / "m2.zarr"
    with pytest.raises(study.StudyError, match=r"cell \{'N': 27\}"):
        study.run(fragile_at_27, grid2, **{**mkw, "store": store2})
    part = study.run(fragile_at_27, grid2, subset={"N": [28]}, **{**mkw, "store": store2})
    assert bool(part["done"].sel(N=28).all())
    # a read that fails while the listing changes is tried again; on an unchanged one it raises
    import nmfre.store as store_module

    real, calls = store_module.Store._load, []

    extra = path / "batches" / "00000000000000000000-00000000.zarr"

    def flaky(paths, load=True):
        calls.append(len(paths))
        if len(calls) == 1:
            extra.mkdir()  # the listing changes under the read
            raise KeyError("No variable named 'replicate'")
        if len(calls) == 2:
            raise ValueError("a broken batch")  # the same listing: a real error
        return real(paths, load)

    monkeypatch.setattr(store_module.Store, "_load", staticmethod(flaky))
    with pytest.raises(ValueError, match="a broken batch"):
        study.open(path)
    assert calls[1] == calls[0] + 1
    extra.rmdir()
    assert int(study.open(path)["done"].sum()) == 4 and len(calls) == 3


def _offset_method(width):
    def interval(fit, *, seed, level):
        th = fit.theta.values
        return {"point": th, "lower": th - width, "upper": th + width}

    return interval


def _scaled(fit, *, seed, level, width=1.0):
    th = fit.theta.values
    return {"point": th, "lower": th - width, "upper": th + width}


def test_closures_and_partials_are_recorded_with_what_they_carry(tmp_path):
    """Two closures from one factory share their code but not the values they captured: a
    store written with one is not resumed by the other (it was: the spec held only the code's
    digest, so the replicates of width 1 were returned as those of width 2). The same for
    ``functools.partial`` (its repr held an address, so it never resumed) and for defaults;
    equal captures still resume, and an object whose repr holds its address is recorded by
    its type."""
    import functools

    from nmfre.store import canonical

    kw = dict(n_rep=2, seed=5, n_boot=20)
    path = tmp_path / "c.zarr"
    one = study.run("baseline", {"N": [27]}, store=path, methods=(("iv", _offset_method(1.0)),), **kw)
    _same(one, study.run("baseline", {"N": [27]}, store=path, methods=(("iv", _offset_method(1.0)),), **kw))
    with pytest.raises(StoreMismatchError, match="method_specs"):
        study.run("baseline", {"N": [27]}, store=path, methods=(("iv", _offset_method(2.0)),), **kw)
    part = tmp_path / "p.zarr"
    half = functools.partial(_scaled, width=0.5)
    study.run("baseline", {"N": [27]}, store=part, methods=(("iv", half),), **kw)
    study.run("baseline", {"N": [27]}, store=part, methods=(("iv", functools.partial(_scaled, width=0.5)),), **kw)
    with pytest.raises(StoreMismatchError, match="method_specs"):
        study.run("baseline", {"N": [27]}, store=part, methods=(("iv", functools.partial(_scaled, width=3)),), **kw)

    def spec(f):
        return canonical({"f": f})["f"]

    assert spec(_offset_method(np.arange(3))) == spec(_offset_method(np.arange(3)))
    assert spec(_offset_method(np.arange(3))) != spec(_offset_method(np.arange(3) + 1))
    assert spec(_offset_method(np.random.default_rng(1))) == spec(_offset_method(np.random.default_rng(2)))
    assert " at 0x" not in spec(functools.partial(_scaled, width=0.5))

    def with_default(fit, *, seed, level, width=1.0):
        return width

    first = spec(with_default)
    with_default.__kwdefaults__ = {"width": 2.0}
    assert spec(with_default) != first

    def recursive(n):  # a function that captures itself
        return recursive(n - 1) if n else 0

    assert spec(recursive) == spec(recursive)
    # captured values JSON cannot hold (they crashed the spec, and a store-less study after its
    # replicates), containers that hold themselves, and labelled data told apart by value
    looped = [1]
    looped.append(looped)
    for value in (looped, {(1, 2): 3, "a": 4}, {1: "x", "b": 2}, {"b", "a"}, np.array(["a", None], dtype=object)):
        assert spec(_offset_method(value)) == spec(_offset_method(value))
    frame = pd.DataFrame({"x": np.arange(1000.0)})
    other = frame.copy()
    other.iloc[500, 0] = -1.0
    assert spec(_offset_method(frame)) == spec(_offset_method(frame.copy()))
    assert spec(_offset_method(frame)) != spec(_offset_method(other))
    assert spec(_offset_method(frame.to_xarray())) != spec(_offset_method(other.to_xarray()))
    assert spec(_offset_method(frame["x"])) != spec(_offset_method(other["x"]))
    # a design function is recorded the same way (it was recorded by its name alone)
    des = tmp_path / "d.zarr"
    study.run(_design_of(27), {"N": [27]}, store=des, methods=("wald",), **kw)
    study.run(_design_of(27), {"N": [27]}, store=des, methods=("wald",), **kw)
    with pytest.raises(StoreMismatchError, match="design_spec"):
        study.run(_design_of(30), {"N": [27]}, store=des, methods=("wald",), **kw)


def _design_of(n_units):
    def design(N=27, seed=0, **kw):
        return nmfre.simulate.baseline(N=n_units, seed=seed, **kw)

    return design


def fragile(N=27, seed=0, **kw):
    """The baseline design, whose simulation fails for some seeds (about 1 in 4)."""
    if seed.random() < 0.25:
        raise np.linalg.LinAlgError("singular design (on purpose)")
    return nmfre.simulate.baseline(N=N, seed=seed, **kw)


def fragile_at_27(N=27, seed=0, **kw):
    """``fragile`` at N = 27, the baseline design (never failing) elsewhere."""
    return fragile(N=N, seed=seed, **kw) if N == 27 else nmfre.simulate.baseline(N=N, seed=seed, **kw)


def shaky(fit, *, seed, level):
    """A method that raises for odd seeds and warns otherwise."""
    if seed % 2:
        raise RuntimeError("sampler blew up (on purpose)")
    warnings.warn("not converged (on purpose)", ConvergenceWarning, stacklevel=2)
    th = fit.theta.values
    return {"point": th, "lower": th - 1, "upper": th + 1}


def test_failures_isolated_counted_and_limited(tmp_path):
    kw = dict(n_rep=12, seed=3, n_boot=30, methods=("wald", ("shaky", shaky)))
    ds = study.run(fragile, {"N": [27]}, max_errors=None, **kw)
    sim_failed = ds["fit_error"].str.startswith("simulate: LinAlgError: singular design").squeeze("N")
    assert 0 < int(sim_failed.sum()) < 12
    # a failed simulation: the whole replicate is NaN, and every method carries the error
    assert bool(ds["estimate"].squeeze("N")[sim_failed].isnull().all())
    assert bool(ds["estimate"].squeeze("N")[~sim_failed].notnull().all())
    shaky_err = ds["error"].sel(interval="shaky").squeeze("N")
    raised = shaky_err.str.startswith("shaky: RuntimeError: sampler blew up")
    assert 0 < int(raised.sum()) and not bool((raised & sim_failed).any())
    ok = ~sim_failed & ~raised
    assert bool(ds["lower"].sel(interval="shaky").squeeze("N")[ok].notnull().all())
    assert bool(ds["lower"].sel(interval="shaky").squeeze("N")[raised].isnull().all())
    assert bool((ds["warnings"].sel(interval="shaky").squeeze("N")[ok] == "ConvergenceWarning x1").all())
    assert bool((ds["error"].sel(interval="wald").squeeze("N")[~sim_failed] == "").all())
    # the summary leaves failed replicates out
    s = study.summarize(ds)
    assert np.isfinite(s["bias"]).all()
    lo, hi = (ds[k].sel(interval="shaky").squeeze("N").values[ok.values] for k in ("lower", "upper"))
    truth = ds["truth"].squeeze("N").values
    cov = ((lo <= truth) & (truth <= hi)).mean(axis=0)
    np.testing.assert_allclose(s["coverage"].sel(interval="shaky").squeeze("N"), cov, rtol=1e-12)
    np.testing.assert_allclose(s["coverage_mcse"].sel(interval="shaky").squeeze("N"),
                               np.sqrt(cov * (1 - cov) / ok.values.sum()), rtol=1e-12)
    assert int(s["n_valid"].squeeze("N")[0, 0]) == int((~sim_failed).sum())
    # the paper's coverage columns too (failed replicates once counted as misses)
    est, se = (ds[k].squeeze("N").values[~sim_failed.values] for k in ("estimate", "se"))
    z = 1.959963984540054
    np.testing.assert_allclose(s["cover_wald"].squeeze("N"), (np.abs(est - truth) <= z * se).mean(axis=0),
                               rtol=1e-12)
    clo, chi = (ds[k].squeeze("N").values[~sim_failed.values] for k in ("ci_low", "ci_high"))
    np.testing.assert_allclose(s["cover_pct"].squeeze("N"), ((clo <= truth) & (truth <= chi)).mean(axis=0),
                               rtol=1e-12)
    np.testing.assert_allclose(s["cover_wald"].squeeze("N"), s["coverage"].sel(interval="wald").squeeze("N"),
                               rtol=1e-12)
    # max_errors: a share of n_rep per cell
    with pytest.raises(study.StudyError, match=r"failed replicates \(max_errors allows 1 of 12\)"):
        study.run(fragile, {"N": [27]}, max_errors=1, **kw)
    with pytest.raises(ValueError, match="max_errors"):
        study.run(fragile, {"N": [27]}, max_errors=1.5, **kw)
    # the same replicate re-created from its seeds
    r = int(np.flatnonzero(ok.values)[0])
    one = study.replicate(ds, r, design=fragile, N=27)
    assert one["seeds"] == (3, 0, r) and one["fit_error"] == ""
    np.testing.assert_allclose(-one["fit"].loglik, ds["nll"].sel(N=27, replicate=r), rtol=1e-12)
    bad = int(np.flatnonzero(sim_failed.values)[0])
    with pytest.raises(np.linalg.LinAlgError):
        study.replicate(ds, bad, design=fragile, N=27)
    with pytest.raises(ValueError, match="pass it as design="):
        study.replicate(ds, r, N=27)


def test_cluster_writes_to_store_as_futures_complete(plain, tmp_path, monkeypatch):
    """On a dask cluster (2 worker processes) the store fills as futures complete and the
    result equals the in-process run."""
    from nmfre.store import Store

    distributed = pytest.importorskip("distributed")
    sizes = []
    real = Store.write
    monkeypatch.setattr(Store, "write", lambda self, flat: sizes.append(flat.sizes["item"]) or real(self, flat))
    path = tmp_path / "c.zarr"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        with distributed.get_task_stream(client) as ts:
            ds = study.run("baseline", GRID, store=path, client=client, flush_seconds=0, **KW)
    _same(ds, plain)
    # the cluster ran the replicates and nothing else: the client reads and merges the store
    # itself (a load through the default scheduler, the client, would ship the data to a
    # worker and back)
    names = {t["key"].split("-")[0] if isinstance(t["key"], str) else str(t["key"]) for t in ts.data}
    assert names == {"_task"}, names
    # one batch per finished replicate, then the end-of-run compaction into one
    assert sizes == [1] * 12 + [12] and len(list((path / "batches").glob("*.zarr"))) == 1


def test_study_figures(tmp_path):
    """Zip plot: one line per replicate, coloured by coverage; nested-loop plot: a step line
    per method and per factor; nothing clipped."""
    from test_plotting import assert_nothing_clipped

    ds = study.run("baseline", {"N": [27, 40], "errors": ["normal", "exp"]}, n_rep=20, seed=2, n_boot=50,
                   methods=("wald", "percentile", "cr2"))
    fig = study.plot_zip(ds, "wald", covariate="male", N=27, errors="exp")
    ax = fig.axes[0]
    one = ds.sel(interval="wald", covariate="male", N=27, errors="exp").squeeze("component")
    covered = int(((one["lower"] <= one["truth"]) & (one["truth"] <= one["upper"])).sum())
    segs = {c.get_label(): len(c.get_segments()) for c in ax.collections if c.get_label() in ("covers", "misses")}
    assert segs.get("covers", 0) == covered and segs.get("covers", 0) + segs.get("misses", 0) == 20
    fig.savefig(tmp_path / "zip.png")
    assert_nothing_clipped(fig)
    with pytest.raises(ValueError, match=r"choose the cell: N= among \['27', '40'\]"):
        study.plot_zip(ds, "wald", covariate="male", errors="exp")
    for kw, match in [({"covariate": "female"}, r"covariate='female' is not in this study; choose among "
                                                r"\['intercept', 'male'\]"),
                      ({"covariate": "male", "N": 99}, r"choose the cell: N=99 is not in this study"),
                      ({"covariate": "male", "M": 1}, "not grid keys")]:
        with pytest.raises(ValueError, match=match):
            study.plot_zip(ds, "wald", **{"errors": "exp", "N": 27, **kw})
    with pytest.raises(ValueError, match=r"interval='bogus' is not in this study"):
        study.plot_zip(ds, "bogus", covariate="male", N=27, errors="exp")
    s = study.summarize(ds)
    fig = study.plot_nested_loop(s, "coverage", covariate="male")
    main, factors = fig.axes
    assert len(main.get_lines()) == 3 + 1  # three methods and the nominal level
    np.testing.assert_allclose(main.get_lines()[0].get_ydata(),
                               s["coverage"].sel(interval="wald", covariate="male").squeeze("component")
                               .transpose("N", "errors").values.ravel())
    assert len(factors.get_lines()) == 2
    fig.savefig(tmp_path / "nested.png")
    assert_nothing_clipped(fig)
    with pytest.raises(ValueError, match="per-method measure"):
        study.plot_nested_loop(s, "bias")
    with pytest.raises(ValueError, match=r"covariate='female' is not in this study; choose among \['intercept'"):
        study.plot_coverage(s, covariate="female")


def labelled_design(N=30, seed=0):
    """A user design returning labelled data: its labels flow through to the study."""
    d = nmfre.simulate.baseline(N=N, seed=seed)
    theta = d["theta"].assign_coords(component=["growth"], covariate=["base", "boy"])
    A = d["A"].assign_coords(covariate=["base", "boy"])
    return {**d, "theta": theta, "A": A}


def test_user_design_labels_flow_through():
    ds = study.run(labelled_design, {"N": [30]}, n_rep=2, seed=1, n_boot=20)
    assert list(ds["component"].values) == ["growth"] and list(ds["covariate"].values) == ["base", "boy"]
    assert ds.attrs["design"] == "labelled_design"


def test_many_replicates_compacted(plain, monkeypatch):
    """The in-memory run packs its records into arrays every _COMPACT replicates; the
    result does not depend on it."""
    monkeypatch.setattr(study, "_COMPACT", 5)
    _same(study.run("baseline", GRID, **KW), plain)


def test_posterior_methods_in_a_store(tmp_path):
    """bayes.study.run passes the store through; the posterior method's settings are part
    of the study's identity, and a re-run computes nothing."""
    bstudy = pytest.importorskip("bayes.study")
    kw = dict(n_rep=2, seed=4, n_boot=20, methods=("wald", "conditional"), num_warmup=100, num_samples=100)
    path = tmp_path / "b.zarr"
    ds = bstudy.run("baseline", {"N": [27]}, store=path, **kw)
    assert bool(ds["done"].all()) and bool(ds["upper"].sel(interval="conditional").notnull().all())
    assert set(np.unique(ds["warnings"].values)) <= {"", "SamplingWarning x1"}
    again = bstudy.run("baseline", {"N": [27]}, store=path, **kw)
    _same(again, ds)
    with pytest.raises(StoreMismatchError, match="method_specs"):
        bstudy.run("baseline", {"N": [27]}, store=path, **{**kw, "num_samples": 150})


def test_store_compacted_while_running_and_at_the_end(plain, tmp_path, monkeypatch):
    """One batch per replicate (flush_seconds=0), the newest 3 merged every 3 flushes and all
    at the end: the store holds one batch and reads as the in-memory study."""
    import shutil

    from nmfre.store import Store, read_spec

    merged = []
    real = Store.compact
    monkeypatch.setattr(Store, "compact", lambda self, *a, **k: merged.append(real(self, *a, **k)) or merged[-1])
    monkeypatch.setattr(study, "_STORE_BATCHES", 3)
    path = tmp_path / "s.zarr"
    _same(study.run("baseline", GRID, store=path, flush_seconds=0, **KW), plain)
    (only,) = (path / "batches").glob("*.zarr")
    with xr.open_zarr(only, consolidated=False) as b:  # one chunk per variable (not one per replicate)
        assert all(len(c) == 1 for x in b.data_vars.values() for c in x.chunks)
    # 12 flushes: every 3rd merges the newest 3 (never an earlier merge: memory stays at 3
    # batches); the end of the run merges the four merged batches
    assert merged == [3, 3, 3, 3, 4]
    # a reader that meets a batch and its merged copy (a kill between rename and removal)
    # sees each replicate once
    shutil.copytree(only, path / "batches" / "99999999999999999999-00000000.zarr")
    _same(study.open(path), plain)
    assert Store(path, read_spec(path)).read()["cell"].size == 12
