"""Simulation-based calibration (Talts et al. 2018) of the models, with a test that has power.

Each replicate draws parameters from the prior, simulates data, samples the posterior with
the compiled sampler (:mod:`bayes.compiled`: one compilation for all replicates) and
records the rank of every true value among ``L`` thinned posterior draws; when the
posterior is right, every rank is uniform on ``0..L``.

The quantities ranked are the scalar parameters (Theta's entries, sigma, tau) and a
data-dependent one, the log-likelihood ``log p(y | theta)`` (Modrak et al. 2023): a
posterior that is too narrow puts the truth among its lowest log-likelihoods whatever the
direction, so this rank detects over- and under-dispersion that the marginal ranks spread
thinly over several parameters.

The calibration test is the PIT-ECDF test with simultaneous confidence bands (Säilynoja,
Bürkner & Vehtari 2022; ArviZ's ``plot_ecdf_pit``): for each quantity the empirical CDF
of the ranks must stay, at every point ``i / (L + 1)``, inside a band of equal pointwise
tail probability whose family-wise coverage is exact. Its p-value is computed exactly for
discrete ranks by the paper's recursion over the evaluation points (the ECDF's counts
form a Markov chain of binomial increments), so the level holds at any ``alpha``, also
1e-4 where ArviZ's simulated band would need millions of simulations. The test rejects
when the smallest of the ``m`` p-values is below ``alpha / m`` (Bonferroni: the false-alarm
rate is at most ``alpha`` whatever the dependence between quantities). The binomial
location (ranks in the lower half) and dispersion (ranks in the outer fifth) p-values are
reported beside it; at equal level the ECDF test has more power against a posterior too
narrow, too wide or shifted (:func:`sbc_power` with ``test="binomial"`` gives the old
test's rates). :func:`sbc_power` estimates the rejection rates by simulating ranks (no MCMC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import binom, chisquare

from nmfre import validation as v
from nmfre.core.covariates import Frame
from nmfre.labels import renamed

from . import compiled, likelihood, models
from .seeds import is_key, prng_key

__all__ = ["SBCResult", "binom_two_sided", "calibration_tests", "ecdf_pvalues", "plot_sbc", "sbc", "sbc_power"]

DEFAULT_PRIORS = {"x_concentration": 1.0, "theta_scale": 10.0, "sigma_scale": 1.0, "tau_scale": 4.0}


@dataclass
class SBCResult:
    """Ranks of the true values among ``L`` posterior draws, one row per replicate.

    Attributes
    ----------
    ranks : xarray.DataArray (replicate, quantity)
    L : int
        Posterior draws per replicate (ranks lie in ``0..L``).
    tests : pandas.DataFrame
        One row per quantity: ``p_ecdf`` (the PIT-ECDF simultaneous-band test, exact),
        ``p_location``, ``p_dispersion`` (exact binomial, two-sided), ``p_chisq`` (10 bins)
        and ``outer_fraction`` (ranks in the outer fifth; 0.2 expected), for reference.
    p_value : float
        Bonferroni-combined p-value ``min(1, m min p_ecdf)`` over the ``m`` quantities.
    divergences : numpy.ndarray
        Divergent transitions per replicate.
    settings : dict
    """

    ranks: xr.DataArray
    L: int
    tests: pd.DataFrame
    p_value: float
    divergences: np.ndarray
    settings: dict = field(default_factory=dict)

    def reject(self, alpha: float = 0.01) -> bool:
        """True when the calibration test rejects at level ``alpha`` (its false-alarm rate
        on a calibrated sampler is at most ``alpha``)."""
        return self.p_value < alpha

    def plot(self, bins: int = 10):
        """Rank histograms with a 99% band for uniform ranks (:func:`plot_sbc`)."""
        return plot_sbc(self, bins=bins)


def binom_two_sided(k, n: int, p: float) -> np.ndarray:
    """Exact two-sided binomial p-values of counts ``k`` (vectorised; the sum of the
    probabilities of outcomes no more likely than ``k``, as :func:`scipy.stats.binomtest`)."""
    pmf = binom.pmf(np.arange(n + 1), n, p)
    k = np.asarray(k, dtype=int)
    return np.minimum(1.0, np.sum(np.where(pmf[None, :] <= pmf[k][..., None] * (1 + 1e-7), pmf[None, :], 0.0),
                                  axis=-1))


def calibration_tests(ranks: np.ndarray, L: int, names=None) -> tuple[pd.DataFrame, float]:
    """Calibration tests of ranks (replicate x quantity) in ``0..L``.

    ``L + 1`` should be divisible by 10 so that the outer tenths hold exactly 1/5 of the
    possible ranks. Returns the per-quantity table (``p_ecdf`` and, for reference, the
    binomial location and dispersion p-values, the 10-bin chi-square p-value and the outer
    fraction) and the Bonferroni-combined p-value of the PIT-ECDF tests, ``min(1, m min p_ecdf)``.
    """
    p_loc, p_disp, outer = _tests(ranks, L)
    ranks = np.asarray(ranks, dtype=int)
    d = ranks.shape[1]
    p_ecdf = ecdf_pvalues(ranks, L)
    counts = np.stack([np.bincount(ranks[:, j] * 10 // (L + 1), minlength=10) for j in range(d)])
    tests = pd.DataFrame({"p_ecdf": p_ecdf, "p_location": p_loc, "p_dispersion": p_disp,
                          "p_chisq": chisquare(counts, axis=1).pvalue, "outer_fraction": outer},
                         index=pd.Index(list(names) if names is not None else range(d), name="quantity"))
    return tests, min(1.0, d * float(p_ecdf.min()))


@lru_cache(maxsize=4)
def _ecdf_chain(n: int, L: int):
    """Tail probabilities and transitions of the rank ECDF's counts under uniform ranks.

    ``N_i`` (ranks below ``i``, ``i = 1..L``) is Binomial(n, i / (L + 1)); ``tail[i - 1, k]``
    is ``min(P(N_i <= k), P(N_i >= k))``. Given ``N_i``, the ``n - N_i`` ranks at or above
    ``i`` are uniform on ``i..L``, so ``N_{i+1} - N_i`` is Binomial(n - N_i, 1 / (L + 1 - i)):
    ``step[i]`` is that transition matrix from ``N_i`` (``N_0 = 0``) to ``N_{i+1}``.
    """
    z = np.arange(1, L + 1) / (L + 1)
    k = np.arange(n + 1)
    tail = np.minimum(binom.cdf(k[None, :], n, z[:, None]), binom.sf(k[None, :] - 1, n, z[:, None]))
    step = np.zeros((L, n + 1, n + 1))
    for i in range(L):
        for a in range(n + 1):
            step[i, a, a:] = binom.pmf(np.arange(n - a + 1), n - a, 1.0 / (L + 1 - i))
    return tail, step


def _ecdf_pmin(ranks, L: int) -> np.ndarray:
    """Smallest pointwise tail probability of each column's ECDF (the band statistic)."""
    ranks = np.asarray(ranks, dtype=int)
    n = ranks.shape[0]
    tail, _ = _ecdf_chain(n, L)
    counts = (ranks[:, None, :] < np.arange(1, L + 1)[None, :, None]).sum(axis=0)  # L x d
    return tail[np.arange(L)[:, None], counts].min(axis=0)


