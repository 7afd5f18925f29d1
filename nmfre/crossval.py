"""Rank selection by element-wise (Wold) cross-validation.

Cells of Y are split at random into folds. For each rank and fold the held-out cells are
treated as missing: they are imputed by the model's own prediction ``X (Theta A + U)``
(starting from the feature means) and the model is re-fitted, warm-started, until the
imputations settle (EM for missing cells). The held-out error is the mean squared
difference between the held-out cells and their final prediction.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr

from . import validation as v
from .labels import check_rank, coerce
from .model import fit as nmfre_fit


class ECVResult:
    """Held-out error per rank and fold.

    Attributes
    ----------
    errors : xarray.DataArray (rank, fold)
        Mean squared held-out error.
    table : pandas.DataFrame
        One row per rank: ``mse`` (mean over folds), ``se`` (its standard error),
        ``n_cells``.
    best_rank : int
        Rank with the smallest mean held-out error.
    """

    def __init__(self, errors: xr.DataArray, n_cells: np.ndarray):
        self.errors = errors
        m = errors.mean("fold")
        s = errors.std("fold", ddof=1) / np.sqrt(errors.sizes["fold"])
        self.table = pd.DataFrame({"mse": m.values, "se": s.values, "n_cells": n_cells},
                                  index=pd.Index(errors["rank"].values, name="rank"))
        self.best_rank = int(self.table["mse"].idxmin())

    def __repr__(self) -> str:
        return f"Element-wise CV (best rank {self.best_rank})\n{self.table.to_string()}"

    def plot(self, ax=None):
        """Held-out MSE (mean +- SE over folds) against the rank; returns the Figure."""
        from .plotting import ecv as plot_ecv

        return plot_ecv(self.table, self.best_rank, ax=ax)


def ecv(Y, A=None, ranks=(1, 2, 3), *, folds: int = 5, seed=0, max_impute: int = 100, tol: float = 1e-6,
        inner_iter: int = 50, **fit_kwargs) -> ECVResult:
    """Element-wise cross-validation over ``ranks``.

    Parameters
    ----------
    Y, A :
        As for :func:`nmfre.fit`.
    ranks : iterable of int
    folds : int
        Number of folds of cells (>= 2).
    seed : int or Generator
        Assignment of cells to folds.
    max_impute, tol :
        Imputation sweeps at most, and the relative change of the imputed cells that
        stops them.
    inner_iter : int
        Fit iterations per imputation sweep (warm-started).
    **fit_kwargs :
        Passed to :func:`nmfre.fit` (``method``, ``theta``, ``df_cap``, ...).
    """
    data = coerce(Y, A)
    P, N = data.Y.shape
    ranks = [check_rank(r, P, N) for r in ranks]
    folds = v.integer(folds, "folds", minimum=2)
    if folds > P * N:
        raise ValueError(f"folds must be at most P N = {P * N}, got {folds}")
    max_impute = v.integer(max_impute, "max_impute")
    inner_iter = v.integer(inner_iter, "inner_iter")
    tol = v.positive_float(tol, "tol")
    rng = v.rng(seed)
    assign = rng.permutation(np.arange(P * N) % folds).reshape(P, N)
    Yv, Av = data.Y, data.A
    errors = np.empty((len(ranks), folds))
    for i, rank in enumerate(ranks):
        for f in range(folds):
            mask = assign == f
            Yc = Yv.copy()
            obs_mean = np.nanmean(np.where(mask, np.nan, Yv), axis=1, keepdims=True)
            obs_mean = np.where(np.isnan(obs_mean), Yv[~mask].mean(), obs_mean)
            Yc[mask] = np.broadcast_to(obs_mean, Yv.shape)[mask]
            init = "nndsvd"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(max_impute):
                    fit = nmfre_fit(Yc, Av, rank=rank, init=init, max_iter=inner_iter, **fit_kwargs)
                    pred = fit.fitted(True).values
                    change = np.max(np.abs(pred[mask] - Yc[mask])) / (np.max(np.abs(Yc)) or 1.0)
                    Yc[mask] = pred[mask]
                    init = {"X": fit.X.values, "theta": fit.theta.values}
                    if change < tol:
                        break
            errors[i, f] = float(np.mean((Yv[mask] - pred[mask]) ** 2))
    err = xr.DataArray(errors, dims=("rank", "fold"), coords={"rank": ranks, "fold": np.arange(folds)},
                       name="heldout_mse")
    n_cells = np.full(len(ranks), P * N)
    return ECVResult(err, n_cells)
