"""Other samplers from the JAX ecosystem against NUTS on the Bayesian twin's posterior (issue 18, item 3).

What it measures
----------------
On the same posterior (the joint model of the defaults of :mod:`bayes`: folded simplex,
non-negative Theta, the unconstrained potential and Laplace warm start of
:func:`bayes.compiled.prepare`; block-sparse data of :func:`nmfre.simulate.block_sparse`,
K = 2, the frequentist fit as the start), one row per sampler:

* ``NUTS``: NumPyro's NUTS exactly as :mod:`bayes.compiled` runs it (diagonal mass
  started at the Laplace approximation, windowed adaptation, 4 chains x (500 + 500),
  vectorised), re-traced here so that the warm-up gradients are counted too (its draws
  are checked to equal those of the project's runner); and the project's entry point
  (:class:`bayes.Sampler`) for the wall time;
* ``MAMS``: BlackJAX's adjusted microcanonical sampler (``blackjax.adjusted_mclmc_dynamic``,
  random trajectory lengths), step size, L and a diagonal preconditioner tuned by
  ``blackjax.adjusted_mclmc_find_L_and_step_size``, 4 chains from the same Laplace
  starts, the same number of kept draws (thinned: 50 transitions per draw at BlackJAX's
  default of 2 integration steps per transition, 6 at 16, ``--mams-steps``);
* ``ChEES``: ChEES-HMC (``blackjax.chees_adaptation`` with an ensemble-estimated diagonal
  metric, then ``blackjax.dynamic_hmc``; coordinates scaled by the Laplace standard
  deviations) with many short chains (64 x (500 + 100) and 64 x (500 + 400) by default),
  started from the Laplace approximation, and from one Pathfinder approximation's draws
  (``pathfinder`` in ``--samplers``).

For each: wall seconds with compilation and without it (ahead-of-time compilation timed
separately), gradient evaluations in warm-up / tuning and in sampling (NUTS: ``num_steps``;
HMC: integration steps; MAMS: 2 per step of the McLachlan integrator), max r_hat and min bulk
ESS over Theta, sigma, tau (:func:`bayes.diagnostics`, after the project's draw-by-draw
relabelling, :func:`bayes.postprocess.to_datatree`) and over the label-invariant quantities
(``invariant=True``: X Theta, sigma, tau, log-likelihood), divergences, ESS per second
(without compilation) and ESS per 1000 gradient evaluations (sampling only, and all of them).

Run
---
``python benchmarks/bench_samplers.py [--data-seeds 11,12] [--size 20x300] [--rank 2] [--quick]``
(``--quick``: a smoke run with short chains, NUTS, one MAMS and one ChEES setting; about a
minute and a half on one core, nearly all of it compilation). Needs ``blackjax`` (and ``optax``).
On a shared machine pin it, e.g. ``taskset -c 1`` with ``OMP_NUM_THREADS=1`` and
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings

import numpy as np

import bayes  # first: x64 and device settings before JAX starts
import nmfre
from bayes import compiled, sampling
from bayes.postprocess import to_datatree
from nmfre.simulate import block_sparse

GRADS_PER_STEP = {"mclachlan": 2, "leapfrog": 1}


@dataclasses.dataclass
class Problem:
    """One posterior: the project's spec, settings, potential and Laplace start."""

    name: str
    sampler: sampling.Sampler
    spec: object
    settings: compiled.Settings
    Y: np.ndarray
    A: np.ndarray
    fit: object


def problem(P, N, Q, K, seed, warmup, samples):
    d = block_sparse(P=P, N=N, rank=Q, K=K, seed=seed)
    Y, A = d["Y"], d["A"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmfre.ConvergenceWarning)
        fit = nmfre.fit(Y, A, rank=Q, theta="nonneg")
    s = sampling.Sampler("joint", Q, P, None, K, theta="nonneg", num_warmup=warmup, num_samples=samples)
    spec = s.spec(Y, A, fit=fit)
    return Problem(f"{P}x{N} Q={Q} seed {seed}", s, spec, s.settings_for(spec), Y, A, fit)


def _keys(seed, n):
    import jax

    return jax.random.split(jax.random.key(seed), n)