#: relative tolerance within which two tail probabilities are the same (a tie)
TIE_RTOL = 1e-9


def _ecdf_pvalue_of(pmin, n: int, L: int) -> np.ndarray:
    """P(smallest tail probability <= pmin) under uniform ranks: 1 - P(the ECDF stays
    inside the band of pointwise tail probability > pmin at every point), exactly."""
    tail, step = _ecdf_chain(n, L)
    pmin = np.atleast_1d(np.asarray(pmin, float))
    v = np.zeros((len(pmin), n + 1))
    v[:, 0] = 1.0
    # strictly inside the band, up to rounding: tail probabilities equal in exact arithmetic
    # (P(N_i <= k) at z and P(N >= n - k) at 1 - z) differ in their last bits, and a tie counted
    # as inside made p-values too small by up to 0.05 (n = 5, L = 9, by enumeration)
    inside = pmin * (1 + TIE_RTOL)
    for i in range(L):
        v = (v @ step[i]) * (tail[i][None, :] > inside[:, None])
    return np.clip(1.0 - v.sum(axis=1), 0.0, 1.0)


def ecdf_pvalues(ranks, L: int) -> np.ndarray:
    """Exact p-values of the PIT-ECDF simultaneous-band test, one per column of ``ranks``.

    The test of Säilynoja, Bürkner & Vehtari (2022) (``plot_ecdf_pit`` in ArviZ): the
    statistic is the smallest, over the points ``i / (L + 1)``, of the two-sided pointwise
    tail probabilities of the ECDF of the ranks; the p-value is the probability under
    uniform ranks that the statistic is at most the observed one, computed by the
    recursion over the evaluation points (no simulation; exact for discrete ranks, so
    ``P(p <= a) <= a`` for every ``a``).

    Parameters
    ----------
    ranks : array (n, d) of int in ``0..L``
    L : int

    Returns
    -------
    numpy.ndarray (d,)
    """
    ranks = np.asarray(ranks, dtype=int)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    if ranks.min() < 0 or ranks.max() > L:
        raise ValueError(f"ranks must lie in 0..{L}")
    return _ecdf_pvalue_of(_ecdf_pmin(ranks, L), ranks.shape[0], L)


