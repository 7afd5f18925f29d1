"""NUTS and ChEES-HMC compiled once per (model, data shape, settings) and reused across data sets.

``numpyro.infer.MCMC.run`` builds a fresh closure, hence a fresh compilation of its
sampling loop, on every call (1-2 s each, and compiled code accumulates: memory grows
with every call). Here the whole run for one chain (warm-up and sampling) is one traced
function of ``(PRNG key, starting values, data)`` built on NumPyro's functional NUTS
(:func:`numpyro.infer.hmc.hmc`); it is jitted (chains vectorized or run one after the
other inside it) or pmapped (one chain per device) once and cached in a module-level
dict keyed by :class:`Settings`. The data enter only as traced arguments: the compressed
statistics (:class:`bayes.likelihood.Stats`, whose shapes do not depend on the number of
units), the prior scales and, for the conditional models, X and the fixed variances.

Warm start (:func:`laplace`): from the starting values (the frequentist fit), a few
damped Newton steps find the mode of the posterior in unconstrained space; the inverse
Hessian there is the initial inverse mass matrix (dense or its diagonal), and each chain
starts at a draw from this Laplace approximation (scaled by ``jitter``). Warm-up then
adapts the step size and, when ``adapt_mass``, the mass matrix (NumPyro's windowed
Welford estimates). NUTS runs warm-up and sampling as one loop over one copy of its
kernel; so does ChEES-HMC (:func:`chees_loop`, BlackJAX's ensemble adaptation with all chains
vectorised): each copy of an HMC kernel puts the model's gradient into the compiled program
once more, and compilation is most of a small run's time.

:data:`TRACES` counts how often each runner has been traced (= compiled).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc import hmc
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from nmfre import validation as v

from . import models

__all__ = ["TRACES", "Settings", "batch_runner", "check_chees", "chees_loop", "clear_cache", "hessian_fd",
           "laplace", "model_function", "potential", "prepare", "runner", "swap_replicas"]

#: number of traces (compilations) per :class:`Settings`
TRACES: Counter = Counter()
_CACHE: dict = {}


@dataclass(frozen=True)
class Settings:
    """Everything static about a sampler run (the cache key).

    Attributes
    ----------
    model : str
        ``"joint"``, ``"conditional_x"`` or ``"conditional"``.
    rank, n_features, n_covariates, n_patterns : int
        Q, P, K and the number of missing-data patterns of the statistics.
    nonneg : bool
        Non-negative Theta.
    flat : bool
        Flat prior on Theta (``conditional`` only).
    simplex : str
        ``"folded"``, ``"ilr"`` or ``"stickbreaking"`` (``joint`` only).
    num_warmup, num_samples, num_chains : int
    chain_method : str
        ``"vectorized"``, ``"sequential"`` or ``"parallel"``.
    target_accept : float
    mass : str
        ``"dense"`` or ``"diag"``.
    adapt_mass : bool
        Adapt the mass matrix during warm-up (else keep the Laplace one).
    newton_steps : int
        Damped Newton steps towards the unconstrained mode (0: Hessian at the start).
    jitter : float
        Chains start at ``mode + jitter * L e`` (``L L'`` = Laplace covariance).
    max_tree_depth : int
    theta_coords : str
        ``"direct"``, ``"conditional"`` (joint model: Theta centred and scaled by its
        Gaussian conditional given X, sigma, tau; used with the folded simplex or free
        Theta, see :func:`sheared`) or ``"marginal"`` (joint model: Theta integrated out,
        NUTS on X, sigma, tau, Theta drawn from its conditional after every transition;
        see :func:`marginal`).
    theta_draws : int
        ``"marginal"`` with non-negative Theta: draws of Theta's Gaussian conditional per
        transition in the accept/reject correction (:func:`_theta_step`).
    kernel : str
        ``"nuts"`` (NumPyro's NUTS, :func:`_chain`) or ``"chees"`` (BlackJAX's ChEES-HMC
        with an ensemble-adapted step size, trajectory length and diagonal metric,
        :func:`_chees`; chains vectorised).
    betas : tuple of float
        ChEES-HMC with replica exchange: the inverse temperatures of each chain's ladder
        (``1 = b_0 > b_1 > ...``, see :func:`chees_loop`); ``()``: no tempering.
    frame : bool
        Free Theta sampled on orthonormal covariates (site ``theta_frame``; see
        :func:`bayes.models.joint`): the traced arguments end with the frame's ``T`` and the
        statistics are those of ``T^-1 A`` (:func:`bayes.spec.model_spec` with ``frame=True``).
    """

    model: str
    rank: int
    n_features: int
    n_covariates: int
    n_patterns: int = 1
    nonneg: bool = False
    flat: bool = False
    simplex: str = "ilr"
    num_warmup: int = 1000
    num_samples: int = 1000
    num_chains: int = 4
    chain_method: str = "vectorized"
    target_accept: float = 0.9
    mass: str = "dense"
    adapt_mass: bool = True
    newton_steps: int = 6
    jitter: float = 1.0
    max_tree_depth: int = 10
    theta_coords: str = "direct"
    theta_draws: int = 16
    kernel: str = "nuts"
    betas: tuple = ()
    frame: bool = False


def model_function(s: Settings, predictive: bool = False):
    """The model as a function of the traced arguments only (statics bound): the one
    dispatch from :class:`Settings` to :mod:`bayes.models`.

    The function's first argument is the compressed statistics (what the sampler traces);
    with ``predictive=True`` it is ``A`` instead and the model draws ``Y`` (for
    ``numpyro.infer.Predictive``; X's columns and Theta are then plain sample sites,
    ``"ilr"`` and unfolded, on the given covariates, so posterior draws substitute for
    them). With ``s.frame`` the last argument is the frame's ``T`` (unused by the
    predictive model).
    """
    simplex = "ilr" if predictive else s.simplex
    folded = simplex == "folded"

    def data(first):  # (Y, A): the statistics, or the covariates of replicated Y
        return (None, first) if predictive else (first, None)

    def frame(rest):  # the frame's T, for the sampled model only
        return rest[0] if s.frame and not predictive else None

    if s.model == "joint":
        def fn(first, priors, *rest):
            models.joint(*data(first), s.rank, nonneg=s.nonneg, priors=priors, P=s.n_features, simplex=simplex,
                         theta_coords=s.theta_coords, frame=frame(rest))
    elif s.model == "conditional_x":
        def fn(first, X, priors, *rest):
            models.conditional_x(*data(first), X, nonneg=s.nonneg, priors=priors, folded=folded, frame=frame(rest))
    else:
        def fn(first, X, sigma2, tau2, priors, *rest):
            models.conditional(*data(first), X, sigma2, tau2, nonneg=s.nonneg, priors=None if s.flat else priors,
                               folded=folded, frame=frame(rest))
    return fn


def _sym_inverse(H, floor: float = 1e-10):
    """Inverse of a symmetric matrix with eigenvalues replaced by their absolute values
    (floored relative to the largest), its variances capped at ``max(1, 100 median)``:
    a positive definite covariance that stays finite where the curvature vanishes (e.g.
    a variance component started at its boundary)."""
    w, V = jnp.linalg.eigh(0.5 * (H + H.T))
    w = jnp.abs(w)
    c = 1.0 / jnp.maximum(w, floor * jnp.max(w))
    c = jnp.minimum(c, jnp.maximum(1.0, 100.0 * jnp.median(c)))
    return (V * c) @ V.T


def hessian_fd(grad, z, rel: float = 1e-5):
    """Hessian by central differences of the gradient (one vectorised gradient over
    ``2 d`` points: far cheaper to compile than forward-over-reverse AD), symmetrised."""
    h = rel * jnp.maximum(1.0, jnp.abs(z))
    E = jnp.diag(h)
    g = jax.vmap(grad)(jnp.concatenate([z + E, z - E]))
    d = z.shape[0]
    H = (g[:d] - g[d:]) / (2.0 * h[:, None])
    return 0.5 * (H + H.T)


def laplace(pe, z, steps: int):
    """Damped Newton steps on the potential ``pe`` from ``z``; returns the final point
    and the (eigenvalue-corrected) inverse Hessian there (one Hessian in the compiled
    code: the last pass only evaluates it)."""
    grad = jax.grad(pe)
    if steps == 0:
        return z, _sym_inverse(hessian_fd(grad, z))
    ts = jnp.array([1.0, 0.5, 0.25, 0.1, 0.03, 0.0])

    def body(i, carry):
        z, _ = carry
        cov = _sym_inverse(hessian_fd(grad, z))
        step = cov @ grad(z)
        vals = jax.vmap(lambda t: pe(z - t * step))(ts)
        vals = jnp.where(jnp.isfinite(vals) & ((i < steps) | (ts == 0.0)), vals, jnp.inf)
        return z - ts[jnp.argmin(vals)] * step, cov

    return jax.lax.fori_loop(0, steps + 1, body, (z, jnp.eye(z.shape[0], dtype=z.dtype)))


def potential(s: Settings, init: dict, args: tuple):
    """``(pe, unravel, z0)``: the potential energy (minus the log posterior density, up to a
    constant) of the model's unconstrained coordinates as a function of one flat vector, the
    function that turns such a vector into the model's sites, and the starting values
    flattened."""
    model = model_function(s)
    zdict = unconstrain_fn(model, args, {}, _coordinates(s, init, args))
    z0, unravel = ravel_pytree(zdict)

    def pe(z):
        return potential_energy(model, args, {}, unravel(z))

    return pe, unravel, z0


def coordinate_labels(s: Settings, init: dict, args: tuple) -> tuple[list[str], list[str]]:
    """The names of the flat vector's entries in :func:`potential` (``"site[i,j]"``, the index
    into the site's unconstrained value; ``"site"`` for a scalar site), and each entry's site:
    read off the flat positions ``0 .. d-1`` unravelled by :func:`potential`'s own function."""
    _, unravel, z0 = potential(s, init, args)
    names, sites = [""] * z0.shape[0], [""] * z0.shape[0]
    for site, pos in unravel(jnp.arange(z0.shape[0], dtype=z0.dtype)).items():
        pos = np.asarray(pos)
        for cell in np.ndindex(pos.shape):
            i = int(pos[cell])
            names[i], sites[i] = f"{site}[{','.join(map(str, cell))}]" if cell else site, site
    return names, sites


