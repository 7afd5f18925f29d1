"""nmfre.simulate: the designs produce their stated truth."""

import numpy as np
import pytest

from nmfre import simulate


def test_baseline_design_truth():
    d = simulate.baseline(N=100, errors="exp", hypothesis="null", seed=3)
    np.testing.assert_allclose(d["X"].values.ravel(), [0.2308, 0.2409, 0.2566, 0.2717])
    np.testing.assert_allclose(d["theta"].values, [[90.502, 0.0]])
    assert d["A"].sel(covariate="male").sum() == round(16 * 100 / 27)
    resid = d["Y"].values - d["X"].values @ (d["theta"].values @ d["A"].values + d["U"].values)
    assert abs(resid.mean()) < 0.1 and abs(resid.var() - 1) < 0.15 and resid.min() >= -1  # Exp(1) - 1
    assert d["fit_kwargs"] == {"method": "paper", "df_cap": 0.21}
    alt = simulate.baseline(N=27, seed=3)
    assert alt["theta"].values[0, 1] == 9.4285 and alt["Y"].shape == (4, 27)
    np.testing.assert_array_equal(simulate.baseline(seed=5)["Y"], simulate.baseline(seed=5)["Y"])
    with pytest.raises(ValueError, match="hypothesis"):
        simulate.baseline(hypothesis="maybe")
    with pytest.raises(ValueError, match="errors"):
        simulate.baseline(errors="t")


def test_stress_design_truth():
    d = simulate.stress("off", seed=1)
    np.testing.assert_allclose(d["X"].values[:, 0], [0.45, 0.30, 0.15, 0.10])
    np.testing.assert_allclose(d["X"].sum("feature"), 1.0)
    np.testing.assert_allclose(d["theta"].values[:, 0], 90.502 / 3)
    np.testing.assert_allclose(d["theta"].values[:, 1], [9.4285, 0, 0])
    assert d["fit_kwargs"] == {"method": "paper", "df_cap": None, "tau2": 1000.0, "fix_tau2": True}
    assert simulate.stress("cap0.21")["fit_kwargs"]["df_cap"] == 0.21
    with pytest.raises(ValueError, match="arm"):
        simulate.stress("cap0.5")


def test_rank2_design():
    d = simulate.rank2(N=60, seed=2)
    X, theta = d["X"].values, d["theta"].values
    np.testing.assert_allclose(X.sum(axis=0), 1.0)
    assert (X[:3, 1] == 0).all() and (X[5:, 0] == 0).all()  # block structure with an overlap
    np.testing.assert_array_equal(theta, [[20.0, 5.0], [30.0, 0.0]])
    assert list(d["A"].covariate.values) == ["intercept", "group"]
    resid = d["Y"].values - X @ (theta @ d["A"].values + d["U"].values)
    assert abs(resid.std() - 0.5) < 0.05


def test_block_sparse_design():
    d = simulate.block_sparse(P=30, N=200, rank=3, K=2, seed=1)
    X = d["X"].values
    assert ((X > 0).sum(axis=1) == 1).all()  # each feature loads on one component
    np.testing.assert_allclose(X.sum(axis=0), 1.0)
    assert (d["Y"].values >= 0).all()
