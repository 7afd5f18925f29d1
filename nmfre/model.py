"""Public estimation functions: :func:`fit` and :func:`df_scan`.

Validate (settings, data, starting values), run the engine (:mod:`nmfre.engine`) and
wrap its result in a labelled :class:`~nmfre.results.NMFREFit`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from . import engine
from . import validation as v
from .core import dfcap, rotation
from .core.covariates import orthonormal_effects
from .core.likelihood import LAMBDA_MAX
from .core.ml import DEGENERATE_INDEX, STALL_PATIENCE, cancellation, degeneracy
from .exceptions import (
    ConvergenceWarning,
    DegenerateFitWarning,
    IdentifiabilityWarning,
    NonUniqueEstimateWarning,
    SingularFitWarning,
)
from .labels import Data, aligned_start, check_rank, coerce
from .results import NMFREFit
from .settings import FitSettings, check_start_values


def fit(Y: Any, A: Any = None, rank: int = 2, *, method: str = "ml", theta: str | None = None,
        df_cap: float | str | None = None, init: str | dict = "nndsvd", n_init: int = 1, seed: Any = None,
        max_iter: int | None = None, tol: float | None = None, sigma2: float = 1.0, tau2: float = 1.0,
        fix_sigma2: bool = False, fix_tau2: bool = False, covariates: pd.DataFrame | None = None,
        formula: str | None = None) -> NMFREFit:
    """Fit NMF-RE, ``Y = X (Theta A + U) + E``.

    Parameters
    ----------
    Y : array-like, pandas.DataFrame or xarray.DataArray
        ``feature x unit`` data. ``method="paper"`` requires ``Y >= 0``.
    A : array-like, DataFrame or DataArray, optional
        ``covariate x unit`` design; default a row of ones (``intercept``).
    rank : int
        Number of components ``Q`` (``1 <= Q <= min(P, N)``). They are numbered by their
        basis column's centre of mass along the features, ``sum_p (p / P) X[p, q]``
        (increasing; the paper's and nmfkc's order), so their numbers follow the features'
        order.
    method : {"ml", "paper"}
        ``"ml"`` maximises the marginal likelihood (monotone, accelerated);
        ``"paper"`` runs the paper's multiplicative algorithm step for step.
    theta : {"free", "nonneg"}, optional
        Sign of Theta. Default ``"free"`` for ML, ``"nonneg"`` for the paper method
        (which only supports non-negative Theta).
    df_cap : None, float in (0, 1] or "auto"
        The df cap rate (``df_U <= max(rate N Q, 1)``); ``"auto"`` picks the rate with
        nmfkc 0.7.0's scan rule (:func:`df_scan`).
    init : {"nndsvd", "nndsvd-tail", "random"} or dict
        Starting basis: deterministic NNDSVD (Boutsidis & Gallopoulos 2008);
        ``"nndsvd-tail"``, also deterministic, NNDSVD built from the singular triplets 2 to
        ``rank + 1`` of ``max(Y, 0)``, leaving out the leading one (whose column, a profile
        close to the mean of Y, can hold one component on a long plateau: see the methods
        page), with a third of each column's mass spread evenly (plain NNDSVD, and reported
        so, at ``rank = 1``); random simplex columns; or explicit values ``{"X": ...,
        "theta": ..., "U": ...}`` (theta/U optional; labelled values, DataArrays or
        DataFrames, are aligned to the data's features, covariates and units; a U is accepted
        but not used: both methods compute U from X and Theta before they use it).
    n_init : int
        Number of starts; starts after the first are random. The fit with the best
        likelihood is kept; all are reported in ``fit.restarts``.
    seed : int or numpy.random.Generator, optional
        Randomness for random starts (global state is never touched).
    max_iter, tol : optional
        Iteration limit and tolerance (defaults: ML 5000 / 1e-10 on the relative nll
        decrease; paper 50000 / 1e-5 on the relative objective change, as nmfkc).
    sigma2, tau2 : float
        Starting (or, with ``fix_*``, fixed) variances. The starting values matter for
        ``method="paper"`` only: maximum likelihood profiles the variances out.
    fix_sigma2, fix_tau2 : bool
        Hold a variance fixed at its given value. Not both with a ``df_cap`` (the cap acts by
        raising ``sigma2 / tau2``), and ``fix_tau2`` not with ``df_cap`` and
        ``method="paper"`` (whose cap step sets tau2); ``n_init > 1`` not with
        ``df_cap="auto"`` (the scan runs from one start).
    covariates, formula : optional
        Build ``A`` from a unit-level DataFrame and a formulaic formula, e.g.
        ``fit(Y, covariates=df, formula="~ male")``.

    Returns
    -------
    NMFREFit

    Raises
    ------
    ValueError
        Bad arguments or data (NaN/Inf, negative Y for the paper method, zero variance,
        fewer than 2 units, no more units than covariates, rank too large, collinear
        covariates), each named in the message.

    Notes
    -----
    ML standardises Y internally by a power of 2 when its root mean square lies outside
    ``[2^-20, 2^20]`` (an exact rescaling; in-range data are fitted as they are), so
    the fit is scale-equivariant across the floating-point range: Theta and U scale by
    ``c``, sigma2 and tau2 by ``c^2``, and the log-likelihood shifts by ``-n_obs log c``
    (``n_obs`` the observed entries, ``P N`` for complete data).
    """
    settings = FitSettings.create(method=method, theta=theta, df_cap=df_cap, init=init, n_init=n_init,
                                  max_iter=max_iter, tol=tol, sigma2=sigma2, tau2=tau2, fix_sigma2=fix_sigma2,
                                  fix_tau2=fix_tau2)
    data = coerce(Y, A, covariates=covariates, formula=formula)
    Q = check_rank(rank, data.P, data.N)
    nonneg = settings.theta == "nonneg"
    values = check_start_values(aligned_start(init, data), data.P, Q, data.K, data.N, nonneg) \
        if isinstance(init, dict) else None
    rng = v.rng(seed)
    _warn_identifiability(data, Q, settings)
    est = engine.estimate(data.Y, data.A, Q, settings, rng, values)
    result = _wrap(data, est, settings)
    degenerate = result.stop_reason == "degenerate"
    if degenerate:
        warnings.warn(_degenerate_message(result), DegenerateFitWarning, stacklevel=2)
    elif how := engine.ended_degenerate(result.solution, settings, data.A):
        degenerate = True
        # converged, stalled or ran to max_iter where the likelihood is nearly flat along the merge
        warnings.warn(_degenerate_message(result, how), DegenerateFitWarning, stacklevel=2)
    elif result.stop_reason == "stalled":
        warnings.warn(f"NMF-RE ({settings.method}) stopped after {result.n_iter} iterations without converging: "
                      f"the last {STALL_PATIENCE} left the estimates unchanged (no step decreased the nll, "
                      f"tol={settings.tol:g}); the fit is close to a stationary point but not certified; try other "
                      "starts (n_init) or init", ConvergenceWarning, stacklevel=2)
    elif not result.converged:
        warnings.warn(f"NMF-RE ({settings.method}) did not converge in {result.n_iter} iterations "
                      f"(max_iter={settings.max_iter}, tol={settings.tol:g}); increase max_iter",
                      ConvergenceWarning, stacklevel=2)
    # a rotation of the components that keeps the bounds and the likelihood (not where the
    # degeneracy warning already says that the effects are not identified)
    if settings.method == "ml" and not degenerate \
            and (free := rotation.free_rotation(result.solution.X, result.solution.theta, nonneg)) is not None:
        warnings.warn(_non_unique_message(result, free, nonneg), NonUniqueEstimateWarning, stacklevel=2)
    if settings.method == "ml" and result.lam >= LAMBDA_MAX * (1 - 1e-6):
        warnings.warn(f"singular fit: tau2 is estimated at {result.tau2:.3g} (sigma2 {result.sigma2:.3g}), i.e. the "
                      "random effects vanish; the model reduces to NMF with covariates", SingularFitWarning,
                      stacklevel=2)
    return result


def _degenerate_message(result: NMFREFit, how: str = "stopped") -> str:
    """The warning of a degenerate sign-free fit: ``how`` it ended, ``"stopped"`` by the
    degeneracy rule, ``"converged"`` at a degenerate configuration (the likelihood's gains along
    the merge fell below the tolerance), ``"stalled"`` at one (not converged: its iteration
    reached a fixed point before the rule's patience ran out) or ``"max_iter"`` there (not
    converged: it crawled along the merge too slowly for the rule)."""
    sol = result.solution
    n = result.n_iter
    state = {"stopped": f"stopped after {n} iterations",
             "converged": f"converged after {n} iterations at a degenerate configuration, where the likelihood is "
                          "nearly flat",
             "stalled": f"stalled after {n} iterations at a degenerate configuration, not converged: the last "
                        f"{STALL_PATIENCE} left the estimates unchanged",
             "max_iter": f"ran to max_iter={n} at a degenerate configuration, not converged: more iterations "
                         "would likely only inflate its effects"}[how]
    ended = how != "stopped"
    growing = "are large" if ended else "keep growing"
    rising = "rises ever more slowly" if ended else "keeps rising"
    starts = ("; the other starts are in fit.restarts" if ended and len(result.restarts) > 1 else "")
    effects = orthonormal_effects(sol.theta, result.data.A)  # what the rule judges
    index, i, j = degeneracy(sol.X, effects)
    comp = result.X.coords["component"].values
    size = float(np.max(np.abs(sol.theta)))
    if index <= DEGENERATE_INDEX:
        xn = sol.X / np.linalg.norm(sol.X, axis=0)
        return (f"the sign-free fit is degenerate ({state}): components {comp[i]!r} "
                f"and {comp[j]!r} have nearly equal basis columns (cosine {float(xn[:, i] @ xn[:, j]):.4f}) and "
                f"opposite effects (congruence product {index:.3f}) that {growing} (max |Theta| "
                f"{size:.3g}): the likelihood {rising} as the two merge, toward a "
                "boundary where their effects are not identified. Use theta='nonneg', a smaller rank, or other starts "
                f"(n_init){starts}")
    ratio, sizes = cancellation(sol.X, effects)
    # the terms larger than the whole fit (the others cancel them), at least two, largest first
    big = np.argsort(-sizes, kind="stable")[: max(2, int(np.sum(sizes > 1.0)))]
    names = ", ".join(repr(c) for c in comp[big])
    terms = ", ".join(f"{s:.3g}" for s in sizes[big])
    return (f"the sign-free fit is degenerate ({state}): the terms x_q theta_q of "
            f"components {names} are {terms} times the size of the fitted X Theta and cancel in it (||X Theta||^2 is "
            f"{ratio:.2e} of the terms' sum of squares), while their effects {growing} (max |Theta| {size:.3g}): "
            f"the likelihood {rising} toward a boundary where these effects are not identified. Use theta='nonneg', "
            f"a smaller rank, or other starts (n_init){starts}")


def _non_unique_message(result: NMFREFit, free: rotation.FreeRotation, nonneg: bool) -> str:
    bounds = "X >= 0 and Theta >= 0" if nonneg else "X >= 0"
    size = float(np.max(np.abs(result.solution.theta)))
    return (f"the ML estimate is not unique: rotating the components (X R and R' Theta, R orthogonal with R 1 = 1) "
            f"keeps {bounds} and the likelihood; the rotation found moves X by up to {free.dX:.3g} and Theta by up to "
            f"{free.dtheta:.3g} (max |Theta| {size:.3g}). X Theta is identified, the components' X and Theta are not: "
            "their standard errors are conditional on this X. Entries of X at 0 (or of Theta, with theta='nonneg') "
            "pin the components; a smaller rank may too")


def _warn_identifiability(data: Data, Q: int, settings: FitSettings) -> None:
    if data.P <= Q and settings.df_cap is None and not (settings.fix_sigma2 or settings.fix_tau2):
        warnings.warn(
            f"P = {data.P} <= Q = {Q}: sigma2 and tau2 are not separately identifiable (the "
            "likelihood is flat as lambda -> 0); set df_cap or fix a variance",
            IdentifiabilityWarning, stacklevel=3)


def _wrap(data: Data, est: engine.Estimate, settings: FitSettings) -> NMFREFit:
    restarts = pd.DataFrame(est.restarts, columns=["init", "nll", "converged", "n_iter"])
    return NMFREFit(data, est.solution, settings=settings, rate=est.rate, restarts=restarts,
                    scan=None if est.scan is None else _scan_table(est.scan, est.rate))


def _scan_table(rows: list[dict], chosen: float | None) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    table.attrs["chosen_rate"] = chosen
    return table


def df_scan(Y: Any, A: Any = None, rank: int = 2, *, rates=dfcap.DEFAULT_RATES, method: str = "paper",
            theta: str | None = None, init: str | dict = "nndsvd", seed: Any = None, max_iter: int | None = None,
            tol: float | None = None, sigma2: float = 1.0, tau2: float = 1.0) -> pd.DataFrame:
    """Fit at each df-cap rate from the same start and tabulate the result.

    Parameters are those of :func:`fit`; ``rates`` is a sequence of rates in (0, 1].

    Returns
    -------
    pandas.DataFrame
        Columns ``rate, df_cap, df_u, safeguard (df_u/cap < 0.99), hit (cap bound at some
        iteration), converged, tau2, sigma2, icc, nll``. ``table.attrs["chosen_rate"]`` is
        the rate that ``df_cap="auto"`` uses (nmfkc 0.7.0's rule, see
        :func:`nmfre.core.dfcap.choose_rate`), or None.
    """
    settings = FitSettings.create(method=method, theta=theta, init=init, max_iter=max_iter, tol=tol,
                                  sigma2=sigma2, tau2=tau2)
    rates = np.atleast_1d(np.asarray(rates, dtype=float))
    if rates.size == 0 or np.any(~np.isfinite(rates)) or np.any(rates <= 0) or np.any(rates > 1):
        raise ValueError(f"rates must be non-empty and in (0, 1], got {rates}")
    data = coerce(Y, A)
    Q = check_rank(rank, data.P, data.N)
    nonneg = settings.theta == "nonneg"
    values = check_start_values(aligned_start(init, data), data.P, Q, data.K, data.N, nonneg) \
        if isinstance(init, dict) else None
    rows, chosen = engine.scan_rates(data.Y, data.A, Q, rates, settings, v.rng(seed), values)
    return _scan_table(rows, chosen)
