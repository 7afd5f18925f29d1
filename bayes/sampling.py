"""``bayes.sample`` and ``bayes.Sampler``: NUTS on one of the models, compiled once per
(model, data shape, settings) and reused, returning an ArviZ ``xarray.DataTree``.

The sampler (:mod:`bayes.compiled`) sees the data only through compressed statistics
(:mod:`bayes.likelihood`), so its compiled code depends on P, K, Q and the number of
missing-data patterns, not on N, and a loop over data sets of one shape compiles once.
Chains start from a Laplace approximation at the frequentist fit (a few Newton steps in
unconstrained space; its inverse Hessian is the initial dense mass matrix), and for
rank > 1 are aligned to the fit.

``chain_method``: ``"vectorized"`` (default: all chains in one vectorized loop, the
fastest on a CPU with few cores and the one to use on a GPU, where JAX places the sampler
when ``jax[cuda]`` is installed), ``"sequential"`` (one after the other in one compiled
function) or ``"parallel"`` (one chain per device; call :func:`bayes.configure` before
JAX starts; with fewer devices than chains it falls back to ``"sequential"``).
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from nmfre import validation as v
from nmfre.core.covariance import conditional as conditional_covariance
from nmfre.labels import Data, check_rank, coerce

from . import compiled, datatree, likelihood, models
from .datatree import SamplingWarning, diagnostics

__all__ = ["CHAIN_METHODS", "MODELS", "ModelSpec", "Sampler", "SamplingWarning", "diagnostics", "model_spec",
           "sample"]

MODELS = ("joint", "conditional", "conditional_x")
CHAIN_METHODS = ("parallel", "sequential", "vectorized")
MASSES = ("auto", "dense", "diag")
SIMPLEXES = ("folded", "ilr", "stickbreaking")
THETA_COORDS = ("conditional", "direct")
_PREDICTIVE: dict = {}


@dataclass(frozen=True)
class ModelSpec:
    """A model ready to sample: data, fit, priors, statistics, starting values and the
    traced arguments of the compiled sampler."""

    name: str
    data: Data
    fit: Any
    priors: dict
    stats: likelihood.Stats
    init: dict
    args: tuple
    nonneg: bool
    flat: bool = False
    sigma2_fixed: float | None = None


def _frequentist_fit(fit, data: Data, rank: int, theta: str):
    """The given fit (checked against the data) or a fresh ML fit (of the observed
    entries when cells are missing)."""
    import nmfre

    if fit is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nmfre.ConvergenceWarning)
            return nmfre.fit(xr.DataArray(data.Y, dims=("feature", "unit"),
                                          coords={"feature": data.features, "unit": data.units}),
                             xr.DataArray(data.A, dims=("covariate", "unit"),
                                          coords={"covariate": data.covariates, "unit": data.units}),
                             rank=rank, theta=theta, n_init=1)
    if not isinstance(fit, nmfre.NMFREFit):
        raise v.ArgumentTypeError(f"fit must be an nmfre.NMFREFit, got {type(fit).__name__}")
    if fit.shape["Q"] != rank:
        raise ValueError(f"fit has rank {fit.shape['Q']} but rank={rank} was asked for")
    if not fit.data.same_data(data):
        raise ValueError("fit was estimated on different data (Y or A differ from those given)")
    if fit.theta_kind != theta:
        raise ValueError(f"fit has theta={fit.theta_kind!r} but theta={theta!r} was asked for")
    return fit


def pad_patterns(stats: likelihood.Stats, n: int | None = None) -> likelihood.Stats:
    """``stats`` with empty patterns appended up to ``n`` (default: the next power of 2),
    so that data sets with similar missingness share one compiled sampler."""
    B = stats.n_patterns
    n = 1 << (B - 1).bit_length() if n is None else n
    if n < B:
        raise ValueError(f"the data have {B} missing-data patterns, more than the sampler's {n}")
    if n == B:
        return stats
    return likelihood.Stats(*(np.concatenate([a, np.zeros((n - B,) + a.shape[1:])]) for a in stats))


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


def _init(name: str, fit, data: Data, nonneg: bool, cov_model) -> dict:
    sol = fit.solution
    th0 = _f(sol.theta)
    if nonneg:  # start off the boundary, at a fraction of the standard error
        se = np.sqrt(np.diag(cov_model)).reshape(th0.shape, order="F") if cov_model is not None else 0.0
        th0 = np.maximum(th0, np.maximum(0.1 * se, 1e-6 * (np.abs(th0).max() or 1.0)))
    init = {"theta": th0}
    if name != "conditional":
        init.update(sigma=_f(np.sqrt(fit.sigma2)), tau=_f(np.sqrt(fit.tau2)))
    if name == "joint":
        Xi = sol.X + 1e-3 / data.P
        init["X_columns"] = _f((Xi / Xi.sum(axis=0)).T)
    return init


def model_spec(Y, A, rank: int, model: str, fit=None, theta: str = "free", priors: dict | None = None,
               n_patterns: int | None = None) -> ModelSpec:
    """Validate the inputs and build the :class:`ModelSpec` for ``model``."""
    model = v.choice(model, "model", MODELS)
    theta = v.choice(theta, "theta", ("free", "nonneg"))
    data = coerce(Y, A)
    rank = check_rank(rank, data.P, data.N)
    stats = pad_patterns(likelihood.statistics(data.Y, data.A), n_patterns)
    prior = {k: float(x) for k, x in models.resolve_priors(stats, rank, priors).items()}
    missing = bool(np.isnan(data.Y).any())
    if missing and model == "conditional":
        raise ValueError("model='conditional' fixes sigma2 at nmfre's sigma2_used, which needs complete data; "
                         "use 'conditional_x' or 'joint' with missing values")
    fit = _frequentist_fit(fit, data, rank, theta)
    nonneg = theta == "nonneg"
    sol = fit.solution
    need = not missing and (model == "conditional" or nonneg)
    cond = conditional_covariance(data.Y, data.A, sol.X, sol.theta, sol.U, fit.lam) if need else None
    init = _init(model, fit, data, nonneg, None if cond is None else cond.cov_model)
    pri = {k: _f(x) for k, x in prior.items()}
    if model == "joint":
        return ModelSpec(model, data, fit, prior, stats, init, (stats, pri), nonneg)
    X = _f(sol.X)
    if model == "conditional_x":
        pri.pop("x_concentration")
        return ModelSpec(model, data, fit, prior, stats, init, (stats, X, pri), nonneg)
    s2 = cond.sigma2_used
    scale = (priors or {}).get("theta_scale")
    cprior = {} if scale is None else {"theta_scale": _f(scale)}
    return ModelSpec(model, data, fit, prior, stats, init, (stats, X, _f(s2), _f(s2 / fit.lam), cprior), nonneg,
                     flat=scale is None, sigma2_fixed=float(s2))


def _key(seed):
    import jax

    if isinstance(seed, int | np.integer) or isinstance(seed, bool):
        return jax.random.PRNGKey(v.seed_key(seed))
    return seed


class Sampler:
    """NUTS for one model and data shape, compiled once and reused across data sets.

    A study runner can call :meth:`sample` (or the lighter :meth:`run`) thousands of
    times: the compiled code depends on the model, Q, P, K, the number of missing-data
    patterns and the settings below, not on the data values, the prior scales or N, so
    it is built on the first call and taken from a module-level cache afterwards (also
    by other ``Sampler`` objects and :func:`sample` with the same settings).

    Parameters
    ----------
    model : {"joint", "conditional", "conditional_x"}
    rank : int
        Q.
    n_features : int
        P.
    n_units : int, optional
        N; when given, data with another number of units are refused.
    n_covariates : int
        K.
    theta : {"free", "nonneg"}
    num_warmup, num_samples, num_chains : int
    chain_method : {"vectorized", "sequential", "parallel"}, optional
        Default ``"vectorized"``; see :mod:`bayes.sampling`.
    target_accept : float
        NUTS target acceptance probability.
    mass : {"auto", "dense", "diag"}
        Mass matrix structure; it starts at the Laplace approximation's inverse Hessian.
        ``"auto"`` (default): dense for rank 1, diagonal for rank > 1, where a weakly
        identified component makes chains cross between labellings and the dense
        estimate degrades (measured: 20 x 300, Q = 2, 4 x (500 + 500): min bulk ESS
        13-43 dense vs 148-238 diagonal; Orthodont, Q = 1: 5100 dense vs 2000 diagonal).
    adapt_mass : bool
        Re-estimate the mass matrix during warm-up (NumPyro's windowed estimates); else
        keep the Laplace one.
    simplex : {"folded", "ilr", "stickbreaking"}
        Unconstrained coordinates of X's columns and of non-negative Theta (see
        :mod:`bayes.models`); ``"folded"`` (default) turns the boundary of the simplex and
        of Theta >= 0 into reflections (no divergences where features do not load).
    jitter : float
        Chains start at the Laplace mode plus ``jitter`` times a draw from it.
    max_tree_depth : int
    theta_coords : {"direct", "conditional"}
        Coordinates of Theta in the joint model: ``"conditional"`` samples it centred
        and scaled by its Gaussian conditional given X, sigma and tau (an exact shear,
        :func:`bayes.models.theta_conditional`; folded simplex or free Theta only).
    relabel : bool
        Relabel components draw by draw (:func:`relabel_draws`) rather than chain by
        chain (rank > 1, joint model).
    n_patterns : int, optional
        Missing-data patterns the compiled code is built for (default: the next power of
        two of the data's).
    """

    def __init__(self, model: str = "joint", rank: int = 1, n_features: int | None = None,
                 n_units: int | None = None, n_covariates: int = 1, *, theta: str = "free",
                 num_warmup: int = 1000, num_samples: int = 1000, num_chains: int = 4,
                 chain_method: str | None = None, target_accept: float = 0.9, mass: str = "auto",
                 adapt_mass: bool = True, simplex: str = "folded", jitter: float = 1.0,
                 max_tree_depth: int = 10, n_patterns: int | None = None, theta_coords: str = "direct",
                 relabel: bool = True):
        model = v.choice(model, "model", MODELS)
        rank = v.integer(rank, "rank")
        P = None if n_features is None else v.integer(n_features, "n_features")
        self.n_units = None if n_units is None else v.integer(n_units, "n_units", minimum=2)
        K = v.integer(n_covariates, "n_covariates")
        self.theta = v.choice(theta, "theta", ("free", "nonneg"))
        chain_method = _chain_method(chain_method, v.integer(num_chains, "num_chains"))
        mass = _mass(v.choice(mass, "mass", MASSES), rank)
        v.choice(simplex, "simplex", SIMPLEXES)
        self.n_patterns = None if n_patterns is None else v.integer(n_patterns, "n_patterns")
        self.adapt_mass = bool(adapt_mass)
        self.relabel = bool(relabel)
        self._used: set = set()
        self.settings = compiled.Settings(
            model, rank, P or 0, K, nonneg=self.theta == "nonneg", simplex=simplex,
            num_warmup=v.integer(num_warmup, "num_warmup", minimum=0),
            num_samples=v.integer(num_samples, "num_samples"), num_chains=num_chains, chain_method=chain_method,
            target_accept=v.open_unit(target_accept, "target_accept"), mass=mass,
            jitter=float(jitter), max_tree_depth=v.integer(max_tree_depth, "max_tree_depth"),
            theta_coords=v.choice(theta_coords, "theta_coords", THETA_COORDS))

    @property
    def compilations(self) -> int:
        """How many times the compiled code this sampler has used was traced (compiled)."""
        return sum(compiled.TRACES[s] for s in self._used)

    def spec(self, Y, A=None, *, fit=None, priors: dict | None = None) -> ModelSpec:
        """Validated inputs (:class:`ModelSpec`) for data ``(Y, A)``."""
        s = self.settings
        spec = model_spec(Y, A, s.rank, s.model, fit, self.theta, priors, self.n_patterns)
        if s.n_features and spec.data.P != s.n_features:
            raise ValueError(f"Y has {spec.data.P} features; this sampler was built for {s.n_features}")
        if spec.data.K != s.n_covariates:
            raise ValueError(f"A has {spec.data.K} covariates; this sampler was built for {s.n_covariates}")
        if self.n_units is not None and spec.data.N != self.n_units:
            raise ValueError(f"Y has {spec.data.N} units; this sampler was built for {self.n_units}")
        return spec

    def settings_for(self, spec: ModelSpec) -> compiled.Settings:
        """The static settings (cache key) of a run on ``spec``."""
        return dataclasses.replace(self.settings, n_features=spec.data.P, n_patterns=spec.stats.n_patterns,
                                   flat=spec.flat, adapt_mass=self.adapt_mass)

    def run(self, Y, A=None, *, fit=None, priors: dict | None = None, seed=0, spec: ModelSpec | None = None):
        """Sample and return plain arrays: ``(draws, stats, spec)``.

        ``draws``: dict of numpy arrays with leading ``(chain, draw)`` (``theta``, ``sigma``,
        ``tau``, and ``X`` for the joint model; chains not yet aligned); ``stats``: NUTS
        statistics (``diverging``, ``n_steps``, ``acceptance_rate``, ``energy``, ``lp``,
        ``step_size``).
        """
        import jax

        spec = self.spec(Y, A, fit=fit, priors=priors) if spec is None else spec
        s = self.settings_for(spec)
        self._used.add(s)
        with jax.enable_x64(True):
            keys = jax.random.split(_key(seed), s.num_chains)
            draws, stats = compiled.runner(s)(keys, spec.init, spec.args)
            draws, stats = jax.device_get((draws, stats))
        return dict(draws), dict(stats), spec

    def sample(self, Y, A=None, *, fit=None, priors: dict | None = None, seed=0, draw_U: bool = False,
               posterior_predictive: bool = False, warn: bool = True) -> xr.DataTree:
        """Sample the posterior of ``(Y, A)``; the DataTree of :func:`bayes.sample`."""
        import jax

        key = _key(seed)
        with jax.enable_x64(True):
            key_mcmc, key_u, key_pp = jax.random.split(key, 3)
        draws, stats, spec = self.run(Y, A, fit=fit, priors=priors, seed=key_mcmc)
        dt = to_datatree(spec, self.settings_for(spec), draws, stats, key_u if draw_U else None,
                         key_pp if posterior_predictive else None, relabel=self.relabel)
        if warn:
            datatree.warn_diagnostics(dt, stacklevel=3)
        return dt

    def sample_batch(self, datasets, *, fits=None, priors: dict | None = None, seed=0,
                     warn: bool = False) -> list[xr.DataTree]:
        """Sample several data sets of this shape through one vectorised compiled call.

        Parameters
        ----------
        datasets : sequence of (Y, A)
            Data sets with the sampler's P and K (N may differ: only the statistics
            enter the sampler).
        fits : sequence of nmfre.NMFREFit, optional
            One per data set (fitted here when None).
        priors : dict, optional
        seed : int or JAX PRNG key
        warn : bool
            :class:`SamplingWarning` for each data set whose diagnostics fail.

        Returns
        -------
        list of xarray.DataTree
            As :meth:`sample` would return them (without U or replicated Y).
        """
        import jax

        fits = [None] * len(datasets) if fits is None else list(fits)
        specs = [self.spec(Y, A, fit=f, priors=priors) for (Y, A), f in zip(datasets, fits, strict=True)]
        B = max(sp.stats.n_patterns for sp in specs)
        specs = [dataclasses.replace(sp, args=(pad_patterns(sp.stats, B),) + sp.args[1:]) for sp in specs]
        s = dataclasses.replace(self.settings_for(specs[0]), n_patterns=B)
        self._used.add(s)
        stack = lambda *xs: np.stack([np.asarray(x) for x in xs])  # noqa: E731
        with jax.enable_x64(True):
            keys = jax.vmap(lambda k: jax.random.split(k, s.num_chains))(jax.random.split(_key(seed), len(specs)))
            init = jax.tree.map(stack, *[sp.init for sp in specs])
            args = jax.tree.map(stack, *[sp.args for sp in specs])
            draws, stats = jax.device_get(compiled.batch_runner(s)(keys, init, args))
        out = []
        for i, sp in enumerate(specs):
            dt = to_datatree(sp, s, {k: x[i] for k, x in draws.items()}, {k: x[i] for k, x in stats.items()},
                             relabel=self.relabel)
            if warn:
                datatree.warn_diagnostics(dt, stacklevel=3)
            out.append(dt)
        return out

    def __repr__(self) -> str:
        s = self.settings
        return (f"Sampler(model={s.model!r}, rank={s.rank}, n_features={s.n_features or None}, "
                f"n_covariates={s.n_covariates}, chains={s.num_chains} x ({s.num_warmup} + {s.num_samples}), "
                f"chain_method={s.chain_method!r}, compilations={self.compilations})")


def relabel_draws(X: np.ndarray, theta: np.ndarray, X_ref: np.ndarray, iterations: int = 2):
    """Relabel every draw's components (label switching within chains).

    The joint model is invariant under permutations of the components, and where two
    components are close (a weakly identified rank) chains cross between the Q! labellings
    of the posterior. Aligning whole chains then mixes labellings within a chain (inflated
    r_hat, deflated ESS). Here each draw's columns of X (and rows of Theta) are permuted
    to the reference at least L1 cost (the cost of :func:`nmfre.core.bootstrap.align_components`),
    the reference is replaced by the mean of the relabelled draws and the relabelling
    repeated (``iterations`` passes, Stephens' scheme); finally the labelling is matched
    to ``X_ref`` once for all draws. The posterior (a symmetric density) is unchanged.

    Parameters
    ----------
    X : array (chain, draw, P, Q)
    theta : array (chain, draw, Q, K)
    X_ref : array (P, Q)
    iterations : int

    Returns
    -------
    X, theta : relabelled copies
    """
    from nmfre.core.bootstrap import align_components

    X, theta = np.asarray(X), np.asarray(theta)
    Q = X.shape[-1]
    if Q < 2:
        return X, theta
    lead = X.shape[:-2]
    Xf = X.reshape((-1,) + X.shape[-2:])
    tf = theta.reshape((-1,) + theta.shape[-2:])
    perms = np.array(list(itertools.permutations(range(Q)))) if Q <= 6 else None
    ref = np.asarray(X_ref, dtype=float)
    idx = np.tile(np.arange(Q), (Xf.shape[0], 1))
    for _ in range(max(1, iterations)):
        cost = np.abs(ref[None, :, :, None] - Xf[:, :, None, :]).sum(axis=1)  # (draw, ref comp, draw comp)
        if perms is not None:
            total = cost[:, np.arange(Q)[None, :], perms].sum(axis=-1)  # (draw, permutation)
            idx = perms[np.argmin(total, axis=1)]
        else:
            from scipy.optimize import linear_sum_assignment

            idx = np.array([linear_sum_assignment(c)[1] for c in cost])
        ref = np.take_along_axis(Xf, idx[:, None, :], axis=2).mean(axis=0)
    perm, _ = align_components(np.asarray(X_ref, dtype=float), ref)
    idx = idx[:, perm]
    Xf = np.take_along_axis(Xf, idx[:, None, :], axis=2)
    tf = np.take_along_axis(tf, idx[:, :, None], axis=1)
    return Xf.reshape(lead + Xf.shape[1:]), tf.reshape(lead + tf.shape[1:])


def _mass(mass: str, rank: int) -> str:
    """``"auto"``: dense for rank 1, diagonal above."""
    if mass != "auto":
        return mass
    return "dense" if rank == 1 else "diag"


def _chain_method(chain_method: str | None, num_chains: int) -> str:
    import jax

    if chain_method is None:
        return "vectorized"
    v.choice(chain_method, "chain_method", CHAIN_METHODS)
    if chain_method == "parallel" and jax.local_device_count() < num_chains:
        return "sequential"
    return chain_method


def to_datatree(spec: ModelSpec, s: compiled.Settings, draws: dict, stats: dict, key_u=None,
                key_pp=None, relabel: bool = True) -> xr.DataTree:
    """The DataTree of a run: posterior (aligned), sample_stats, observed_data and, when a
    key is given, U and replicated Y."""
    import jax

    data, fit = spec.data, spec.fit
    draws, stats = dict(draws), dict(stats)
    if "X" in draws and relabel and np.shape(draws["X"])[-1] > 1:
        draws["X"], draws["theta"] = relabel_draws(draws["X"], draws["theta"], _f(fit.solution.X))
    if spec.name == "conditional":  # fixed variances, held constant in the posterior
        draws["sigma"] = np.sqrt(spec.sigma2_fixed)
        draws["tau"] = np.sqrt(spec.sigma2_fixed / fit.lam)
    stats["tree_depth"] = np.floor(np.log2(np.asarray(stats["n_steps"]) + 1)).astype(int)
    U = None
    if key_u is not None:
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key_u)).ravel().tolist())
        U = lambda post: datatree.draw_u(post, data.Y, data.A, rng)  # noqa: E731
    yrep = None if key_pp is None else predictive(spec, s, draws, key_pp)
    attrs = {"model": spec.name, "theta_kind": fit.theta_kind, "nmfre_priors": str(spec.priors),
             "inference_library": "numpyro", "sampler": "NUTS (bayes.compiled, Laplace warm start)",
             "sampler_settings": str({k: getattr(s, k) for k in ("num_warmup", "num_samples", "num_chains",
                                                                 "chain_method", "target_accept", "mass",
                                                                 "adapt_mass", "simplex")})}
    return datatree.build(draws, stats, fit, data, spec.name, attrs, U=U, yrep=yrep)


def _predictive_fn(s: compiled.Settings):
    """Jitted replicated-Y draws from the model with ``Y=None`` (cached per settings)."""
    import jax
    from numpyro.infer import Predictive

    fn = _PREDICTIVE.get(s)
    if fn is not None:
        return fn
    if s.model == "joint":  # X_columns is a sample site with "ilr" (substituted by the posterior draws)
        def model(A, priors):
            models.joint(None, A, s.rank, s.nonneg, priors, n_features=s.n_features, simplex="ilr")
    elif s.model == "conditional_x":
        def model(A, X, priors):
            models.conditional_x(None, A, X, s.nonneg, priors)
    else:
        def model(A, X, sigma2, tau2, priors):
            models.conditional(None, A, X, sigma2, tau2, s.nonneg, None if s.flat else priors)

    def fn(key, samples, A, args):
        return Predictive(model, posterior_samples=samples, return_sites=["Y"], batch_ndims=2)(key, A, *args)["Y"]

    fn = _PREDICTIVE[s] = jax.jit(fn)
    return fn


def predictive(spec: ModelSpec, s: compiled.Settings, draws: dict, key) -> np.ndarray:
    """Replicated Y (chain, draw, unit, feature) for every posterior draw."""
    import jax

    samples = {k: draws[k] for k in ("theta", "sigma", "tau") if k in draws}
    if "X" in draws:
        samples["X_columns"] = np.swapaxes(draws["X"], -1, -2)
    with jax.enable_x64(True):
        return np.asarray(_predictive_fn(s)(key, samples, spec.data.A, spec.args[1:]))


def sample(Y, A=None, rank: int = 1, *, model: str = "joint", fit=None, theta: str = "free",
           priors: dict | None = None, num_warmup: int = 1000, num_samples: int = 1000,
           num_chains: int = 4, seed=0, progress: bool = False, draw_U: bool = False,
           posterior_predictive: bool = False, chain_method: str | None = None,
           target_accept: float = 0.9, mass: str = "auto", adapt_mass: bool = True,
           simplex: str = "folded", theta_coords: str = "direct", relabel: bool = True) -> xr.DataTree:
    """Sample the posterior of NMF-RE with NUTS.

    Parameters
    ----------
    Y, A, rank :
        Data and rank, as for :func:`nmfre.fit` (same coercion and checks); ``NaN`` in
        ``Y`` marks a missing cell (models ``joint`` and ``conditional_x``).
    model : {"joint", "conditional", "conditional_x"}
        See :mod:`bayes.models`. The conditional models fix X at ``fit``'s X-hat;
        ``conditional`` also fixes sigma^2 at the ``sigma2_used`` of nmfre's inference and
        lambda at the fit's, so its flat-prior posterior is N(Theta-hat, I^-1).
    fit : nmfre.NMFREFit, optional
        The frequentist fit on the same data (fitted here when None; with missing cells,
        on mean-imputed data). Chains start at it and, for rank > 1, are aligned to it
        (columns of X matched by Hungarian assignment).
    theta : {"free", "nonneg"}
    priors : dict, optional
        Overrides of :func:`bayes.models.default_priors`.
    num_warmup, num_samples, num_chains : int
    seed : int or JAX PRNG key
    progress : bool
        Accepted for compatibility; the compiled sampler shows no progress bar.
    draw_U : bool
        Add U (component x unit) drawn from its Gaussian conditional for every draw.
    posterior_predictive : bool
        Add a ``posterior_predictive`` group with replicated Y (``numpyro.infer.Predictive``).
    chain_method : {"vectorized", "sequential", "parallel"}, optional
        Default ``"vectorized"``; see :mod:`bayes.sampling`.
    target_accept : float
        NUTS target acceptance probability (higher: smaller steps, fewer divergences).
    mass, adapt_mass, simplex, theta_coords :
        Sampler geometry; see :class:`Sampler`.
    relabel : bool
        Align components draw by draw (label switching within chains); see :class:`Sampler`.

    Returns
    -------
    xarray.DataTree
        Groups ``posterior`` (``theta``, ``X``, ``sigma``, ``tau``, ``U`` when drawn),
        ``sample_stats``, ``observed_data`` (and ``posterior_predictive``), with the fit's
        coordinates. Warns (:class:`SamplingWarning`) when max r_hat > 1.01, min bulk ESS
        < 400 or there are divergences.
    """
    del progress
    data = coerce(Y, A)
    sampler = Sampler(model, rank, data.P, None, data.K, theta=theta, num_warmup=num_warmup,
                      num_samples=num_samples, num_chains=num_chains, chain_method=chain_method,
                      target_accept=target_accept, mass=mass, adapt_mass=adapt_mass, simplex=simplex,
                      theta_coords=theta_coords, relabel=relabel)
    return sampler.sample(Y, A, fit=fit, priors=priors, seed=seed, draw_U=draw_U,
                          posterior_predictive=posterior_predictive)
