"""Replica exchange (parallel tempering) within ChEES-HMC: ``bayes.compiled.swap_replicas``,
``chees_loop(..., betas=...)`` and ``bayes.sample(..., tempering=...)``.

The exchange move is checked exactly (its decisions, and the states carried to their new
temperatures against the tempered density evaluated afresh). The sampler is checked on a
bimodal target that plain HMC cannot cross: the weight of the lighter mode from 32 independent
ladders, with a false-alarm rate of about 1e-4 by design (see the test), and the same check
failing for the untempered loop (its power against the fault "no exchanges").
"""

import ast
import warnings

import numpy as np
import pytest
from helpers import seed

jax = pytest.importorskip("jax")
pytest.importorskip("blackjax")
pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
from blackjax.mcmc import dynamic_hmc  # noqa: E402

import bayes  # noqa: E402
import nmfre  # noqa: E402
from bayes import compiled, sampling  # noqa: E402


def _tempered(logdensity, b):
    return lambda v: b * logdensity(v / jnp.sqrt(b))


def test_swap_replicas_is_the_exchange_move_exactly():
    """Each decision is ``log U < (b_t - b_t+1)(l_t+1 - l_t)`` with the key's uniforms, both
    members of an accepted pair exchange, and an exchanged state equals the tempered density
    and gradient evaluated afresh at the carried position (to rounding); the rest is unchanged."""
    with jax.enable_x64(True):
        prec = jnp.asarray(np.diag([1.0, 4.0, 0.25]))
        logdensity = lambda u: -0.5 * u @ prec @ u - jnp.sum(jnp.log1p(u**2))  # noqa: E731
        betas = np.array([1.0, 0.6, 0.3])
        L, T = 2, 3
        b = jnp.asarray(np.tile(betas, L))
        rungs = jnp.asarray(np.tile(np.arange(T), L))
        rng = np.random.default_rng(0)
        seen = set()
        for trial in range(40):
            pos = jnp.asarray(rng.normal(size=(L * T, 3)) * 2.0)
            states = jax.vmap(lambda p, bb: dynamic_hmc.init(p, _tempered(logdensity, bb), 0))(pos, b)
            key = jax.random.PRNGKey(trial)
            parity = trial % 2
            new, swapped, accept = compiled.swap_replicas(states, b, rungs, parity, key)
            logu = np.log(np.asarray(jax.random.uniform(key, (L * T,))))
            ell = np.asarray(states.logdensity) / np.asarray(b)
            for c in range(L * T):
                t = c % T
                is_lower = (t - parity) % 2 == 0 and t + 1 < T
                is_upper = (t - 1 - parity) % 2 == 0 and t >= 1
                if is_lower:
                    la = (b[c] - b[c + 1]) * (ell[c + 1] - ell[c])
                    assert float(accept[c]) == pytest.approx(min(1.0, float(np.exp(la))), rel=1e-12)
                    partner, take = c + 1, logu[c] < la
                elif is_upper:
                    la = (b[c - 1] - b[c]) * (ell[c] - ell[c - 1])
                    partner, take = c - 1, logu[c - 1] < la
                    assert float(accept[c]) == 0.0
                else:
                    partner, take = c, False
                    assert float(accept[c]) == 0.0
                assert bool(swapped[c]) == bool(take)
                if take:
                    seen.add("swap")
                    u = np.asarray(pos[partner]) / np.sqrt(float(b[partner]))
                    v = np.sqrt(float(b[c])) * u
                    val, grad = jax.value_and_grad(_tempered(logdensity, b[c]))(jnp.asarray(v))
                    np.testing.assert_allclose(np.asarray(new.position[c]), v, rtol=1e-12)
                    assert float(new.logdensity[c]) == pytest.approx(float(val), rel=1e-12)
                    np.testing.assert_allclose(np.asarray(new.logdensity_grad[c]), np.asarray(grad), rtol=1e-10)
                else:
                    seen.add("stay")
                    np.testing.assert_array_equal(np.asarray(new.position[c]), np.asarray(pos[c]))
                    assert float(new.logdensity[c]) == float(states.logdensity[c])
        assert seen == {"swap", "stay"}


WEIGHT, MU, SD = 0.3, 3.0, 0.4


def _mixture(u):
    """``0.3 N(-3, 0.4^2) + 0.7 N(3, 0.4^2)`` in one dimension: about 28 nats between the modes."""
    x = u[0]
    return jnp.logaddexp(jnp.log(WEIGHT) - 0.5 * ((x + MU) / SD) ** 2,
                        jnp.log(1 - WEIGHT) - 0.5 * ((x - MU) / SD) ** 2)


