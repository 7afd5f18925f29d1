"""Property-based tests (hypothesis): input coercion and the equivariances of the ML fit."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import nmfre
from nmfre.labels import coerce

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def matrices(draw):
    P = draw(st.integers(1, 6))
    N = draw(st.integers(2, 12))
    Y = draw(arrays(np.float64, (P, N), elements=finite))
    labels = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=N, max_size=N, unique=True))
    return Y, labels


@FAST
@given(matrices())
def test_numpy_pandas_xarray_coerce_alike(case):
    Y, units = case
    P = Y.shape[0]
    feats = [f"f{p}" for p in range(P)]
    df = pd.DataFrame(Y, index=feats, columns=units)
    da = xr.DataArray(Y.T, dims=("unit", "feature"), coords={"unit": units, "feature": feats})
    a, b, c = coerce(Y), coerce(df), coerce(da)
    np.testing.assert_array_equal(a.Y, Y)
    np.testing.assert_array_equal(b.Y, Y)
    np.testing.assert_array_equal(c.Y, Y)
    assert list(b.units) == list(c.units) == units and list(c.features) == feats


@FAST
@given(matrices(), st.randoms(use_true_random=False))
def test_design_is_aligned_to_y_by_unit_label(case, rnd):
    Y, units = case
    N = Y.shape[1]
    A = np.vstack([np.ones(N), np.arange(N, dtype=float)]) if N > 2 else np.ones((1, N))
    order = list(range(N))
    rnd.shuffle(order)
    Adf = pd.DataFrame(A[:, order], columns=[units[i] for i in order])
    d = coerce(pd.DataFrame(Y, columns=units), Adf)
    np.testing.assert_array_equal(d.A, A)


@FAST
@given(arrays(np.float64, (3, 5), elements=finite), st.sampled_from([np.nan, np.inf, -np.inf]),
       st.integers(0, 14))
def test_non_finite_entries_are_named(Y, bad, where):
    Y = Y.copy()
    Y.flat[where] = bad
    with pytest.raises(ValueError, match="Y contains (NaN|Inf)"):
        coerce(Y, missing=False)
    if np.isnan(bad):  # with missing values allowed NaN marks a missing entry
        assert coerce(Y).has_missing
    else:
        with pytest.raises(ValueError, match="Y contains Inf"):
            coerce(Y)


@pytest.fixture(scope="module")
def base(orthodont):
    Y, A = orthodont
    return Y, A, nmfre.fit(Y, A, rank=1)


@FAST
@given(st.floats(-150, 150))
def test_ml_fit_is_scale_equivariant(base, log10c):
    """Theta, U scale by c; sigma2, tau2 by c^2; loglik shifts by -NP log c (any c in 1e+-150)."""
    Y, A, f0 = base
    c = 10.0**log10c
    f = nmfre.fit(Y * c, A, rank=1)
    np.testing.assert_allclose(f.theta.values / c, f0.theta.values, rtol=1e-8)
    np.testing.assert_allclose(f.U.values / c, f0.U.values, rtol=1e-5, atol=1e-6)
    assert f.sigma2 / c**2 == pytest.approx(f0.sigma2, rel=1e-6)
    assert f.tau2 / c**2 == pytest.approx(f0.tau2, rel=1e-6)
    assert f.loglik + Y.size * np.log(c) == pytest.approx(f0.loglik, abs=1e-8 * (1 + abs(Y.size * np.log(c))))


@FAST
@given(st.permutations(range(27)), st.permutations(range(4)))
def test_ml_fit_is_permutation_equivariant(base, units, features):
    """Reordering units and features reorders U and X, and leaves Theta and the loglik alone."""
    Y, A, f0 = base
    f = nmfre.fit(Y.iloc[features, units], A.iloc[:, units], rank=1)
    assert f.loglik == pytest.approx(f0.loglik, rel=1e-10)
    np.testing.assert_allclose(f.theta.values, f0.theta.values, rtol=1e-7)
    np.testing.assert_allclose(f.X.sel(feature=f0.X.feature).values, f0.X.values, rtol=1e-7)
    np.testing.assert_allclose(f.U.sel(unit=f0.U.unit).values, f0.U.values, rtol=1e-5, atol=1e-6)