def _laplace_starts(key, z, cov, n, jitter):
    """``n`` starts as :func:`bayes.compiled._chain` draws them (mode + jitter * capped Laplace draw)."""
    import jax
    import jax.numpy as jnp

    c, V = jnp.linalg.eigh(cov)
    e = jax.random.normal(key, (n,) + z.shape)
    return z + jitter * e @ (V * jnp.sqrt(jnp.clip(c, 0.0, 1.0))).T


def _aot(fn, *args):
    """Compile ``fn`` ahead of time; returns (compiled, seconds)."""
    import jax

    t = time.perf_counter()
    c = jax.jit(fn).lower(*args).compile()
    return c, time.perf_counter() - t


def _timed(c, *args):
    import jax

    t = time.perf_counter()
    out = jax.block_until_ready(c(*args))
    return jax.device_get(out), time.perf_counter() - t


def _finish(pb, zs, stats, row):
    """Constrain unconstrained draws (chain, draw, d), build the project's DataTree, add diagnostics."""
    import jax

    s, args = pb.settings, pb.spec.args
    def constrain(z, init, args):
        return compiled._constrain(s, args, compiled.prepare(s, init, args)[3], z)[0]

    with jax.enable_x64(True):
        draws = jax.device_get(jax.jit(constrain)(zs, pb.spec.init, args))
    dt = to_datatree(pb.spec, s, dict(draws), dict(stats))
    dg = bayes.diagnostics(dt)
    di = bayes.diagnostics(dt, invariant=True)
    row.update(r_hat=dg["max_r_hat"], ess=dg["min_ess_bulk"], inv_r_hat=di["max_r_hat"], inv_ess=di["min_ess_bulk"],
               div=int(np.asarray(stats["diverging"]).sum()))
    return row, dt


# ---------------------------------------------------------------- NUTS (the project's sampler)

def nuts_project(pb, seed):
    """The project's entry point (bayes.Sampler.sample), compilation included."""
    compiled.clear_cache()
    t = time.perf_counter()
    dt = pb.sampler.sample(pb.Y, pb.A, fit=pb.fit, seed=seed, warn=False)
    el = time.perf_counter() - t
    dg, di = bayes.diagnostics(dt), bayes.diagnostics(dt, invariant=True)
    ss = dt["sample_stats"]
    return {"sampler": "NUTS", "setting": "bayes.Sampler.sample (entry point)", "wall": el, "compile": np.nan,
            "run": np.nan, "g_warm": np.nan, "g_samp": float(ss["n_steps"].sum()), "r_hat": dg["max_r_hat"],
            "ess": dg["min_ess_bulk"], "inv_r_hat": di["max_r_hat"], "inv_ess": di["min_ess_bulk"],
            "div": dg["divergences"], "tuned": f"eps={float(ss['step_size'].mean()):.4f}"}


def _nuts_all(s, keys, init, args):
    """bayes.compiled's chains for the direct coordinates, with the warm-up's step counts kept
    (:func:`bayes.compiled._chain` with ``keep_warmup``)."""
    import jax

    z, cov, pe, _ = compiled.prepare(s, init, args)

    def chain(key):
        zs, stats = compiled._chain(s, key, z, cov, pe, keep_warmup=True)
        g_warm = stats["n_steps"][:s.num_warmup].sum()
        zs, stats = jax.tree.map(lambda x: x[s.num_warmup:], (zs, stats))
        return zs, stats, g_warm, stats["step_size"][0]

    return jax.vmap(chain)(keys)


def nuts(pb, seed):
    import jax

    from bayes.seeds import prng_key

    s = pb.settings
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.split(prng_key(seed), 3)[0], s.num_chains)  # as Sampler.sample
        fn, comp = _aot(lambda k, i, a: _nuts_all(s, k, i, a), keys, pb.spec.init, pb.spec.args)
        (zs, stats, g_warm, eps), run = _timed(fn, keys, pb.spec.init, pb.spec.args)
    row = {"sampler": "NUTS", "setting": f"numpyro, diag mass, {s.num_chains} x ({s.num_warmup} + {s.num_samples})",
           "wall": comp + run, "compile": comp, "run": run, "g_warm": float(np.sum(g_warm)),
           "g_samp": float(np.sum(stats["n_steps"])), "tuned": f"eps={float(np.mean(eps)):.4f}"}
    return _finish(pb, zs, stats, row)


