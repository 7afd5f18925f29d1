"""Neural transport (NeuTra) and a normalising-flow variational twin against NUTS (issue 18, item 2).

What it measures
----------------
On the posterior of :mod:`bench_samplers` (the joint model with the defaults of :mod:`bayes`:
folded simplex, non-negative Theta, diagonal mass; its unconstrained potential and Laplace start
from :func:`bayes.compiled.prepare`; block-sparse data of :func:`nmfre.simulate.block_sparse`,
K = 2, the frequentist fit as the start), one row per method:

* ``NUTS``: the project's NUTS, re-traced with its warm-up gradients counted
  (:func:`bench_samplers.nuts`; 4 chains x (500 + 500), vectorised). Its draws are also the
  reference ("mixed NUTS run") for the variational twins' Theta means and sds.
* ``NeuTra``: NumPyro's :class:`~numpyro.infer.reparam.NeuTraReparam` with an
  :class:`~numpyro.infer.autoguide.AutoIAFNormal` (and, ``--guides iaf,bnaf``,
  :class:`~numpyro.infer.autoguide.AutoBNAFNormal`; ``mvn``: a full Gaussian, the affine control)
  guide trained by SVI (Adam, ``Trace_ELBO``),
  then NUTS in the flow's base space: the project's own chain (:func:`bayes.compiled._chain`,
  same settings: diagonal mass adapted in warm-up, target acceptance 0.9, tree depth 10,
  4 x (500 + 500), vectorised) on the potential of the reparametrised model, chains started
  at draws of the base N(0, I) with unit starting mass. The draws are mapped back with
  ``NeuTraReparam.transform_sample`` and through the project's constraining, relabelling and
  :func:`bayes.diagnostics` (:func:`bench_samplers._finish`), so the diagnostics are computed
  as for NUTS.
* ``flow twin``: the trained flow guide's own draws (4 x 1000, iid), through the same path;
  Theta means and sds against those of the NUTS row (ratio per entry, max |ratio - 1|; mean
  differences in NUTS posterior sds; sigma's and tau's sd ratios), and the same for the NeuTra
  draws (a check that the two exact samplers agree); with the project's variational twin
  (:func:`bayes.fit_vi`, full-covariance Gaussian, ``theta_coords="direct"`` and
  ``"marginal"``) for comparison.

Why a wrapper model: NeuTra needs a model whose latent sites are all continuous (the
project's joint model is: ``X_raw``, ``theta_raw``, ``sigma``, ``tau`` plus ``numpyro.factor``
for the likelihood and deterministic sites, so ``NeuTraReparam`` would apply to it as it
is). The flow is trained instead on a one-site model ``u ~ ImproperUniform(R^d)``,
``factor(-pe(z_hat + L u))``, with ``pe`` the project's unconstrained potential (the same
density in the same unconstrained coordinates that AutoContinuous would build) and ``z_hat``,
``L L' = cov`` the Laplace mode and covariance that also start the project's NUTS: the
flow starts from the Laplace approximation (a whitened space) rather than from N(0, I) in
raw unconstrained coordinates, and every draw goes through the project's own constraining
(``--no-whiten``: ``z = z_hat + u``, the raw unconstrained coordinates moved to the mode).

Columns: SVI steps (x particles = SVI gradients), SVI seconds (compilation included), final
ELBO (``--renyi``: the Renyi bound; mean over the last 10% of steps, on the scale of the
project's model: the whitening's ``log |det L|`` added, so it compares with
:func:`bayes.fit_vi`'s); NUTS wall seconds with compilation, compile and run
seconds; gradient evaluations of NUTS (``num_steps``) in warm-up and sampling; max r_hat and
min bulk ESS over Theta, sigma, tau (after relabelling) and over the label-invariant quantities
(X Theta, sigma, tau, log-likelihood); divergences; ESS per second of NUTS run (without
compilation) and per second of everything (SVI and NUTS with compilation); ESS per 1000
sampling gradients, and per 1000 of all gradients (warm-up and SVI included). A NeuTra
gradient also differentiates the flow: it costs more than a gradient of the plain potential.

Run
---
``python benchmarks/bench_neutra.py [--data-seeds 11,12] [--size 20x300] [--rank 2] [--guides iaf]
[--svi-steps 5000] [--renyi ALPHA] [--simplex ilr] [--quick]`` (``--quick``: one data set, 300 SVI
steps, 4 x (50 + 50) chains, no :func:`bayes.fit_vi` twin: a smoke run of about two minutes on one
core, nearly all of it compilation; the full run takes about 15 minutes). On a shared machine pin
it, e.g. ``taskset -c 1`` with ``OMP_NUM_THREADS=1`` and
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_samplers import _aot, _finish, _fmt, _timed, nuts, problem  # noqa: E402

import bayes  # noqa: E402  (bench_samplers imports it before JAX starts)
from bayes import compiled  # noqa: E402

# ---------------------------------------------------------------- the flow and its training

def _flat_model(pe, z_hat, L):
    """One latent site ``u`` in R^d with density ``exp(-pe(z_hat + L u))`` (improper prior + factor)."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    d = z_hat.shape[0]

    def model():
        u = numpyro.sample("u", dist.ImproperUniform(constraints.real_vector, (), (d,)))
        with numpyro.handlers.block():  # pe traces the project's model: keep its sites out of this trace
            lp = -pe(z_hat + L @ u)
        numpyro.factor("lp", lp)

    return model


