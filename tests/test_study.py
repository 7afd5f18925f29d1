"""nmfre.study: the runner (in-process and on dask), seeds, sub-grids, summaries."""

import numpy as np
import pytest
import xarray as xr

from nmfre import simulate, study


def test_stress_collapse_without_cap():
    """The paper's point on fresh replicates: the cap prevents saturation and sigma2 collapse."""
    ds = study.run("stress", {"arm": ["cap0.21", "off"]}, n_rep=6, seed=11, n_boot=50)
    s = study.summarize(ds)
    assert float(s["df_u_frac_q50"].sel(arm="off")) > 0.99
    assert float(s["mean_sigma2"].sel(arm="off")) < 0.6
    # (the paper's algorithm reports df_U at the X after its last update: at the cap to ~1e-4)
    assert float(s["df_u_frac_q95"].sel(arm="cap0.21")) <= 0.211
    assert 0.8 < float(s["mean_sigma2"].sel(arm="cap0.21")) < 1.25


@pytest.fixture(scope="module")
def small_study():
    return study.run("baseline", {"N": [27, 50], "hypothesis": ["alt", "null"]}, n_rep=8, seed=5, n_boot=100)


def test_study_layout_and_netcdf(small_study, tmp_path):
    ds = small_study
    assert ds["estimate"].dims == ("N", "hypothesis", "replicate", "component", "covariate")
    assert ds["df_u_frac"].dims == ("N", "hypothesis", "replicate")
    assert list(ds["N"].values) == [27, 50]
    np.testing.assert_allclose(ds["truth"].sel(hypothesis="null", covariate="male"), 0.0)
    ds.to_netcdf(tmp_path / "s.nc")
    assert xr.open_dataset(tmp_path / "s.nc").load().identical(ds)


def test_fewer_replicates_reproduce_the_first_ones(small_study):
    """Replicate r of setting s is seeded by (seed, s, r): n_rep=3 gives the first 3 replicates."""
    one = study.run("baseline", {"N": [27, 50], "hypothesis": ["alt", "null"]}, n_rep=3, seed=5, n_boot=100)
    xr.testing.assert_identical(one["estimate"], small_study["estimate"].isel(replicate=slice(0, 3)))


def test_subset_reproduces_cells_of_the_full_grid(small_study):
    """A sub-grid selected with ``subset`` keeps the full grid's seeds: identical cells."""
    grid = {"N": [27, 50], "hypothesis": ["alt", "null"]}
    part = study.run("baseline", grid, n_rep=8, seed=5, n_boot=100, subset={"N": [50], "hypothesis": "null"})
    assert part["estimate"].sizes["N"] == 1 and part["estimate"].sizes["hypothesis"] == 1
    xr.testing.assert_identical(part["estimate"], small_study["estimate"].sel(N=[50], hypothesis=["null"]))
    # a different grid (the same cell at another position) gives other seeds, as documented
    other = study.run("baseline", {"N": [50], "hypothesis": ["null"]}, n_rep=8, seed=5, n_boot=100)
    assert not np.array_equal(other["estimate"].values, part["estimate"].values)


def test_summarize_hand_computed(small_study):
    ds, s = small_study, study.summarize(small_study)
    cell = dict(N=50, hypothesis="alt", component="Basis1", covariate="male")
    est = ds["estimate"].sel(cell).values
    truth = 9.4285
    assert float(s["bias"].sel(cell)) == pytest.approx(est.mean() - truth)
    assert float(s["sd"].sel(cell)) == pytest.approx(est.std(ddof=1))
    assert float(s["rmse"].sel(cell)) == pytest.approx(np.sqrt(np.mean((est - truth) ** 2)))
    se = ds["se"].sel(cell).values
    assert float(s["cover_wald"].sel(cell)) == pytest.approx(np.mean(np.abs(est - truth) <= 1.959963984540054 * se))
    lo, hi = ds["ci_low"].sel(cell).values, ds["ci_high"].sel(cell).values
    assert float(s["cover_pct"].sel(cell)) == pytest.approx(np.mean((lo <= truth) & (truth <= hi)))
    assert float(s["reject"].sel(cell)) == pytest.approx(np.mean(ds["p_value"].sel(cell).values < 0.05))
    q = ds["df_u_frac"].sel(N=50, hypothesis="alt").values
    assert float(s["df_u_frac_q50"].sel(N=50, hypothesis="alt")) == pytest.approx(np.quantile(q, 0.5))


