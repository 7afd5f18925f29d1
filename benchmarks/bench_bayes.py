"""Benchmark ladder of the Bayesian twin: NUTS on the joint model, wall time including
compilation, with the diagnostics the issue's targets are stated in (max r_hat <= 1.01,
min bulk ESS >= 400, no divergences).

Cases (4 chains, vectorized; the package's defaults, ``kernel="auto"``: NUTS at rank 1,
ChEES-HMC above; baseline in the same run: NUTS with a stick-breaking simplex and a
diagonal mass matrix, NumPyro's defaults):

* Orthodont, P = 4, N = 27, Q = 1, free Theta, 4 x (1000 + 1000);
* block-sparse 20 x 300, Q = 2, K = 2, non-negative Theta, 4 x (500 + 500) (target 20 s);
* block-sparse 50 x 1000, Q = 3, K = 2, 4 x (500 + 500) (target 120 s);
* with ``--full``: block-sparse 100 x 2000, Q = 5, K = 4, 4 x (500 + 500).

Then, at 20 x 300: the sampler geometry (mass dense/diag x simplex folded/ilr/
stick-breaking, and Theta in conditional coordinates), and the variational twin
(:func:`bayes.fit_vi`) against the NUTS posterior standard deviations.

``--marginal``: the ladder of issue 18 instead, Theta integrated out
(``theta_coords="marginal"``, dense and diagonal mass) against the defaults, on
``--data-seeds`` (default 11 12: at least two data sets per size), with the diagnostics
of Theta/sigma/tau, of X, of the label-invariant quantities (``bayes.mixing``: X Theta,
sigma, tau, log-likelihood), the gradient evaluations and ESS per 1000 of them (what a
loaded machine does not change), and the VI twin with Theta integrated out.

``--chees``: the same ladder through the package entry point with ``kernel="chees"``
(ChEES-HMC, ensemble adaptation) and ``--chains`` chains x (500 + 1000) (``--lengths W D``;
``D`` = ``auto``: the package's default draws, so ``--chains 4 --lengths 1000 auto`` is
``bayes.sample``'s defaults), on ``--data-seeds``, with the diagnostics of Theta, of X and of
the label-invariant quantities, and the leapfrog steps per draw; ``--tempering T`` runs it with
replica exchange over ``T`` temperatures (``bayes.sample(..., tempering=T)``) and prints each
neighbouring pair's exchange rate. Data: block-sparse (``nmfre.simulate.block_sparse``), or with
``--generator G`` a dense generator of ``bench_iterations.py`` (``counts``, ``overlap``,
``hetero``, ``tied``, ...; none shares code with the sampler's tests) at noise level
``--noise``.

``--twins``: the variational twins at 20 x 300, Q = 2, on ``--data-seeds`` (data as for
``--chees``: block-sparse, or ``--generator counts`` etc.) against a long
ChEES-HMC reference (16 chains x (1000 + 4000)): ``bayes.fit_vi`` with its default
(``method="svi"``) and with ``method="dadvi"`` (linear-response covariances) for each of
``--vi-seeds``: wall time (compilation included in the first call of each method), Theta's sd
ratios twin / reference, the largest |ratio - 1|, the largest mean gap in reference sds,
sigma's and tau's sd ratios and the optimiser's iterations.

``--shift C ...``: free Theta with the covariates moved to ``C + z`` (``z`` standardised), on
``--sizes`` (default 20 x 300) and ``--data-seeds``: ChEES-HMC's defaults with Theta sampled on
orthonormal covariates (``frame``, the default) against the given covariates.

Run: ``python benchmarks/bench_bayes.py [--quick] [--full] [--marginal]`` (``--quick``: a
smoke run with short chains, no 50 x 1000 case and a reduced geometry grid). On a shared
machine, pin it, e.g. ``taskset -c 1`` with
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

import bayes  # first: parallel host devices and x64 before JAX starts
import nmfre
from bayes import sampling
from nmfre.labels import coerce
from nmfre.simulate import block_sparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sibling benchmark scripts
from bench_iterations import GENERATORS  # noqa: E402

BASELINE = {"simplex": "stickbreaking", "mass": "diag", "kernel": "nuts"}
TARGETS = {"max_r_hat": 1.01, "min_ess_bulk": 400}


def _data(case, seed=0, generator="block", noise=0.3):
    """``(Y, A, Q, theta)`` of a case: Orthodont, or ``(P, N, Q, K)`` from ``generator``
    (``"block"``: :func:`nmfre.simulate.block_sparse`; otherwise a generator of
    ``bench_iterations.py`` at noise level ``noise``)."""
    if case == "orthodont":
        Y, A = nmfre.load_orthodont()
        return Y, A, 1, "free"
    P, N, Q, K = case
    if generator != "block":
        Y, A = GENERATORS[generator](P, N, Q, K, seed, noise)
        return Y, A, Q, "nonneg"
    d = block_sparse(P=P, N=N, rank=Q, K=K, seed=seed)
    return d["Y"], d["A"], Q, "nonneg"


def nuts(Y, A, Q, theta, fit, warmup, samples, **settings):
    """One run of the compiled sampler (compilation included); returns (seconds, diagnostics, posterior)."""
    data = coerce(Y, A)
    s = sampling.Sampler("joint", Q, data.P, None, data.K, theta=theta, num_warmup=warmup, num_samples=samples,
                         **settings)
    bayes.compiled.clear_cache()  # every row pays its compilation
    t = time.perf_counter()
    post = s.sample(Y, A, fit=fit, seed=1, warn=False)
    el = time.perf_counter() - t
    return el, bayes.diagnostics(post), post


def row(name, setting, el, dg, budget=None):
    ess = dg["min_ess_bulk"]
    ok = dg["max_r_hat"] <= TARGETS["max_r_hat"] and ess >= TARGETS["min_ess_bulk"] and dg["divergences"] == 0
    ok = ok and (budget is None or el <= budget)
    print(f"  {name:<22} {setting:<52} {el:8.1f} {dg['max_r_hat']:8.3f} {ess:8.0f} {dg['divergences']:5d} "
          f"{ess / el:7.2f}  {'yes' if ok else 'no'}", flush=True)


def header(title):
    print(f"\n{title}")
    print(f"  {'case':<22} {'setting':<52} {'time s':>8} {'r_hat':>8} {'ESS':>8} {'div':>5} {'ESS/s':>7}  target")


def _label(settings):
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"


def ladder(quick, full):
    n_long, n_short = (200, 200) if quick else (1000, 500)
    cases = [("Orthodont 4x27 Q=1", "orthodont", n_long, None),
             ("20x300 Q=2", (20, 300, 2, 2), n_short, 20.0)]
    if not quick:
        cases.append(("50x1000 Q=3", (50, 1000, 3, 2), n_short, 120.0))
    if full:
        cases.append(("100x2000 Q=5", (100, 2000, 5, 4), n_short, None))
    header("Ladder: joint model, 4 chains x (warm-up + draws), compilation included")
    out = {}
    for name, case, n, budget in cases:
        Y, A, Q, theta = _data(case)
        fit = nmfre.fit(Y, A, rank=Q, theta=theta)
        label = f"{name} ({n}+{n})"
        for settings in ({}, BASELINE):
            el, dg, post = nuts(Y, A, Q, theta, fit, n, n, **settings)
            kernel = post["posterior"].attrs["sampler"].split()[0]
            row(label, f"{_label(settings)} ({kernel})" if not settings else _label(settings), el, dg, budget)
            if not settings:
                out[case] = (Y, A, Q, theta, fit, post)
    return out


def geometry(quick, data):
    Y, A, Q, theta, fit, _ = data
    n = 150 if quick else 500
    grid = ([{"mass": "dense", "simplex": "folded", "kernel": "nuts"}, BASELINE] if quick else
            [{"mass": m, "simplex": s, "kernel": "nuts"} for m in ("dense", "diag")
             for s in ("folded", "ilr", "stickbreaking")]
            + [{"mass": m, "simplex": "folded", "theta_coords": "conditional", "kernel": "nuts"}
               for m in ("dense", "diag")])
    header(f"Geometry at 20x300 Q=2, 4 x ({n} + {n})")
    for settings in grid:
        el, dg, _ = nuts(Y, A, Q, theta, fit, n, n, **settings)
        row("20x300 Q=2", _label(settings), el, dg, None if quick else 20.0)


def _theta_sd(post):
    th = post["posterior"]["theta"]
    return th.mean(("chain", "draw")).values, th.std(("chain", "draw")).values


def vi(quick, data):
    Y, A, Q, theta, fit, post = data
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = bayes.fit_vi(Y, A, Q, fit=fit, theta=theta, num_steps=300 if quick else 3000, seed=1)
    el = time.perf_counter() - t
    m_n, s_n = _theta_sd(post)
    m_v, s_v = _theta_sd(q)
    print(f"\nVI (fit_vi, full-rank guide) at 20x300 Q=2: {el:.1f} s; theta against NUTS (defaults run above)")
    print("  sd ratio VI / NUTS:      ", np.array2string(s_v / s_n, precision=2).replace("\n", ""))
    print("  mean shift / NUTS sd:    ", np.array2string((m_v - m_n) / s_n, precision=2).replace("\n", ""))


MARGINAL = ({"kernel": "nuts"}, {"theta_coords": "marginal", "mass": "dense"},
            {"theta_coords": "marginal", "mass": "diag"})


def marginal_ladder(quick, full, seeds):
    """Issue 18's ladder: defaults against Theta integrated out, per data set."""
    n = 200 if quick else 500
    cases = [("20x300 Q=2", (20, 300, 2, 2), 20.0)]
    if not quick:
        cases.append(("50x1000 Q=3", (50, 1000, 3, 2), 120.0))
    if full:
        cases.append(("100x2000 Q=5 K=4", (100, 2000, 5, 4), 600.0))
    print(f"\nMarginal ladder: 4 x ({n} + {n}), data seeds {seeds}, compilation included")
    print(f"  {'case':<18} {'seed':>4} {'setting':<34} {'time s':>7} {'r_hat':>6} {'ESS':>5} {'X r_hat':>7} "
          f"{'X ESS':>5} {'inv r_hat':>9} {'inv ESS':>7} {'div':>4} {'grads':>8} {'ESS/kgrad':>9} {'accept':>6}")
    for name, case, _budget in cases:
        for sd in seeds:
            Y, A, Q, theta = _data(case, sd)
            fit = nmfre.fit(Y, A, rank=Q, theta=theta)
            for settings in MARGINAL:
                el, dg, post = nuts(Y, A, Q, theta, fit, n, n, **settings)
                dx = bayes.diagnostics(post, var_names=("X",))
                di = bayes.diagnostics(post, invariant=True)
                ss = post["sample_stats"]
                grads = float(ss["n_steps"].sum())
                acc = float(ss["theta_accept"].mean()) if "theta_accept" in ss else float("nan")
                print(f"  {name:<18} {sd:>4} {_label(settings):<34} {el:7.1f} {dg['max_r_hat']:6.3f} "
                      f"{dg['min_ess_bulk']:5.0f} {dx['max_r_hat']:7.3f} {dx['min_ess_bulk']:5.0f} "
                      f"{di['max_r_hat']:9.3f} {di['min_ess_bulk']:7.0f} {dg['divergences']:4d} {grads:8.0f} "
                      f"{1000 * min(dg['min_ess_bulk'], dx['min_ess_bulk']) / grads:9.2f} {acc:6.3f}", flush=True)
            if case[0] == 20:
                vi_marginal(Y, A, Q, theta, fit, sd, quick)