def _guide(kind, model, d, flows, hidden):
    import jax.numpy as jnp
    from numpyro.infer import autoguide, init_to_value

    kw = {"init_loc_fn": init_to_value(values={"u": jnp.zeros(d)})}
    if kind == "iaf":
        return autoguide.AutoIAFNormal(model, num_flows=flows, hidden_dims=hidden, **kw)
    if kind == "mvn":  # control: an affine "flow" (NeuTra = NUTS with a trained dense linear preconditioner)
        return autoguide.AutoMultivariateNormal(model, **kw)
    return autoguide.AutoBNAFNormal(model, num_flows=flows, hidden_factors=hidden or [8, 8], **kw)


class Flow:
    """The Laplace-whitened potential of a problem, a flow guide and its SVI training."""

    def __init__(self, pb, kind, steps, lr, particles, flows, hidden, whiten, seed, renyi=None):
        import jax
        import jax.numpy as jnp
        from numpyro.infer import SVI, RenyiELBO, Trace_ELBO
        from numpyro.optim import Adam

        s = pb.settings
        self.pb, self.kind, self.steps, self.particles = pb, kind, steps, particles
        z, cov, pe, _ = compiled.prepare(s, pb.spec.init, pb.spec.args)  # concrete: data as constants
        self.d = z.shape[0]
        self.z_hat = z  # the Laplace mode (z = 0 is outside the folded coordinates' support: sum |w| = 0)
        self.L = jnp.linalg.cholesky(cov) if whiten else jnp.eye(self.d)
        self.model = _flat_model(pe, self.z_hat, self.L)
        self.guide = _guide(kind, self.model, self.d, flows, hidden)
        self.renyi = renyi
        loss = Trace_ELBO(num_particles=particles) if renyi is None else RenyiELBO(renyi, num_particles=particles)
        self.svi = SVI(self.model, self.guide, Adam(lr), loss)
        k_init, self.k_train = jax.random.split(jax.random.key(seed))
        self.state0 = self.svi.init(k_init)  # eager: sets the guide's prototype trace

    def train(self):
        import jax

        def run(state):
            return jax.lax.scan(lambda st, _: self.svi.update(st), state, None, length=self.steps)

        t = time.perf_counter()
        fn, comp = _aot(run, self.state0)
        (state, losses), rt = _timed(fn, self.state0)
        self.params = self.svi.get_params(state)
        self.elbo = -np.asarray(losses) + float(np.sum(np.log(np.diagonal(np.asarray(self.L)))))  # z's scale
        self.svi_time, self.svi_compile = time.perf_counter() - t, comp
        return self

    def elbo_final(self):
        return float(np.mean(self.elbo[-max(len(self.elbo) // 10, 1):]))

    def to_z(self, u):
        """Whitened draws (..., d) -> the project's unconstrained coordinates."""
        return np.asarray(self.z_hat) + np.asarray(u) @ np.asarray(self.L).T


# ---------------------------------------------------------------- NeuTra: NUTS in the flow's space

def _neutra_potential(flow, params):
    from numpyro.infer.reparam import NeuTraReparam
    from numpyro.infer.util import potential_energy

    neutra = NeuTraReparam(flow.guide, params)
    rmodel = neutra.reparam(flow.model)
    name = f"{flow.guide.prefix}_shared_latent"
    return neutra, lambda x: potential_energy(rmodel, (), {}, {name: x})


def neutra_nuts(flow, seed):
    import jax
    import jax.numpy as jnp

    from bayes.seeds import prng_key

    pb, s, d = flow.pb, flow.pb.settings, flow.d

    def run(keys, params):
        _, pe = _neutra_potential(flow, params)

        def chain(key):  # the project's chain; start at a base N(0, I) draw, unit starting mass
            xs, stats = compiled._chain(s, key, jnp.zeros(d), jnp.eye(d), pe, keep_warmup=True)
            g_warm = stats["n_steps"][:s.num_warmup].sum()
            xs, stats = jax.tree.map(lambda x: x[s.num_warmup:], (xs, stats))
            return xs, stats, g_warm, stats["step_size"][0]

        return jax.vmap(chain)(keys)

    keys = jax.random.split(jax.random.split(prng_key(seed), 3)[0], s.num_chains)
    fn, comp = _aot(run, keys, flow.params)
    (xs, stats, g_warm, eps), rt = _timed(fn, keys, flow.params)
    neutra, _ = _neutra_potential(flow, flow.params)
    C, D = xs.shape[:2]
    u = np.asarray(jax.jit(lambda x: neutra.transform_sample(x)["u"])(xs.reshape(C * D, d))).reshape(C, D, d)
    row = {"sampler": "NeuTra", "setting": _flow_setting(flow) + f", NUTS {s.num_chains} x ({s.num_warmup} + "
                                                                  f"{s.num_samples})",
           "svi_steps": flow.steps, "svi_grads": flow.steps * flow.particles, "svi_s": flow.svi_time,
           "elbo": flow.elbo_final(), "wall": comp + rt, "compile": comp, "run": rt,
           "g_warm": float(np.sum(g_warm)), "g_samp": float(np.sum(stats["n_steps"])),
           "tuned": f"eps={float(np.mean(eps)):.4f}, steps/draw {np.mean(stats['n_steps']):.1f}"}
    return _finish(pb, flow.to_z(u), stats, row)


def _flow_setting(flow):
    g = {"iaf": "AutoIAFNormal", "bnaf": "AutoBNAFNormal", "mvn": "AutoMultivariateNormal"}[flow.kind]
    simplex = "" if flow.pb.settings.simplex == "folded" else f", {flow.pb.settings.simplex} coordinates"
    loss = "" if flow.renyi is None else f", Renyi alpha={flow.renyi:g}"
    return f"{g}, SVI {flow.steps} x {flow.particles} particles{loss}{simplex}"


# ---------------------------------------------------------------- the flow as a variational twin

def flow_twin(flow, seed, chains, draws):
    import jax

    t = time.perf_counter()
    x = flow.guide.sample_posterior(jax.random.key(seed + 7), flow.params, sample_shape=(chains * draws,))["u"]
    zs = flow.to_z(x).reshape(chains, draws, flow.d)
    t_draw = time.perf_counter() - t
    stats = {"diverging": np.zeros((chains, draws), bool), "n_steps": np.zeros((chains, draws), int),
             "acceptance_rate": np.ones((chains, draws)), "energy": np.zeros((chains, draws)),
             "lp": np.zeros((chains, draws)), "step_size": np.zeros((chains, draws))}
    row = {"sampler": "flow twin", "setting": _flow_setting(flow) + f", {chains * draws} guide draws",
           "svi_steps": flow.steps, "svi_grads": flow.steps * flow.particles, "svi_s": flow.svi_time,
           "elbo": flow.elbo_final(), "wall": flow.svi_time + t_draw}
    return _finish(flow.pb, zs, stats, row)


def vi_twin(pb, seed, theta_coords, steps):
    """The project's variational twin (bayes.fit_vi, full Gaussian), compilation included."""
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bayes.VIWarning)
        dt = bayes.fit_vi(pb.Y, pb.A, rank=pb.settings.rank, theta="nonneg", fit=pb.fit, num_steps=steps,
                          theta_coords=theta_coords, seed=seed)
    row = {"sampler": "VI twin", "setting": f"bayes.fit_vi, full Gaussian, theta_coords={theta_coords}, "
                                            f"{steps} x 4 particles",
           "svi_steps": steps, "svi_grads": steps * 4, "svi_s": time.perf_counter() - t,
           "elbo": float(dt["posterior"].attrs["elbo"]), "wall": time.perf_counter() - t}
    return row, dt


def spread(dt, ref):
    """Theta's posterior sds and means against the reference run's: sd ratios per entry, the
    largest |ratio - 1|, and the largest |mean difference| in reference sds."""
    a = dt["posterior"]["theta"].values.reshape((-1,) + dt["posterior"]["theta"].shape[2:])
    b = ref["posterior"]["theta"].values.reshape((-1,) + ref["posterior"]["theta"].shape[2:])
    ratio = a.std(0) / b.std(0)
    dmean = (a.mean(0) - b.mean(0)) / b.std(0)
    var = [float(np.std(dt["posterior"][v].values) / np.std(ref["posterior"][v].values)) for v in ("sigma", "tau")]
    return {"sd_ratio": ratio, "max_sd_dev": float(np.max(np.abs(ratio - 1.0))),
            "max_mean_z": float(np.max(np.abs(dmean))), "var_ratio": var}


# ---------------------------------------------------------------- table

COLUMNS = ("data", "method", "setting", "SVI grads", "SVI s", "final ELBO", "NUTS wall s", "compile s", "run s",
           "grads warm-up", "grads sampling", "max r_hat", "min bulk ESS", "inv r_hat", "inv ESS", "div", "ESS/s run",
           "ESS/s all", "ESS/kgrad", "ESS/kgrad all", "tuned")
TWIN_COLUMNS = ("data", "twin", "setting", "wall s (incl. compile)", "final ELBO", "Theta sd ratios vs NUTS",
                "max |sd ratio - 1|", "max |mean diff| / NUTS sd", "sigma, tau sd ratios")


def line(data, r):
    nan = float("nan")
    svi_g, svi_s = r.get("svi_grads", 0), r.get("svi_s", 0.0)
    grads = r["g_samp"] + r["g_warm"] + svi_g
    cells = [data, r["sampler"], r["setting"], _fmt(float(svi_g or nan), ".3g"), _fmt(float(svi_s or nan), ".1f"),
             _fmt(r.get("elbo", nan), ".1f"), _fmt(r["wall"], ".1f"), _fmt(r["compile"], ".1f"), _fmt(r["run"], ".1f"),
             _fmt(r["g_warm"], ".3g"), _fmt(r["g_samp"], ".3g"), _fmt(r["r_hat"], ".3f"), _fmt(r["ess"], ".0f"),
             _fmt(r["inv_r_hat"], ".3f"), _fmt(r["inv_ess"], ".0f"), str(r["div"]), _fmt(r["ess"] / r["run"], ".2f"),
             _fmt(r["ess"] / (r["wall"] + svi_s), ".2f"), _fmt(1000 * r["ess"] / r["g_samp"], ".3f"),
             _fmt(1000 * r["ess"] / grads, ".3f"), r["tuned"]]
    return "| " + " | ".join(cells) + " |"


def twin_line(data, r, sp):
    ratios = " ".join(f"{x:.2f}" for x in np.ravel(sp["sd_ratio"]))
    cells = [data, r["sampler"], r["setting"], _fmt(r["wall"], ".1f"), _fmt(r.get("elbo", float("nan")), ".1f"),
             ratios, _fmt(sp["max_sd_dev"], ".2f"), _fmt(sp["max_mean_z"], ".2f"),
             " ".join(f"{x:.2f}" for x in sp["var_ratio"])]
    return "| " + " | ".join(cells) + " |"


def _header(cols):
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def main(argv=None):
    import jax

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-seeds", default=None, help="comma-separated data seeds (default 11,12; --quick: 11)")
    ap.add_argument("--size", default="20x300", help="P x N (default 20x300)")
    ap.add_argument("--rank", type=int, default=2, help="Q (default 2)")
    ap.add_argument("--covariates", type=int, default=2, help="K (default 2)")
    ap.add_argument("--seed", type=int, default=1, help="sampler / SVI seed")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: one data set, 300 SVI steps, 4 x (50 + 50), no bayes.fit_vi twin")
    ap.add_argument("--guides", default="iaf",
                    help="comma-separated guides: iaf, bnaf, mvn (a full Gaussian: the affine control; default iaf)")
    ap.add_argument("--svi-steps", type=int, default=5000, help="Adam steps of the flow's SVI (default 5000)")
    ap.add_argument("--lr", type=float, default=0.002, help="Adam learning rate (default 0.002)")
    ap.add_argument("--particles", type=int, default=4, help="ELBO particles per step (default 4)")
    ap.add_argument("--flows", type=int, default=None, help="flows (default: IAF 3, BNAF 1)")
    ap.add_argument("--hidden", default=None, help="IAF hidden dims / BNAF hidden factors, comma-separated")
    ap.add_argument("--no-whiten", action="store_true",
                    help="train the flow in raw unconstrained coordinates (shifted to the Laplace mode, not scaled)")
    ap.add_argument("--simplex", default="folded",
                    help="unconstrained coordinates of the flow and NeuTra (folded: the project's; ilr: smooth "
                         "log-ratios, the same posterior)")
    ap.add_argument("--renyi", type=float, default=None,
                    help="train the flow on NumPyro's RenyiELBO with this alpha (< 1: more mass-covering than the "
                         "ELBO; default: Trace_ELBO)")
    ap.add_argument("--no-vi", action="store_true", help="skip the project's variational twin (bayes.fit_vi)")
    a = ap.parse_args(argv)
    P, N = (int(x) for x in a.size.lower().split("x"))
    warm, keep = (50, 50) if a.quick else (500, 500)
    seeds = a.data_seeds or ("11" if a.quick else "11,12")
    steps = 300 if a.quick else a.svi_steps
    vi_steps = 300 if a.quick else 3000
    hidden = None if a.hidden is None else [int(x) for x in a.hidden.split(",")]
    rows, twins = [], []
    print(_header(COLUMNS), flush=True)
    with warnings.catch_warnings(), jax.enable_x64(True):
        warnings.simplefilter("ignore", bayes.SamplingWarning)
        for sd in (int(x) for x in seeds.split(",")):
            pb = problem(P, N, a.rank, a.covariates, sd, warm, keep)
            r, dt_nuts = nuts(pb, a.seed)
            r["tuned"] += f", steps/draw {r['g_samp'] / (pb.settings.num_chains * keep):.1f}"
            rows.append((pb.name, r))
            print(line(pb.name, r), flush=True)
            for kind in a.guides.split(","):
                flows = a.flows or (3 if kind == "iaf" else 1)
                fpb = pb if a.simplex == "folded" else dataclasses.replace(
                    pb, settings=dataclasses.replace(pb.settings, simplex=a.simplex))
                flow = Flow(fpb, kind, steps, a.lr, a.particles, flows, hidden, not a.no_whiten, a.seed,
                            a.renyi).train()
                r, ndt = neutra_nuts(flow, a.seed)
                rows.append((pb.name, r))
                print(line(pb.name, r), flush=True)
                twins.append((pb.name, {**r, "sampler": "NeuTra (check)"}, spread(ndt, dt_nuts)))
                tr, tdt = flow_twin(flow, a.seed, pb.settings.num_chains, 1000)
                twins.append((pb.name, tr, spread(tdt, dt_nuts)))
                print(twin_line(*twins[-1]), flush=True)
            for tc in () if a.no_vi or a.quick else ("direct", "marginal"):
                tr, tdt = vi_twin(pb, a.seed, tc, vi_steps)
                twins.append((pb.name, tr, spread(tdt, dt_nuts)))
                print(twin_line(*twins[-1]), flush=True)
    print("\n" + _header(COLUMNS))
    for name, r in rows:
        print(line(name, r))
    print("\n" + _header(TWIN_COLUMNS))
    for t in twins:
        print(twin_line(*t))
    print("\nESS: min bulk ESS over Theta, sigma, tau (inv: X Theta, sigma, tau, log-likelihood). ESS/s run: NUTS "
          "sampling without compilation; ESS/s all: SVI and NUTS with compilation. ESS/kgrad: per 1000 NUTS sampling "
          "gradients; 'all': warm-up and SVI gradients (steps x particles) included. Theta sd ratios: twin / NUTS, "
          "entries in row-major (component, covariate) order.")


if __name__ == "__main__":
    main()
