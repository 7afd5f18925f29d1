"""``bayes.sample`` and ``bayes.Sampler``: NUTS or ChEES-HMC on one of the models, compiled once per
(model, data shape, settings) and reused, returning an ArviZ ``xarray.DataTree``.

The pieces: :mod:`bayes.spec` (validated inputs and starting values of a run),
:mod:`bayes.compiled` (the compiled runs), :mod:`bayes.postprocess` (relabelling, U,
replicated Y and the DataTree), :mod:`bayes.seeds` (seeds to JAX keys); this module holds
the public API.

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
import warnings

import numpy as np
import xarray as xr

from nmfre import validation as v
from nmfre.labels import coerce, renamed

from . import compiled, datatree
from .datatree import SamplingWarning, diagnostics
from .postprocess import predictive, relabel_draws, to_datatree
from .prior_shift import warn_prior_shift
from .seeds import prng_key
from .spec import MODELS, THETA_KINDS, ModelSpec, model_spec, pad_patterns

__all__ = ["CHAIN_METHODS", "MODELS", "ModelSpec", "Sampler", "SamplingWarning", "diagnostics", "model_spec",
           "pad_patterns", "predictive", "relabel_draws", "sample", "to_datatree"]

CHAIN_METHODS = ("parallel", "sequential", "vectorized")
MASSES = ("auto", "dense", "diag")
SIMPLEXES = ("folded", "ilr", "stickbreaking")
KERNELS = ("auto", "chees", "nuts")
#: Default draws per chain with ChEES-HMC (``num_samples=None``): ``CHEES_SAMPLES[0]`` while the
#: basis has at most ``CHEES_LARGE`` entries (``P Q``), ``CHEES_SAMPLES[1]`` above. ChEES-HMC's
#: draws are cheaper and more autocorrelated than NUTS's; with 4 chains, max r_hat <= 1.01 over
#: the dozens of quantities of a rank > 1 posterior needs a min bulk ESS near 1000 (for stationary
#: chains, split R-hat over 8 half chains exceeds 1 by about ``4 c / ESS``, ``c`` distributed as
#: chi-square(7) / 7, so at ESS 400-600 the largest of many quantities is often above 1.01), and
#: the larger the basis, the more quantities and the fewer effective draws per draw. Measured
#: (benchmarks/results/bayes.md), 4 chains, block-sparse data: 20 x 300, Q = 2 (40 entries),
#: fourteen data sets, 1000 draws met r_hat <= 1.01 and bulk ESS >= 400 on twelve, 2000 on all
#: fourteen (7.7-17.0 s with compilation); 50 x 1000, Q = 3 (150 entries), eight data sets, 1000
#: draws on two of the six run, 2000 on four of eight, 4000 on seven of eight (50-89 s).
CHEES_SAMPLES = (2000, 4000)
CHEES_LARGE = 100


class Sampler:
    """NUTS or ChEES-HMC for one model and data shape, compiled once and reused across data sets.

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
    P : int, optional
        Features (formerly ``n_features``).
    N : int, optional
        Units (formerly ``n_units``); when given, data with another number of units are refused.
    K : int
        Covariates (formerly ``n_covariates``).
    theta : {"free", "nonneg"}
        The constraint on Theta, as for :func:`nmfre.fit` (kept as :attr:`theta_kind`).
    num_warmup, num_chains : int
    num_samples : int, optional
        Draws per chain after warm-up. Default: 1000 with NUTS; with ChEES-HMC (see
        ``kernel``) 2000 while the basis has at most :data:`CHEES_LARGE` (100) entries
        ``P rank``, 4000 above (:data:`CHEES_SAMPLES`).
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
        NUTS's maximum tree depth; with ``kernel="chees"``, trajectories are capped at
        ``2**max_tree_depth`` leapfrog steps (the same bound on gradients per draw).
    theta_coords : {"direct", "conditional", "marginal"}
        Coordinates of Theta in the joint model: ``"conditional"`` samples it centred
        and scaled by its Gaussian conditional given X, sigma and tau (an exact shear,
        :func:`bayes.models.theta_conditional`; folded simplex or free Theta only);
        ``"marginal"`` integrates it out (NUTS on X, sigma, tau only, on the closed-form
        marginal :func:`bayes.models.theta_marginal`) and draws it from its conditional
        after every transition (non-negative Theta: with an exact pseudo-marginal
        accept/reject step, :func:`bayes.compiled.theta_sampler`). Free Theta in direct
        coordinates (and in the conditional models) is sampled on orthonormal covariates
        (:class:`nmfre.core.covariates.Frame`, as nmfre's ML fit: site ``theta_frame`` =
        ``Theta T``, with the prior that Theta's implies; ``theta`` is reported on the given
        covariates): the same posterior, without the ridge along which an uncentred
        covariate's intercept and slope move together (``frame``).
    relabel : bool
        Relabel components draw by draw (:func:`relabel_draws`) rather than chain by
        chain (rank > 1, joint model).
    kernel : {"auto", "nuts", "chees"}
        ``"nuts"``: NumPyro's NUTS, each chain adapting its own step size and metric.
        ``"chees"``: ChEES-HMC (BlackJAX, needs the ``blackjax`` package): the chains adapt one
        step size, trajectory length and diagonal metric as an ensemble (more chains adapt
        better, e.g. 16 x (500 + 1000)); vectorised chains only, not with
        ``theta_coords="marginal"``. ``"auto"`` (default): ChEES-HMC for the joint model with
        rank > 1 where it applies (vectorised chains, ``num_chains >= 2``, ``num_warmup >= 1``,
        Theta not integrated out, blackjax installed), NUTS otherwise (rank 1, the conditional models).
        Measured on block-sparse data with non-negative Theta (benchmarks/results/bayes.md),
        4 chains with the default draws (see ``num_samples``): ChEES-HMC met r_hat <= 1.01
        and bulk ESS >= 400 at 20 x 300, Q = 2 on fourteen data sets of fourteen and at
        50 x 1000, Q = 3 on seven of eight, where NUTS (4 x (500 + 500)) met them on one
        20 x 300 data set of two and on neither 50 x 1000 one; on Orthodont (rank 1) NUTS is
        excellent.
        ``target_accept``, ``mass`` and ``adapt_mass`` apply to NUTS only; ``max_tree_depth``
        bounds both (ChEES-HMC's trajectories are capped at ``2**max_tree_depth`` leapfrog
        steps, NUTS's trees at that depth). The kernel that ran is :attr:`kernel` and the
        DataTree's ``sampler`` attribute.
    n_patterns : int, optional
        Missing-data patterns the compiled code is built for (default: the next power of
        two of the data's).
    tempering : int or sequence of float, optional
        ChEES-HMC with replica exchange (parallel tempering; :func:`bayes.compiled.chees_loop`):
        every chain becomes the cold member of a ladder of replicas sampling the posterior raised
        to powers ``1 = b_0 > b_1 > ... > 0``, neighbours exchanging states after every
        transition. An int ``T``: ``T`` powers spaced geometrically from 1 to
        :data:`TEMPERING_MIN_BETA`; a sequence: the powers themselves. It moves chains between
        modes that plain HMC leaves only rarely (measured on a 100 x 2000, Q = 5 posterior with
        two metastable states: see benchmarks/results/bayes.md), at ``T`` times the gradients per
        draw. Needs ``kernel="chees"`` (or ``"auto"`` resolving to it). The DataTree's
        ``posterior`` attribute ``tempering`` records the powers and the exchange rate of each
        neighbouring pair; ``sample_stats.swapped`` marks the draws at which a chain's state
        came from its hotter neighbour; ``sample_stats.n_steps`` counts the cold replica's
        leapfrog steps (the ladder takes ``T`` times as many gradients). Default None: no
        tempering.
    frame : bool, optional
        Sample free Theta on orthonormal covariates (see ``theta_coords``; recorded in the
        ``sampler_settings`` attribute as ``theta_frame``). Default None: wherever it applies
        (free Theta, in direct coordinates or a conditional model); False: on the given
        covariates. Measured on four 20 x 300, Q = 2 data sets with the covariate moved to
        ``c + x`` (x of sd 1; benchmarks/results/bayes.md): at ``c = 1000`` max r_hat
        1.029-1.133 and min bulk ESS 20-162 in 18-19 s on the given covariates, 1.001-1.003 and
        1331-5092 in 8-11 s on the frame.
    """

    @renamed(n_features="P", n_units="N", n_covariates="K")
    def __init__(self, model: str = "joint", rank: int = 1, P: int | None = None,
                 N: int | None = None, K: int = 1, *, theta: str = "free",
                 num_warmup: int = 1000, num_samples: int | None = None, num_chains: int = 4,
                 chain_method: str | None = None, target_accept: float = 0.9, mass: str = "auto",
                 adapt_mass: bool = True, simplex: str = "folded", jitter: float = 1.0,
                 max_tree_depth: int = 10, n_patterns: int | None = None, theta_coords: str = "direct",
                 relabel: bool = True, kernel: str = "auto", tempering=None, frame: bool | None = None):
        model = v.choice(model, "model", MODELS)
        rank = v.integer(rank, "rank")
        P = None if P is None else v.integer(P, "P")
        self.N = None if N is None else v.integer(N, "N", minimum=2)
        K = v.integer(K, "K")
        self.theta_kind = v.choice(theta, "theta", THETA_KINDS)
        kernel = v.choice(kernel, "kernel", KERNELS)
        chain_method = _chain_method(chain_method, v.integer(num_chains, "num_chains"))
        theta_coords = compiled.check_theta_coords(model, theta_coords)
        num_warmup = v.integer(num_warmup, "num_warmup", minimum=0)
        kernel = _kernel(kernel, model, rank, chain_method, theta_coords, num_chains, num_warmup)
        mass = _mass(v.choice(mass, "mass", MASSES), rank)
        v.choice(simplex, "simplex", SIMPLEXES)
        self.n_patterns = None if n_patterns is None else v.integer(n_patterns, "n_patterns")
        self.adapt_mass = v.boolean(adapt_mass, "adapt_mass")
        self.relabel = v.boolean(relabel, "relabel")
        jitter = v.nonnegative_float(jitter, "jitter")
        self._auto_draws = num_samples is None
        self._used: set = set()
        self.settings = compiled.Settings(
            model, rank, P or 0, K, nonneg=self.theta_kind == "nonneg", simplex=simplex,
            num_warmup=num_warmup,
            num_samples=_num_samples(num_samples, kernel, P, rank), num_chains=num_chains, chain_method=chain_method,
            target_accept=v.open_unit(target_accept, "target_accept"), mass=mass,
            jitter=jitter, max_tree_depth=v.integer(max_tree_depth, "max_tree_depth"),
            theta_coords=theta_coords, kernel=kernel, betas=_betas(tempering, kernel),
            frame=_frame(frame, self.theta_kind, model, theta_coords))

    @property
    def kernel(self) -> str:
        """The kernel that runs: ``"nuts"`` or ``"chees"`` (``kernel="auto"`` resolved)."""
        return self.settings.kernel

    @property
    def theta(self) -> str:
        """Deprecated name of :attr:`theta_kind` (``theta`` is the array of effects)."""
        warnings.warn("Sampler.theta is deprecated, use Sampler.theta_kind", FutureWarning, stacklevel=2)
        return self.theta_kind

    @property
    def n_units(self) -> int | None:
        """Deprecated name of :attr:`N`."""
        warnings.warn("Sampler.n_units is deprecated, use Sampler.N", FutureWarning, stacklevel=2)
        return self.N

    @property
    def compilations(self) -> int:
        """How many times the compiled code this sampler has used was traced (compiled)."""
        return sum(compiled.TRACES[s] for s in self._used)

    def spec(self, Y, A=None, *, fit=None, priors: dict | None = None) -> ModelSpec:
        """Validated inputs (:class:`ModelSpec`) for data ``(Y, A)``."""
        s = self.settings
        spec = model_spec(Y, A, s.rank, s.model, fit, self.theta_kind, priors, self.n_patterns, frame=s.frame)
        if s.n_features and spec.data.P != s.n_features:
            raise ValueError(f"Y has {spec.data.P} features; this sampler was built for {s.n_features}")
        if spec.data.K != s.n_covariates:
            raise ValueError(f"A has {spec.data.K} covariates; this sampler was built for {s.n_covariates}")
        if self.N is not None and spec.data.N != self.N:
            raise ValueError(f"Y has {spec.data.N} units; this sampler was built for {self.N}")
        return spec

    def settings_for(self, spec: ModelSpec) -> compiled.Settings:
        """The static settings (cache key) of a run on ``spec`` (with ``num_samples=None``, the
        default draws for its ``P``)."""
        s = self.settings
        if (spec.frame is not None) != s.frame:
            raise ValueError(f"the spec was built {'with' if spec.frame is not None else 'without'} the covariates' "
                             f"frame (model_spec(..., frame=...)) but this sampler samples Theta "
                             f"{'on the frame' if s.frame else 'on the given covariates'}: build the spec with "
                             "Sampler.spec")
        draws = _num_samples(None, s.kernel, spec.data.P, s.rank) if self._auto_draws else s.num_samples
        return dataclasses.replace(s, n_features=spec.data.P, n_patterns=spec.stats.n_patterns,
                                   flat=spec.flat, adapt_mass=self.adapt_mass, num_samples=draws)

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
            keys = jax.random.split(prng_key(seed), s.num_chains)
            draws, stats = compiled.runner(s)(keys, spec.init, spec.args)
            draws, stats = jax.device_get((draws, stats))
        return dict(draws), dict(stats), spec

    def sample(self, Y, A=None, *, fit=None, priors: dict | None = None, seed=0, draw_U: bool = False,
               posterior_predictive: bool = False, warn: bool = True) -> xr.DataTree:
        """Sample the posterior of ``(Y, A)``; the DataTree of :func:`bayes.sample`."""
        import jax

        draw_U = v.boolean(draw_U, "draw_U")
        posterior_predictive = v.boolean(posterior_predictive, "posterior_predictive")
        warn = v.boolean(warn, "warn")

        key = prng_key(seed)
        with jax.enable_x64(True):
            key_mcmc, key_u, key_pp = jax.random.split(key, 3)
        spec = self.spec(Y, A, fit=fit, priors=priors)
        if warn:  # before the sampling, which may take minutes
            warn_prior_shift(spec)
        draws, stats, spec = self.run(Y, A, seed=key_mcmc, spec=spec)
        dt = to_datatree(spec, self.settings_for(spec), draws, stats, key_u if draw_U else None,
                         key_pp if posterior_predictive else None, relabel=self.relabel)
        if warn:
            datatree.warn_diagnostics(dt)
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
        seed : int, numpy.random.Generator or JAX PRNG key
        warn : bool
            :class:`SamplingWarning` for each data set whose diagnostics fail, and
            :class:`bayes.PriorWarning` for each one where the prior on Theta moves its
            posterior (:func:`bayes.prior_shift.warn_prior_shift`).

        Returns
        -------
        list of xarray.DataTree
            As :meth:`sample` would return them (without U or replicated Y).
        """
        import jax

        warn = v.boolean(warn, "warn")
        fits = [None] * len(datasets) if fits is None else list(fits)
        if len(fits) != len(datasets):
            raise ValueError(f"fits has {len(fits)} fits for {len(datasets)} data sets: give one per data set")
        specs = [self.spec(Y, A, fit=f, priors=priors) for (Y, A), f in zip(datasets, fits, strict=True)]
        for i, sp in enumerate(specs if warn else ()):
            warn_prior_shift(sp, f"data set {i}: ")
        B = max(sp.stats.n_patterns for sp in specs)
        specs = [dataclasses.replace(sp, args=(pad_patterns(sp.stats, B),) + sp.args[1:]) for sp in specs]
        s = dataclasses.replace(self.settings_for(specs[0]), n_patterns=B)
        self._used.add(s)
        stack = lambda *xs: np.stack([np.asarray(x) for x in xs])  # noqa: E731
        with jax.enable_x64(True):
            keys = jax.vmap(lambda k: jax.random.split(k, s.num_chains))(jax.random.split(prng_key(seed), len(specs)))
            init = jax.tree.map(stack, *[sp.init for sp in specs])
            args = jax.tree.map(stack, *[sp.args for sp in specs])
            draws, stats = jax.device_get(compiled.batch_runner(s)(keys, init, args))
        out = []
        for i, sp in enumerate(specs):
            dt = to_datatree(sp, s, {k: x[i] for k, x in draws.items()}, {k: x[i] for k, x in stats.items()},
                             relabel=self.relabel)
            if warn:
                datatree.warn_diagnostics(dt)
            out.append(dt)
        return out

    def __repr__(self) -> str:
        s = self.settings
        return (f"Sampler(model={s.model!r}, rank={s.rank}, P={s.n_features or None}, "
                f"K={s.n_covariates}, chains={s.num_chains} x ({s.num_warmup} + {s.num_samples}), "
                f"chain_method={s.chain_method!r}"
                + (f", tempering over {len(s.betas)} temperatures" if s.betas else "")
                + f", compilations={self.compilations})")


def _frame(frame: bool | None, theta_kind: str, model: str, theta_coords: str) -> bool:
    """Whether Theta is sampled on orthonormal covariates: ``frame`` as given (True only where
    it applies), by default wherever it applies (free Theta, direct coordinates or a
    conditional model)."""
    applies = theta_kind == "free" and (model != "joint" or theta_coords == "direct")
    if frame is None:
        return applies
    frame = v.boolean(frame, "frame")
    if frame and not applies:
        raise ValueError("frame=True is for free Theta in direct coordinates (theta='free', and theta_coords="
                         f"'direct' in the joint model); got theta={theta_kind!r}, theta_coords={theta_coords!r}")
    return frame


#: the hottest inverse temperature of ``tempering=T`` (an int): 1000 draws at this power of the 100 x 2000,
#: Q = 5 posterior whose chains stay for thousands of draws in one of two states mixed (r_hat 1.003), at 0.8
#: and 0.95 they did not (1.03, 1.05; benchmarks/results/bayes.md)
TEMPERING_MIN_BETA = 0.5


def _betas(tempering, kernel: str) -> tuple:
    """The inverse temperatures of ``tempering`` (see :class:`Sampler`), checked; ``()`` for none."""
    if tempering is None:
        return ()
    if isinstance(tempering, (bool, np.bool_)):
        raise TypeError(f"tempering must be None, an int or a sequence of inverse temperatures, not {tempering!r}")
    if isinstance(tempering, (int, np.integer)):
        T = v.integer(tempering, "tempering")
        betas = tuple(float(b) for b in np.geomspace(1.0, TEMPERING_MIN_BETA, T)) if T > 1 else ()
    else:
        try:
            betas = tuple(float(b) for b in tempering)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"tempering must be None, an int or a sequence of inverse temperatures, "
                            f"not {tempering!r}") from exc
        if not betas or betas[0] != 1.0 or not all(0.0 < b < a for a, b in zip(betas, betas[1:], strict=False)):
            raise ValueError(f"tempering: the inverse temperatures must start at 1 and decrease strictly, staying "
                             f"above 0; got {list(betas)}")
        betas = betas if len(betas) > 1 else ()
    if betas and kernel != "chees":
        raise ValueError(f"tempering runs replica exchange within ChEES-HMC: it needs kernel='chees' (or 'auto' "
                         f"resolving to it: the joint model at rank > 1), but the kernel here is {kernel!r}")
    return betas


def _mass(mass: str, rank: int) -> str:
    """``"auto"``: dense for rank 1, diagonal above."""
    if mass != "auto":
        return mass
    return "dense" if rank == 1 else "diag"


def _kernel(kernel: str, model: str, rank: int, chain_method: str, theta_coords: str, num_chains: int,
            num_warmup: int = 1) -> str:
    """Resolve ``kernel="auto"`` (see :class:`Sampler`); check an explicit ``"chees"``."""
    if kernel == "auto":
        usable = (model == "joint" and rank > 1 and chain_method == "vectorized" and theta_coords != "marginal"
                  and num_chains >= 2 and num_warmup >= 1 and _has_blackjax())
        return "chees" if usable else "nuts"
    if kernel == "chees":
        compiled.check_chees(chain_method, theta_coords, num_chains, num_warmup)
    return kernel


def _num_samples(num_samples: int | None, kernel: str, P: int | None, rank: int) -> int:
    """The draws per chain: ``num_samples`` checked, or, when None, the kernel's default: 1000
    with NUTS, :data:`CHEES_SAMPLES` by the basis size ``P rank`` with ChEES-HMC (the smaller
    while ``P`` is not known yet)."""
    if num_samples is None:
        if kernel != "chees":
            return 1000
        return CHEES_SAMPLES[1] if P is not None and P * rank > CHEES_LARGE else CHEES_SAMPLES[0]
    return v.integer(num_samples, "num_samples")


def _has_blackjax() -> bool:
    import importlib.util

    return importlib.util.find_spec("blackjax") is not None and importlib.util.find_spec("optax") is not None


def _chain_method(chain_method: str | None, num_chains: int) -> str:
    import jax

    if chain_method is None:
        return "vectorized"
    v.choice(chain_method, "chain_method", CHAIN_METHODS)
    if chain_method == "parallel" and jax.local_device_count() < num_chains:
        return "sequential"
    return chain_method


def sample(Y, A=None, rank: int = 1, *, model: str = "joint", fit=None, theta: str = "free",
           priors: dict | None = None, num_warmup: int = 1000, num_samples: int | None = None,
           num_chains: int = 4, seed=0, progress: bool = False, draw_U: bool = False,
           posterior_predictive: bool = False, chain_method: str | None = None,
           target_accept: float = 0.9, mass: str = "auto", adapt_mass: bool = True,
           simplex: str = "folded", theta_coords: str = "direct", relabel: bool = True,
           kernel: str = "auto", tempering=None, frame: bool | None = None) -> xr.DataTree:
    """Sample the posterior of NMF-RE with NUTS or ChEES-HMC.

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
        The frequentist fit on the same data (fitted here by ML when None; with missing
        cells, on the likelihood of the observed entries). Chains start at it and, for rank > 1, are aligned to it
        (columns of X matched by Hungarian assignment).
    theta : {"free", "nonneg"}
    priors : dict, optional
        Overrides of :func:`bayes.models.default_priors`, among those the model uses
        (:data:`bayes.models.USED_PRIORS`: ``"conditional"`` only ``theta_scale``,
        ``"conditional_x"`` all but ``x_concentration``); others are an error.
    num_warmup, num_chains : int
    num_samples : int, optional
        Draws per chain; default 1000 with NUTS, with ChEES-HMC 2000 or 4000 by the size of
        the basis (see :class:`Sampler`).
    seed : int, numpy.random.Generator or JAX PRNG key
        See :func:`bayes.seeds.prng_key`.
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
    kernel : {"auto", "nuts", "chees"}
        ``"auto"`` (default): ChEES-HMC for the joint model with rank > 1, NUTS otherwise;
        see :class:`Sampler`.
    tempering : int or sequence of float, optional
        Replica exchange within ChEES-HMC (``T`` temperatures, or the inverse temperatures
        themselves); see :class:`Sampler`. Default None.
    frame : bool, optional
        Free Theta sampled on orthonormal covariates (default: wherever it applies); see
        :class:`Sampler`.

    Returns
    -------
    xarray.DataTree
        Groups ``posterior`` (``theta``, ``X``, ``sigma``, ``tau``, the variances ``sigma2``,
        ``tau2``, ``U`` when drawn), ``sample_stats``, ``observed_data`` (and
        ``posterior_predictive``; ``Y`` with dims ``(feature, unit)`` as in nmfre), with the fit's
        coordinates. Warns (:class:`SamplingWarning`) when max r_hat > 1.01, min bulk ESS
        < 400 or there are divergences, and before sampling (:class:`bayes.PriorWarning`) where
        the prior on free Theta moves its conditional posterior mean where the chains start by more than
        :data:`bayes.prior_shift.PRIOR_SHIFT_MAX` posterior sds (uncentred covariates,
        :func:`bayes.theta_prior_shift`).
    """
    del progress
    data = coerce(Y, A)
    sampler = Sampler(model, rank, data.P, None, data.K, theta=theta, num_warmup=num_warmup,
                      num_samples=num_samples, num_chains=num_chains, chain_method=chain_method,
                      target_accept=target_accept, mass=mass, adapt_mass=adapt_mass, simplex=simplex,
                      theta_coords=theta_coords, relabel=relabel, kernel=kernel, tempering=tempering,
                      frame=frame)
    return sampler.sample(Y, A, fit=fit, priors=priors, seed=seed, draw_U=draw_U,
                          posterior_predictive=posterior_predictive)
