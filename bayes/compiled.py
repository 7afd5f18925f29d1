"""NUTS compiled once per (model, data shape, settings) and reused across data sets.

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
Welford estimates).

:data:`TRACES` counts how often each runner has been traced (= compiled).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc import hmc
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from . import models

__all__ = ["TRACES", "Settings", "batch_runner", "clear_cache", "hessian_fd", "laplace", "model_function", "prepare",
           "runner"]

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
        ``"direct"`` or ``"conditional"`` (joint model: Theta centred and scaled by its
        Gaussian conditional given X, sigma, tau; used with the folded simplex or free
        Theta, see :func:`sheared`).
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


def model_function(s: Settings, predictive: bool = False):
    """The model as a function of the traced arguments only (statics bound): the one
    dispatch from :class:`Settings` to :mod:`bayes.models`.

    The function's first argument is the compressed statistics (what the sampler traces);
    with ``predictive=True`` it is ``A`` instead and the model draws ``Y`` (for
    ``numpyro.infer.Predictive``; X's columns and Theta are then plain sample sites,
    ``"ilr"`` and unfolded, so posterior draws substitute for them).
    """
    simplex = "ilr" if predictive else s.simplex
    folded = simplex == "folded"

    def data(first):  # (Y, A): the statistics, or the covariates of replicated Y
        return (None, first) if predictive else (first, None)

    if s.model == "joint":
        def fn(first, priors):
            models.joint(*data(first), s.rank, nonneg=s.nonneg, priors=priors, P=s.n_features, simplex=simplex,
                         theta_coords=s.theta_coords)
    elif s.model == "conditional_x":
        def fn(first, X, priors):
            models.conditional_x(*data(first), X, nonneg=s.nonneg, priors=priors, folded=folded)
    else:
        def fn(first, X, sigma2, tau2, priors):
            models.conditional(*data(first), X, sigma2, tau2, nonneg=s.nonneg, priors=None if s.flat else priors,
                               folded=folded)
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


def prepare(s: Settings, init: dict, args: tuple):
    """The Laplace warm start shared by the sampler and :func:`bayes.fit_vi`: unconstrained
    mode ``z``, Laplace covariance, potential energy and the unravel function."""
    model = model_function(s)
    init = _coordinates(s, init, args)
    zdict = unconstrain_fn(model, args, {}, init)
    z0, unravel = ravel_pytree(zdict)

    def pe(z):
        return potential_energy(model, args, {}, unravel(z))

    # folded coordinates have kinks at 0: the Hessian at the start, no Newton steps
    z, cov = laplace(pe, z0, 0 if s.simplex == "folded" else s.newton_steps)
    return z, cov, pe, unravel


def _coordinates(s: Settings, init: dict, args: tuple = ()) -> dict:
    """Starting values in the model's sampled sites (expanded coordinates of X)."""
    init = dict(init)
    if s.model == "joint" and sheared(s):
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


def _chain(s: Settings, key, z, cov, pe):
    """Warm-up and sampling for one chain; returns unconstrained draws and statistics."""
    key_init, key_run = jax.random.split(key)
    c, V = jnp.linalg.eigh(cov)  # start at a draw from the Laplace approximation, sd at most 1 per direction
    z = z + s.jitter * (V * jnp.sqrt(jnp.clip(c, 0.0, 1.0))) @ jax.random.normal(key_init, z.shape)
    imm = cov if s.mass == "dense" else jnp.diagonal(cov)
    init_kernel, sample_kernel = hmc(potential_fn=pe, algo="NUTS")
    state = init_kernel(z, s.num_warmup, inverse_mass_matrix=imm, adapt_mass_matrix=s.adapt_mass,
                        dense_mass=s.mass == "dense", target_accept_prob=s.target_accept,
                        max_tree_depth=s.max_tree_depth, rng_key=key_run)

    def step(st, _):
        st = sample_kernel(st)
        return st, (st.z, {"diverging": st.diverging, "n_steps": st.num_steps, "acceptance_rate": st.accept_prob,
                           "energy": st.energy, "lp": -st.potential_energy})

    # one loop over warm-up and sampling (one copy of the NUTS kernel in the compiled code)
    state, (zs, stats) = jax.lax.scan(step, state, None, length=s.num_warmup + s.num_samples)
    zs, stats = jax.tree.map(lambda x: x[s.num_warmup:], (zs, stats))
    stats["step_size"] = jnp.full(s.num_samples, state.adapt_state.step_size)
    return zs, stats


def _constrain(s: Settings, args, unravel, zs):
    """Constrained draws (and deterministic sites) for an array of unconstrained draws."""
    model = model_function(s)

    def one(z):
        out = constrain_fn(model, args, {}, unravel(z), return_deterministic=True)
        out.pop("X_columns", None)
        for name in ("X_raw", "theta_raw", "theta_delta"):
            out.pop(name, None)
        return out

    return jax.vmap(jax.vmap(one))(zs)


def _run_all(s: Settings, keys, init, args):
    """All chains inside one traced function (vectorized or one after the other)."""
    TRACES[s] += 1
    z, cov, pe, unravel = prepare(s, init, args)
    chain = partial(_chain, s, z=z, cov=cov, pe=pe)
    if s.chain_method == "vectorized":
        zs, stats = jax.vmap(lambda k: chain(k))(keys)
    else:
        zs, stats = jax.lax.map(lambda k: chain(k), keys)
    return _constrain(s, args, unravel, zs), stats


def _run_one(s: Settings, key, init, args):
    """One chain, from its own Laplace start (the body of the pmapped runner)."""
    TRACES[s] += 1
    z, cov, pe, unravel = prepare(s, init, args)
    zs, stats = _chain(s, key, z, cov, pe)
    return _constrain(s, args, unravel, zs[None]), stats


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
    """Forget every compiled runner (and JAX's own caches)."""
    _CACHE.clear()
    jax.clear_caches()