def prepare(s: Settings, init: dict, args: tuple):
    """The Laplace warm start shared by the sampler and :func:`bayes.fit_vi`: unconstrained
    mode ``z``, Laplace covariance, potential energy and the unravel function."""
    pe, unravel, z0 = potential(s, init, args)
    z, cov = laplace(pe, z0, laplace_steps(s))
    return z, cov, pe, unravel


def laplace_steps(s: Settings) -> int:
    """The Newton steps of the Laplace warm start: ``s.newton_steps``, none in folded
    coordinates (they have kinks at 0: the Hessian at the start)."""
    return 0 if s.simplex == "folded" else s.newton_steps


def _coordinates(s: Settings, init: dict, args: tuple = ()) -> dict:
    """Starting values in the model's sampled sites (expanded coordinates of X)."""
    init = dict(init)
    if s.frame and "theta" in init:  # the effects on the frame's covariates
        init["theta_frame"] = jnp.asarray(init.pop("theta")) @ jnp.asarray(args[-1])
    if marginal(s):
        init.pop("theta", None)
    elif s.model == "joint" and sheared(s):
        stats, priors = args
        X = jnp.asarray(init["X_columns"]).T
        init["theta_delta"] = models.theta_delta(stats, X, init["sigma"] ** 2, init["tau"] ** 2,
                                                 init.pop("theta"), priors["theta_scale"])
    if s.simplex == "folded":  # |w| summing to P; nonneg Theta = |v|
        if "X_columns" in init:
            init["X_raw"] = jnp.maximum(s.n_features * jnp.asarray(init.pop("X_columns")), 1e-8)
        if s.nonneg and "theta" in init:
            init["theta_raw"] = jnp.maximum(jnp.asarray(init.pop("theta")), 1e-8)
    return init


