"""Input coercion and validation: numpy, pandas or xarray in, plain arrays plus labels out.

Every check runs before any computation and raises ``ValueError``/``TypeError`` naming
the argument and the problem. Nothing is silently dropped or coerced away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

DIMS_Y = ("feature", "unit")
DIMS_A = ("covariate", "unit")


@dataclass(frozen=True)
class Data:
    """Validated ``Y`` (P x N) and ``A`` (K x N) with their coordinates."""

    Y: np.ndarray
    A: np.ndarray
    features: np.ndarray
    units: np.ndarray
    covariates: np.ndarray

    @property
    def shape(self):
        return self.Y.shape


def _labels(values, n: int, name: str, default_prefix: str | None) -> np.ndarray:
    if values is None:
        if default_prefix is None:
            return np.arange(n)
        return np.array([f"{default_prefix}{i + 1}" for i in range(n)], dtype=object)
    arr = np.asarray(list(values))
    if arr.dtype.kind in "OU":
        arr = arr.astype(str).astype(object)
    if len(arr) != n:
        raise ValueError(f"{name}: {len(arr)} labels for {n} entries")
    if len(pd.unique(arr)) != n:
        raise ValueError(f"{name}: labels must be unique")
    return arr


def _to_matrix(obj, name: str, dims: tuple[str, str]):
    """Return (values, row labels or None, column labels or None)."""
    if isinstance(obj, xr.Dataset):
        raise TypeError(f"{name} must be a DataArray, DataFrame or array, not a Dataset")
    if isinstance(obj, xr.DataArray):
        if obj.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got dims {obj.dims}")
        if set(obj.dims) != set(dims):
            raise ValueError(f"{name} has dims {tuple(obj.dims)}; expected {dims}")
        obj = obj.transpose(*dims)
        rows = obj[dims[0]].values if dims[0] in obj.coords else None
        cols = obj[dims[1]].values if dims[1] in obj.coords else None
        values = obj.values
    elif isinstance(obj, pd.DataFrame):
        rows, cols = obj.index.to_numpy(), obj.columns.to_numpy()
        if not all(pd.api.types.is_numeric_dtype(t) for t in obj.dtypes):
            raise TypeError(f"{name} must be numeric; non-numeric columns found")
        values = obj.to_numpy(dtype=float)
    elif isinstance(obj, pd.Series):
        raise TypeError(f"{name} must be 2-D; got a pandas Series (use .to_frame().T)")
    else:
        values = np.asarray(obj)
        rows = cols = None
    if values.dtype == object or values.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got dtype {values.dtype}")
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D ({dims[0]} x {dims[1]}), got {values.ndim}-D")
    if values.size == 0:
        raise ValueError(f"{name} is empty (shape {values.shape})")
    values = values.astype(float)
    if np.isnan(values).any():
        raise ValueError(f"{name} contains NaN ({int(np.isnan(values).sum())} entries)")
    if np.isinf(values).any():
        raise ValueError(f"{name} contains Inf ({int(np.isinf(values).sum())} entries)")
    return values, rows, cols


def coerce(Y, A=None, *, covariates=None, formula: str | None = None) -> Data:
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
    """
    Yv, feat, units = _to_matrix(Y, "Y", DIMS_Y)
    P, N = Yv.shape
    units = _labels(units, N, "Y unit labels", None)
    feat = _labels(feat, P, "Y feature labels", None)
    if (covariates is None) != (formula is None):
        raise ValueError("covariates and formula must be given together")
    if formula is not None:
        if A is not None:
            raise ValueError("give either A or covariates + formula, not both")
        A = _design_from_formula(covariates, formula, units)
    if A is None:
        Av = np.ones((1, N))
        cov = np.array(["intercept"], dtype=object)
    else:
        Av, cov, a_units = _to_matrix(A, "A", DIMS_A)
        if Av.shape[1] != N:
            raise ValueError(f"A has {Av.shape[1]} units (columns) but Y has {N}")
        cov = _labels(cov, Av.shape[0], "A covariate labels", "covariate")
        if a_units is not None and _labelled(Y):
            a_units = _labels(a_units, N, "A unit labels", None)
            if not np.array_equal(a_units.astype(str), units.astype(str)):
                if set(a_units.astype(str)) != set(units.astype(str)):
                    raise ValueError("A unit labels do not match Y unit labels")
                order = pd.Index(a_units.astype(str)).get_indexer(units.astype(str))
                Av = Av[:, order]
    K = Av.shape[0]
    if K > N:
        raise ValueError(f"A has more covariates ({K}) than units ({N})")
    if np.linalg.matrix_rank(Av) < K:
        raise ValueError(f"A has collinear rows (rank {np.linalg.matrix_rank(Av)} < {K} covariates)")
    return Data(Yv, Av, feat, units, cov)


def _labelled(obj) -> bool:
    return isinstance(obj, (pd.DataFrame, xr.DataArray))


def _design_from_formula(covariates, formula: str, units: np.ndarray):
    from formulaic import model_matrix

    if not isinstance(covariates, pd.DataFrame):
        raise TypeError("covariates must be a pandas DataFrame with one row per unit")
    if len(covariates) != len(units):
        raise ValueError(f"covariates has {len(covariates)} rows but Y has {len(units)} units")
    if covariates.isna().any().any():
        raise ValueError("covariates contains missing values")
    if isinstance(covariates.index, pd.RangeIndex):
        covariates = covariates.set_axis(pd.Index(units), axis=0)
    mm = model_matrix(formula, covariates)
    mm = pd.DataFrame(np.asarray(mm, dtype=float), index=covariates.index,
                      columns=["intercept" if c == "Intercept" else str(c) for c in mm.columns])
    return mm.T


def check_rank(rank, P: int, N: int) -> int:
    """``rank`` must be a positive integer no larger than ``min(P, N)``."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise TypeError(f"rank must be a positive integer, got {rank!r}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if rank > min(P, N):
        raise ValueError(f"rank {rank} is larger than min(P, N) = {min(P, N)}")
    return int(rank)


def component_labels(Q: int) -> np.ndarray:
    """Default component names ``Basis1..BasisQ`` (as in nmfkc)."""
    return np.array([f"Basis{q + 1}" for q in range(Q)], dtype=object)