def check_identity(pb, seed, dt_replica):
    """Whether the re-traced NUTS gives the project's draws (same keys, same code path)."""
    dt = pb.sampler.sample(pb.Y, pb.A, fit=pb.fit, seed=seed, warn=False)
    a = dt["posterior"]["theta"].values
    b = dt_replica["posterior"]["theta"].values
    return float(np.max(np.abs(a - b)))


# ---------------------------------------------------------------- MAMS (adjusted MCLMC)

def _mams_all(s, keys, init, args, n_keep, thin, target_steps, frac_tune):
    import blackjax
    import jax
    import jax.numpy as jnp
    from blackjax.adaptation.mclmc_adaptation import MCLMCAdaptationState
    from blackjax.mcmc.adjusted_mclmc_dynamic import make_random_trajectory_length_fn

    z, cov, pe, _ = compiled.prepare(s, init, args)
    logdensity = lambda x: -pe(x)  # noqa: E731
    n_total = n_keep * thin
    steps_fn = make_random_trajectory_length_fn(True)
    kernel = blackjax.adjusted_mclmc_dynamic.build_kernel(integration_steps_fn=steps_fn)
    dim = z.shape[0]
    starts = _laplace_starts(keys[0], z, cov, keys.shape[0] - 1, s.jitter)

    def chain(key, z0):
        k_init, k_tune, k_run = jax.random.split(key, 3)
        state = blackjax.adjusted_mclmc_dynamic.init(z0, logdensity, k_init)
        params = MCLMCAdaptationState(jnp.sqrt(dim), jnp.sqrt(dim) * 0.2, inverse_mass_matrix=jnp.diagonal(cov))
        state, params, g_tune = blackjax.adjusted_mclmc_find_L_and_step_size(
            mclmc_kernel=kernel, logdensity_fn=logdensity, num_steps=n_total, state=state, rng_key=k_tune,
            target=0.9, frac_tune1=frac_tune, frac_tune2=frac_tune, diagonal_preconditioning=True,
            params=params, target_num_integration_steps=target_steps)
        avg = params.L / params.step_size

        def one(st, k):
            st, info = kernel(k, st, logdensity, params.step_size, inverse_mass_matrix=params.inverse_mass_matrix,
                              integration_steps_params=(avg,))
            return st, (info.num_integration_steps, info.is_divergent, info.acceptance_rate)

        def block(st, k):
            st, (n, dv, acc) = jax.lax.scan(one, st, jax.random.split(k, thin))
            return st, (st.position, {"n_steps": n.sum(), "diverging": dv.any(), "acceptance_rate": acc.mean()})

        _, (zs, stats) = jax.lax.scan(block, state, jax.random.split(k_run, n_keep))
        return zs, stats, g_tune, params.step_size, params.L

    return jax.vmap(chain)(keys[1:], starts)


def mams(pb, seed, thin, target_steps, frac_tune=0.1):
    import jax

    s = pb.settings
    n_keep, C = s.num_samples, s.num_chains
    g = GRADS_PER_STEP["mclachlan"]
    with jax.enable_x64(True):
        keys = _keys(seed, C + 1)
        fn, comp = _aot(lambda k, i, a: _mams_all(s, k, i, a, n_keep, thin, target_steps, frac_tune),
                        keys, pb.spec.init, pb.spec.args)
        (zs, stats, g_tune, eps, L), run = _timed(fn, keys, pb.spec.init, pb.spec.args)
    n_tune = int(n_keep * thin * frac_tune * 3)
    row = {"sampler": "MAMS", "setting": f"blackjax, {C} x ({n_tune} tune + {n_keep * thin} thin {thin}), "
                                         f"avg steps {target_steps:g}",
           "wall": comp + run, "compile": comp, "run": run, "g_warm": g * float(np.sum(g_tune)),
           "g_samp": g * float(np.sum(stats["n_steps"])),
           "tuned": f"eps={np.mean(eps):.4f} L={np.mean(L):.4f} acc={np.mean(stats['acceptance_rate']):.2f}"}
    stats["n_steps"] = g * stats["n_steps"]
    return _finish(pb, zs, stats, row)