def sheared(s: Settings) -> bool:
    """Whether the joint model samples Theta in conditional (sheared) coordinates."""
    return s.theta_coords == "conditional" and (s.simplex == "folded" or not s.nonneg)


def marginal(s: Settings) -> bool:
    """Whether the joint model integrates Theta out (NUTS on X, sigma, tau)."""
    return s.model == "joint" and s.theta_coords == "marginal"


def theta_sampler(s: Settings, args, unravel):
    """``(z, key) -> (Theta, log p_hat)``: Theta given the unconstrained ``z`` of (X, sigma, tau).

    Free Theta: one exact draw of its Gaussian conditional (:func:`bayes.models.theta_conditional`),
    ``log p_hat = 0``. Non-negative Theta (half-normal prior = the normal prior restricted
    to ``Theta >= 0``): ``theta_draws`` draws of the Gaussian conditional; ``p_hat`` is the
    fraction that are >= 0 in every entry (an unbiased estimate of the orthant probability
    ``p_+(X, sigma, tau)`` by which the marginal of (X, sigma, tau) differs from the
    free-Theta one NUTS samples) and Theta is one of those, chosen uniformly: given
    (X, sigma, tau) it is an exact draw of the truncated Gaussian."""
    stats, priors = args
    model = model_function(s)
    Q = s.rank

    def fn(z, key):
        c = constrain_fn(model, args, {}, unravel(z), return_deterministic=True)
        mean, L = models.theta_conditional(stats, c["X"], c["sigma"] ** 2, c["tau"] ** 2, priors["theta_scale"])
        if not s.nonneg:
            return models.theta_draw(mean, L, jax.random.normal(key, mean.shape), Q), jnp.zeros((), mean.dtype)
        k1, k2 = jax.random.split(key)
        th = models.theta_draw(mean, L, jax.random.normal(k1, (s.theta_draws,) + mean.shape), Q)
        ok = jnp.all(th >= 0.0, axis=(-2, -1))
        pick = jax.random.categorical(k2, jnp.where(ok, 0.0, -jnp.inf))
        return th[pick], jnp.log(jnp.mean(ok))

    return fn


