"""Input coercion: numpy, pandas or xarray in, plain arrays plus labels out.

Every check runs before any computation and raises ``ValueError`` (or
:class:`~nmfre.exceptions.ArgumentTypeError`) naming the argument and the problem.
Nothing is silently dropped or coerced away.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from . import validation as v
from .exceptions import ArgumentTypeError

DIMS_Y = ("feature", "unit")
DIMS_A = ("covariate", "unit")

__all__ = ["DIMS_A", "DIMS_Y", "Data", "check_rank", "coerce", "component_labels", "design", "renamed", "to_matrix"]


def renamed(**old_to_new: str):
    """Decorator: an argument renamed (docs/vocabulary.md) still accepted by its old keyword,
    with a ``FutureWarning`` naming the new one (giving both is an error)."""

    def decorate(fn):
        name = fn.__qualname__.replace(".__init__", "")

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise ArgumentTypeError(f"{name}() got both {old}= (deprecated) and {new}=")
                    warnings.warn(f"{name}(): {old}= is deprecated, use {new}= instead", FutureWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


@dataclass(frozen=True)
class Data:
    """Validated ``Y`` (P x N) and ``A`` (K x N) with their coordinates."""

    Y: np.ndarray
    A: np.ndarray
    features: np.ndarray
    units: np.ndarray
    covariates: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.Y.shape

    @property
    def P(self) -> int:
        return self.Y.shape[0]

    @property
    def N(self) -> int:
        return self.Y.shape[1]

    @property
    def K(self) -> int:
        return self.A.shape[0]

    @property
    def has_missing(self) -> bool:
        """Whether Y has missing (NaN) entries (dense and dask Y; computed once)."""
        cache = self.__dict__.setdefault("_cache", {})
        if "missing" not in cache:
            if self.kind == "sparse":
                cache["missing"] = False
            elif self.kind == "dask":
                cache["missing"] = bool((self.Y != self.Y).any().compute())
            else:
                cache["missing"] = bool(np.isnan(self.Y).any())
        return cache["missing"]

    @property
    def kind(self) -> str:
        """How Y is held: ``"dense"``, ``"sparse"`` (scipy) or ``"dask"`` (lazy)."""
        return v.array_kind(self.Y)

    def same_data(self, other: Data) -> bool:
        """True when ``other`` holds the same Y and A values (lazy Y: the same object;
        missing entries of a dense Y, NaN, compare equal to NaN)."""
        if self.Y.shape != other.Y.shape or self.A.shape != other.A.shape or self.kind != other.kind:
            return False
        if not np.array_equal(self.A, other.A):
            return False
        if self.kind == "dask":
            return self.Y is other.Y
        if self.kind == "sparse":
            return (self.Y != other.Y).nnz == 0
        return np.array_equal(self.Y, other.Y, equal_nan=True)


def some_labels(values, n: int = 5) -> str:
    """The first ``n`` labels as text, for error messages (``...`` when there are more)."""
    shown = [str(x) for x in list(values)[:n]]
    return "[" + ", ".join(repr(x) for x in shown) + (", ...]" if len(values) > n else "]")


#: R's significance codes (``printCoefmat``): p in (0, 0.001] is ``***``, ..., (0.1, 1] none
SIGNIF_CUTS, SIGNIF_CODES = (0.001, 0.01, 0.05, 0.1), ("***", "**", "*", ".", "")
SIGNIF_LEGEND = "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"


def significance_code(p: float) -> str:
    """R's code for a p-value (intervals closed on the right, as R's ``symnum``: p = 0.05 is
    ``*``); ``""`` for NaN."""
    if not p == p:
        return ""
    return SIGNIF_CODES[int(np.searchsorted(SIGNIF_CUTS, p, side="left"))]


def percent(level: float) -> str:
    """A probability as a percentage for titles and column names, with the digits it has
    (``0.95`` -> ``"95%"``, ``0.9999999`` -> ``"99.99999%"``; ``:g`` would print ``"100%"``)."""
    return f"{round(100 * float(level), 10):.12g}%"


def labels(values, n: int, name: str, default_prefix: str | None) -> np.ndarray:
    """``n`` unique labels from ``values`` (or defaults: ``0..n-1`` or ``prefix1..prefixn``)."""
    if values is None:
        if default_prefix is None:
            return np.arange(n)
        return np.array([f"{default_prefix}{i + 1}" for i in range(n)], dtype=object)
    arr = np.asarray(list(values))
    if arr.dtype.kind in "OUT":  # text (T: numpy's StringDType, as zarr reads it back) as Python strings
        arr = arr.astype(str).astype(object)
    if len(arr) != n:
        raise ValueError(f"{name}: {len(arr)} labels for {n} entries")
    if len(pd.unique(arr)) != n:
        raise ValueError(f"{name}: labels must be unique")
    return arr


def _nonfinite(values, kind: str) -> tuple[int, int]:
    """Counts of NaN and of +-Inf entries, without a full-size temporary."""
    if kind == "sparse":
        data = values.data
        return int(np.isnan(data).sum()), int(np.isinf(data).sum())
    if kind == "dask":
        import dask
        import dask.array as da

        n_nan, n_inf = dask.compute(da.isnan(values).sum(), da.isinf(values).sum())
        return int(n_nan), int(n_inf)
    if np.isfinite(values).all() if values.size <= 4_000_000 else _chunked_finite(values):
        return 0, 0
    return int(np.isnan(values).sum()), int(np.isinf(values).sum())


def _chunked_finite(values: np.ndarray, chunk: int = 4096) -> bool:
    return all(np.isfinite(values[:, s:s + chunk]).all() for s in range(0, values.shape[1], chunk))


def to_matrix(obj: Any, name: str, dims: tuple[str, str], large: bool = False, missing: bool = False):
    """A 2-D finite float matrix from numpy, pandas or xarray input (see :func:`_to_matrix`)."""
    values, rows, cols, _ = _to_matrix(obj, name, dims, large, missing)
    return values, rows, cols


def _to_matrix(obj: Any, name: str, dims: tuple[str, str], large: bool = False, missing: bool = False):
    """A 2-D finite float matrix from numpy, pandas or xarray input.

    Returns ``(values, row labels or None, column labels or None)``; an xarray
    DataArray must have exactly ``dims`` (in any order). With ``large=True`` (for Y) a
    ``scipy.sparse`` matrix, a pandas frame of sparse columns, a dask array or a
    dask-backed DataArray is kept as it is (sparse as CSR, dask lazy; a dask Y must be
    chunked along units only); otherwise they are refused or made dense. A float64 numpy
    array is not copied. With ``missing=True`` NaN marks a missing entry (dense and dask
    arrays); Inf is always an error. The fourth value is the number of NaN entries.
    """
    if isinstance(obj, xr.Dataset):
        raise ArgumentTypeError(f"{name} must be a DataArray, DataFrame or array, not a Dataset")
    rows = cols = None
    if isinstance(obj, xr.DataArray):
        if obj.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got dims {obj.dims}")
        if set(obj.dims) != set(dims):
            raise ValueError(f"{name} has dims {tuple(obj.dims)}; expected {dims}")
        obj = obj.transpose(*dims)
        rows = obj[dims[0]].values if dims[0] in obj.coords else None
        cols = obj[dims[1]].values if dims[1] in obj.coords else None
        values = obj.data
    elif isinstance(obj, pd.DataFrame):
        for axis, index in ((dims[0], obj.index), (dims[1], obj.columns)):
            if isinstance(index, pd.MultiIndex):
                raise ValueError(f"{name}'s {axis} labels are a pandas MultiIndex ({index.nlevels} levels); nmfre's "
                                 "labels have one level: flatten it first (e.g. .map('_'.join) for text levels)")
        rows, cols = obj.index.to_numpy(), obj.columns.to_numpy()
        bad = [str(c) for c, t in obj.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
        if bad:
            raise ArgumentTypeError(f"{name} must be numeric; non-numeric columns: {bad[:5]}"
                                    f"{' ...' if len(bad) > 5 else ''}")
        if large and len(obj.columns) and all(isinstance(t, pd.SparseDtype) for t in obj.dtypes):
            fills = {float(t.fill_value) for t in obj.dtypes}
            if fills != {0.0}:
                raise ValueError(f"{name} is a pandas frame of sparse columns with fill value(s) {sorted(fills)}; "
                                 "a sparse Y must leave zeros out (fill value 0), and cannot mark missing cells: "
                                 "pass a dense array with NaN for missing entries")
            values = obj.sparse.to_coo().tocsr()
        else:
            values = obj.to_numpy(dtype=float)
    elif isinstance(obj, pd.Series):
        raise ArgumentTypeError(f"{name} must be 2-D; got a pandas Series (.to_frame() makes it one column, "
                                ".to_frame().T one row)")
    elif np.ma.isMaskedArray(obj):
        masked = int(np.ma.count_masked(obj))
        if masked and not missing:
            raise ValueError(f"{name} is a numpy masked array with {masked} masked entries; {name} cannot have "
                             "missing entries")
        if masked and obj.dtype.kind not in "biuf":
            raise ArgumentTypeError(f"{name} must be numeric, got dtype {obj.dtype}")
        values = np.ma.filled(obj.astype(float), np.nan) if masked else np.ma.getdata(obj)  # masked = missing
    else:
        values = obj
    kind = v.array_kind(values)
    if kind != "dense" and not large:
        values = values.compute() if kind == "dask" else values.toarray()
        kind = "dense"
    if kind == "dense":
        values = np.asarray(values)
    if values.dtype == object or values.dtype.kind not in "biuf":
        raise ArgumentTypeError(f"{name} must be numeric, got dtype {values.dtype}")
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D ({dims[0]} x {dims[1]}), got {values.ndim}-D")
    if values.shape[0] * values.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {values.shape})")
    if kind == "dask" and any(np.isnan(c) for axis in values.chunks for c in axis):
        raise ValueError(f"{name} (a dask array) has chunks of unknown size (as after boolean indexing); "
                         f"compute them first: {name}.compute_chunk_sizes()")
    if kind == "dask" and len(values.chunks[0]) > 1:
        hint = (f"{name}.chunk({{{dims[0]!r}: -1}})" if isinstance(obj, xr.DataArray) else
                f"{name}.rechunk({{0: -1}})")
        raise ValueError(f"{name} (a dask array) is chunked along {dims[0]}s ({len(values.chunks[0])} chunks); "
                         f"it must be chunked along {dims[1]}s only, e.g. {hint}")
    values = values.tocsr().astype(float, copy=False) if kind == "sparse" else values.astype(float, copy=False)
    n_nan, n_inf = _nonfinite(values, kind)
    if n_nan and kind == "sparse":
        raise ValueError(f"{name} is a sparse matrix with {n_nan} NaN entries; a sparse Y cannot mark missing "
                         "cells (its absent entries are zeros): pass a dense array with NaN instead")
    if n_nan and not missing:
        raise ValueError(f"{name} contains NaN ({n_nan} entries)")
    if n_inf:
        raise ValueError(f"{name} contains Inf ({n_inf} entries)")
    return values, rows, cols, n_nan


def coerce(Y, A=None, *, covariates=None, formula: str | None = None, missing: bool = True) -> Data:
    """Validate and label ``Y`` and ``A`` (or build ``A`` from ``covariates`` + ``formula``).

    Parameters
    ----------
    Y : array-like, pandas.DataFrame or xarray.DataArray
        ``feature x unit`` data (DataFrame rows = features, columns = units).
    A : array-like, DataFrame or DataArray, optional
        ``covariate x unit`` design; default a row of ones named ``intercept``.
    covariates : pandas.DataFrame, optional
        Unit-level covariates (one row per unit), used with ``formula``.
    formula : str, optional
        A formulaic right-hand side such as ``"~ male"``; its intercept is named
        ``intercept``.
    missing : bool
        Accept NaN in Y as missing entries (each unit and each feature must keep at least
        one observed entry).

    Raises
    ------
    ValueError
        Bad shapes, NaN in A, Inf, a unit or feature with no observed entry, fewer than 2
        units, no more units than covariates, collinear covariates, mismatched unit labels.
    """
    Yv, feat, units, n_nan = _to_matrix(Y, "Y", DIMS_Y, large=True, missing=missing)
    y_units = units is not None  # Y carries unit labels (A's units are then aligned to them)
    P, N = Yv.shape
    if N < 2:
        raise ValueError(f"Y has {N} unit (column); NMF-RE needs at least 2 units to separate the random "
                         "effects from the noise")
    units = labels(units, N, "Y unit labels", None)
    feat = labels(feat, P, "Y feature labels", None)
    if n_nan:  # the counts are read only when there is something missing
        _check_observed(Yv, feat, units)
    if (covariates is None) != (formula is None):
        raise ValueError("covariates and formula must be given together")
    if formula is not None:
        if A is not None:
            raise ValueError("give either A or covariates + formula, not both")
        A = design(covariates, formula, units)
    source = "covariates' row labels" if formula is not None else "A unit labels"
    if A is None:
        Av = np.ones((1, N))
        cov = np.array(["intercept"], dtype=object)
    else:
        Av, cov, a_units = _align_design(A, y_units, units, N, source)
        if not y_units and a_units is not None:
            units = a_units  # an unlabelled Y takes the design's unit labels
    K = Av.shape[0]
    if K >= N:
        raise ValueError(f"A has {K} covariates for {N} units; NMF-RE needs more units than covariates")
    if np.linalg.matrix_rank(Av) < K:
        raise ValueError(f"A has collinear rows (rank {np.linalg.matrix_rank(Av)} < {K} covariates)")
    return Data(Yv, Av, feat, units, cov)


def _check_observed(Y, feat: np.ndarray, units: np.ndarray) -> None:
    """Every unit and every feature must have an observed (non-NaN) entry."""
    kind = v.array_kind(Y)
    if kind == "sparse":
        return
    if kind == "dask":
        import dask

        obs = ~(Y != Y)  # NaN is the only value not equal to itself
        per_unit, per_feature = dask.compute(obs.sum(axis=0), obs.sum(axis=1))
    else:
        obs = ~np.isnan(Y)
        per_unit, per_feature = obs.sum(axis=0), obs.sum(axis=1)
    for what, counts, names in (("unit", per_unit, units), ("feature", per_feature, feat)):
        empty = np.flatnonzero(np.asarray(counts) == 0)
        if empty.size:
            shown = ", ".join(repr(str(x)) for x in np.asarray(names)[empty[:10]])
            more = f" and {empty.size - 10} more" if empty.size > 10 else ""
            raise ValueError(f"Y has no observed entry for {what}(s) {shown}{more}: drop them or give data")


def _align_design(A, y_units: bool, units, N, source: str = "A unit labels"):
    """A's values, covariate labels and unit labels (None when A has none), its units put in
    Y's order when both carry unit labels (``y_units``: Y's are its own, not defaults)."""
    Av, cov, a_units = to_matrix(A, "A", DIMS_A)
    if Av.shape[1] != N:
        raise ValueError(f"A has {Av.shape[1]} units (columns) but Y has {N}")
    cov = labels(cov, Av.shape[0], "A covariate labels", "covariate")
    if a_units is not None:
        a_units = labels(a_units, N, source, None)
    if a_units is not None and y_units:
        if not np.array_equal(a_units.astype(str), units.astype(str)):
            a_set, y_set = {str(u) for u in a_units}, {str(u) for u in units}
            if a_set != y_set:
                short, only_a, only_y = source.split()[0].rstrip("'"), sorted(a_set - y_set), sorted(y_set - a_set)
                raise ValueError(f"{source} do not match Y unit labels (in {short} only: {some_labels(only_a)}; "
                                 f"in Y only: {some_labels(only_y)})")
            order = pd.Index(a_units.astype(str)).get_indexer(units.astype(str))
            Av = Av[:, order]
    return Av, cov, a_units


def design(covariates: pd.DataFrame, formula: str, units: np.ndarray) -> pd.DataFrame:
    """``A`` (covariate x unit DataFrame) from unit-level covariates and a formulaic formula."""
    from formulaic import model_matrix

    if not isinstance(covariates, pd.DataFrame):
        raise ArgumentTypeError("covariates must be a pandas DataFrame with one row per unit")
    if len(covariates) != len(units):
        raise ValueError(f"covariates has {len(covariates)} rows but Y has {len(units)} units")
    if covariates.isna().any().any():
        raise ValueError("covariates contains missing values")
    if not isinstance(formula, str):
        raise ArgumentTypeError(f"formula must be a string such as '~ male', got {type(formula).__name__}")
    if "~" in formula and formula.split("~", 1)[0].strip():
        raise ValueError(f"formula {formula!r} has a left-hand side; give only the right-hand side of the design "
                         f"(e.g. '~{formula.split('~', 1)[1]}'): Y is the response")
    if isinstance(covariates.index, pd.RangeIndex):
        covariates = covariates.set_axis(pd.Index(units), axis=0)
    try:
        mm = model_matrix(formula, covariates)
    except Exception as exc:  # formulaic's parse and evaluation errors (not ValueErrors)
        said = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # formulaic colours its messages
        raise ValueError(f"formula {formula!r} cannot be evaluated on covariates (columns "
                         f"{[str(c) for c in covariates.columns]}): {type(exc).__name__}: {said}") from exc
    mm = pd.DataFrame(np.asarray(mm, dtype=float), index=covariates.index,
                      columns=["intercept" if c == "Intercept" else str(c) for c in mm.columns])
    return mm.T


#: the dims of explicit starting values (``init={"X": ..., "theta": ..., "U": ...}``)
START_DIMS = {"X": ("feature", "component"), "theta": ("component", "covariate"), "U": ("component", "unit")}


def aligned_start(init: dict, data: Data) -> dict:
    """Explicit starting values with labelled axes put in the data's order: a DataArray with
    the dims of :data:`START_DIMS` (any order; its ``feature``, ``covariate`` and ``unit``
    coordinates aligned to Y's and A's), or a DataFrame (X's index: features; theta's and U's
    columns: covariates and units, unless they are a RangeIndex). Labels that are not
    the data's are an error; unlabelled values are taken as they are (by position)."""
    known = {"feature": data.features, "covariate": data.covariates, "unit": data.units}
    out = dict(init)
    for key, dims in START_DIMS.items():
        val = init.get(key)
        if isinstance(val, xr.DataArray) and set(val.dims) == set(dims):
            val = val.transpose(*dims)
            for d in dims:
                if d in known and d in val.coords:
                    val = val.isel({d: label_order(val[d].values, known[d], f"init['{key}']'s {d} labels")})
            out[key] = val.values
        elif isinstance(val, pd.DataFrame):
            axis = 0 if key == "X" else 1
            index = val.axes[axis]
            if not isinstance(index, pd.RangeIndex):
                d = dims[axis]
                order = label_order(index.to_numpy(), known[d], f"init['{key}']'s {d} labels")
                val = val.iloc[order] if axis == 0 else val.iloc[:, order]
            out[key] = val.to_numpy()
    return out