# ---------------------------------------------------------------- ChEES-HMC, many short chains

def _pathfinder_starts(key, z, pe, n):
    """``n`` draws of one Pathfinder approximation started at the Laplace mode."""
    import blackjax
    import jax

    k1, k2 = jax.random.split(key)
    state, _ = blackjax.vi.pathfinder.approximate(k1, lambda x: -pe(x), z, num_samples=100)
    draws, _ = blackjax.vi.pathfinder.sample(k2, state, n)
    return draws


def _chees_all(s, key, init, args, chains, n_warm, n_keep, pathfinder, lr):
    import blackjax
    import jax
    import jax.numpy as jnp
    import optax
    from blackjax.adaptation.base import get_filter_adapt_info_fn

    z, cov, pe, _ = compiled.prepare(s, init, args)
    sd = jnp.sqrt(jnp.diagonal(cov))  # precondition by the Laplace diagonal (as NUTS's starting mass)
    logdensity = lambda u: -pe(z + sd * u)  # noqa: E731
    k_start, k_warm, k_run = jax.random.split(key, 3)
    if pathfinder:
        starts = (_pathfinder_starts(k_start, z, pe, chains) - z) / sd
    else:
        starts = (_laplace_starts(k_start, z, cov, chains, s.jitter) - z) / sd
    warmup = blackjax.chees_adaptation(
        logdensity, chains, mass_matrix_estimation="diagonal",
        adaptation_info_fn=get_filter_adapt_info_fn(info_keys={"num_integration_steps", "is_divergent"}))
    (states, params), info = warmup.run(k_warm, starts, 0.01, optax.adam(lr), n_warm, max_sampling_steps=n_keep)
    g_warm = info.info.num_integration_steps.sum()
    alg = blackjax.dynamic_hmc(logdensity, **params)

    def one(sts, k):
        sts, inf = jax.vmap(alg.step)(jax.random.split(k, chains), sts)
        return sts, (z + sd * sts.position, {"n_steps": inf.num_integration_steps, "diverging": inf.is_divergent,
                                             "acceptance_rate": inf.acceptance_rate})

    _, (zs, stats) = jax.lax.scan(one, states, jax.random.split(k_run, n_keep))
    zs, stats = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (zs, stats))  # (chain, draw, ...)
    return zs, stats, g_warm, params["step_size"], params["integration_steps_params"][0]


def chees(pb, seed, chains, n_warm, n_keep, pathfinder=False, lr=0.025):
    import jax

    s = pb.settings
    with jax.enable_x64(True):
        key = jax.random.key(seed)
        fn, comp = _aot(lambda k, i, a: _chees_all(s, k, i, a, chains, n_warm, n_keep, pathfinder, lr),
                        key, pb.spec.init, pb.spec.args)
        (zs, stats, g_warm, eps, n_leap), run = _timed(fn, key, pb.spec.init, pb.spec.args)
    start = "Pathfinder" if pathfinder else "Laplace"
    row = {"sampler": "ChEES", "setting": f"blackjax, {chains} x ({n_warm} + {n_keep}), {start} starts",
           "wall": comp + run, "compile": comp, "run": run, "g_warm": float(g_warm),
           "g_samp": float(np.sum(stats["n_steps"])),
           "tuned": f"eps={float(eps):.4f} steps={float(n_leap):.1f} acc={np.mean(stats['acceptance_rate']):.2f}"}
    return _finish(pb, zs, stats, row)


# ---------------------------------------------------------------- table

COLUMNS = ("data", "sampler", "setting", "wall s", "compile s", "run s", "grads warm-up", "grads sampling",
           "max r_hat", "min bulk ESS", "inv r_hat", "inv ESS", "div", "ESS/s", "ESS/kgrad", "ESS/kgrad all",
           "tuned")