def _theta_step(s: Settings, theta_fn, key, old, new, theta, logp):
    """After a NUTS transition ``old -> new`` on (X, sigma, tau): Theta and the correction.

    Free Theta: Theta drawn given ``new``. Non-negative: a pseudo-marginal accept/reject
    (Andrieu & Roberts 2009) with NUTS, reversible for the free-Theta marginal, as the
    proposal: accept ``new`` with probability ``min(1, p_hat(new) / p_hat(old))``, else stay
    at ``old`` (with its Theta and ``p_hat``). The chain of (X, sigma, tau, Theta) then has
    the half-normal model's posterior as its invariant law, exactly, whatever the number of
    draws in ``p_hat`` (more draws: fewer rejections)."""
    k_theta, k_u = jax.random.split(key)
    th, lp = theta_fn(new.z, k_theta)
    if not s.nonneg:
        return new, th, lp, jnp.ones((), bool)
    accept = jnp.isfinite(lp) & (jnp.log(jax.random.uniform(k_u)) < lp - logp)
    kept = new._replace(z=old.z, z_grad=old.z_grad, potential_energy=old.potential_energy)
    state = jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, kept)
    return state, jnp.where(accept, th, theta), jnp.where(accept, lp, logp), accept


def _chain(s: Settings, key, z, cov, pe, theta_fn=None, keep_warmup: bool = False):
    """Warm-up and sampling for one chain; returns unconstrained draws and statistics
    (and Theta's draws when it is integrated out: ``theta_fn``, :func:`theta_sampler`).
    ``keep_warmup``: the warm-up's draws and statistics too (``num_warmup + num_samples``
    of each; benchmarks count the warm-up's gradients from them)."""
    key_init, key_run = jax.random.split(key)
    c, V = jnp.linalg.eigh(cov)  # start at a draw from the Laplace approximation, sd at most 1 per direction
    z = z + s.jitter * (V * jnp.sqrt(jnp.clip(c, 0.0, 1.0))) @ jax.random.normal(key_init, z.shape)
    imm = cov if s.mass == "dense" else jnp.diagonal(cov)
    init_kernel, sample_kernel = hmc(potential_fn=pe, algo="NUTS")
    state = init_kernel(z, s.num_warmup, inverse_mass_matrix=imm, adapt_mass_matrix=s.adapt_mass,
                        dense_mass=s.mass == "dense", target_accept_prob=s.target_accept,
                        max_tree_depth=s.max_tree_depth, rng_key=key_run)

    def stats_of(st):
        return {"diverging": st.diverging, "n_steps": st.num_steps, "acceptance_rate": st.accept_prob,
                "energy": st.energy, "lp": -st.potential_energy}

    n = s.num_warmup + s.num_samples
    if theta_fn is None:
        def step(st, _):
            st = sample_kernel(st)
            return st, (st.z, stats_of(st))

        # one loop over warm-up and sampling (one copy of the NUTS kernel in the compiled code)
        state, (zs, stats) = jax.lax.scan(step, state, None, length=n)
    else:
        key_theta, key_steps = jax.random.split(jax.random.fold_in(key_run, 1))
        theta0, logp0 = theta_fn(state.z, key_theta)

        def step(carry, k):
            st, theta, logp = carry
            new = sample_kernel(st)
            new, theta, logp, acc = _theta_step(s, theta_fn, k, st, new, theta, logp)
            return (new, theta, logp), (new.z, {**stats_of(new), "theta": theta, "theta_accept": acc})

        (state, _, _), (zs, stats) = jax.lax.scan(step, (state, theta0, logp0), jax.random.split(key_steps, n))
    if not keep_warmup:
        zs, stats = jax.tree.map(lambda x: x[s.num_warmup:], (zs, stats))
    stats["step_size"] = jnp.full(zs.shape[0], state.adapt_state.step_size)
    return zs, stats


#: ChEES-HMC: Adam learning rate of the trajectory-length adaptation and initial step size
#: (BlackJAX's example values; measured in benchmarks/bench_samplers.py)
CHEES_LEARNING_RATE = 0.025
CHEES_INITIAL_STEP = 0.01


#: Theta's coordinates in the joint model (:func:`bayes.sampling.sample`)
THETA_COORDS = ("conditional", "direct", "marginal")


def check_theta_coords(model: str, theta_coords: str) -> str:
    """``theta_coords`` for ``model``: one of ``"direct"``, ``"conditional"``, ``"marginal"``,
    the last two for the joint model only (Theta's coordinates there; the other models
    sample Theta directly, and recorded a setting they ignored)."""
    v.choice(theta_coords, "theta_coords", THETA_COORDS)
    if theta_coords != "direct" and model != "joint":
        raise ValueError(f"theta_coords={theta_coords!r} is for model='joint' (Theta's coordinates there); "
                         f"model={model!r} samples Theta directly")
    return theta_coords


