"""Rank selection by element-wise (Wold) cross-validation.

Cells of Y are split into folds ("speckled" hold-out: each unit's cells go to different
folds, with a random offset per unit and a random order of its features, so no unit or
feature loses all its cells at once). For each rank and fold the held-out cells are
masked (NaN) and the model is fitted to the rest by maximum likelihood of the observed
entries; the held-out error is the mean squared difference between the held-out cells and
their conditional means ``X (Theta a_n + u_n)`` (``u_n`` the BLUP from the unit's observed
cells).
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


def ecv(Y, A=None, ranks=(1, 2, 3), *, folds: int = 5, seed=0, **fit_kwargs) -> ECVResult:
    """Element-wise cross-validation over ``ranks``.

    Parameters
    ----------
    Y, A :
        As for :func:`nmfre.fit` (Y may already have missing entries; they are never
        held out).
    ranks : int or iterable of int
        The ranks compared (distinct).
    folds : int
        Number of folds of cells (>= 2).
    seed : int or Generator
        Assignment of cells to folds, and the seeds of the fits (random starts, ``n_init``),
        so that the same seed gives the same errors.
    **fit_kwargs :
        Passed to :func:`nmfre.fit` (``theta``, ``df_cap``, ``n_init``, ...); the method is
        maximum likelihood (the paper's algorithm has no missing-data path).
    """
    data = coerce(Y, A)
    if data.kind != "dense":
        raise ValueError(f"ecv needs Y as a dense in-memory array (got a {data.kind} Y)")
    if fit_kwargs.get("method", "ml") != "ml":
        raise ValueError("ecv masks held-out cells, so it fits by maximum likelihood (method='ml')")
    P, N = data.Y.shape
    ranks = _check_ranks(ranks, P, N)
    folds = v.integer(folds, "folds", minimum=2)
    if folds > P * N:
        raise ValueError(f"folds must be at most P N = {P * N}, got {folds}")
    rng = v.rng(seed)
    assign = speckled_folds(P, N, folds, rng)
    fit_seeds = iter(rng.spawn(len(ranks) * folds))  # each fit's random starts, reproducible from seed
    observed = ~np.isnan(data.Y)
    _check_folds(assign, observed, folds, data)
    errors = np.empty((len(ranks), folds))
    n_cells = np.zeros(len(ranks), int)
    for i, rank in enumerate(ranks):
        for f in range(folds):
            held = (assign == f) & observed
            Ym = np.where(held, np.nan, data.Y)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = nmfre_fit(Ym, data.A, rank=rank, seed=next(fit_seeds), **fit_kwargs)
            pred = fit.fitted(True).values
            errors[i, f] = float(np.mean((data.Y[held] - pred[held]) ** 2))
            n_cells[i] += int(held.sum())
    err = xr.DataArray(errors, dims=("rank", "fold"), coords={"rank": ranks, "fold": np.arange(folds)},
                       name="heldout_mse")
    return ECVResult(err, n_cells)


def _check_ranks(ranks, P: int, N: int) -> list[int]:
    """``ranks`` as a list of distinct valid ranks (one int is one rank)."""
    if isinstance(ranks, int | np.integer) and not isinstance(ranks, bool):
        ranks = [ranks]
    try:
        ranks = list(ranks)
    except TypeError:
        raise ValueError(f"ranks must be an int or an iterable of ints, got {type(ranks).__name__}") from None
    if not ranks:
        raise ValueError("ranks needs at least one rank")
    out = [check_rank(r, P, N) for r in ranks]
    if len(set(out)) != len(out):
        raise ValueError(f"ranks must be distinct, got {out}")
    return out


def _check_folds(assign: np.ndarray, observed: np.ndarray, folds: int, data) -> None:
    """Every fold must leave each unit and each feature an observed cell (Y's own missing
    entries can leave too few): otherwise that fold's fit has nothing to estimate them from."""
    for f in range(folds):
        left = observed & (assign != f)
        for axis, names, what in ((0, data.units, "unit"), (1, data.features, "feature")):
            empty = ~left.any(axis=axis)
            if empty.any():
                shown = [str(x) for x in np.asarray(names)[empty][:5]]
                raise ValueError(f"ecv: fold {f} would hold out every observed cell of {what}(s) {shown} (Y has "
                                 f"few observed cells there); use fewer folds, or drop those {what}s")


def speckled_folds(P: int, N: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each cell (``P x N``): unit ``n``'s features, in a random order, take folds
    ``s_n, s_n + 1, ...`` (mod ``folds``) from a random offset ``s_n``, so a unit's cells are
    spread over the folds and every fold holds about ``P N / folds`` cells."""
    shift = rng.integers(0, folds, size=N)
    order = np.argsort(rng.random((P, N)), axis=0)  # a random rank of each feature within each unit
    return (order + shift[None, :]) % folds
