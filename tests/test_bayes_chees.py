"""bayes.compiled.chees_loop: ChEES-HMC warm-up and sampling in one loop (one copy of the
HMC kernel in the compiled code) against BlackJAX's own two-phase run.

Exact checks: the same keys give the same adapted step size, the same leapfrog steps per
draw and the same draws (to rounding) as ``blackjax.chees_adaptation(...).run`` followed by
``blackjax.dynamic_hmc`` with the adapted parameters. A change in BlackJAX's adaptation
(whose internals the loop reuses) fails here.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
blackjax = pytest.importorskip("blackjax")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
from blackjax.adaptation.base import get_filter_adapt_info_fn  # noqa: E402

from bayes import compiled  # noqa: E402

C, W, S = 4, 300, 120


def _target(d):
    """A correlated, heavy-tailed (non-Gaussian) log density, its scales spread 100-fold."""
    A = np.random.default_rng(0).normal(size=(d, d))
    P = jnp.asarray(A @ A.T / d + np.diag(np.geomspace(0.1, 10.0, d)))
    return lambda u: -0.5 * u @ P @ u - 0.5 * jnp.sum(jnp.log1p(u**2))


def _library(logdensity, starts, key, cap):
    """BlackJAX's public two-phase form (what bayes.compiled._chees ran before chees_loop)."""
    k_warm, k_run = jax.random.split(key)
    warmup = blackjax.chees_adaptation(
        logdensity, C, mass_matrix_estimation="diagonal", max_leapfrog_steps=cap,
        adaptation_info_fn=get_filter_adapt_info_fn(info_keys={"num_integration_steps"}))
    (states, params), _ = warmup.run(k_warm, starts, compiled.CHEES_INITIAL_STEP,
                                     optax.adam(compiled.CHEES_LEARNING_RATE), W, max_sampling_steps=S)
    alg = blackjax.dynamic_hmc(logdensity, **params)

    def one(sts, k):
        sts, info = jax.vmap(alg.step)(jax.random.split(k, C), sts)
        return sts, (sts.position, info.num_integration_steps, info.acceptance_rate)

    _, out = jax.lax.scan(one, states, jax.random.split(k_run, S))
    return out, params["step_size"]


@pytest.mark.parametrize("d, cap", [(6, 1024), (90, 3)])
def test_chees_loop_equals_blackjax_two_phase(d, cap):
    """Same keys, same draws. The diagonal metric and the slow-direction length floor engage in
    both cases (600 pooled draws in the window, threshold 64); cap = 3 makes the leapfrog cap bind."""
    logdensity = _target(d)
    starts = jax.random.normal(jax.random.PRNGKey(3), (C, d))
    key = jax.random.PRNGKey(7)
    pos, stats, eps = jax.jit(lambda k, s0: compiled.chees_loop(logdensity, s0, k, W, S, cap))(key, starts)
    (ref_pos, ref_steps, ref_acc), ref_eps = jax.jit(lambda k, s0: _library(logdensity, s0, k, cap))(key, starts)
    assert pos.shape == (S, C, d)
    np.testing.assert_allclose(eps, ref_eps, rtol=1e-12)
    np.testing.assert_array_equal(stats["n_steps"], ref_steps)
    if cap == 3:
        assert int(np.max(stats["n_steps"])) == cap
    np.testing.assert_allclose(stats["acceptance_rate"], ref_acc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pos, ref_pos, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(stats["lp"])) and np.all(np.asarray(stats["lp"]) <= 0.0)