def check_chees(chain_method: str, theta_coords: str, num_chains: int, num_warmup: int = 1) -> None:
    """ChEES-HMC's requirements, checked before any computation."""
    if num_warmup < 1:
        raise ValueError(f"kernel='chees' adapts its step size and trajectory length during warm-up: num_warmup "
                         f"must be at least 1, got {num_warmup}")
    if chain_method != "vectorized":
        raise ValueError(f"kernel='chees' adapts the chains as one ensemble: chain_method must be 'vectorized', "
                         f"not {chain_method!r}")
    if theta_coords == "marginal":
        raise ValueError("kernel='chees' does not support theta_coords='marginal' (Theta is drawn inside NUTS's "
                         "transitions there); use 'direct' or 'conditional'")
    if num_chains < 2:
        raise ValueError(f"kernel='chees' adapts across chains: num_chains must be at least 2, got {num_chains}")
    try:
        import blackjax  # noqa: F401
        import optax  # noqa: F401
    except ImportError as exc:
        raise ImportError("kernel='chees' needs the blackjax package (pip install blackjax)") from exc


def swap_replicas(states, betas, rungs, parity, key):
    """One round of replica exchange between neighbouring temperatures of every ladder.

    Replica ``c`` sits at inverse temperature ``betas[c]`` (its ladder position ``rungs[c]``,
    0 the cold one; the replicas of a ladder are consecutive) and holds a position ``v = sqrt(b)
    u`` in coordinates scaled to its temperature, with log density ``b l(u)`` and its
    gradient. The pairs ``(t, t + 1)`` with ``t = parity`` modulo 2 propose to exchange their
    states (the deterministic even-odd scheme: alternating the parity makes the exchanges
    non-reversible, Okabe et al. 2001, Syed et al. 2022), accepted with probability ``min(1,
    exp((b_t - b_t+1) (l(u_t+1) - l(u_t))))``. An exchanged state is carried to its new
    temperature exactly: ``v`` and the gradient scaled by ``sqrt(b_new / b_old)``, the log
    density by ``b_new / b_old`` (no new evaluation of the density).

    Returns ``(states, swapped, accept)``: ``swapped[c]``, replica ``c`` took its neighbour's
    state; ``accept[c]``, the acceptance probability of the pair whose lower member is ``c`` (0
    where ``c`` proposes nothing as the lower member).
    """
    C = betas.shape[0]
    ell = states.logdensity / betas
    n = jnp.max(rungs) + 1
    lower = ((rungs - parity) % 2 == 0) & (rungs + 1 < n)
    upper = ((rungs - 1 - parity) % 2 == 0) & (rungs >= 1)
    idx = jnp.arange(C)
    partner = jnp.where(lower, idx + 1, jnp.where(upper, idx - 1, idx))
    log_ratio = (betas - betas[partner]) * (ell[partner] - ell)
    accept_low = lower & (jnp.log(jax.random.uniform(key, (C,))) < log_ratio)
    swap = accept_low | (upper & accept_low[jnp.clip(idx - 1, 0, C - 1)])
    root = jnp.sqrt(betas / betas[partner])
    states = states._replace(
        position=jnp.where(swap[:, None], root[:, None] * states.position[partner], states.position),
        logdensity=jnp.where(swap, (betas / betas[partner]) * states.logdensity[partner], states.logdensity),
        logdensity_grad=jnp.where(swap[:, None], root[:, None] * states.logdensity_grad[partner],
                                  states.logdensity_grad))
    return states, swap, jnp.where(lower, jnp.minimum(1.0, jnp.exp(log_ratio)), 0.0)