def vi_marginal(Y, A, Q, theta, fit, sd, quick):
    """VI with Theta integrated out against a long NUTS run (Theta integrated out, dense mass)."""
    el, dg, ref = nuts(Y, A, Q, theta, fit, 1000, 1000, theta_coords="marginal", mass="dense")
    _, s_n = _theta_sd(ref)
    for tc in ("direct", "marginal"):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = bayes.fit_vi(Y, A, Q, fit=fit, theta=theta, num_steps=300 if quick else 3000, seed=1, theta_coords=tc)
        t = time.perf_counter() - t
        ratio = _theta_sd(q)[1] / s_n
        print(f"    VI theta_coords={tc:<9} {t:6.1f} s: Theta sd / NUTS sd (reference r_hat {dg['max_r_hat']:.3f}, "
              f"ESS {dg['min_ess_bulk']:.0f}) {np.array2string(ratio.ravel(), precision=2)}", flush=True)


def twins(seeds, vi_seeds, theta="nonneg", generator="block", noise=0.3):
    """Issue 18's variational target: Theta sds within 25% of a mixed run, in <= 30 s."""
    print(f"\nVariational twins at 20x300 Q=2 ({theta} Theta, {generator} data) against ChEES-HMC "
          "16 x (1000 + 4000), seed 7")
    print(f"  {'data':>4} {'method':<6} {'seed':>4} {'wall s':>6} {'Theta sd ratios':<27} {'max dev':>7} "
          f"{'max gap':>7} {'sigma,tau':>10} {'iters':>5}")
    for sd in seeds:
        Y, A, _, _ = _data((20, 300, 2, 2), sd, generator, noise)
        fit = nmfre.fit(Y, A, rank=2, theta=theta)
        ref = bayes.sample(Y, A, 2, fit=fit, theta=theta, kernel="chees", num_chains=16, num_samples=4000, seed=7)
        dg = bayes.diagnostics(ref)
        a = ref["posterior"]
        s_ref, m_ref = a.theta.std(("chain", "draw")), a.theta.mean(("chain", "draw"))
        print(f"  {sd:>4} reference: max r_hat {dg['max_r_hat']:.3f}, min bulk ESS {dg['min_ess_bulk']:.0f}, "
              f"Theta sds {np.array2string(s_ref.values.ravel(), precision=3)}")
        bayes.vi._CACHE.clear()  # each data set pays its compilations
        bayes.dadvi._CACHE.clear()
        for method in ("svi", "dadvi"):
            for vs in (vi_seeds[:1] if method == "svi" else vi_seeds):
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", bayes.VIWarning)
                    q = bayes.fit_vi(Y, A, 2, fit=fit, theta=theta, method=method, seed=vs)
                el = time.perf_counter() - t
                b = q["posterior"]
                r = (b.theta.std(("chain", "draw")) / s_ref).values.ravel()
                gap = float(np.max(np.abs((b.theta.mean(("chain", "draw")) - m_ref) / s_ref)))
                st = [float(b[k].std() / a[k].std()) for k in ("sigma", "tau")]
                its = b.attrs.get("optimizer_iterations", len(q["variational"]["elbo"]))
                print(f"  {sd:>4} {method:<6} {vs:>4} {el:6.1f} {np.array2string(r, precision=2):<27} "
                      f"{np.max(np.abs(r - 1)):7.2f} {gap:7.2f} {st[0]:4.2f},{st[1]:4.2f} {its:>5}", flush=True)


