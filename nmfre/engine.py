"""The estimation engine on plain arrays: starting values, one solver run, restarts, the
df-cap scan, internal standardisation, and the refit bootstrap.

Sits between the numerical kernels (:mod:`nmfre.core`) and the labelled layer
(:mod:`nmfre.results`, :mod:`nmfre.inference`): arrays and a
:class:`~nmfre.settings.FitSettings` in, a :class:`~nmfre.core.solution.Solution` out.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from .core import basis, dfcap, ml, passes
from .core import stats as cstats
from .core.bootstrap import align_components
from .core.covariates import Frame, orthonormal_effects
from .core.likelihood import LAMBDA_MIN, icc
from .core.ml import Problem, degenerating, fit_ml, theta_step
from .core.paper import fit_paper
from .core.solution import Solution
from .core.stats import Stats
from .settings import FitSettings

#: ML standardises Y by a power of 2 when its root mean square leaves this range (exact
#: scaling, so in-range data are fitted unchanged; out of range the fit is equivariant)
SAFE_SCALE = (2.0**-20, 2.0**20)
#: beyond this range of rms(Y) the variances (~rms^2, and tau2 larger still) leave float64
REPRESENTABLE = (1e-152, 1e152)
#: the paper algorithm's absolute constants (variances clipped to [1e-12, 1e12], floors
#: 1e-10) make it meaningless outside this range of rms(Y)
PAPER_SCALE = (1e-5, 1e5)


@dataclass(frozen=True)
class Start:
    """One starting point: a name (``"nndsvd-tail"``, ``"nndsvd"``, ``"random"``, ``"custom"``, ``"warm"``),
    a basis and optionally Theta and U."""

    name: str
    X: np.ndarray
    theta: np.ndarray | None = None
    U: np.ndarray | None = None


@dataclass(frozen=True)
class Estimate:
    """What :func:`estimate` returns.

    Attributes
    ----------
    solution : Solution
        The kept (best-likelihood) run, in the data's units.
    rate : float or None
        The df-cap rate used (chosen by the scan for ``df_cap="auto"``).
    restarts : list of dict
        One ``{"init", "nll", "converged", "n_iter"}`` per start.
    scan : list of dict or None
        Rows of the df-cap scan (``df_cap="auto"``).
    scale : float
        The power of 2 that Y was divided by internally (1 when in range).
    """

    solution: Solution
    rate: float | None
    restarts: list[dict]
    scan: list[dict] | None
    scale: float


# ----------------------------------------------------------------------------- scale
def rms(Y) -> float:
    """Root mean square of ``Y`` without overflow or underflow (any kind of Y)."""
    return passes.describe(Y)["rms"]


def scale_factor(Y, r: float | None = None) -> float:
    """Power of 2 that brings ``rms(Y)`` into :data:`SAFE_SCALE` (1 when already there)."""
    r = rms(Y) if r is None else r
    if r == 0 or SAFE_SCALE[0] <= r <= SAFE_SCALE[1]:
        return 1.0
    return 2.0 ** int(np.frexp(r)[1])


def check_estimable(Y, A: np.ndarray, settings: FitSettings) -> dict:
    """Refuse data that no setting can fit, with a message saying what is wrong; returns
    :func:`nmfre.core.passes.describe` of Y."""
    info = passes.describe(Y)
    if info["min"] == info["max"]:
        raise ValueError(f"Y has zero variance (every entry equals {info['min']:g}); there is nothing to fit")
    if info["unit_spread"] == 0:
        raise ValueError("Y has zero variance across units (all units are identical): sigma2 and tau2 "
                         "cannot be estimated")
    r = info["rms"]
    if not REPRESENTABLE[0] <= r <= REPRESENTABLE[1]:
        raise ValueError(f"Y's scale (root mean square {r:.3g}) is outside [{REPRESENTABLE[0]:g}, "
                         f"{REPRESENTABLE[1]:g}]: the variances (about rms^2) are not representable in float64; "
                         "rescale Y")
    if settings.method == "paper":
        if info["n_missing"]:
            raise ValueError(f"Y has {info['n_missing']} missing (NaN) entries: method='paper' has no missing-data "
                             "path (the paper's algorithm needs every cell); use method='ml', which maximises the "
                             "likelihood of the observed entries")
        if info["n_negative"]:
            raise ValueError(f"Y has {info['n_negative']} negative entries; method='paper' needs Y >= 0")
        if passes.kind(Y) != "dense":
            raise ValueError(f"method='paper' needs Y as a dense in-memory array (got a {passes.kind(Y)} Y): the "
                             "paper's multiplicative updates form the dense residual; use method='ml'")
        if not PAPER_SCALE[0] <= r <= PAPER_SCALE[1]:
            raise ValueError(
                f"Y's scale (root mean square {r:.3g}) is outside [{PAPER_SCALE[0]:g}, {PAPER_SCALE[1]:g}], where "
                "method='paper' is meaningful: its constants are absolute (variances clipped to [1e-12, 1e12], "
                "floors 1e-10, as in nmfkc). Rescale Y or use method='ml', which is scale-equivariant")
    return info


# ----------------------------------------------------------------------------- starts
#: ``init="nndsvd-tail"``: each column of the start is ``(w + f / P) / (1 + f)`` with ``f`` this
#: share. Without it the columns (sign parts of singular vectors after the leading one) can sit
#: on one or two features: over the 1728 fits of benchmarks/bench_sweep.py's grid and six
#: generators two then failed (a basis that became singular: a Cholesky failure, and a fit
#: judged unbounded), with 0.1 and 0.5 none (benchmarks/results/scale.md, seventeenth round)
TAIL_SPREAD = 0.5

def make_starts(Y, Q: int, settings: FitSettings, rng: np.random.Generator, values: dict | None = None,
                stats: Stats | None = None, info: dict | None = None) -> list[Start]:
    """The starts of a fit: explicit ``values``, or the settings' start (NNDSVD of the
    triplets 2 to ``Q + 1``, NNDSVD, or random) then ``n_init - 1`` random.

    NNDSVD comes from the solver's gram statistics when Y is complete, non-negative and held
    as a gram (large and lazy data: no copy of Y, one extra pass), else from Y itself
    (missing entries at their feature's mean). ``"nndsvd-tail"`` (see :data:`TAIL_SPREAD`)
    needs ``Q >= 2`` and ``Q + 2 <= min(P, N)``; otherwise the first start is plain NNDSVD and
    is named so.
    """
    if values is not None:
        return [Start("custom", values["X"], values.get("theta"), values.get("U"))]
    P, N = Y.shape
    if settings.init == "random":
        first = Start("random", basis.random_basis(P, Q, rng))
    elif settings.init == "nndsvd-tail" and Q >= 2 and Q + 2 <= min(P, N):
        # the leading triplet's column (a profile close to the mean of Y) left out, and
        # TAIL_SPREAD of each column's mass spread evenly
        W = _nndsvd(Y, Q + 1, stats, info)[:, 1:]
        first = Start("nndsvd-tail", basis.normalise_columns(W + TAIL_SPREAD / P))
    else:
        first = Start("nndsvd", _nndsvd(Y, Q, stats, info))
    return [first] + [Start("random", basis.random_basis(P, Q, rng)) for _ in range(settings.n_init - 1)]


def _nndsvd(Y, Q: int, stats: Stats | None, info: dict | None) -> np.ndarray:
    kind = passes.kind(Y)
    missing = bool(info and info["n_missing"])
    gram = stats is not None and stats.complete and stats.blocks[0].form == "gram"
    if gram and info is not None and info["min"] >= 0:
        return passes.nndsvd(Y, Q, G=stats.blocks[0].G)
    if kind == "dask":
        return passes.nndsvd(Y, Q, missing=missing)
    if kind == "masked":  # the start only: missing entries at their feature's mean
        return basis.nndsvd(np.where(np.isnan(Y), np.nanmean(Y, axis=1, keepdims=True), Y), Q)
    return basis.nndsvd(Y, Q)


# ----------------------------------------------------------------------------- one run
def solve(Y: np.ndarray, A: np.ndarray, Q: int, start: Start, rate: float | None,
          settings: FitSettings, stats: Stats | None = None, resolve: bool = True) -> Solution:
    """Run the settings' algorithm once from ``start`` with cap rate ``rate``.

    ML iterates on ``stats`` (built from ``Y`` when not given; pass :func:`ml_stats` to reuse
    them across restarts), sign-free ML on orthonormal covariates (:func:`covariate_frame`;
    ``start.theta`` and the returned Theta are on ``A``'s), reports its variances and nll from
    residuals where ``stats`` cannot resolve them (:func:`resolved`; not with ``resolve=False``:
    the refit bootstrap, whose replicates' Theta it does not change and whose replicate SEs keep
    the iterations' lambda), then computes the random effects in one pass over the units.
    """
    s = settings
    if s.method == "paper":
        theta0 = start.theta
        if theta0 is None:
            prob = problem(cstats.from_arrays(Y, A), Q, None, s.replace(theta="nonneg"))
            theta0 = theta_step(prob, basis.normalise_columns(start.X), s.sigma2 / s.tau2)
        return fit_paper(Y, A, start.X, theta0, start.U, rate=rate, sigma2=s.sigma2, tau2=s.tau2,
                         update_sigma2=not s.fix_sigma2, update_tau2=not s.fix_tau2,
                         max_iter=s.max_iter, tol=s.tol)
    frame = covariate_frame(A, s)
    Af = A if frame is None else frame.A
    stats = passes.stats_of(Y, Af) if stats is None else stats
    cap = None if rate is None else dfcap.cap_value(rate, stats.N, Q)
    prob = problem(stats, Q, cap, s)
    theta0 = start.theta if frame is None else frame.inward(start.theta)
    sol = fit_ml(prob, basis.normalise_columns(start.X), theta0, max_iter=s.max_iter, tol=s.tol)
    sol = (resolved(prob, sol, Y, Af, s.tol) if resolve else sol).ordered()
    sol = replace(sol, U=passes.blup(Y, Af, sol.X, sol.theta, sol.lam))
    return sol if frame is None else replace(sol, theta=frame.outward(sol.theta))


#: an ML fit's nll and variances are recomputed from explicit residuals (:func:`resolved`) when
#: the rounding bound of its quadratic form exceeds this fraction of the convergence tolerance
#: ``tol (1 + |nll|)``. The bound is a worst case: where components cancel the errors measured
#: were 0.36 to 2.4 times its ``||R||^2`` part alone (the whole is at least as large, so up to
#: about 1.2 tolerances may be left unresolved there), and 0.02 to 0.12 times it on the iteration
#: benchmark's fits with strong random effects, where at 0.1 the
#: pass fired on 18 of 144 small and medium fits (adding 9-16% to their time to move the nll by
#: 0.01-0.2 tolerances; benchmarks/results/scale.md, thirty-ninth round)
RESOLVE_FRACTION = 0.5


def resolved(prob: Problem, sol: Solution, Y, A: np.ndarray, tol: float) -> Solution:
    """``sol`` with its variances and nll from explicit residuals where the statistics it was
    fitted on cannot resolve the nll to :data:`RESOLVE_FRACTION` of the tolerance.

    The quadratic form ``||R||^2 - sum s / (d + lambda)`` is computed from terms that cancel:
    in gram and sparse form ``||R||^2`` itself (``||Y||^2``, the cross term, the fitted sum of
    squares; and, where components cancel, the ``Q x Q`` products within each), and in every
    form the subtraction, where lambda is small against ``d`` (strong random effects). Its
    rounding error is about ``eps`` times :func:`~nmfre.core.ml.rounding_size`, the nll's about
    that over ``2 sigma2``. Where that exceeds ``RESOLVE_FRACTION tol (1 + |nll|)``, one more
    pass over ``Y`` (:func:`~nmfre.core.passes.residual_moments`) gives the residuals' parts
    along and outside the basis, whose quadratic form is a sum of non-negative terms
    (:class:`~nmfre.core.likelihood.Sufficient`'s ``perp`` and ``t``); the variances are
    re-profiled on it at the returned ``(X, Theta)`` and the nll is evaluated there. Elsewhere
    ``sol`` is returned as it is (no pass). ``nll_trace`` keeps the iterations' values.
    Measured before this: sign-free fits of 100 x 1000 data reported nlls up to 2.5e-4 (17.7
    tolerances) below the nll at their estimate (benchmarks/results/scale.md, thirty-ninth
    round).
    """
    if not (np.isfinite(sol.nll) and sol.sigma2 > 0):
        return sol
    size = ml.rounding_size(prob, sol.X, sol.theta, sol.lam)
    if np.finfo(float).eps * size / (2.0 * sol.sigma2) <= RESOLVE_FRACTION * tol * (1.0 + abs(sol.nll)):
        return sol
    exact = ml.residual_sufficient(prob, passes.residual_moments(Y, A, sol.X, sol.theta, prob.stats))
    s2, lam, nll, _, _ = ml.profile(prob, sol.X, sol.theta, sol.lam, exact)
    if not np.isfinite(nll):  # (not seen: the exact form has no resolution floor)
        return sol
    return replace(sol, sigma2=s2, tau2=s2 / lam, lam=lam, nll=nll)


def covariate_frame(A: np.ndarray, settings: FitSettings) -> Frame | None:
    """The orthonormal covariates that sign-free ML iterates on (:mod:`nmfre.core.covariates`);
    None for non-negative Theta and the paper method, which keep the given ones."""
    return Frame.of(A) if settings.method == "ml" and not settings.nonneg else None


def ml_stats(Y, A: np.ndarray, settings: FitSettings, missing: bool) -> Stats:
    """The ML solver's statistics of ``(Y, A)``, on :func:`covariate_frame`'s covariates where
    it has them (what :func:`solve` expects as ``stats``)."""
    frame = covariate_frame(A, settings)
    return passes.stats_of(Y, A if frame is None else frame.A, missing=missing)


def problem(stats: Stats, Q: int, cap, settings: FitSettings) -> Problem:
    """The ML solver's :class:`~nmfre.core.ml.Problem` for these settings."""
    return Problem(stats, Q, settings.nonneg, settings.variance_mode, settings.sigma2, settings.tau2, cap)


def scan(Y: np.ndarray, A: np.ndarray, Q: int, start: Start, rates, settings: FitSettings,
         stats: Stats | None = None):
    """Fit at each cap rate from the same start: ``(rows, chosen_rate)`` (nmfkc 0.7.0's rule)."""
    N = Y.shape[1]
    rows = []
    for rate in rates:
        out = solve(Y, A, Q, start, float(rate), settings, stats)
        d = np.linalg.eigvalsh(out.X.T @ out.X)
        df = float(dfcap.df_u(np.maximum(d, 0), N, out.lam))
        cap = dfcap.cap_value(float(rate), N, Q)
        rows.append(dict(rate=float(rate), df_cap=cap, df_u=df, safeguard=df / cap < dfcap.SAFEGUARD_RATIO,
                         hit=bool(out.cap_hit), converged=bool(out.converged), tau2=out.tau2, sigma2=out.sigma2,
                         icc=icc(out.X, out.sigma2, out.tau2), nll=out.nll))
    chosen = dfcap.choose_rate([r["rate"] for r in rows], [r["df_u"] for r in rows], [r["df_cap"] for r in rows],
                               [r["hit"] for r in rows], [r["converged"] for r in rows])
    return rows, chosen


# ----------------------------------------------------------------------------- estimate
def _standardised(Y, settings: FitSettings, values: dict | None, r: float | None = None):
    """``(c, Y / c, settings, values)`` in the internal scale (``c = 1`` when in range or
    for the paper method, which is not scale-equivariant)."""
    c = scale_factor(Y, r) if settings.method == "ml" else 1.0
    if c == 1.0:
        return c, Y, settings, values
    s = settings.replace(sigma2=settings.sigma2 / c**2, tau2=settings.tau2 / c**2)
    vals = None if values is None else {k: (a / c if k in ("theta", "U") else a) for k, a in values.items()}
    return c, Y / c, s, vals


def _scaled_info(info: dict, c: float) -> dict:
    return dict(info, min=info["min"] / c, max=info["max"] / c, rms=info["rms"] / c)


def _unscaled_rows(rows: list[dict], c: float, n_obs: int) -> list[dict]:
    if c == 1.0:
        return rows
    return [dict(r, tau2=r["tau2"] * c**2, sigma2=r["sigma2"] * c**2, nll=r["nll"] + n_obs * np.log(c))
            for r in rows]


def scan_rates(Y: np.ndarray, A: np.ndarray, Q: int, rates, settings: FitSettings, rng: np.random.Generator,
               values: dict | None = None):
    """:func:`scan` from the settings' first start, with ML's internal standardisation."""
    info = check_estimable(Y, A, settings)
    c, Ys, s, vals = _standardised(Y, settings, values, info["rms"])
    stats = ml_stats(Ys, A, s, info["n_missing"] > 0) if s.method == "ml" else None
    start = make_starts(Ys, Q, s, rng, vals, stats, _scaled_info(info, c))[0]
    rows, chosen = scan(Ys, A, Q, start, rates, s, stats)
    return _unscaled_rows(rows, c, _n_obs(Y, info)), chosen


def _n_obs(Y, info: dict) -> int:
    """Number of observed entries of Y: its ``P N`` entries (``scipy.sparse`` ``.size`` counts
    only the stored ones) less the missing (NaN) ones counted by :func:`check_estimable`. The
    nll of a fit made on ``Y / c`` is the nll on Y less ``n_obs log c``: with ``P N`` there, a
    fit of Y with missing entries, standardised, had its log-likelihood off by ``log c`` per
    missing entry (Orthodont times 1e6, one entry missing: 17.3)."""
    return int(Y.shape[0]) * int(Y.shape[1]) - int(info["n_missing"])


def _format_rows(rows: list[dict]) -> str:
    return "\n".join(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
                     for r in rows)


def estimate(Y: np.ndarray, A: np.ndarray, Q: int, settings: FitSettings, rng: np.random.Generator,
             values: dict | None = None) -> Estimate:
    """Fit NMF-RE on arrays: standardise (ML), start, scan or restart, keep the best.

    Raises ``ValueError`` when ``df_cap="auto"`` finds no admissible rate.
    """
    info = check_estimable(Y, A, settings)
    c, Ys, s, vals = _standardised(Y, settings, values, info["rms"])
    stats = ml_stats(Ys, A, s, info["n_missing"] > 0) if s.method == "ml" else None
    starts = make_starts(Ys, Q, s, rng, vals, stats, _scaled_info(info, c))
    rows, rate = None, s.df_cap
    if s.df_cap == "auto":
        starts = starts[:1]
        rows, rate = scan(Ys, A, Q, starts[0], dfcap.DEFAULT_RATES, s, stats)
        if rate is None:
            raise ValueError("df_cap='auto': no rate in the scan gives a converged fit with "
                             f"df_U/cap < {dfcap.SAFEGUARD_RATIO}; give a rate explicitly. "
                             f"The scan:\n{_format_rows(_unscaled_rows(rows, c, _n_obs(Y, info)))}")
    runs = [solve(Ys, A, Q, st, rate, s, stats) for st in starts]
    if c != 1.0:
        runs = [r.rescaled(c, _n_obs(Y, info)) for r in runs]
    best = runs[int(np.nanargmin([r.nll for r in runs]))]
    _check_solution(best, Y, Q, rate, s, info["rms"], info["unit_spread"])
    restarts = [dict(init=st.name, nll=r.nll, converged=r.converged, n_iter=r.n_iter)
                for st, r in zip(starts, runs, strict=True)]
    return Estimate(best, rate, restarts, None if rows is None else _unscaled_rows(rows, c, _n_obs(Y, info)), c)


#: an ML fit that did not converge with a residual variance at most this fraction of the square
#: of Y's spread across units (the largest range of a feature; not its mean square, which a
#: large common level dominates) was heading for sigma2 = 0: X (Theta A + U) reproduces Y, and
#: the likelihood is unbounded (:func:`_check_solution`), where lambda = sigma2 / tau2 is at
#: most ``LAMBDA_SMALL`` too (a feature whose range across units is 5.7e6, with noise of sd 1:
#: sigma2 1.1 and lambda 2.9 after 20 iterations, a fit that converges after 3288)
SIGMA2_FLOOR = 1e-12
LAMBDA_SMALL = 1e-6


def _check_solution(sol: Solution, Y, Q: int, rate, settings: FitSettings, r: float, spread: float) -> None:
    """Refuse ML solutions that are not estimates: unbounded likelihood, unrepresentable values."""
    values = [sol.sigma2, sol.tau2, sol.nll, *np.ravel(sol.theta)]
    if passes.kind(sol.U) != "dask":
        values += list(np.ravel(sol.U))
    if not np.all(np.isfinite(values)):
        raise ValueError(f"the estimates are not representable in float64 at Y's scale (root mean square "
                         f"{r:.3g}); rescale Y")
    # lambda at its floor, or a fit that did not converge with lambda small and a residual
    # variance that is no noise (a noise-free Y of rank 1 fitted at rank 2 stalled with sigma2
    # 2.9e-14, 3.4e-14 of the square of Y's spread across units, and lambda 6e-10; data on a
    # level of 1e6 with noise of sd 1 have sigma2 1e-12 of their mean square and are fitted)
    unbounded = (settings.method == "ml" and rate is None and settings.variance_mode in ("free", "tau2")
                 and Y.shape[0] > Q
                 and (sol.lam <= LAMBDA_MIN * (1 + 1e-6)
                      or (not sol.converged and sol.lam <= LAMBDA_SMALL
                          and sol.sigma2 <= SIGMA2_FLOOR * spread * spread)))
    if unbounded:
        raise ValueError(
            "the likelihood is unbounded: X (Theta A + U) reproduces Y exactly (lambda = sigma2/tau2 -> 0, "
            f"residual variance {sol.sigma2:.3g}, {sol.sigma2 / (spread * spread):.2g} of the square of Y's largest "
            "range across units, df_U -> N Q); bound the random effects with df_cap or fix sigma2")


def ended_degenerate(sol: Solution, settings: FitSettings, A: np.ndarray) -> str | None:
    """How a sign-free fit ended at a degenerate configuration (:func:`nmfre.core.ml.degenerating`
    at its estimate), if it did: ``"converged"`` (its gains along the merge of two or more
    components fell below the tolerance while their effects are large and cancel),
    ``"stalled"`` (its iteration reached a fixed point on the way out along the merge, before
    the degeneracy rule's patience ran out) or ``"max_iter"`` (it crawled along the merge until
    ``max_iter``, its effects growing too slowly for the rule, which asks for a growth of
    ``DEGENERATE_GROWTH`` within ``DEGENERATE_PATIENCE`` iterations); None otherwise, and for a
    fit stopped by the rule itself (``stop_reason="degenerate"``). Either way its Theta is not
    identified (:func:`nmfre.fit` warns; a refit bootstrap replicate counts as not converged).
    ``A``: the covariates ``sol.theta`` is on (the rule judges the effects on orthonormal ones)."""
    how = ("converged" if sol.converged else "stalled" if sol.stop_reason == "stalled"
           else "max_iter" if sol.stop_reason == "max_iter" else None)
    return how if how and settings.theta == "free" and degenerating(sol.X, orthonormal_effects(sol.theta, A)) else None


# ----------------------------------------------------------------------------- refit bootstrap
class RefitDraws(NamedTuple):
    """What :func:`refit_draws` returns (every replicate, in the order of ``W``'s columns)."""

    draws: np.ndarray  # QK x B, column-major vec(Theta)
    report: dict  # converged and permuted fractions, minimum alignment cosine
    se: np.ndarray | None  # QK x B replicate sandwich SEs (bootstrap-t), or None
    X_draws: np.ndarray | None  # P x Q x B aligned bases, or None
    converged: np.ndarray  # B booleans
    stop_reason: np.ndarray  # B strings


def refit_draws(Y: np.ndarray, A: np.ndarray, sol: Solution, W: np.ndarray, rate: float | None,
                settings: FitSettings, progress: bool = False, vcov: str | None = None, keep_X: bool = False,
                workers: int | None = None, client=None):
    """Re-fit on ``Y_b = X Theta A + w_nb (y_n - X Theta a_n)`` for each column of ``W``.

    Warm-started at the estimate; each replicate's components are matched to the
    estimate's columns of X (Hungarian assignment). Returns ``(draws (QK x B, column-major
    vec), report, se, X_draws, converged, stop_reason)`` (a :class:`RefitDraws`): the
    converged and permuted fractions and the minimum alignment cosine, with ``vcov`` ("CR1" or
    "CR2") each replicate's own sandwich SE (for the bootstrap-t; None otherwise), with
    ``keep_X`` the aligned bases (P x Q x B; None otherwise), and each refit's convergence
    flag and ``stop_reason`` (length B; a sign-free refit that converged, stalled or reached
    ``max_iter`` at a degenerate configuration, :func:`ended_degenerate`, counts as not
    converged, ``"degenerate"``).

    Replicate ``b`` depends only on column ``b`` of ``W`` (drawn before any replicate runs), so
    the draws are the same in a loop, on ``workers`` threads or on a dask ``client``
    (``client.map`` over blocks of replicates): the scheduler never touches the randomness.
    """
    from tqdm.auto import tqdm

    c = scale_factor(Y) if settings.method == "ml" else 1.0  # the estimate's internal scale
    fitted = sol.X @ (sol.theta @ A) / c
    resid = Y / c - fitted
    Q, K = sol.theta.shape
    P, B = sol.X.shape[0], W.shape[1]
    start = Start("warm", sol.X, sol.theta / c)
    s = settings.replace(n_init=1, init="custom", sigma2=settings.sigma2 / c**2, tau2=settings.tau2 / c**2)
    job = _RefitJob(fitted, resid, A, sol.X, Q, start, rate, s, c, vcov, keep_X)
    blocks = [np.arange(b, min(b + _REFIT_BLOCK, B)) for b in range(0, B, _REFIT_BLOCK)]
    bar = tqdm(total=B, disable=not progress, desc="refit bootstrap")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = _run_blocks(job, W, blocks, bar, workers, client)
    bar.close()
    out = np.empty((Q * K, B))
    se = None if vcov is None else np.empty_like(out)
    Xd = np.empty((P, Q, B)) if keep_X else None
    for b in range(B):
        r = results[b]
        out[:, b] = r["theta"]
        if se is not None:
            se[:, b] = r["se"]
        if Xd is not None:
            Xd[:, :, b] = r["X"]
    report = {"refit_converged_fraction": sum(r["converged"] for r in results.values()) / B,
              "refit_permuted_fraction": sum(r["permuted"] for r in results.values()) / B,
              "refit_min_alignment_cosine": min(r["min_cos"] for r in results.values())}
    return RefitDraws(out, report, se, Xd, np.array([results[b]["converged"] for b in range(B)]),
                      np.array([results[b]["stop_reason"] for b in range(B)], dtype=object))


def _run_blocks(job, W: np.ndarray, blocks: list, bar, workers: int | None, client) -> dict[int, dict]:
    """Blocks of refit replicates in a loop, on threads or on a dask client."""
    results: dict[int, dict] = {}
    if client is not None:
        from dask.distributed import as_completed

        futures = client.map(_quiet, [job] * len(blocks), [W[:, idx] for idx in blocks], blocks, pure=False)
        for fut in as_completed(futures):
            part = fut.result()
            results.update(part)
            bar.update(len(part))
    elif workers is not None and workers > 1:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        with ThreadPoolExecutor(max_workers=workers) as pool:
            futs = [pool.submit(job, W[:, idx], idx) for idx in blocks]
            for fut in as_completed(futs):
                part = fut.result()
                results.update(part)
                bar.update(len(part))
    else:
        for idx in blocks:
            part = job(W[:, idx], idx)
            results.update(part)
            bar.update(len(part))
    return results


def _quiet(job, Wblock, idx):
    """``job(Wblock, idx)`` with warnings silenced (on a dask worker)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return job(Wblock, idx)


#: replicates per task of the parallel refit bootstrap
_REFIT_BLOCK = 8


@dataclass(frozen=True)
class _RefitJob:
    """One block of refit replicates (picklable, for threads and dask workers)."""

    fitted: np.ndarray
    resid: np.ndarray
    A: np.ndarray
    X: np.ndarray
    Q: int
    start: Start
    rate: float | None
    settings: FitSettings
    c: float
    vcov: str | None
    keep_X: bool

    def __call__(self, Wblock: np.ndarray, idx) -> dict[int, dict]:
        out = {}  # warnings are silenced by the caller (process-wide state, so not per thread)
        frame = covariate_frame(self.A, self.settings) if self.vcov is not None else None  # the SEs' (infer's)
        for j, b in enumerate(np.asarray(idx)):
            Yb = self.fitted + self.resid * Wblock[:, j][None, :]
            res = solve(Yb, self.A, self.Q, self.start, self.rate, self.settings, resolve=False)
            perm, cos = align_components(self.X, res.X)
            degenerate = ended_degenerate(res, self.settings, self.A) is not None  # its Theta is not an estimate either
            rec = {"theta": self.c * res.theta[perm].reshape(-1, order="F"),
                   "permuted": bool(np.any(perm != np.arange(self.Q))), "min_cos": float(cos.min()),
                   "converged": bool(res.converged) and not degenerate,
                   "stop_reason": "degenerate" if degenerate else str(res.stop_reason)}
            if self.vcov is not None:
                rec["se"] = self.c * _replicate_se(Yb, self.A, res, perm, self.vcov, frame)
            if self.keep_X:
                rec["X"] = res.X[:, perm]
            out[int(b)] = rec
        return out


def _replicate_se(Yb, A, res: Solution, perm, vcov: str, frame: Frame | None = None) -> np.ndarray:
    """A refit replicate's own sandwich SE of vec(Theta), components in the estimate's order
    (with ``frame``, computed on its orthonormal covariates and mapped back, as ``infer`` does)."""
    from .core.covariance import cr2, from_pieces

    A_w = A if frame is None else frame.A
    th_w = res.theta if frame is None else frame.inward(res.theta)
    pc = passes.conditional_pieces(Yb, A_w, res.X, th_w, res.U, res.lam)
    cond = from_pieces(pc, A_w, th_w)
    cov = cond.cov if vcov == "CR1" else cr2(cond, pc, A_w, res.X, res.lam, satterthwaite=False)[0]
    if frame is not None:
        cov = frame.cov_outward(cov, res.theta.shape[0])
    se = np.sqrt(np.maximum(np.diag(cov), 0.0)).reshape(res.theta.shape, order="F")
    return se[perm].reshape(-1, order="F")