def chees_loop(logdensity, starts, key, num_warmup: int, num_samples: int, max_leapfrog_steps: int,
               learning_rate: float | None = None, initial_step: float | None = None, betas=None):
    """ChEES-HMC warm-up and sampling in one loop: ``blackjax.chees_adaptation(...,
    mass_matrix_estimation="diagonal").run`` followed by ``blackjax.dynamic_hmc`` with the adapted
    parameters, step for step, but with one copy of the HMC kernel in the compiled code.

    The two-phase form compiles the leapfrog integrator (the model's gradient) twice, once in the
    adaptation's loop and once in the sampling loop; here one ``lax.scan`` of ``num_warmup +
    num_samples`` steps runs the kernel with the adaptation's current parameters during warm-up
    and with its final ones (the moving averages, the Welford diagonal metric, the slow-direction
    length floor; computed once, after the last warm-up step) afterwards. Keys, the Halton jitter
    and every update follow BlackJAX's ``run`` (blackjax 1.7, whose adaptation internals this
    reuses; ``tests/test_bayes_chees.py`` checks the two forms give the same draws).

    Parameters
    ----------
    logdensity : callable
        Log density of one flat position.
    starts : jax.Array
        ``(chains, d)`` starting positions.
    key : jax.Array
        PRNG key (split into warm-up and sampling keys as BlackJAX's ``run`` and a ``scan`` over
        ``jax.random.split(k_run, num_samples)`` would).
    num_warmup, num_samples : int
        Steps of each phase (``num_warmup >= 1``).
    max_leapfrog_steps : int
        Cap on the leapfrog steps of a trajectory.
    learning_rate, initial_step : float, optional
        Adam's learning rate for the trajectory length and the initial step size (default
        :data:`CHEES_LEARNING_RATE`, :data:`CHEES_INITIAL_STEP`).
    betas : sequence of float, optional
        Replica exchange (parallel tempering): each chain becomes a ladder of replicas at these
        inverse temperatures (``1 = b_0 > b_1 > ... > 0``), replica ``t`` sampling ``p(u)^b_t``
        in the coordinates ``v = sqrt(b_t) u``, where every tempered replica of a roughly
        Gaussian target has the cold one's scale, so one ensemble adaptation (step size,
        trajectory length, diagonal metric, over all replicas) fits them all. After every
        transition, neighbouring replicas propose to exchange states
        (:func:`swap_replicas`, even and odd pairs in turn). The cold replicas are returned.
        None or ``(1.0,)``: no tempering (the loop above, step for step).

    Returns
    -------
    positions : jax.Array
        ``(num_samples, chains, d)``.
    stats : dict
        Per draw and chain: ``diverging``, ``n_steps``, ``acceptance_rate``, ``energy``, ``lp``;
        with ``betas``, also ``swapped`` (the cold replica took another replica's state at that
        step) and ``swap_accept`` (``(num_samples, chains, T - 1)``: the acceptance probability
        of each neighbouring pair, 0 at the steps where the pair was not proposed).
    step_size : jax.Array
        The adapted step size.
    """
    import blackjax.mcmc.dynamic_hmc as dynamic_hmc
    import numpy as np
    import optax
    from blackjax.adaptation import chees_adaptation as ca
    from blackjax.adaptation.mass_matrix import welford_algorithm
    from blackjax.adaptation.metric_buffers import MomentBlock, cgl_update_batch

    lr = CHEES_LEARNING_RATE if learning_rate is None else learning_rate
    eps0 = CHEES_INITIAL_STEP if initial_step is None else initial_step
    L, d = starts.shape
    tempered = betas is not None and len(betas) > 1
    T = len(betas) if tempered else 1
    C = L * T  # replica c = ladder * T + rung
    if tempered:
        b = jnp.tile(jnp.asarray(betas, starts.dtype), L)
        rungs = jnp.tile(jnp.arange(T), L)
        cold = np.arange(L) * T
        target = lambda bb: (lambda v: bb * logdensity(v / jnp.sqrt(bb)))  # noqa: E731
    W, S = num_warmup, num_samples
    max_bits = np.ceil(np.log2(W + S))

    def steps_fn(arg, n):
        return jnp.asarray(jnp.ceil(dynamic_hmc.halton_sequence(arg, max_bits) * n), dtype=int)

    kernel = dynamic_hmc.build_kernel(next_random_arg_fn=lambda i: i + 1, integration_steps_fn=steps_fn)
    init_ad, update = ca.base(dynamic_hmc.halton_sequence, lambda i: i + 1, optax.adam(lr),
                              ca.OPTIMAL_TARGET_ACCEPTANCE_RATE, 0.5, max_leapfrog_steps)
    wc_init, wc_update, _ = welford_algorithm(is_diagonal_matrix=True)
    window_start = int(0.5 * W)
    threshold = ca._mass_matrix_engagement_threshold(d)

    def imm_of(mm):
        return ca._diagonal_mass_matrix_or_fallback(mm, threshold, d)

    def final(ad, mm, cov, eig):
        imm = imm_of(mm)
        eig = ca._recompute_eig_state(cov, imm, eig, num_iterations=ca._LENGTH_FLOOR_FINAL_POWER_ITERATIONS)
        eps = jnp.exp(ad.log_step_size_moving_average)
        length, _ = ca._apply_length_floor(jnp.exp(ad.log_trajectory_length_moving_average), eig.lambda_max,
                                           mm.sample_size >= threshold, True, max_leapfrog_steps, eps)
        return eps, imm, length / eps

    def fold(mm, cov, pos):
        mm = jax.lax.scan(lambda acc, x: (wc_update(acc, x), None), mm, pos)[0]
        return mm, cgl_update_batch(cov, pos)

    def step(carry, xs):
        i, k = xs
        states, ad, mm, cov, eig, fin, buf = carry
        warm = i < W
        imm_w = imm_of(mm)
        length, _ = ca._apply_length_floor(ad.trajectory_length, eig.lambda_max, mm.sample_size >= threshold,
                                           True, max_leapfrog_steps, ad.step_size)
        eps = jnp.where(warm, ad.step_size, fin[0])
        imm = jnp.where(warm, imm_w, fin[1])
        n = jnp.where(warm, length / ad.step_size, fin[2])
        if tempered:
            k, k_swap = jax.random.split(k)
            new, info = jax.vmap(lambda kk, st, bb: kernel(kk, st, target(bb), eps, imm, (n,)))(
                jax.random.split(k, C), states, b)
        else:
            new, info = jax.vmap(lambda kk, st: kernel(kk, st, logdensity, eps, imm, (n,)))(jax.random.split(k, C),
                                                                                              states)

        def adapt(args):
            ad, mm, cov, eig = args
            ad = update(ad, info.proposal.position, info.proposal.momentum, states.position, info.acceptance_rate,
                        info.is_divergent, imm_w)
            in_window = i >= window_start
            mm, cov2 = jax.lax.cond(in_window, fold, lambda m, c, p: (m, c), mm, cov, new.position)
            eig = jax.lax.cond(in_window & (i % ca._LENGTH_FLOOR_RECOMPUTE_INTERVAL == 0),
                               lambda e: ca._recompute_eig_state(cov2, imm_w, e), lambda e: e, eig)
            return ad, mm, cov2, eig

        ad, mm, cov, eig = jax.lax.cond(warm, adapt, lambda a: a, (ad, mm, cov, eig))
        fin = jax.lax.cond(i == W - 1, lambda f: final(ad, mm, cov, eig), lambda f: f, fin)
        row = (new.position, {"diverging": info.is_divergent, "n_steps": info.num_integration_steps,
                              "acceptance_rate": info.acceptance_rate, "energy": info.energy,
                              "lp": new.logdensity})
        if tempered:
            new, swapped, accept = swap_replicas(new, b, rungs, i % 2, k_swap)
            row = (new.position[cold], {**{key_: x[cold] for key_, x in row[1].items()}, "lp": new.logdensity[cold],
                                        "swapped": swapped[cold], "swap_accept": accept.reshape(L, T)[:, :-1]})
        # warm-up steps write row 0, which the first sampling step overwrites
        buf = jax.tree.map(lambda x, r: x.at[jnp.maximum(i - W, 0)].set(r), buf, row)
        return (new, ad, mm, cov, eig, fin, buf), None

    k_warm, k_run = jax.random.split(key)
    keys = jnp.concatenate([jax.random.split(k_warm, W), jax.random.split(k_run, S)])
    if tempered:  # every replica of a ladder starts at the ladder's start, scaled to its temperature
        states = jax.vmap(lambda p, bb: dynamic_hmc.init(p, target(bb), 0))(
            jnp.repeat(starts, T, axis=0) * jnp.sqrt(b)[:, None], b)
    else:
        states = jax.vmap(lambda p: dynamic_hmc.init(p, logdensity, 0))(starts)
    ad = init_ad(0, eps0)
    cov = MomentBlock(count=jnp.zeros(()), mean=jnp.zeros((d,)), m2=jnp.zeros((d, d)))
    fin = (jnp.asarray(eps0, starts.dtype), jnp.ones(d, starts.dtype), jnp.ones((), starts.dtype))
    row = (starts, {"diverging": jnp.zeros(L, bool), "n_steps": jnp.zeros(L, int),
                    "acceptance_rate": jnp.zeros(L, starts.dtype), "energy": jnp.zeros(L, starts.dtype),
                    "lp": states.logdensity[::T]})
    if tempered:
        row[1].update(swapped=jnp.zeros(L, bool), swap_accept=jnp.zeros((L, T - 1), starts.dtype))
    buf = jax.tree.map(lambda r: jnp.zeros((S,) + r.shape, r.dtype), row)
    carry = (states, ad, wc_init(d), cov, ca._eig_state_init(d), fin, buf)
    carry, _ = jax.lax.scan(step, carry, (jnp.arange(W + S), keys))
    pos, stats = carry[-1]
    return pos, stats, carry[-2][0]