def _check_L(L: int) -> None:
    """The calibration tests count ranks by tenths of ``0..L``: ``L + 1`` a multiple of 10."""
    if (L + 1) % 10:
        raise ValueError(f"L + 1 must be a multiple of 10 (the calibration tests' tenths), got L = {L}")


def _tests(ranks, L: int):
    """Location and dispersion p-values per column of ``ranks`` (n x d), and the outer fraction."""
    ranks = np.asarray(ranks, dtype=int)
    n = ranks.shape[0]
    _check_L(L)
    tenth = (L + 1) // 10
    low = np.sum(ranks < (L + 1) // 2, axis=0)
    outer = np.sum((ranks < tenth) | (ranks >= L + 1 - tenth), axis=0)
    return binom_two_sided(low, n, 0.5), binom_two_sided(outer, n, 0.2), outer / n


@renamed(n_replicates="n_rep")
def sbc_power(n_rep: int, L: int, n_params: int, *, narrowing: float = 2.0, shift: float = 0.0,
              alpha: float = 1e-4, n_sim: int = 2000, test: str = "ecdf", seed=0) -> dict:
    """Rejection rates of the calibration test, by simulating ranks (no MCMC).

    Model: each replicate's posterior is ``N(0, I)`` in ``n_params`` standardised
    parameters and the truth is a draw from it; the sampler's ``L`` draws are independent
    from ``N(shift, I / narrowing^2)`` (``narrowing = 1, shift = 0``: calibrated; the
    named faults: ``narrowing = 2`` a posterior twice too narrow, ``narrowing = 0.5``
    twice too wide, ``shift = 0.5`` a bias of half a posterior sd in every parameter).
    Ranked quantities: the ``n_params`` coordinates and the log-likelihood
    ``-|theta|^2 / 2`` (flat prior).

    Parameters
    ----------
    n_rep, L, n_params : int
        Replicates per SBC run, draws per replicate (``L + 1`` a multiple of 10), standardised
        parameters (``n_replicates=`` is the deprecated name of ``n_rep``).
    narrowing, shift : float
        The fault whose detection rate is ``power``.
    alpha : float
        Family-wise level of the test.
    n_sim : int
        Simulated SBC runs per rate.
    test : {"ecdf", "binomial"}
        The PIT-ECDF simultaneous-band test (:func:`sbc`'s) or the binomial location and
        dispersion tests (Bonferroni over ``2 m``), for comparison.
    seed : int

    Returns
    -------
    dict
        ``false_alarm`` (rate on a calibrated sampler), ``power`` (rate under the fault),
        and their Monte Carlo standard errors.
    """
    test = v.choice(test, "test", ("ecdf", "binomial"))
    n_rep, L = v.integer(n_rep, "n_rep", minimum=2), v.integer(L, "L")
    n_params, n_sim = v.integer(n_params, "n_params"), v.integer(n_sim, "n_sim")
    _check_L(L)
    narrowing = v.positive_float(narrowing, "narrowing")
    if isinstance(shift, bool) or not np.isfinite(shift):
        raise ValueError(f"shift must be a finite number, got {shift!r}")
    alpha = v.open_unit(alpha, "alpha")
    rng = v.rng(seed)
    out = {}
    for label, k, mu in (("false_alarm", 1.0, 0.0), ("power", float(narrowing), float(shift))):
        stat = np.empty(int(n_sim))
        for s in range(int(n_sim)):
            truth = rng.standard_normal((n_rep, n_params))
            draws = rng.standard_normal((n_rep, L, n_params)) / k + mu
            ranks = np.concatenate([(draws < truth[:, None, :]).sum(axis=1),
                                    ((draws**2).sum(axis=2) > (truth**2).sum(axis=1)[:, None]).sum(axis=1)[:, None]],
                                   axis=1)
            if test == "binomial":
                p_loc, p_disp, _ = _tests(ranks, L)
                stat[s] = 2 * ranks.shape[1] * min(p_loc.min(), p_disp.min())
            else:
                stat[s] = _ecdf_pmin(ranks, L).min()  # the smallest p-value has the smallest pmin
        if test == "ecdf":
            stat = (n_params + 1) * _ecdf_pvalue_of(stat, n_rep, L)
        rate = float(np.mean(stat < alpha))
        out[label] = rate
        out[f"{label}_se"] = float(np.sqrt(max(rate * (1 - rate), 1.0 / n_sim) / n_sim))
    return out


def _prior_draw(rng, model: str, P: int, Q: int, K: int, priors: dict, X_fixed):
    X = X_fixed if model == "conditional_x" else rng.dirichlet(np.full(P, priors["x_concentration"]), Q).T
    theta = rng.normal(0.0, priors["theta_scale"], (Q, K))
    sigma = abs(rng.normal(0.0, priors["sigma_scale"]))
    tau = abs(rng.normal(0.0, priors["tau_scale"]))
    return X, theta, sigma, tau


def _start(model: str, Y, A, rank: int, X):
    """Starting values from nmfre's sign-free ML fit (the joint model's X from the fit), as
    :func:`bayes.sample` starts: for the joint model the non-negative fit where the sign-free
    one is degenerate (:func:`bayes.spec._start_fit`). Such a start lies far outside the prior's
    mass: at 20 x 300, rank 2, 6 of 24 replicates' ML fits ended with ``max |Theta|`` 9e3 to
    1.2e5 (prior scale 10), their chains did not come back within the warm-up, and the
    log-likelihood's ranks piled up at the top (SBC rejected, p = 2e-6)."""
    import warnings

    from nmfre.labels import coerce

    from .spec import _frequentist_fit, _start_fit

    data = coerce(Y, A)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = _start_fit(model, _frequentist_fit(None, data, rank, "free"), data, rank, "free")
    init = {"theta": np.asarray(fit.theta.values, float), "sigma": np.asarray(np.sqrt(fit.sigma2), float),
            "tau": np.asarray(np.sqrt(max(fit.tau2, 1e-6)), float)}
    if model == "joint":
        Xi = fit.X.values + 1e-3 / Y.shape[0]
        init["X_columns"] = (Xi / Xi.sum(axis=0)).T
    else:
        init["theta"] = np.linalg.lstsq(X, Y @ np.linalg.pinv(A), rcond=None)[0]
    return init


def _loglik(stats, X, theta, sigma, tau):
    import jax

    f = jax.vmap(lambda x, t, s, u: likelihood.loglik(stats, x, t, s**2, u**2))
    return np.asarray(f(X, theta, sigma, tau))


def _replicate(s: compiled.Settings, rng, key, A, priors, X_fixed, thin: int, frame=None):
    """One SBC replicate: ranks of (theta..., sigma, tau, loglik) and the divergences
    (``frame``: the :class:`nmfre.core.covariates.Frame` of ``A`` when ``s.frame``, Theta
    sampled on its covariates as :func:`bayes.sample` does)."""
    import jax

    P, Q, K = s.n_features, s.rank, s.n_covariates
    X, theta, sigma, tau = _prior_draw(rng, s.model, P, Q, K, priors, X_fixed)
    N = A.shape[1]
    Y = X @ (theta @ A + rng.normal(0.0, tau, (Q, N))) + rng.normal(0.0, sigma, (P, N))
    stats = likelihood.statistics(Y, A if frame is None else frame.A)
    T = np.eye(K) if frame is None else frame.T  # the statistics' effects are Theta T
    last = () if frame is None else (frame.T,)
    pri = {k: np.asarray(x, float) for k, x in priors.items()}
    if s.model == "joint":
        args = (stats, pri) + last
    else:
        pri.pop("x_concentration", None)
        args = (stats, np.asarray(X, float), pri) + last
    draws, st = compiled.runner(s)(jax.random.split(key, s.num_chains), _start(s.model, Y, A, Q, X), args)
    draws = {k: np.asarray(x).reshape((-1,) + np.shape(x)[2:])[::thin] for k, x in draws.items()}
    Xd = draws["X"] if "X" in draws else np.broadcast_to(X, (len(draws["theta"]),) + X.shape)
    ll = _loglik(stats, Xd, draws["theta"] @ T, draws["sigma"], draws["tau"])
    ll_true = _loglik(stats, X[None], (theta @ T)[None], np.array([sigma]), np.array([tau]))[0]
    if Q > 1:  # labels switch: rank the label-invariant column sums of Theta (= of X Theta)
        th_draws, th_true = draws["theta"].sum(axis=1), theta.sum(axis=0)
    else:
        th_draws, th_true = draws["theta"].reshape(len(ll), -1), theta.ravel()
    values = np.column_stack([th_draws, draws["sigma"], draws["tau"], ll])
    truth = np.concatenate([th_true, [sigma, tau, ll_true]])
    return (values < truth).sum(axis=0), int(np.asarray(st["diverging"]).sum())


def _seeds(seed):
    """``(numpy Generator for the data, JAX key for the sampler)`` from ``seed``; an int
    gives exactly the generator and key it always gave."""
    import jax

    if isinstance(seed, np.random.Generator | np.random.SeedSequence):
        rng = v.rng(seed)
        return rng, prng_key(rng)
    if is_key(seed):
        data_key, key = jax.random.split(seed)
        return np.random.default_rng(np.asarray(jax.random.key_data(data_key)).ravel().tolist()), key
    return v.rng(seed), jax.random.PRNGKey(v.seed_key(seed))


@renamed(n_replicates="n_rep", n_features="P", n_units="N")
def sbc(n_rep: int = 200, *, model: str = "joint", P: int = 4, N: int = 30, rank: int = 1,
        A=None, priors: dict | None = None, L: int = 99, num_warmup: int = 300, num_chains: int = 2,
        thin: int = 4, chain_method: str = "vectorized", simplex: str = "folded", X=None, seed=0,
        mass: str = "dense", theta_coords: str = "direct", kernel: str = "nuts") -> SBCResult:
    """Simulation-based calibration of ``model`` (``"joint"`` or ``"conditional_x"``).

    Parameters
    ----------
    n_rep : int
        Replicates (data sets); ``n_replicates=`` is the deprecated name.
    model : {"joint", "conditional_x"}
    P, N, rank : int
        Features, units and rank Q of the simulated data sets (``n_features=``,
        ``n_units=``: deprecated names).
    A : array (K, N), optional
        Covariates (default: intercept and a Bernoulli(1/2) dummy, drawn once).
    priors : dict, optional
        Fixed prior scales (default :data:`DEFAULT_PRIORS`); data are drawn from them.
    L : int
        Posterior draws kept per replicate (thinned by ``thin``); ``L + 1`` a multiple of 10.
    num_warmup, num_chains, thin : int
        Sampler settings: ``num_chains * num_samples = L * thin`` draws before thinning.
    chain_method, simplex : str
        As for :class:`bayes.Sampler`.
    X : array (P, Q), optional
        The fixed basis of ``conditional_x`` (default: columns drawn once from the prior).
    seed : int, numpy.random.Generator or JAX key
        An int gives the data generator ``numpy.random.default_rng(seed)`` and the sampler
        keys ``jax.random.PRNGKey(seed)`` split; a Generator draws the data and one key
        (:func:`bayes.seeds.prng_key`); a JAX key gives the sampler keys and the data
        generator seeded from it.
    mass, theta_coords : str
        As for :class:`bayes.Sampler`. With ``rank > 1`` the ranked quantities are the
        label-invariant ``sum_theta[k]`` (Theta's column sums, = the column sums of
        ``X Theta``), sigma, tau and the log-likelihood.
    kernel : {"nuts", "chees"}
        The sampler (see :class:`bayes.Sampler`; ``"chees"`` needs ``num_chains >= 2``,
        vectorised chains and Theta not integrated out). No ``"auto"`` here: the kernel is
        what the calibration is about, so it is named.

    Returns
    -------
    SBCResult
    """
    import jax

    # every setting checked before any sampling (num_warmup=-5 ranked 5 draws while L said 19;
    # simplex, mass and chain_method were recorded as given and something else ran)
    from .sampling import CHAIN_METHODS, MASSES, SIMPLEXES

    model = v.choice(model, "model", ("joint", "conditional_x"))
    compiled.check_theta_coords(model, theta_coords)
    n_rep = v.integer(n_rep, "n_rep", minimum=2)
    L, thin = v.integer(L, "L"), v.integer(thin, "thin")
    _check_L(L)
    num_warmup = v.integer(num_warmup, "num_warmup", minimum=0)
    num_chains = v.integer(num_chains, "num_chains")
    v.choice(chain_method, "chain_method", CHAIN_METHODS)
    v.choice(simplex, "simplex", SIMPLEXES)
    v.choice(mass, "mass", tuple(m for m in MASSES if m != "auto"))
    P, N, rank = v.integer(P, "P", minimum=2), v.integer(N, "N", minimum=2), v.integer(rank, "rank")
    if rank > P:
        raise ValueError(f"rank must be at most P = {P}, got {rank}")
    if v.choice(kernel, "kernel", ("nuts", "chees")) == "chees":
        compiled.check_chees(chain_method, theta_coords, num_chains, num_warmup)
    rng, key = _seeds(seed)
    priors = {**DEFAULT_PRIORS, **models.check_priors(priors)}
    if A is None:
        A = np.vstack([np.ones(N), rng.binomial(1, 0.5, N)]).astype(float)
    A = np.asarray(A, float)
    if A.ndim != 2 or A.shape[1] != N or not np.isfinite(A).all():
        raise ValueError(f"A must be a finite K x N array with N = {N} units, got shape {A.shape}")
    if model == "conditional_x" and X is None:
        X = rng.dirichlet(np.full(P, priors["x_concentration"]), rank).T
    if model == "conditional_x":
        X = np.asarray(X, float)
        if X.shape != (P, rank) or (X < 0).any() or not np.allclose(X.sum(axis=0), 1.0):
            raise ValueError(f"X must be a P x rank = {(P, rank)} basis with non-negative columns summing to 1, got "
                             f"shape {X.shape}")
    total = L * thin
    if total % num_chains:
        raise ValueError("L * thin must be a multiple of num_chains")
    s = compiled.Settings(model, rank, P, A.shape[0], simplex=simplex, num_warmup=num_warmup,
                          num_samples=total // num_chains, num_chains=num_chains, chain_method=chain_method,
                          target_accept=0.9, mass=mass, adapt_mass=True, theta_coords=theta_coords, kernel=kernel,
                          frame=model != "joint" or theta_coords == "direct")  # as bayes.sample samples Theta
    frame = Frame.of(A) if s.frame else None
    ranks, div = [], []
    with jax.enable_x64(True):
        keys = jax.random.split(key, n_rep)
        for r in range(n_rep):
            rk, d = _replicate(s, rng, keys[r], A, priors, X, thin, frame)
            ranks.append(rk)
            div.append(d)
    names = ([f"sum_theta[{k}]" for k in range(A.shape[0])] if rank > 1 else
             [f"theta[{q},{k}]" for q in range(rank) for k in range(A.shape[0])]) + ["sigma", "tau", "loglik"]
    ranks = np.array(ranks)
    tests, p = calibration_tests(ranks, L, names)
    da = xr.DataArray(ranks, dims=("replicate", "quantity"), coords={"quantity": names})
    return SBCResult(da, L, tests, p, np.array(div),
                     {"model": model, "P": P, "N": A.shape[1], "rank": rank, "priors": priors,
                      "num_warmup": num_warmup, "num_chains": num_chains, "chain_method": chain_method, "thin": thin,
                      "simplex": simplex, "mass": mass, "theta_coords": theta_coords, "kernel": kernel,
                      "target_accept": 0.9, "theta_frame": s.frame})


def plot_sbc(result: SBCResult, bins: int = 10):
    """Rank histograms, one panel per quantity, with the 99% band of a uniform histogram.

    Parameters
    ----------
    result : SBCResult
    bins : int
        Bins over ``0..L`` (``L + 1`` should be a multiple of ``bins``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from scipy.stats import binom

    ranks = result.ranks
    names = list(ranks["quantity"].values)
    n = ranks.sizes["replicate"]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    lo, hi = binom.ppf([0.005, 0.995], n, 1.0 / bins)
    for ax, name in zip(axes.ravel(), names, strict=False):
        counts = np.bincount(ranks.sel(quantity=name).values * bins // (result.L + 1), minlength=bins)
        ax.axhspan(lo, hi, color="0.85", zorder=0)
        ax.axhline(n / bins, color="0.5", lw=0.8)
        ax.bar(np.arange(bins), counts, width=0.9, color="C0")
        p = result.tests.loc[name, ["p_location", "p_dispersion"]].min()
        ax.set_title(f"{name} (min p {p:.2g})", fontsize=9)
        ax.set_xticks([])
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"SBC of {result.settings.get('model')}: {n} replicates, L = {result.L}; "
                 f"combined p = {result.p_value:.3g}", fontsize=10)
    fig.tight_layout()
    return fig
