"""nmfre.labels: numpy, pandas and xarray in; the same validated arrays out."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import nmfre
from nmfre.labels import coerce

Y0 = np.random.default_rng(0).uniform(1, 5, (6, 20))


def test_three_input_kinds_agree():
    df = pd.DataFrame(Y0, index=[f"f{i}" for i in range(6)], columns=[f"u{i}" for i in range(20)])
    da = xr.DataArray(Y0.T, dims=("unit", "feature"), coords={"unit": df.columns, "feature": df.index})
    a, b, c = coerce(Y0), coerce(df), coerce(da)
    np.testing.assert_array_equal(a.Y, b.Y)
    np.testing.assert_array_equal(b.Y, c.Y)
    assert list(b.units) == list(c.units) == list(df.columns)
    assert list(a.units) == list(range(20)) and list(a.covariates) == ["intercept"]


def test_design_aligned_by_unit_labels():
    Y = pd.DataFrame(Y0, columns=[f"u{i}" for i in range(20)])
    A = pd.DataFrame([np.ones(20), np.arange(20.0)], index=["intercept", "t"], columns=Y.columns)
    d = coerce(Y, A.iloc[:, ::-1])
    np.testing.assert_array_equal(d.A, A.to_numpy())


def test_formula_builds_the_design():
    cov = pd.DataFrame({"g": list("ab") * 10, "x": np.arange(20.0)})
    d = coerce(Y0, covariates=cov, formula="~ g + x")
    assert list(d.covariates) == ["intercept", "g[T.b]", "x"]
    with pytest.raises(ValueError, match="missing"):
        coerce(Y0, covariates=cov.assign(x=np.nan), formula="~ x")
    with pytest.raises(TypeError, match="DataFrame"):
        coerce(Y0, covariates=cov.to_numpy(), formula="~ x")
    with pytest.raises(ValueError, match="either A or covariates"):
        coerce(Y0, np.ones((1, 20)), covariates=cov, formula="~ x")
    # formulaic's errors as ValueErrors naming the formula and the columns
    with pytest.raises(ValueError, match=r"formula '~ sex' cannot be evaluated on covariates \(columns \['g', 'x'\]\)"):
        coerce(Y0, covariates=cov, formula="~ sex")
    with pytest.raises(ValueError, match="FormulaSyntaxError"):
        coerce(Y0, covariates=cov, formula="~ x +")
    with pytest.raises(nmfre.ArgumentTypeError, match="formula must be a string"):
        coerce(Y0, covariates=cov, formula=1)
    labelled = pd.DataFrame(Y0, columns=[f"u{i}" for i in range(20)])
    with pytest.raises(ValueError, match=r"covariates' row labels do not match Y unit labels \(in covariates only"):
        coerce(labelled, covariates=cov.set_axis([f"w{i}" for i in range(20)]), formula="~ x")


def test_duplicate_and_mismatched_labels():
    df = pd.DataFrame(Y0, columns=["u"] * 20)
    with pytest.raises(ValueError, match="unique"):
        coerce(df)
    with pytest.raises(ValueError, match=r"unit labels do not match Y unit labels \(in A only: \['v0', 'v1'"):
        coerce(pd.DataFrame(Y0, columns=[f"u{i}" for i in range(20)]),
               pd.DataFrame(np.ones((1, 20)), columns=[f"v{i}" for i in range(20)]))


def test_unlabelled_y_takes_a_as_given_and_multiindex_is_refused():
    """Y without unit labels (numpy, or a DataArray without coordinates) does not reorder or
    check a labelled A (a DataArray without coordinates was once compared as labelled 0..N-1
    and refused); a MultiIndex on Y names the axis; non-numeric columns are named."""
    A = pd.DataFrame(np.vstack([np.ones(20), np.arange(20.0) % 2]), index=["intercept", "g"],
                     columns=[f"v{i}" for i in range(20)])
    plain = coerce(Y0, A)
    bare = coerce(xr.DataArray(Y0, dims=("feature", "unit")), A)
    np.testing.assert_array_equal(bare.A, plain.A)
    np.testing.assert_array_equal(bare.A, A.to_numpy())
    # ... and takes A's unit labels (they were dropped for 0..N-1)
    assert list(plain.units) == list(bare.units) == list(A.columns)
    assert list(coerce(Y0, A.to_numpy()).units) == list(range(20))
    cols = pd.MultiIndex.from_tuples([("u", i) for i in range(20)])
    with pytest.raises(ValueError, match="Y's unit labels are a pandas MultiIndex"):
        coerce(pd.DataFrame(Y0, columns=cols))
    with pytest.raises(ValueError, match="Y's feature labels are a pandas MultiIndex"):
        coerce(pd.DataFrame(Y0, index=pd.MultiIndex.from_tuples([("f", i) for i in range(Y0.shape[0])])))
    with pytest.raises(nmfre.ArgumentTypeError, match=r"non-numeric columns: \['c3'\]"):
        coerce(pd.DataFrame(Y0, columns=[f"c{i}" for i in range(20)]).assign(c3="x"))


def test_dataset_and_series_refused():
    with pytest.raises(TypeError, match="Dataset"):
        coerce(xr.Dataset({"Y": (("feature", "unit"), Y0)}))
    with pytest.raises(TypeError, match="Series"):
        coerce(pd.Series(Y0[0]))
    with pytest.raises(nmfre.ArgumentTypeError):
        coerce(pd.Series(Y0[0]))


def test_same_data_treats_missing_entries_as_equal():
    import numpy as np

    from nmfre.labels import coerce

    Y = np.arange(1.0, 13.0).reshape(3, 4)
    Y[1, 2] = np.nan
    assert coerce(Y).same_data(coerce(Y.copy()))
    other = Y.copy()
    other[0, 0] += 1.0
    assert not coerce(Y).same_data(coerce(other))
    filled = np.nan_to_num(Y)
    assert not coerce(Y).same_data(coerce(filled))


def test_from_long_takes_table_and_warns_on_df():
    long = pd.DataFrame({"u": ["a", "a", "b", "b", "c"], "t": [1, 2, 1, 2, 1], "y": [1.0, 2.0, 3.0, 4.0, 5.0]})
    Y, A = nmfre.from_long(long, unit="u", feature="t", value="y")
    with pytest.warns(FutureWarning, match="df= is deprecated, use table="):
        Y2, A2 = nmfre.from_long(df=long, unit="u", feature="t", value="y")
    pd.testing.assert_frame_equal(Y, Y2)
    pd.testing.assert_frame_equal(A, A2)


def test_from_long_feature_order():
    """Text features keep their order of first appearance ('age8' before 'age10'; they were
    sorted as text), numeric ones are sorted, a categorical column keeps its categories'
    order; units keep their order of first appearance."""
    rows = [(u, f"age{a}", float(a)) for u in ("m2", "m1") for a in (8, 10, 12, 14)]
    long = pd.DataFrame(rows, columns=["u", "t", "y"])
    Y, _ = nmfre.from_long(long, unit="u", feature="t", value="y")
    assert list(Y.index) == ["age8", "age10", "age12", "age14"] and list(Y.columns) == ["m2", "m1"]
    np.testing.assert_array_equal(Y["m1"].to_numpy(), [8.0, 10.0, 12.0, 14.0])
    num = long.assign(t=long["t"].str[3:].astype(int)).iloc[::-1]
    assert list(nmfre.from_long(num, unit="u", feature="t", value="y")[0].index) == [8, 10, 12, 14]
    cat = long.assign(t=pd.Categorical(long["t"], categories=["age14", "age12", "age10", "age8", "age99"]))
    assert list(nmfre.from_long(cat, unit="u", feature="t", value="y")[0].index) == ["age14", "age12", "age10",
                                                                                     "age8"]


def test_masked_arrays_sparse_fill_values_and_unknown_chunks():
    """A numpy masked array's masked entries of Y are missing entries (they were fitted as the
    values under the mask), and refused in A; a pandas sparse frame whose fill value is not 0
    and a dask Y with chunks of unknown size get errors naming Y (they got pandas' and dask's)."""
    import dask.array as da

    mask = np.zeros(Y0.shape, bool)
    mask[1, :5] = True
    with_nan = coerce(np.where(mask, np.nan, Y0))
    masked = coerce(np.ma.masked_array(np.where(mask, 0.0, Y0), mask=mask))
    np.testing.assert_array_equal(np.isnan(masked.Y), mask)
    np.testing.assert_array_equal(masked.Y[~mask], with_nan.Y[~mask])
    np.testing.assert_array_equal(coerce(np.ma.masked_array(Y0)).Y, Y0)  # nothing masked: the values
    A = np.ma.masked_array(np.vstack([np.ones(20), np.arange(20.0)]), mask=np.eye(2, 20, dtype=bool))
    with pytest.raises(ValueError, match="A is a numpy masked array with 2 masked entries"):
        coerce(Y0, A)
    for fill in (np.nan, 1.0):
        with pytest.raises(ValueError, match=r"Y is a pandas frame of sparse columns with fill value"):
            coerce(pd.DataFrame(Y0).astype(pd.SparseDtype(float, fill)))
    lazy = da.from_array(Y0, chunks=(6, 5))
    with pytest.raises(ValueError, match=r"chunks of unknown size.*Y.compute_chunk_sizes\(\)"):
        coerce(lazy[:, lazy[0] > 0])
    by_feature = xr.DataArray(Y0, dims=("feature", "unit")).chunk({"feature": 3})
    with pytest.raises(ValueError, match=r"Y.chunk\(\{'feature': -1\}\)"):
        coerce(by_feature)