def _chees(s: Settings, keys, z, cov, pe):
    """All chains of ChEES-HMC (Hoffman, Radul & Sountsov 2021; BlackJAX's ChEES adaptation and
    dynamic HMC, run by :func:`chees_loop`) on the potential ``pe``.

    Coordinates are scaled by the Laplace standard deviations (the diagonal of ``cov``, the
    metric NUTS starts from); every chain starts as :func:`_chain`'s does (the mode plus
    ``jitter`` times a capped Laplace draw, from its own key). The ensemble of chains adapts
    one step size, trajectory length and diagonal metric during ``num_warmup`` steps; the
    ``num_samples`` draws follow with those fixed. The trajectory is capped at
    ``2**max_tree_depth`` leapfrog steps, the bound on NUTS's gradients per draw. With
    ``s.betas``, each chain is the cold replica of a tempered ladder (:func:`chees_loop`), every
    replica starting at its chain's start. Returns unconstrained draws
    ``(chain, draw, d)`` and statistics in :func:`_chain`'s layout (``n_steps``: leapfrog
    steps per draw)."""
    sd = jnp.sqrt(jnp.diagonal(cov))
    c, V = jnp.linalg.eigh(cov)
    root = V * jnp.sqrt(jnp.clip(c, 0.0, 1.0))

    def start(key):
        return s.jitter * (root @ jax.random.normal(jax.random.split(key)[0], z.shape)) / sd

    starts = jax.vmap(start)(keys)
    logdensity = lambda u: -pe(z + sd * u)  # noqa: E731
    pos, stats, eps = chees_loop(logdensity, starts, jax.random.fold_in(keys[0], 1), s.num_warmup, s.num_samples,
                                 2**s.max_tree_depth, betas=s.betas or None)
    zs, stats = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (z + sd * pos, stats))  # (chain, draw, ...)
    stats["step_size"] = jnp.full(zs.shape[:2], eps)
    return zs, stats