CHEES_CASES = {"20x300": ("20x300 Q=2", (20, 300, 2, 2)), "50x1000": ("50x1000 Q=3", (50, 1000, 3, 2)),
               "100x2000": ("100x2000 Q=5 K=4", (100, 2000, 5, 4))}


def chees_ladder(quick, full, seeds, chains, sizes=None, lengths=None, depth=10, tempering=None,
                 generator="block", noise=0.3):
    """The ladder with ``kernel="chees"`` through :class:`bayes.sampling.Sampler`, per data set
    (``tempering``: replica exchange over that many temperatures; ``lengths``: ``(warm-up,
    draws)``, draws None for the package's default; data from ``generator`` at ``noise``, see
    :func:`_data`)."""
    warm, draws = lengths or ((200, 200) if quick else (500, 1000))
    if sizes is None:
        sizes = ["20x300"] + ([] if quick else ["50x1000"]) + (["100x2000"] if full else [])
    cases = [CHEES_CASES[k] for k in sizes]
    tempered = f", replica exchange over {tempering} temperatures" if tempering else ""
    data = "block-sparse" if generator == "block" else f"bench_iterations.py's {generator} generator at c = {noise}"
    print(f"\nChEES ladder: {chains} chains x ({warm} + {'default' if draws is None else draws}), at most "
          f"{2**depth} leapfrog steps per draw, {data}, data seeds {seeds}{tempered}, compilation included")
    print(f"  {'case':<18} {'seed':>4} {'time s':>7} {'r_hat':>6} {'ESS':>5} {'X r_hat':>7} {'X ESS':>5} "
          f"{'inv r_hat':>9} {'inv ESS':>7} {'div':>4} {'steps/draw':>10} {'ESS/kgrad':>9}")
    for name, case in cases:
        for sd in seeds:
            Y, A, Q, theta = _data(case, sd, generator, noise)
            fit = nmfre.fit(Y, A, rank=Q, theta=theta)
            el, dg, post = nuts(Y, A, Q, theta, fit, warm, draws, kernel="chees", num_chains=chains,
                                max_tree_depth=depth, tempering=tempering)
            dx = bayes.diagnostics(post, var_names=("X",))
            di = bayes.diagnostics(post, invariant=True)
            steps = post["sample_stats"]["n_steps"]
            grads = float(steps.sum()) * (tempering or 1)  # every replica of a ladder takes the cold one's steps
            print(f"  {name:<18} {sd:>4} {el:7.1f} {dg['max_r_hat']:6.3f} {dg['min_ess_bulk']:5.0f} "
                  f"{dx['max_r_hat']:7.3f} {dx['min_ess_bulk']:5.0f} {di['max_r_hat']:9.3f} {di['min_ess_bulk']:7.0f} "
                  f"{dg['divergences']:4d} {float(steps.mean()):10.0f} "
                  f"{1000 * min(dg['min_ess_bulk'], dx['min_ess_bulk']) / grads:9.2f}", flush=True)
            if tempering:
                print(f"  {'':<18} {'':>4} exchanges: {post['posterior'].attrs['tempering']}", flush=True)


