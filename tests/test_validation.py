"""nmfre.validation and bad input at every public entry point: rejected before any
computation, naming the argument."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import nmfre
from nmfre import simulate, study
from nmfre import validation as v

Y0 = np.random.default_rng(0).uniform(1, 5, (6, 20))


def bad(**kw):
    args = {"Y": Y0, "rank": 2}
    args.update(kw)
    return nmfre.fit(**args)


@pytest.mark.parametrize("kw, exc, match", [
    ({"Y": np.where(np.eye(6, 20) > 0, np.nan, Y0), "method": "paper"}, ValueError, "no missing-data path"),
    ({"Y": np.where(np.arange(20) == 4, np.nan, Y0)}, ValueError, r"no observed entry for unit\(s\) '4'"),
    ({"Y": np.where(np.eye(6, 20) > 0, np.inf, Y0)}, ValueError, "Y contains Inf"),
    ({"Y": Y0 - 3, "method": "paper"}, ValueError, "negative"),
    ({"Y": Y0[0]}, ValueError, "Y must be 2-D"),
    ({"Y": np.empty((0, 5))}, ValueError, "Y is empty"),
    ({"Y": np.array([["a", "b"], ["c", "d"]])}, TypeError, "Y must be numeric"),
    ({"Y": pd.DataFrame({"a": ["x"] * 6, "b": [1.0] * 6})}, TypeError, "Y must be numeric"),
    ({"A": np.ones((1, 19))}, ValueError, "A has 19 units"),
    ({"A": np.vstack([np.ones(20), np.full(20, np.nan)])}, ValueError, "A contains NaN"),
    ({"A": np.vstack([np.ones(20), 2 * np.ones(20)])}, ValueError, "collinear"),
    ({"rank": 0}, ValueError, "rank"),
    ({"rank": 2.5}, TypeError, "rank"),
    ({"rank": 7}, ValueError, "rank 7 is larger"),
    ({"df_cap": 1.5}, ValueError, "df_cap"),
    ({"df_cap": 0}, ValueError, "df_cap"),
    ({"df_cap": "sometimes"}, ValueError, "df_cap"),
    ({"method": "em"}, ValueError, "method"),
    ({"theta": "positive"}, ValueError, "theta"),
    ({"theta": "free", "method": "paper"}, ValueError, "theta"),
    ({"init": "kmeans"}, ValueError, "init"),
    ({"init": {"X": np.ones((5, 2))}}, ValueError, r"init\['X'\]"),
    ({"init": {"X": -np.ones((6, 2))}}, ValueError, "non-negative"),
    ({"init": {"X": None}}, ValueError, "must contain 'X'"),
    ({"init": {"X": np.ones((6, 2)), "theta": -np.ones((2, 1))}, "theta": "nonneg"}, ValueError,
     r"init\['theta'\] has negative entries"),
    ({"init": {"X": np.ones((6, 2)), "theta": -np.ones((2, 1))}, "method": "paper"}, ValueError,
     r"init\['theta'\] has negative entries"),
    ({"n_init": 0}, ValueError, "n_init"),
    ({"max_iter": 0}, ValueError, "max_iter"),
    ({"tol": -1.0}, ValueError, "tol"),
    ({"sigma2": 0.0}, ValueError, "sigma2"),
    ({"tau2": np.nan}, ValueError, "tau2"),
])
def test_bad_fit_input(kw, exc, match):
    with pytest.raises(exc, match=match):
        bad(**kw)


def test_xarray_unknown_dims():
    da = xr.DataArray(Y0, dims=("gene", "sample"))
    with pytest.raises(ValueError, match="Y has dims"):
        nmfre.fit(da, rank=2)
    A = xr.DataArray(np.ones((1, 20)), dims=("cov", "unit"))
    with pytest.raises(ValueError, match="A has dims"):
        nmfre.fit(xr.DataArray(Y0, dims=("feature", "unit")), A, rank=2)


def test_mismatched_unit_labels():
    Y = pd.DataFrame(Y0, columns=[f"u{i}" for i in range(20)])
    A = pd.DataFrame(np.ones((1, 20)), index=["intercept"], columns=[f"v{i}" for i in range(20)])
    with pytest.raises(ValueError, match="unit labels do not match"):
        nmfre.fit(Y, A, rank=2)


def test_formula_needs_both():
    with pytest.raises(ValueError, match="covariates and formula"):
        nmfre.fit(Y0, rank=2, formula="~ x")


def test_df_scan_bad_rates():
    with pytest.raises(ValueError, match="rates"):
        nmfre.df_scan(Y0, rank=2, rates=[0.0, 0.5])


@pytest.mark.parametrize("fn, args, exc, match", [
    (v.integer, (0, "n"), ValueError, "n must be a positive integer"),
    (v.integer, (2.5, "n"), TypeError, "n must be a positive integer"),
    (v.integer, (True, "n"), TypeError, "n must be"),
    (v.integer, (1, "n"), None, None),
    (v.choice, ("x", "kind", ("a", "b")), ValueError, "kind must be one of"),
    (v.positive_float, (np.inf, "tol"), ValueError, "tol must be a positive finite"),
    (v.positive_float, ("1", "tol"), TypeError, "tol"),
    (v.rate, (1.5, "df_cap"), ValueError, r"\(0, 1\]"),
    (v.open_unit, (1.0, "level"), ValueError, r"level must be in \(0, 1\)"),
    (v.boolean, (1, "flag"), TypeError, "True or False"),
    (v.rng, (-1,), ValueError, "non-negative"),
    (v.rng, ("7",), TypeError, "seed"),
])
def test_validation_checks(fn, args, exc, match):
    if exc is None:
        fn(*args)
        return
    with pytest.raises(exc, match=match) as info:
        fn(*args)
    assert isinstance(info.value, ValueError)  # ArgumentTypeError is a ValueError too


def test_rng_passes_generators_through_and_never_uses_global_state():
    g = np.random.default_rng(3)
    assert v.rng(g) is g
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    v.rng(None).random(5)
    assert np.array_equal(np.random.get_state()[1], state)


def test_bad_input_at_other_entry_points(orthodont):
    Y, A = orthodont
    with pytest.raises(ValueError, match="folds"):
        nmfre.ecv(Y, A, folds=1)
    with pytest.raises(ValueError, match="n_rep"):
        study.run("baseline", {}, n_rep=0)
    with pytest.raises(ValueError, match="subset"):
        study.run("baseline", {"N": [27]}, n_rep=1, subset={"N": [28]})
    with pytest.raises(ValueError, match="N must be an integer >= 4"):
        simulate.baseline(N=2)
    with pytest.raises(ValueError, match="errors"):
        simulate.stress(errors="t")
    with pytest.raises(ValueError, match="rank"):
        simulate.block_sparse(rank=0)
    with pytest.raises(ValueError, match=r"rank \(5\) must be at most P \(3\)"):
        simulate.block_sparse(P=3, N=20, rank=5, K=2)
    for kw, match in [({"tau2": -1.0}, "tau2 must be a non-negative"), ({"noise_sd": -1.0}, "noise_sd"),
                      ({"theta_scale": -1.0}, "theta_scale must be a non-negative"), ({"clip": "yes"}, "clip")]:
        with pytest.raises(ValueError, match=match):
            simulate.block_sparse(P=10, N=20, rank=2, K=2, **kw)