def _constrain(s: Settings, args, unravel, zs, stats=None):
    """Constrained draws (and deterministic sites) for an array of unconstrained draws
    (Theta from ``stats`` when it was integrated out and drawn in the chain)."""
    model = model_function(s)

    def one(z):
        out = constrain_fn(model, args, {}, unravel(z), return_deterministic=True)
        out.pop("X_columns", None)
        for name in ("X_raw", "theta_raw", "theta_delta", "theta_frame"):
            out.pop(name, None)
        return out

    draws = jax.vmap(jax.vmap(one))(zs)
    if stats is not None and "theta" in stats:
        draws["theta"] = stats.pop("theta")
    return draws, stats


def _run_all(s: Settings, keys, init, args):
    """All chains inside one traced function (vectorized or one after the other)."""
    TRACES[s] += 1
    z, cov, pe, unravel = prepare(s, init, args)
    theta_fn = theta_sampler(s, args, unravel) if marginal(s) else None
    chain = partial(_chain, s, z=z, cov=cov, pe=pe, theta_fn=theta_fn)
    if s.kernel == "chees":
        zs, stats = _chees(s, keys, z, cov, pe)
    elif s.chain_method == "vectorized":
        zs, stats = jax.vmap(lambda k: chain(k))(keys)
    else:
        zs, stats = jax.lax.map(lambda k: chain(k), keys)
    return _constrain(s, args, unravel, zs, stats)


def _run_one(s: Settings, key, init, args):
    """One chain, from its own Laplace start (the body of the pmapped runner)."""
    TRACES[s] += 1
    z, cov, pe, unravel = prepare(s, init, args)
    theta_fn = theta_sampler(s, args, unravel) if marginal(s) else None
    zs, stats = _chain(s, key, z, cov, pe, theta_fn)
    theta = {"theta": stats.pop("theta")[None]} if "theta" in stats else None
    return _constrain(s, args, unravel, zs[None], theta)[0], stats


def runner(s: Settings):
    """The compiled function ``(keys (C, 2), init dict, args tuple) -> (draws, stats)``
    for ``s``, from the cache (built on first use)."""
    fn = _CACHE.get(s)
    if fn is None:
        if s.chain_method == "parallel":
            pm = jax.pmap(partial(_run_one, s), in_axes=(0, None, None))

            def fn(keys, init, args):
                draws, stats = pm(keys, init, args)
                return jax.tree.map(lambda x: x[:, 0], draws), stats
        else:
            fn = jax.jit(partial(_run_all, s))
        _CACHE[s] = fn
    return fn


def batch_runner(s: Settings):
    """Like :func:`runner`, vectorised over a leading data-set axis of the keys, starting
    values and arguments (chains vectorized or sequential within each data set)."""
    key = ("batch", s)
    fn = _CACHE.get(key)
    if fn is None:
        inner = s if s.chain_method != "parallel" else dataclasses.replace(s, chain_method="vectorized")
        fn = _CACHE[key] = jax.jit(jax.vmap(partial(_run_all, inner)))
    return fn


def clear_cache() -> None:
    """Forget every compiled runner (and JAX's own caches; :func:`bayes.fit_vi` keeps its own,
    see ``bayes.vi._CACHE`` and ``bayes.dadvi._CACHE``)."""
    _CACHE.clear()
    jax.clear_caches()