def label_order(given, want, what: str, whose: str = "the data's") -> np.ndarray:
    """Positions of the labels ``want`` in ``given`` (compared as text), to put something
    labelled ``given`` in ``want``'s order; an error naming ``what`` unless both hold the same
    labels once each (the one place where labelled inputs are aligned to a fit's or data's
    order)."""
    have, target = pd.Index(np.asarray(given).astype(str)), pd.Index(np.asarray(want).astype(str))
    if len(have) != len(target) or not have.is_unique or set(have) != set(target):
        raise ValueError(f"{what} {some_labels(have)} are not {whose} {some_labels(target)} (each once)")
    return have.get_indexer(target)


def check_rank(rank: Any, P: int, N: int) -> int:
    """``rank`` must be a positive integer no larger than ``min(P, N)``."""
    rank = v.integer(rank, "rank")
    if rank > min(P, N):
        raise ValueError(f"rank {rank} is larger than min(P, N) = {min(P, N)}")
    return rank


component_labels = v.component_labels


@renamed(df="table")
def from_long(table: pd.DataFrame, *, unit: str, feature: str, value: str, covariates=None,
              formula: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(Y, A)`` from a long table (one row per unit and feature measured).

    Y (``feature x unit``) has NaN where a unit has no row for a feature; its units are in
    their order of first appearance, its features too, except that numeric features (times,
    ages) are sorted and a categorical feature column keeps its categories' order. A
    (``covariate x unit``) is built from unit-level columns: ``covariates`` (a list of column names, with an
    intercept; categorical columns become dummies) or a formulaic ``formula``; neither gives
    an intercept only.

    Parameters
    ----------
    table : pandas.DataFrame
        The long table (``df=`` is its deprecated name: ``df`` means degrees of freedom).
    unit, feature, value : str
        Columns naming the unit, the feature and the measured value.
    covariates : list of str, optional
    formula : str, optional
        E.g. ``"~ Diet"``.

    Returns
    -------
    Y, A : pandas.DataFrame
        Ready for :func:`nmfre.fit`, e.g. ``nmfre.fit(*nmfre.from_long(df, ...), rank=1)``.

    Raises
    ------
    ValueError
        A missing column, a repeated (unit, feature) pair, a NaN value or covariate, or a
        covariate that is not constant within a unit (the message names the unit and column).
    """
    if not isinstance(table, pd.DataFrame):
        raise ArgumentTypeError(f"table must be a pandas DataFrame in long format, got {type(table).__name__}")
    if covariates is not None and formula is not None:
        raise ValueError("give covariates or formula, not both")
    covs = list(covariates) if covariates is not None else []
    if isinstance(covariates, str):
        covs = [covariates]
    if formula is not None:
        from formulaic import Formula

        covs = sorted(Formula(formula).required_variables)
        covs = [str(c) for c in covs]
    needed = [unit, feature, value, *covs]
    missing_cols = [c for c in needed if c not in table.columns]
    if missing_cols:
        raise ValueError(f"table has no column(s) {missing_cols}; it has {list(table.columns)}")
    dup = table.duplicated([unit, feature])
    if dup.any():
        row = table.loc[dup, [unit, feature]].iloc[0]
        raise ValueError(f"table has {int(dup.sum())} repeated ({unit}, {feature}) pairs, e.g. "
                         f"{unit}={row[unit]!r}, {feature}={row[feature]!r}: one value per unit and feature")
    if table[value].isna().any():
        raise ValueError(f"column {value!r} has NaN: leave unmeasured (unit, feature) pairs out of the table")
    units = list(pd.unique(table[unit]))
    Y = table.pivot(index=feature, columns=unit, values=value).reindex(index=_feature_order(table[feature]),
                                                                         columns=units).astype(float)
    Y.index.name, Y.columns.name = "feature", "unit"
    unit_table = _unit_covariates(table, unit, covs).reindex(units)
    if formula is None:
        formula = "~ " + " + ".join(f"Q('{c}')" if not c.isidentifier() else c for c in covs) if covs else "~ 1"
    A = design(unit_table, formula, np.asarray(units, dtype=object)) if covs else \
        pd.DataFrame([np.ones(len(units))], index=["intercept"], columns=units)
    A.index.name, A.columns.name = "covariate", "unit"
    return Y, A


def _feature_order(col: pd.Series) -> list:
    """Features of a long table in order: a categorical column's categories (those present),
    numbers sorted, anything else (text: 'age8', 'age10', ...) as first seen."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = set(col.dropna())
        return [c for c in col.cat.categories if c in present]
    seen = list(pd.unique(col))
    return sorted(seen) if pd.api.types.is_numeric_dtype(col) else seen


def _unit_covariates(df: pd.DataFrame, unit: str, covs: list[str]) -> pd.DataFrame:
    """One row per unit; every covariate must be constant (and not NaN) within a unit."""
    if not covs:
        return pd.DataFrame(index=pd.unique(df[unit]))
    g = df.groupby(unit, sort=False)
    for c in covs:
        if df[c].isna().any():
            u = df.loc[df[c].isna(), unit].iloc[0]
            raise ValueError(f"covariate {c!r} is NaN for unit {u!r}")
        n = g[c].nunique(dropna=False)
        bad = n[n > 1]
        if len(bad):
            u = bad.index[0]
            vals = list(pd.unique(df.loc[df[unit] == u, c]))[:4]
            raise ValueError(f"covariate {c!r} is not constant within unit {u!r} (values {vals}); covariates must "
                             "be unit-level")
    return g[covs].first()
