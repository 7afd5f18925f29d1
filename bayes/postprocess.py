"""From a compiled run's arrays to the ArviZ DataTree: components relabelled draw by draw
(:func:`relabel_draws`), conditional variances held constant, U and replicated Y drawn
(:func:`predictive`), groups built by :mod:`bayes.datatree`.
"""

from __future__ import annotations

import itertools

import numpy as np
import xarray as xr

from . import compiled, datatree
from .spec import ModelSpec

#: the ``sampler`` attribute of the DataTree, per :attr:`bayes.compiled.Settings.kernel`
SAMPLER_NAMES = {"nuts": "NUTS (bayes.compiled, Laplace warm start)",
                 "chees": "ChEES-HMC (blackjax, ensemble adaptation; bayes.compiled, Laplace starts)"}

__all__ = ["predictive", "relabel_draws", "to_datatree"]

_PREDICTIVE: dict = {}


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


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
    if s.kernel == "nuts":  # ChEES-HMC's n_steps is a trajectory length, not a tree
        stats["tree_depth"] = np.floor(np.log2(np.asarray(stats["n_steps"]) + 1)).astype(int)
    stats["loglik"] = draw_loglik(spec, draws)
    tempering = _tempering(s, stats.pop("swap_accept", None))
    U = None
    if key_u is not None:
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key_u)).ravel().tolist())
        U = lambda post: datatree.draw_u(post, data.Y, data.A, rng)  # noqa: E731
    yrep = None if key_pp is None else predictive(spec, s, draws, key_pp)
    attrs = {"model": spec.name, "theta_kind": fit.theta_kind, "nmfre_priors": str(spec.priors),
             "inference_library": "numpyro" if s.kernel == "nuts" else "numpyro (model), blackjax (sampler)",
             "sampler": SAMPLER_NAMES[s.kernel],
             "sampler_settings": _settings_record(s, relabel)}
    if tempering is not None:
        attrs["sampler"] += f", replica exchange over {len(s.betas)} temperatures"
        attrs["tempering"] = tempering
    return datatree.build(draws, stats, fit, data, spec.name, attrs, U=U, yrep=yrep)


def _settings_record(s: compiled.Settings, relabel: bool) -> str:
    """The ``sampler_settings`` attribute: every setting that shaped the run's draws, for its
    kernel (NUTS: step-size target and metric; ChEES-HMC: its own adaptation), with how Theta
    was sampled (``theta_coords``; ``theta_draws`` where the marginal coordinates use them),
    the Laplace warm start (``newton_steps``, none on the folded simplex) and the relabelling."""
    keys = ["num_warmup", "num_samples", "num_chains"]
    if s.kernel == "nuts":
        keys += ["chain_method", "target_accept", "mass", "adapt_mass"]
    keys += ["max_tree_depth", "jitter", "simplex", "theta_coords"]
    if s.theta_coords == "marginal" and s.nonneg:
        keys.append("theta_draws")
    out = {k: getattr(s, k) for k in keys}
    out["newton_steps"] = compiled.laplace_steps(s)
    if s.frame:
        out["theta_frame"] = "orthonormal covariates"
    out["relabel"] = "draw by draw" if relabel else "chain by chain"
    return str(out)


def _tempering(s: compiled.Settings, accept) -> str | None:
    """The ``tempering`` attribute: the inverse temperatures and, for each neighbouring pair, the mean
    acceptance probability of its proposed exchanges over the draws (pair ``t`` proposes at the steps
    of parity ``t``, counted from the first warm-up step) and chains."""
    if not s.betas:
        return None
    accept = np.asarray(accept)  # (chain, draw, T - 1)
    step = s.num_warmup + np.arange(accept.shape[1])
    rates = [float(accept[:, step % 2 == t % 2, t].mean()) for t in range(accept.shape[2])]
    return str({"betas": [round(b, 6) for b in s.betas], "swap_rates": [round(r, 4) for r in rates]})


def _loglik_fn():
    import jax

    from .likelihood import loglik

    fn = _PREDICTIVE.get("loglik")
    if fn is None:
        fn = _PREDICTIVE["loglik"] = jax.jit(jax.vmap(loglik, in_axes=(None, 0, 0, 0, 0)))
    return fn


def draw_loglik(spec: ModelSpec, draws: dict) -> np.ndarray:
    """The marginal log-likelihood (U integrated out, all units) of every draw, (chain, draw):
    a label-invariant scalar for the mixing checks (:func:`bayes.datatree.mixing`)."""
    import jax

    th = np.asarray(draws["theta"], float)
    if spec.frame is not None:  # the statistics are on the frame's covariates
        th = th @ spec.frame
    lead = th.shape[:2]
    X = np.broadcast_to(np.asarray(draws["X"], float) if "X" in draws else _f(spec.fit.solution.X),
                        lead + (spec.data.P, th.shape[-2]))
    s2 = np.broadcast_to(np.asarray(draws["sigma"], float) ** 2, lead)
    t2 = np.broadcast_to(np.asarray(draws["tau"], float) ** 2, lead)
    flat = lambda a: a.reshape((-1,) + a.shape[2:])  # noqa: E731
    with jax.enable_x64(True):
        ll = _loglik_fn()(spec.stats, flat(X), flat(th), flat(s2), flat(t2))
    return np.asarray(ll).reshape(lead)


def _predictive_fn(s: compiled.Settings):
    """Jitted replicated-Y draws from the model with ``Y=None`` (cached per settings)."""
    import jax
    from numpyro.infer import Predictive

    fn = _PREDICTIVE.get(s)
    if fn is not None:
        return fn
    model = compiled.model_function(s, predictive=True)

    def fn(key, samples, A, args):
        return Predictive(model, posterior_samples=samples, return_sites=["Y"], batch_ndims=2)(key, A, *args)["Y"]

    fn = _PREDICTIVE[s] = jax.jit(fn)
    return fn


def predictive(spec: ModelSpec, s: compiled.Settings, draws: dict, key) -> np.ndarray:
    """Replicated Y (chain, draw, unit, feature) for every posterior draw."""
    import jax

    # the conditional model's variances are fixed arguments, not sample sites (passed as
    # scalar "draws" they broke Predictive's batch shapes)
    sampled = ("theta",) if spec.name == "conditional" else ("theta", "sigma", "tau")
    samples = {k: draws[k] for k in sampled if k in draws}
    if "X" in draws:
        samples["X_columns"] = np.swapaxes(draws["X"], -1, -2)
    with jax.enable_x64(True):
        return np.asarray(_predictive_fn(s)(key, samples, spec.data.A, spec.args[1:]))