def shift_ladder(seeds, shifts, sizes=None, generator="block", noise=0.3, lengths=None):
    """Free Theta with every covariate but the intercept moved to ``c + z`` (``z`` the covariate
    standardised to mean 0, sd 1): the defaults (Theta sampled on orthonormal covariates,
    ``frame``) against ``frame=False`` (the given covariates), the same data, fit and seed. The
    posterior is the same either way (only its coordinates differ), so are the targets."""
    warm, draws = lengths or (1000, None)
    cases = [CHEES_CASES[k] for k in (sizes or ["20x300"])]
    data = "block-sparse" if generator == "block" else f"bench_iterations.py's {generator} generator at c = {noise}"
    print(f"\nUncentred covariates, free Theta: 4 chains x ({warm} + {'default' if draws is None else draws}), {data}, "
          f"data seeds {seeds}, shifts {shifts}, compilation included")
    print(f"  {'case':<18} {'seed':>4} {'shift':>7} {'frame':>5} {'time s':>7} {'r_hat':>6} {'ESS':>5} "
          f"{'inv r_hat':>9} {'inv ESS':>7} {'div':>4} {'steps/draw':>10} {'slope sd':>9}")
    for name, case in cases:
        for sd in seeds:
            Y, A0, Q, _ = _data(case, sd, generator, noise)
            A0 = np.asarray(A0, dtype=float)
            for c in shifts:
                A = A0.copy()
                z = A[1:] - A[1:].mean(axis=1, keepdims=True)
                A[1:] = c + z / z.std(axis=1, keepdims=True)
                fit = nmfre.fit(Y, A, rank=Q, theta="free")
                for frame in (False, True):
                    el, dg, post = nuts(Y, A, Q, "free", fit, warm, draws, kernel="chees", num_chains=4,
                                        frame=frame)
                    di = bayes.diagnostics(post, invariant=True)
                    slope = float(post["posterior"]["theta"].isel(covariate=1).std(("chain", "draw")).mean())
                    print(f"  {name:<18} {sd:>4} {c:7g} {str(frame):>5} {el:7.1f} {dg['max_r_hat']:6.3f} "
                          f"{dg['min_ess_bulk']:5.0f} {di['max_r_hat']:9.3f} {di['min_ess_bulk']:7.0f} "
                          f"{dg['divergences']:4d} {float(post['sample_stats']['n_steps'].mean()):10.0f} "
                          f"{slope:9.4f}", flush=True)