def _fmt(x, spec):
    return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def line(data, r):
    grads = r["g_samp"] + (r["g_warm"] if np.isfinite(r["g_warm"]) else np.nan)
    run = r["run"] if np.isfinite(r["run"]) else r["wall"]
    cells = [data, r["sampler"], r["setting"], _fmt(r["wall"], ".1f"), _fmt(r["compile"], ".1f"), _fmt(r["run"], ".1f"),
             _fmt(r["g_warm"], ".3g"), _fmt(r["g_samp"], ".3g"), _fmt(r["r_hat"], ".3f"), _fmt(r["ess"], ".0f"),
             _fmt(r["inv_r_hat"], ".3f"), _fmt(r["inv_ess"], ".0f"), str(r["div"]), _fmt(r["ess"] / run, ".2f"),
             _fmt(1000 * r["ess"] / r["g_samp"], ".3f"), _fmt(1000 * r["ess"] / grads, ".3f"), r["tuned"]]
    return "| " + " | ".join(cells) + " |"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-seeds", default="11,12", help="comma-separated data seeds (default 11,12)")
    ap.add_argument("--size", default="20x300", help="P x N (default 20x300)")
    ap.add_argument("--rank", type=int, default=2, help="Q (default 2)")
    ap.add_argument("--covariates", type=int, default=2, help="K (default 2)")
    ap.add_argument("--seed", type=int, default=1, help="sampler seed")
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run (short chains)")
    ap.add_argument("--samplers", default=None,
                    help="comma-separated subset of nuts, project, mams, chees, pathfinder (default: all; "
                         "--quick: nuts, mams, chees)")
    ap.add_argument("--mams-thin", type=int, default=50,
                    help="MAMS transitions per kept draw at 2 integration steps per transition (scaled down for more)")
    ap.add_argument("--mams-steps", default="2,16",
                    help="MAMS target mean integration steps per transition, comma-separated (BlackJAX's default 2)")
    ap.add_argument("--chees-chains", type=int, default=64)
    ap.add_argument("--chees-warmup", type=int, default=500)
    ap.add_argument("--chees-draws", default="100,400", help="kept draws per ChEES chain, comma-separated")
    a = ap.parse_args(argv)
    P, N = (int(x) for x in a.size.lower().split("x"))
    warm, keep = (100, 100) if a.quick else (500, 500)
    thin = 2 if a.quick else a.mams_thin
    cw, cds = (100, [20]) if a.quick else (a.chees_warmup, [int(x) for x in a.chees_draws.split(",")])
    which = (a.samplers or ("nuts,mams,chees" if a.quick else "nuts,project,mams,chees,pathfinder")).split(",")
    mams_steps = [float(x) for x in a.mams_steps.split(",")][:1 if a.quick else None]
    rows = []
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bayes.SamplingWarning)
        for sd in (int(x) for x in a.data_seeds.split(",")):
            pb = problem(P, N, a.rank, a.covariates, sd, warm, keep)
            runs = []
            if "nuts" in which:
                r, dt = nuts(pb, a.seed)
                if a.quick:
                    r["setting"] += f" (max |diff| to bayes.Sampler: {check_identity(pb, a.seed, dt):.1e})"
                runs.append(r)
                print(line(pb.name, r), flush=True)
            if "project" in which:
                runs.append(nuts_project(pb, a.seed))
                print(line(pb.name, runs[-1]), flush=True)
            for steps in mams_steps if "mams" in which else ():
                runs.append(mams(pb, a.seed, max(1, round(thin * 2 / steps)), steps)[0])
                print(line(pb.name, runs[-1]), flush=True)
            for cd in cds if "chees" in which else ():
                runs.append(chees(pb, a.seed, a.chees_chains, cw, cd)[0])
                print(line(pb.name, runs[-1]), flush=True)
            if "pathfinder" in which:
                runs.append(chees(pb, a.seed, a.chees_chains, cw, max(cds), pathfinder=True)[0])
                print(line(pb.name, runs[-1]), flush=True)
            rows += [(pb.name, r) for r in runs]
    print("\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for name, r in rows:
        print(line(name, r))
    print("\nESS: min bulk ESS over Theta, sigma, tau (inv: X Theta, sigma, tau, log-likelihood); ESS/s without "
          "compilation (the entry point's row: with it); ESS/kgrad per 1000 sampling gradients, 'all' including "
          "warm-up / tuning. With many short chains, split r_hat of a stationary sampler is about "
          "1 + 1 / (2 ESS per split chain): e.g. 64 x 100 draws at ESS 1000 gives about 1.06.")


if __name__ == "__main__":
    main()