class _Counting:
    """The real client, with its ``submit`` calls and their batch sizes counted."""

    def __init__(self, client):
        self._client, self.sizes = client, []

    def submit(self, fn, batch, **kw):
        self.sizes.append(len(batch))
        return self._client.submit(fn, batch, **kw)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_study_identical_on_dask(monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    grid = {"N": [27], "errors": ["normal", "exp"]}
    local = study.run("baseline", grid, n_rep=12, seed=9, n_boot=50)
    # batches of ~1000 s of work: after the first replicates come back, the rest go in big batches
    monkeypatch.setattr(study, "_BATCH_SECONDS", 1000.0)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        counting = _Counting(client)
        remote = study.run("baseline", grid, n_rep=12, seed=9, n_boot=50, client=counting)
    # every replicate sent once; the first 8 alone, the rest batched
    assert sum(counting.sizes) == 24 and counting.sizes[:8] == [1] * 8 and max(counting.sizes) > 1
    # identical numbers; only the wall times (``seconds``) differ between runs
    assert remote.drop_vars("seconds").identical(local.drop_vars("seconds"))
    assert bool((remote["seconds"] > 0).all())


def test_study_ml_override_and_callable_design():
    def design(scale, seed):
        d = simulate.baseline(N=40, seed=seed)
        d["Y"] = d["Y"] * scale
        return d

    ds = study.run(design, {"scale": [1.0]}, n_rep=2, seed=1, n_boot=20, fit_kwargs={"method": "ml", "df_cap": None})
    assert ds["converged"].all()
    # random starts are seeded from the replicate's seeds: the same study twice, and replicate(),
    # give the same fits (they drew fresh entropy, so a resumed study could differ)
    kw = dict(n_rep=2, seed=1, n_boot=20, methods=("wald",), fit_kwargs={"method": "ml", "n_init": 3, "init": "random"})
    runs = [study.run(design, {"scale": [1.0]}, **kw) for _ in range(2)]
    np.testing.assert_array_equal(runs[0]["nll"], runs[1]["nll"])
    again = study.replicate(runs[0], 1, design=design, scale=1.0)["fit"]
    assert -again.loglik == float(runs[0]["nll"].sel(scale=1.0, replicate=1))
    with pytest.raises(ValueError, match="design"):
        study.run("unknown", {}, n_rep=1)




@pytest.fixture(scope="module")
def method_study():
    return study.run("baseline", {"N": [27, 40]}, n_rep=6, seed=5, n_boot=100,
                     methods=("wald", "percentile", "cr2", "studentized", "refit"), n_boot_refit=10)


def test_methods_layout_and_wiring(method_study):
    """Per-method intervals: Wald and percentile are the study's own fields; CR2-t and the
    studentized bootstrap equal a hand-run infer on the same replicate with the same seeds."""
    import nmfre

    ds = method_study
    assert ds["lower"].dims == ("N", "replicate", "interval", "component", "covariate")
    assert ds["r_hat"].dims == ("N", "replicate", "interval") and bool(ds["r_hat"].isnull().all())
    assert list(ds["interval"].values) == ["wald", "percentile", "cr2", "studentized", "refit"]
    z = 1.959963984540054
    np.testing.assert_allclose(ds["lower"].sel(interval="wald"), ds["estimate"] - z * ds["se"], rtol=1e-12)
    np.testing.assert_allclose(ds["upper"].sel(interval="percentile"), ds["ci_high"], rtol=1e-15)
    np.testing.assert_allclose(ds["point"].sel(interval="cr2"), ds["estimate"], rtol=1e-15)
    # the numbers of the default run do not move when methods are added
    plain = study.run("baseline", {"N": [27, 40]}, n_rep=2, seed=5, n_boot=100)
    for k in ("estimate", "se", "ci_low", "ci_high", "p_value"):
        xr.testing.assert_identical(plain[k], ds[k].isel(replicate=slice(0, 2)))
    # replicate 1 of setting N=40 (position 1 of the grid) by hand
    data_seed, boot_seed = np.random.SeedSequence([5, 1, 1]).spawn(2)
    d = simulate.baseline(N=40, seed=np.random.default_rng(data_seed))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = nmfre.fit(d["Y"], d["A"], rank=1, **d["fit_kwargs"])
        inf = f.infer(n_boot=100, seed=np.random.default_rng(boot_seed), vcov="CR2", df="satterthwaite",
                      ci="studentized")
    cell = ds.sel(N=40, replicate=1, component="Basis1")
    np.testing.assert_allclose(cell["lower"].sel(interval="cr2").values,
                               inf.dataset["ci_wald"].sel(ci_bound="lower").values.ravel(), rtol=1e-12)
    np.testing.assert_allclose(cell["upper"].sel(interval="studentized").values,
                               inf.ci.sel(ci_bound="upper").values.ravel(), rtol=1e-12)
    # CR2 with t references is wider than CR1 Wald on average at N = 27
    w = (ds["upper"] - ds["lower"]).sel(N=27).mean(("replicate", "component", "covariate"))
    assert float(w.sel(interval="cr2")) > float(w.sel(interval="wald"))
    # the bootstrap draws behind each interval: none for the sandwich intervals; n_boot for the
    # one-step bootstraps; the refits used for the refit bootstrap (those of a hand-run refit)
    assert ds.attrs["refit_failed"] == "drop"
    assert bool(ds["n_draws"].sel(interval=["wald", "cr2"]).isnull().all())
    assert bool((ds["n_draws"].sel(interval=["percentile", "studentized"]) == 100).all())
    refit_seed = np.random.SeedSequence(boot_seed.entropy, spawn_key=(*boot_seed.spawn_key, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = f.infer(n_boot=10, seed=np.random.default_rng(refit_seed), method="refit")
    assert float(ds["n_draws"].sel(N=40, replicate=1, interval="refit")) == ref.dataset.attrs["n_boot"]
    np.testing.assert_allclose(cell["lower"].sel(interval="refit").values,
                               ref.ci.sel(ci_bound="lower").values.ravel(), rtol=1e-12)


def test_refit_failed_rule():
    """``refit_failed`` reaches the refit bootstrap: with refits that cannot converge (one
    iteration), ``"drop"`` leaves none, so the replicate's refit interval is NaN with the
    reason as its error, and ``"keep"`` uses all of them (``n_draws`` = ``n_boot_refit``) and
    records the warning; the other methods are the same either way."""
    kw = dict(n_rep=1, seed=3, n_boot=20, methods=("wald", "refit"), n_boot_refit=4, max_errors=None,
              fit_kwargs={"method": "ml", "max_iter": 1})
    drop = study.run("baseline", {"N": [27]}, **kw)
    keep = study.run("baseline", {"N": [27]}, refit_failed="keep", **kw)
    assert (drop.attrs["refit_failed"], keep.attrs["refit_failed"]) == ("drop", "keep")
    assert not bool(drop["converged"].any())
    err = str(drop["error"].sel(N=27, replicate=0, interval="refit").values)
    assert "only 0 of 4 refits converged" in err
    assert bool(drop["lower"].sel(interval="refit").isnull().all())
    assert bool(drop["n_draws"].sel(interval="refit").isnull().all())
    assert str(keep["error"].sel(N=27, replicate=0, interval="refit").values) == ""
    assert "ConvergenceWarning" in str(keep["warnings"].sel(N=27, replicate=0, interval="refit").values)
    assert float(keep["n_draws"].sel(N=27, replicate=0, interval="refit")) == 4
    assert bool(keep["lower"].sel(interval="refit").notnull().all())
    xr.testing.assert_identical(drop["lower"].sel(interval="wald"), keep["lower"].sel(interval="wald"))
    assert float(study.summarize(keep)["mean_draws"].sel(N=27, interval="refit")) == 4
    with pytest.raises(ValueError, match="refit_failed"):
        study.run("baseline", {"N": [27]}, n_rep=1, refit_failed="skip")


def test_method_metrics_hand_computed(method_study):
    ds = method_study
    s = study.summarize(ds)
    cell = dict(N=27, component="Basis1", covariate="male")
    x = float(ds["truth"].sel(cell))
    for m in ("wald", "refit"):
        lo = ds["lower"].sel(cell).sel(interval=m).values
        hi = ds["upper"].sel(cell).sel(interval=m).values
        cov = np.mean((lo <= x) & (x <= hi))
        assert float(s["coverage"].sel(cell).sel(interval=m)) == pytest.approx(cov)
        assert float(s["coverage_mcse"].sel(cell).sel(interval=m)) == pytest.approx(np.sqrt(cov * (1 - cov) / 6))
        score = (hi - lo) + 40 * np.maximum(lo - x, 0) + 40 * np.maximum(x - hi, 0)
        assert float(s["interval_score"].sel(cell).sel(interval=m)) == pytest.approx(score.mean())
    wl = ds["upper"].sel(cell) - ds["lower"].sel(cell)
    ratio = wl.sel(interval="refit").mean() / wl.sel(interval="wald").mean()
    assert float(s["width_ratio"].sel(cell).sel(interval="refit")) == pytest.approx(float(ratio))
    assert float(s["width_ratio"].sel(cell).sel(interval="wald")) == 1.0
    err = ds["point"].sel(cell).sel(interval="wald").values - x
    assert float(s["point_rmse"].sel(cell).sel(interval="wald")) == pytest.approx(np.sqrt(np.mean(err**2)))
    assert bool(s["warning_share"].isnull().all())  # no sampler among these methods
    fig = study.plot_coverage(s)
    assert len(fig.axes) == 4  # (intercept, male) x (coverage, width)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_callable_methods_and_errors():
    calls = []

    def shifted(fit, *, seed, level):
        calls.append(seed)
        est = fit.theta.values
        return {"point": est, "lower": est - 1.0, "upper": est + 1.0, "r_hat": 1.02, "ess_bulk": 500.0,
                "divergences": 0}

    ds = study.run("baseline", {"N": [27]}, n_rep=3, seed=2, n_boot=20, methods=("wald", ("shift", shifted)))
    np.testing.assert_allclose(ds["upper"].sel(interval="shift") - ds["lower"].sel(interval="shift"), 2.0)
    assert len(set(calls)) == 3  # one seed per replicate
    s = study.summarize(ds)
    assert float(s["warning_share"].sel(interval="shift").isel(N=0)) == 1.0
    with pytest.raises(ValueError, match="bayes.study"):
        study.run("baseline", {"N": [27]}, n_rep=1, methods=("wald", "joint"))
    with pytest.raises(ValueError, match="unknown method"):
        study.run("baseline", {"N": [27]}, n_rep=1, methods=("bca",))
    with pytest.raises(ValueError, match="duplicate"):
        study.run("baseline", {"N": [27]}, n_rep=1, methods=("wald", "wald"))
    with pytest.raises(ValueError, match="per-method"):
        # a study saved before methods existed has no interval dim
        study.plot_coverage(study.summarize(ds.drop_dims("interval")))


def test_no_grid_is_one_cell_and_bad_grids_or_seeds_are_refused(tmp_path):
    """grid=None (or {}) runs the design's defaults as one cell, with the seeds of the first
    cell of any grid (baseline's default N is 100), in memory and in a store; a grid value
    that is not a list, and a seed that is not an int >= 0, are refused before any work."""
    ds = study.run("baseline", n_rep=3, n_boot=20)
    assert ds["estimate"].dims == ("replicate", "component", "covariate") and bool(ds["done"].all())
    cell = study.run("baseline", {"N": [100]}, n_rep=3, n_boot=20).squeeze("N", drop=True)
    xr.testing.assert_equal(ds.drop_vars("seconds"), cell.drop_vars("seconds"))
    xr.testing.assert_equal(study.run("baseline", {}, n_rep=3, n_boot=20).drop_vars("seconds"),
                            ds.drop_vars("seconds"))
    stored = study.run("baseline", n_rep=3, n_boot=20, store=tmp_path / "s")
    xr.testing.assert_equal(study.open(tmp_path / "s").drop_vars("seconds").compute(), ds.drop_vars("seconds"))
    assert stored["estimate"].dims == ds["estimate"].dims
    assert study.replicate(ds, 1)["seeds"] == (0, 0, 1)
    assert np.isfinite(study.summarize(ds)["cover_wald"]).all()
    for grid, match in [({"errors": "exp"}, r"grid\['errors'\] must be a list"), ({"N": 27}, r"grid\['N'\]"),
                        ({"N": []}, "at least one value"), ([("N", [27])], "grid must be a dict")]:
        with pytest.raises(ValueError, match=match):
            study.run("baseline", grid, n_rep=1)
    for seed in (None, -1, 1.5):
        with pytest.raises(ValueError, match="seed"):
            study.run("baseline", {"N": [27]}, n_rep=1, seed=seed)


def test_outputs_take_the_designs_labels():
    ds = study.run(simulate.rank2, {"N": [40]}, n_rep=1, seed=1, n_boot=20, methods=("wald",))
    assert list(ds["covariate"].values) == ["intercept", "group"]  # not "male": the design's own labels
    assert list(ds["component"].values) == ["Basis1", "Basis2"]
    plain = study._design_labels({"theta": np.zeros((1, 3)), "A": np.ones((3, 5))}, 1, 3)
    assert plain == (["Basis1"], ["covariate1", "covariate2", "covariate3"])
