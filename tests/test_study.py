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


def test_study_identical_on_dask():
    distributed = pytest.importorskip("dask.distributed")
    grid = {"N": [27], "errors": ["normal", "exp"]}
    local = study.run("baseline", grid, n_rep=4, seed=9, n_boot=50)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = study.run("baseline", grid, n_rep=4, seed=9, n_boot=50, client=client)
    assert remote.identical(local)


def test_study_ml_override_and_callable_design():
    def design(scale, seed):
        d = simulate.baseline(N=40, seed=seed)
        d["Y"] = d["Y"] * scale
        return d

    ds = study.run(design, {"scale": [1.0]}, n_rep=2, seed=1, n_boot=20, fit_kwargs={"method": "ml", "df_cap": None})
    assert ds["converged"].all()
    with pytest.raises(ValueError, match="design"):
        study.run("unknown", {}, n_rep=1)