def _length(text: str):
    """A chain length of ``--lengths``: a positive integer, or ``auto`` (None: the package's
    default number of draws)."""
    if text == "auto":
        return None
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"a chain length must be positive, got {n}")
    return n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: short chains, small grid")
    ap.add_argument("--full", action="store_true", help="add the 100 x 2000, Q = 5 case")
    ap.add_argument("--marginal", action="store_true", help="issue 18's ladder: Theta integrated out vs defaults")
    ap.add_argument("--chees", action="store_true", help="the ladder with kernel='chees' through the package")
    ap.add_argument("--chains", type=int, default=16, help="chains of --chees")
    ap.add_argument("--lengths", type=_length, nargs=2, metavar=("WARMUP", "DRAWS"),
                    help="warm-up and draws per chain of --chees (default 500 1000; DRAWS 'auto': the "
                         "package's default for the size)")
    ap.add_argument("--max-tree-depth", type=int, default=10,
                    help="--chees: trajectories capped at 2**depth leapfrog steps (default 10)")
    ap.add_argument("--tempering", type=int, help="--chees with replica exchange over this many temperatures")
    ap.add_argument("--sizes", nargs="+", choices=sorted(CHEES_CASES),
                    help="sizes of --chees (default: by --quick/--full)")
    ap.add_argument("--data-seeds", type=int, nargs="+", default=[11, 12],
                    help="data sets of --marginal/--chees/--twins")
    ap.add_argument("--shift", type=float, nargs="+", metavar="C",
                    help="free Theta on covariates moved to C + z: Theta sampled on orthonormal covariates "
                         "(the default) against the given ones (sizes: --sizes, default 20x300)")
    ap.add_argument("--twins", action="store_true", help="the variational twins against a long ChEES-HMC run")
    ap.add_argument("--vi-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the twins of --twins")
    ap.add_argument("--theta", choices=["nonneg", "free"], default="nonneg", help="Theta of --twins")
    ap.add_argument("--generator", choices=["block", *GENERATORS], default="block",
                    help="data of --twins and --chees: block-sparse (nmfre.simulate) or a generator of "
                         "bench_iterations.py")
    ap.add_argument("--noise", type=float, default=0.3,
                    help="noise level c of a bench_iterations.py generator (default 0.3)")
    a = ap.parse_args(argv)
    if a.lengths and a.lengths[0] is None:
        ap.error("--lengths: WARMUP must be a number of draws ('auto' is for DRAWS)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bayes.SamplingWarning)
        warnings.simplefilter("ignore", nmfre.ConvergenceWarning)
        if a.marginal:
            marginal_ladder(a.quick, a.full, a.data_seeds)
            return
        if a.shift:
            shift_ladder(a.data_seeds, a.shift, a.sizes, a.generator, a.noise, a.lengths)
            return
        if a.twins:
            twins(a.data_seeds, a.vi_seeds, a.theta, a.generator, a.noise)
            return
        if a.chees:
            chees_ladder(a.quick, a.full, a.data_seeds, a.chains, a.sizes, a.lengths, a.max_tree_depth, a.tempering,
                         a.generator, a.noise)
            return
        out = ladder(a.quick, a.full)
        mid = out[(20, 300, 2, 2)]
        geometry(a.quick, mid)
        vi(a.quick, mid)
    print(f"\nTargets: max r_hat <= {TARGETS['max_r_hat']}, min bulk ESS >= {TARGETS['min_ess_bulk']}, "
          "0 divergences; time <= 20 s (20x300), <= 120 s (50x1000). Baseline: " + _label(BASELINE))


if __name__ == "__main__":
    main()