def _mode_weight(betas, key, L=32, W=500, S=2000):
    """Per ladder, the fraction of the cold chain's draws in the lighter mode (x < 0); every
    chain starts in the heavier one (x = 3)."""
    with jax.enable_x64(True):
        starts = jnp.full((L, 1), MU)
        pos, stats, _ = jax.jit(lambda k: compiled.chees_loop(_mixture, starts, k, W, S, 64, betas=betas))(
            jax.random.PRNGKey(key))
        return np.mean(np.asarray(pos)[..., 0] < 0, axis=0), stats


def test_tempering_recovers_the_weight_of_a_mode_that_plain_chees_never_reaches():
    """The lighter mode's weight (0.3, to 1e-13) from 32 ladders of 8 temperatures (1 down to
    0.1: at 0.1 the barrier is about 2.8 nats). The ladders are independent after warm-up, each
    giving an estimate; the check ``|mean - 0.3| <= 4.5 sd / sqrt(32)`` is a t-test on 31
    degrees of freedom whose false-alarm rate is about 1e-4 (two-sided P(|t_31| > 4.5) = 9e-5;
    the estimates are means of 2000 autocorrelated draws, close to normal). Its power against
    a loop that exchanges nothing is shown on the same target: plain ChEES-HMC chains started in
    the heavier mode stay there (estimate 0)."""
    betas = tuple(np.geomspace(1.0, 0.1, 8))
    f, stats = _mode_weight(betas, seed(31))
    m, s = f.mean(), f.std(ddof=1)
    print(f"lighter mode's weight {m:.4f}, sd over ladders {s:.4f}")
    assert s > 0 and abs(m - WEIGHT) <= 4.5 * s / np.sqrt(f.size), (m, s)
    assert np.asarray(stats["swapped"]).mean() > 0.05
    accept = np.asarray(stats["swap_accept"])
    assert accept.shape == (2000, 32, 7) and 0 <= accept.min() and accept.max() <= 1
    plain, _ = _mode_weight(None, seed(31))
    assert plain.max() < 0.05  # the fault is seen: without exchanges nothing crosses


def _small():
    sim = nmfre.simulate.block_sparse(P=12, N=80, rank=2, K=2, seed=3)
    return sim["Y"], sim["A"]


def test_sample_with_tempering_returns_the_cold_chains_and_says_what_ran():
    Y, A = _small()
    fit = nmfre.fit(Y, A, rank=2, theta="nonneg")
    with warnings.catch_warnings():  # 4 x 100 draws of this posterior need not pass the diagnostics
        warnings.simplefilter("ignore", bayes.SamplingWarning)
        dt = bayes.sample(Y, A, 2, fit=fit, theta="nonneg", num_warmup=150, num_samples=100, seed=seed(32),
                          tempering=3)
    post = dt["posterior"]
    assert post.sizes["chain"] == 4 and post.sizes["draw"] == 100
    info = ast.literal_eval(post.attrs["tempering"])
    np.testing.assert_allclose(info["betas"], np.geomspace(1.0, sampling.TEMPERING_MIN_BETA, 3), atol=1e-6)
    assert len(info["swap_rates"]) == 2 and all(0.0 <= r <= 1.0 for r in info["swap_rates"])
    assert post.attrs["sampler"].endswith("replica exchange over 3 temperatures")
    assert dt["sample_stats"]["swapped"].dims == ("chain", "draw")
    assert "swap_accept" not in dt["sample_stats"]
    plain = bayes.Sampler("joint", 2, 12, None, 2, theta="nonneg", tempering=None)
    assert plain.settings.betas == () == bayes.Sampler("joint", 2, 12, None, 2, tempering=1).settings.betas
    explicit = bayes.Sampler("joint", 2, 12, None, 2, tempering=[1, 0.7, 0.4])
    assert explicit.settings.betas == (1.0, 0.7, 0.4)
    assert "tempering over 3 temperatures" in repr(explicit) and "tempering" not in repr(plain)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(rank=2, kernel="nuts", tempering=3), ValueError, "needs kernel='chees'"),
    (dict(rank=1, tempering=3), ValueError, "the kernel here is 'nuts'"),
    (dict(rank=2, tempering=[1.0, 1.0]), ValueError, "decrease strictly"),
    (dict(rank=2, tempering=[0.9, 0.5]), ValueError, "must start at 1"),
    (dict(rank=2, tempering=[1.0, 0.5, 0.0]), ValueError, "above 0"),
    (dict(rank=2, tempering=True), TypeError, "tempering must be None, an int"),
    (dict(rank=2, tempering="hot"), TypeError, "tempering must be None, an int"),
    (dict(rank=2, tempering=0), ValueError, "tempering must be a positive integer"),
])
def test_tempering_is_checked_before_sampling(kwargs, error, match):
    with pytest.raises(error, match=match):
        bayes.Sampler("joint", P=12, K=2, **kwargs)
