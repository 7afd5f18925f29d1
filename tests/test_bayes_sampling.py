"""bayes.sampling: closed form, mixing, alignment, calibration, the DataTree, bad input.

Stochastic tests (their seeds move with the suite's seed offset, ``helpers.seed``) have a
false-alarm rate of at most 1e-4 on a correct sampler and a stated power against a named
fault; docs/testing.md has the table. Sampler diagnostics (r_hat, ESS, divergences) at a
seed are reported by benchmarks/bench_bayes.py; the tests bound r_hat only where a stuck or
label-switched chain is the fault (r_hat < 1.05, see ``RHAT_FAULT``).
"""

import warnings

import numpy as np
import pytest
from helpers import degenerate, rank2, record, seed

import bayes
import nmfre


@pytest.fixture(scope="session")
def inf_ortho(ml_fit):
    return ml_fit.infer(n_boot=4000, seed=1)


# A stuck chain or one in another labelling has r_hat >> 1.1. For chains that mix, split
# r_hat - 1 is about (chi2_7 / 7 - 1) / (2 n) with n the ESS per split chain (8 of them):
# its 1 - 1e-4 quantile is 1 + 1.63 / n, 1 + 2.1 / n with the heavier tail of the rank-
# normalised estimate (simulated AR(1) chains). Used only at 4 x 1000 draws where the
# measured bulk ESS is >= 600 (n >= 75: quantile <= 1.03), r_hat < 1.05 tests the fault
# with a false-alarm rate below 1e-4 (docs/testing.md has the measured ESS per offset).
RHAT_FAULT = 1.05

# z of a two-sided Monte Carlo check at 1e-5 per comparison (<= 1e-4 for up to 10 per test)
Z = 4.42


@pytest.fixture(scope="session")
def post_conditional(orthodont, ml_fit):
    Y, A = orthodont
    return bayes.sample(Y, A, 1, model="conditional", fit=ml_fit, num_warmup=500, num_samples=1000, seed=seed(1))


@pytest.fixture(scope="session")
def post_joint(orthodont, ml_fit):
    Y, A = orthodont
    return bayes.sample(Y, A, 1, model="joint", fit=ml_fit, seed=seed(2), draw_U=True, posterior_predictive=True)


def _mean_mcse(a):
    """Mean over (chain, draw) of a (chain, draw, ...) array and its Monte Carlo SE (ArviZ)."""
    from arviz_stats.base import array_stats

    a = np.asarray(a, float)
    return a.mean(axis=(0, 1)), np.asarray(array_stats.mcse(a, chain_axis=0, draw_axis=1, method="mean"))


def test_conditional_posterior_matches_closed_form(post_conditional, ml_fit, inf_ortho):
    """Flat prior, X and variances fixed: the posterior is N(theta_hat, I^-1) exactly.

    The draws whitened by the closed form, w = C^-1 (theta - theta_hat) with C C' = I^-1,
    are N(0, I): the means of w_j, w_j^2 - 1 and w_1 w_2 are zero. Each of the 5 is checked
    against its own Monte Carlo SE (ArviZ's mcse) at z = 4.42 (two-sided 1e-5 each: false
    alarm <= 5e-5). Power: the test's MCSEs make a bias of half a posterior sd (mean w =
    0.5) and a posterior twice too narrow (mean w^2 = 0.25) shifts of > 2 z MCSE, caught with
    probability > 1 - 1e-5 (asserted below from the MCSEs of this run)."""
    _check_closed_form(post_conditional, ml_fit, inf_ortho, "conditional_closed_form")


def _check_closed_form(post, ml_fit, inf_ortho, name):
    """The whitened-moment checks of test_conditional_posterior_matches_closed_form."""
    th = post["posterior"]["theta"].transpose("chain", "draw", "component", "covariate").values
    C = np.linalg.cholesky(inf_ortho.cov_model.values)
    w = np.linalg.solve(C, (th.reshape(*th.shape[:2], -1) - ml_fit.theta.values.ravel())[..., None])[..., 0]
    stats = np.concatenate([w, w**2 - 1, w[..., :1] * w[..., 1:]], axis=-1)
    m, se = _mean_mcse(stats)
    record(name, z=m / se, mcse=se)
    assert (np.abs(m) <= Z * se).all(), (m, se)
    # power against the named faults, from this run's MCSEs
    assert (2 * Z * se[:2] < 0.5).all() and (2 * Z * se[2:4] < 0.75).all(), se


def test_joint_mixes_on_orthodont(post_joint, ml_fit):
    """The joint posterior (X, Theta, sigma, tau) is centred at the ML fit and its chains agree.

    Posterior mean within 0.25 posterior sd of the MLE (measured 0.01 sd: asymptotically
    O(sd / sqrt(N)) apart) plus z = 4.42 MCSE; false alarm < 1e-5 per entry. Fault caught: a
    posterior shifted by 0.25 sd + 2 z MCSE (about 0.45 sd). r_hat < 1.05 (``RHAT_FAULT``):
    a chain stuck away from the others."""
    d = bayes.diagnostics(post_joint)
    th = post_joint["posterior"]["theta"]
    m, se = _mean_mcse(th.transpose("chain", "draw", ...).values)
    sd = th.std(("chain", "draw")).values
    gap = np.abs(m - ml_fit.theta.values)
    record("joint_orthodont", gap_sd=gap / sd, mcse_sd=se / sd, r_hat=d["max_r_hat"], ess=d["min_ess_bulk"],
           divergences=d["divergences"])
    assert d["max_r_hat"] < RHAT_FAULT, d
    assert (gap <= 0.25 * sd + Z * se).all(), (gap / sd, se / sd)


def test_datatree_layout(post_joint, ml_fit):
    post = post_joint["posterior"]
    assert set(post_joint.children) >= {"posterior", "sample_stats", "observed_data", "posterior_predictive"}
    assert post["theta"].dims == ("chain", "draw", "component", "covariate")
    assert post["X"].dims == ("chain", "draw", "feature", "component")
    assert post["U"].dims == ("chain", "draw", "component", "unit")
    for dim in ("component", "covariate", "feature"):
        assert list(post[dim].values) == list(ml_fit.coords[dim])
    assert list(post["unit"].values) == list(ml_fit.coords["unit"])
    np.testing.assert_allclose(post["X"].sum("feature"), 1.0, atol=1e-10)
    # U's posterior mean is close to the BLUP at the ML fit (stochastic, measured margin in
    # docs/testing.md: the correlation's Monte Carlo noise is O(1e-3))
    corr = float(np.corrcoef(post["U"].mean(("chain", "draw")).values.ravel(), ml_fit.U.values.ravel())[0, 1])
    yrep = post_joint["posterior_predictive"]["Y"]
    assert yrep.dims == ("chain", "draw", "feature", "unit")  # nmfre's order, as observed_data
    gap = abs(float(yrep.mean()) - float(ml_fit.Y.mean()))
    record("datatree_layout", corr=corr, yrep_gap=gap)
    assert corr > 0.99
    assert gap < 0.5


def test_rank2_joint_aligned_and_mixing():
    """Rank 2: every chain's mean basis matches the fit's columns in order (cosine > 0.98)
    and the chains agree (r_hat < 1.05): the fault is a chain in another labelling or
    stuck, which gives a permutation, cosines near 0.5 and r_hat >> 1.1. Data and sampler
    seeds move with the offset; the r_hat and divergences of a fixed seed are the
    benchmark's (bench_bayes.py)."""
    Y, A, X, theta = rank2(seed(21), N=150)
    fit = nmfre.fit(Y, A, rank=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bayes.SamplingWarning)
        post = bayes.sample(Y, A, 2, model="joint", fit=fit, num_warmup=1000, num_samples=1000, seed=seed(3))
    d = bayes.diagnostics(post)
    from nmfre.core.bootstrap import align_components

    Xc = post["posterior"]["X"].mean("draw").transpose("chain", "feature", "component").values
    aligned = [align_components(fit.X.values, Xc[c]) for c in range(Xc.shape[0])]
    record("rank2_joint", r_hat=d["max_r_hat"], ess=d["min_ess_bulk"], divergences=d["divergences"],
           cos=min(float(cos.min()) for _, cos in aligned))
    assert d["max_r_hat"] < RHAT_FAULT, d
    for perm, cos in aligned:
        assert list(perm) == [0, 1] and cos.min() > 0.98, (perm, cos)


def test_five_calls_one_compilation():
    """Five bayes.sample calls on different data of one shape (and different N: the
    sampler sees compressed statistics) compile the sampler once."""
    before = sum(bayes.compiled.TRACES.values())
    for i, N in enumerate([27, 27, 40, 27, 60]):
        d = nmfre.simulate.baseline(N=N, seed=i)
        fit = nmfre.fit(d["Y"], d["A"], rank=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bayes.SamplingWarning)
            post = bayes.sample(d["Y"], d["A"], 1, model="conditional", fit=fit, num_warmup=123, num_samples=200,
                                seed=i)
        assert post["posterior"]["theta"].shape == (4, 200, 1, 2)
    assert sum(bayes.compiled.TRACES.values()) - before == 1
    sampler = bayes.Sampler("conditional", 1, 4, None, 2, num_warmup=123, num_samples=200)
    sampler.run(d["Y"], d["A"], fit=fit, seed=9)
    assert sampler.compilations == 1


def test_memory_flat_over_repeated_calls():
    """60 conditional runs on Orthodont-shaped data: after 10 warm-up calls the resident
    memory grows by less than 20 MB (measured: < 1 MB; with MCMC.run every call compiled
    anew and memory grew until LLVM ran out of code space)."""
    import gc

    import psutil

    proc = psutil.Process()
    data = [nmfre.simulate.baseline(N=27, seed=s) for s in range(5)]
    fits = [nmfre.fit(d["Y"], d["A"], rank=1) for d in data]
    sampler = bayes.Sampler("conditional", 1, 4, 27, 2, num_warmup=500, num_samples=500)
    for i in range(60):
        if i == 10:
            gc.collect()
            start = proc.memory_info().rss
        sampler.sample(data[i % 5]["Y"], data[i % 5]["A"], fit=fits[i % 5], seed=i, warn=False)
    gc.collect()
    assert proc.memory_info().rss - start < 20 * 2**20
    assert sampler.compilations == 1


def test_sample_batch_equals_the_layout_of_sample():
    data = [nmfre.simulate.baseline(N=27, seed=s) for s in range(3)]
    fits = [nmfre.fit(d["Y"], d["A"], rank=1) for d in data]
    sampler = bayes.Sampler("conditional", 1, 4, None, 2, num_warmup=300, num_samples=300)
    posts = sampler.sample_batch([(d["Y"], d["A"]) for d in data], fits=fits, seed=seed(1))
    for post, fit in zip(posts, fits, strict=True):
        assert set(post.children) >= {"posterior", "sample_stats", "observed_data"}
        th = post["posterior"]["theta"]
        assert th.dims == ("chain", "draw", "component", "covariate") and th.shape == (4, 300, 1, 2)
        d = bayes.diagnostics(post)
        # the flat-prior conditional posterior is centred at the fit: its mean is a few
        # hundredths of an sd away (MCSE), 4 sd is a gross fault (a draw of another data set);
        # r_hat at 4 x 300 draws is the benchmark's to report
        gap = (np.abs(th.mean(("chain", "draw")) - fit.theta) / th.std(("chain", "draw"))).values
        record("sample_batch", r_hat=d["max_r_hat"], ess=d["min_ess_bulk"], gap_sd=gap)
        assert np.isfinite(d["max_r_hat"])
        assert (gap < 4).all()


def test_sample_batch_runs_chees_at_rank2():
    """``sample_batch`` vectorises the ChEES-HMC runner (the default at rank > 1) over data
    sets: each posterior has the layout of ``sample`` and names its kernel, and its
    label-invariant column sums of Theta are centred near its own fit. Measured gaps 0.005-0.38
    posterior sds over seed offsets 0-3; the fault, draws of the other data set, gives
    15.5-17.2 sds on the intercept's sum (offsets 0 and 1), so the bound of 4 catches it."""
    data = [nmfre.simulate.block_sparse(P=8, N=60, rank=2, K=2, seed=seed(40) + s) for s in range(2)]
    fits = [nmfre.fit(d["Y"], d["A"], rank=2, theta="nonneg") for d in data]  # free Theta can degenerate here
    sampler = bayes.Sampler("joint", 2, 8, None, 2, theta="nonneg", num_warmup=200, num_samples=200)
    assert sampler.kernel == "chees"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bayes.SamplingWarning)
        posts = sampler.sample_batch([(d["Y"], d["A"]) for d in data], fits=fits, seed=seed(2))
    for post, fit in zip(posts, fits, strict=True):
        assert post["posterior"].attrs["sampler"].startswith("ChEES-HMC")
        th = post["posterior"]["theta"]
        assert th.dims == ("chain", "draw", "component", "covariate") and th.shape == (4, 200, 2, 2)
        sums = th.sum("component")
        gap = (np.abs(sums.mean(("chain", "draw")) - fit.theta.sum("component")) / sums.std(("chain", "draw"))).values
        record("sample_batch_chees", gap_sd=gap)
        assert (gap < 4).all(), gap


def test_missing_values(orthodont, ml_fit):
    """NaN cells: the likelihood sums over patterns of observed features; the posterior
    stays close to the complete-data one, U and replicated Y are drawn for every unit."""
    Y, A = orthodont
    Ym = Y.copy()
    Ym.iloc[1, 3] = Ym.iloc[2, 10] = Ym.iloc[0, 20] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bayes.SamplingWarning)
        post = bayes.sample(Ym, A, 1, model="conditional_x", num_warmup=300, num_samples=500, seed=seed(4),
                            draw_U=True, posterior_predictive=True)
    assert np.isnan(post["observed_data"]["Y"].values).sum() == 3
    th = post["posterior"]["theta"]
    gap = (np.abs(th.mean(("chain", "draw")) - ml_fit.theta) / th.std(("chain", "draw"))).values
    record("missing_values", gap_sd=gap)
    assert (gap < 0.5).all(), gap
    assert np.isfinite(post["posterior"]["U"].values).all()
    assert np.isfinite(post["posterior_predictive"]["Y"].values).all()
    with pytest.raises(ValueError, match="complete data"):
        bayes.sample(Ym, A, 1, model="conditional")


def test_sampling_warning_when_diagnostics_fail(orthodont, ml_fit):
    """Exact at any seed: ArviZ caps the bulk ESS of S draws at S log10 S, 353 < 400 for 4 x 40.
    The warning names the model (the demo's two posteriors warned alike)."""
    Y, A = orthodont
    with pytest.warns(bayes.SamplingWarning, match=r"sampler diagnostics \(conditional model\): .*bulk ESS"):
        bayes.sample(Y, A, 1, model="conditional", fit=ml_fit, num_warmup=50, num_samples=40, seed=seed(0))


# -- simulation-based calibration ---------------------------------------------------------

CX = {"P": 3, "N": 12, "X": np.array([[0.2], [0.3], [0.5]]), "L": 49, "thin": 4,
      "priors": {"theta_scale": 5.0, "sigma_scale": 1.0, "tau_scale": 2.0}}


# Level of the SBC tests: the PIT-ECDF simultaneous-band test, Bonferroni over the ranked
# quantities, is exact, so a calibrated sampler is rejected with probability <= 1e-4.
SBC_ALPHA = 1e-4


@pytest.mark.parametrize("n_rep, L", [(24, 49), (24, 99)])
def test_reduced_sbc_has_power(n_rep, L):
    """The reduced SBC tests (24 replicates; theta, sigma, tau and the log-likelihood ranked;
    level 1e-4) reject a posterior twice too narrow and one twice too wide with probability
    >= 0.9 (measured: 1.0 of 2000), by simulating ranks as bayes.sbc_power does (no MCMC).
    The level itself is exact (a theorem, not simulated at 1e-4); at 0.05, where a simulation
    can see it, the false-alarm rate stays below 0.05 (checked at 1e-5)."""
    from scipy.stats import binom

    narrow = bayes.sbc_power(n_rep, L, 4, narrowing=2.0, alpha=SBC_ALPHA, n_sim=500, seed=seed(1))
    wide = bayes.sbc_power(n_rep, L, 4, narrowing=0.5, alpha=SBC_ALPHA, n_sim=500, seed=seed(2))
    level = bayes.sbc_power(n_rep, L, 4, narrowing=1.0, alpha=0.05, n_sim=1000, seed=seed(3))
    record(f"sbc_power_L{L}", narrow=narrow["power"], wide=wide["power"], level05=level["false_alarm"])
    assert narrow["power"] >= 0.9 and wide["power"] >= 0.9, (narrow, wide)
    assert level["false_alarm"] <= binom.isf(1e-5, 1000, 0.05) / 1000, level


def test_ecdf_test_beats_the_binomial_tests():
    """Why the PIT-ECDF band test replaced the binomial location/dispersion tests: at the same
    level (1e-4) and 24 replicates it catches a posterior 1.5 times too narrow about 0.7 of
    the time, the binomial tests about 0.2 (rates of 600 simulated SBC runs, SE <= 0.02:
    the margin 0.2 is > 7 SE of the difference)."""
    ecdf = bayes.sbc_power(24, 49, 4, narrowing=1.5, alpha=SBC_ALPHA, n_sim=600, seed=seed(4))
    old = bayes.sbc_power(24, 49, 4, narrowing=1.5, alpha=SBC_ALPHA, n_sim=600, seed=seed(5), test="binomial")
    record("ecdf_vs_binomial", ecdf=ecdf["power"], binomial=old["power"])
    assert ecdf["power"] > old["power"] + 0.2, (ecdf, old)


def test_ecdf_pvalues_exact():
    """Exact: the recursion's p-values equal brute-force enumeration for 3 ranks in 0..4."""
    import itertools

    from bayes.calibration import ecdf_pvalues

    L, n = 4, 3
    allr = np.array(list(itertools.product(range(L + 1), repeat=n)))
    p = np.array([ecdf_pvalues(r[:, None], L)[0] for r in allr])
    # p = P(statistic <= observed): under uniform ranks, the fraction of outcomes at least as extreme
    brute = np.array([(p <= q + 1e-12).mean() for q in p])
    np.testing.assert_allclose(p, brute, rtol=1e-10)
    with pytest.raises(ValueError, match="ranks"):
        ecdf_pvalues(np.array([[5]]), 4)


def test_ecdf_pvalues_exact_with_ties():
    """Exact against an enumeration whose statistic is computed independently (scipy's binomial
    tails, rounded to 12 digits so that equal tails tie): all 10 000 configurations of 4 ranks
    in 0..9. Tail probabilities equal in exact arithmetic differ in their last bits, and ties
    were counted as inside the band: p-values too small by up to 0.05 (n = 5, L = 9)."""
    import itertools

    from scipy.stats import binom

    from bayes.calibration import ecdf_pvalues

    L, n = 9, 4
    allr = np.array(list(itertools.product(range(L + 1), repeat=n)))  # equally likely under uniform ranks
    z = np.arange(1, L + 1) / (L + 1)
    counts = (allr[:, :, None] < np.arange(1, L + 1)).sum(axis=1)  # configurations x points
    tails = np.minimum(binom.cdf(counts, n, z), binom.sf(counts - 1, n, z))
    stat = np.round(tails.min(axis=1), 12)
    exact = np.array([(stat <= q).mean() for q in np.unique(stat)])
    want = exact[np.searchsorted(np.unique(stat), stat)]
    np.testing.assert_allclose(ecdf_pvalues(allr.T, L), want, rtol=1e-10)


def test_sbc_conditional_x_reduced():
    """Level 1e-4 (exact); power 1.0 against a posterior twice too narrow or wide
    (test_reduced_sbc_has_power, same n_rep, L and quantities)."""
    r = bayes.sbc(24, model="conditional_x", seed=seed(1), **CX)
    record("sbc_conditional_x", p=r.p_value, p_ecdf=r.tests["p_ecdf"].values)
    assert not r.reject(SBC_ALPHA), r.tests


def test_sbc_joint_reduced(tmp_path):
    """As the conditional_x test, for the joint model (L = 99)."""
    r = bayes.sbc(24, model="joint", seed=seed(3))
    record("sbc_joint", p=r.p_value, p_ecdf=r.tests["p_ecdf"].values)
    assert not r.reject(SBC_ALPHA), r.tests
    assert r.ranks.dims == ("replicate", "quantity") and r.ranks.shape == (24, 5)
    r.plot().savefig(tmp_path / "sbc.png")


@pytest.mark.slow
def test_sbc_conditional_x_full():
    r = bayes.sbc(200, model="conditional_x", seed=seed(2), **{**CX, "L": 99})
    assert not r.reject(SBC_ALPHA), r.tests


@pytest.mark.slow
def test_sbc_joint_full():
    r = bayes.sbc(200, model="joint", seed=seed(4))
    assert not r.reject(SBC_ALPHA), r.tests


def test_bad_input(orthodont, ml_fit):
    Y, A = orthodont
    with pytest.raises(ValueError, match="model"):
        bayes.sample(Y, A, 1, model="full")
    with pytest.raises(ValueError, match="rank"):
        bayes.sample(Y, A, 2, fit=ml_fit)
    with pytest.raises(ValueError, match="different data"):
        bayes.sample(Y * 2, A, 1, fit=ml_fit)
    with pytest.raises(ValueError, match="rank"):
        bayes.sample(Y, A, 9)
    with pytest.raises(ValueError, match="priors"):
        bayes.sample(Y, A, 1, fit=ml_fit, priors={"nu": 1.0})
    with pytest.raises(ValueError, match="theta"):
        bayes.sample(Y, A, 1, fit=ml_fit, theta="nonneg")
    with pytest.raises(ValueError, match="num_samples"):
        bayes.sample(Y, A, 1, fit=ml_fit, num_samples=0)
    with pytest.raises(ValueError, match="simplex"):
        bayes.sample(Y, A, 1, fit=ml_fit, simplex="softmax")
    with pytest.raises(ValueError, match="chain_method"):
        bayes.sample(Y, A, 1, fit=ml_fit, chain_method="threads")
    with pytest.raises(ValueError, match="seed"):
        bayes.sample(Y, A, 1, fit=ml_fit, seed=-1)
    # prior values: positive and finite, before any work (a negative scale once ran with stuck
    # chains, a zero one failed inside the diagnostics); a flat prior only for 'conditional'
    for pri, match in [({"sigma_scale": -1.0}, r"priors\['sigma_scale'\] must be a positive finite"),
                       ({"tau_scale": 0.0}, "tau_scale"), ({"tau_scale": float("nan")}, "tau_scale"),
                       ({"x_concentration": -1.0}, "x_concentration"), ({"sigma_scale": True}, "sigma_scale"),
                       ({"theta_scale": None}, "for model='conditional' only")]:
        with pytest.raises(ValueError, match=match):
            bayes.sample(Y, A, 1, fit=ml_fit, priors=pri)
    with pytest.raises(ValueError, match="draw_U must be True or False"):
        bayes.sample(Y, A, 1, fit=ml_fit, draw_U="no")
    # flags are booleans (adapt_mass="no" and relabel="no" ran as True and were recorded so),
    # settings a model does not use are refused (they were accepted and ignored)
    for kw, match in [({"adapt_mass": "no"}, "adapt_mass must be True or False"),
                      ({"relabel": "no"}, "relabel must be True or False"),
                      ({"jitter": float("nan")}, "jitter"), ({"jitter": "big"}, "jitter"),
                      ({"model": "conditional", "priors": {"sigma_scale": 2.0}},
                       r"priors \['sigma_scale'\] are not used by model='conditional'"),
                      ({"model": "conditional_x", "priors": {"x_concentration": 2.0}},
                       r"priors \['x_concentration'\] are not used by model='conditional_x'"),
                      ({"model": "conditional", "theta_coords": "marginal"},
                       "theta_coords='marginal' is for model='joint'")]:
        with pytest.raises((ValueError, TypeError), match=match):
            bayes.sample(Y, A, 1, fit=ml_fit, **kw)
    with pytest.raises(ValueError, match="n_rep must be an integer >= 2"):
        bayes.sbc(0, L=9)
    with pytest.raises(ValueError, match="tau_scale"):
        bayes.sbc(5, L=9, priors={"tau_scale": -1.0})
    # sbc's settings are checked before any sampling (num_warmup=-5 ranked 5 draws where L said
    # 19; simplex, mass and chain_method were recorded as given while others ran; L + 1 not a
    # multiple of 10 failed after all the sampling)
    for kw, match in [({"num_warmup": -5}, "num_warmup"), ({"simplex": "foo"}, "simplex"), ({"mass": "foo"}, "mass"),
                      ({"chain_method": "foo"}, "chain_method"), ({"L": 50}, "L \\+ 1 must be a multiple of 10"),
                      ({"num_chains": 0}, "num_chains"), ({"rank": 5}, "rank must be at most P"),
                      ({"A": np.ones((2, 7))}, "N = 30 units"),
                      ({"model": "conditional_x", "X": -np.ones((4, 1))}, "X must be")]:
        with pytest.raises((ValueError, TypeError), match=match):
            bayes.sbc(5, **kw)
    for kw, match in [({"n_rep": 1}, "n_rep"), ({"n_params": 0}, "n_params"), ({"narrowing": 0}, "narrowing"),
                      ({"alpha": 2}, "alpha"), ({"shift": float("nan")}, "shift"), ({"L": 50}, "multiple of 10")]:
        with pytest.raises((ValueError, TypeError), match=match):
            bayes.sbc_power(**{"n_rep": 10, "L": 9, "n_params": 1, "n_sim": 5, **kw})
    s = bayes.Sampler("joint", 1, P=4, N=27, K=2, num_warmup=20, num_samples=20, num_chains=2)
    with pytest.raises(ValueError, match="fits has 2 fits for 1 data sets"):
        s.sample_batch([(Y, A)], fits=[ml_fit, ml_fit])


def test_diagnostics_of_unknown_or_constant_variables(post_conditional):
    """Unknown names are an error naming the posterior's variables; variables held constant
    (the conditional model's sigma, tau and X) give NaN, not a failure inside ArviZ."""
    with pytest.raises(ValueError, match=r"var_names \['foo'\] are not in the posterior"):
        bayes.diagnostics(post_conditional, var_names=("foo",))
    d = bayes.diagnostics(post_conditional, var_names=("sigma", "tau", "X"))
    assert np.isnan(d["max_r_hat"]) and np.isnan(d["min_ess_bulk"])
    assert bayes.diagnostics(post_conditional, var_names="theta") == bayes.diagnostics(post_conditional,
                                                                                      var_names=("theta",))


def test_records_say_which_priors_and_settings_were_used(post_conditional, post_joint, orthodont, ml_fit):
    """The conditional model fixes X, sigma and tau: its record holds Theta's prior only (flat
    by default); the joint model records all four; the sampler settings include how Theta
    was sampled and the relabelling; the warning points at the caller; a sparse Y gives the
    dense Y's draws."""
    import scipy.sparse as sp

    assert post_conditional["posterior"].attrs["nmfre_priors"] == "{'theta_scale': 'flat'}"
    assert set(eval(post_joint["posterior"].attrs["nmfre_priors"])) == {"x_concentration", "theta_scale",
                                                                        "sigma_scale", "tau_scale"}
    rec = eval(post_joint["posterior"].attrs["sampler_settings"])
    assert rec["theta_coords"] in ("direct", "conditional", "marginal") and rec["relabel"] == "draw by draw"
    assert {"num_warmup", "num_samples", "num_chains", "max_tree_depth", "jitter", "newton_steps"} <= set(rec)
    Y, A = orthodont
    small = dict(model="conditional", fit=ml_fit, num_warmup=50, num_samples=40, seed=seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dense = bayes.sample(Y, A, 1, **small)
    said = [w for w in caught if issubclass(w.category, bayes.SamplingWarning)]
    assert said and said[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bayes.SamplingWarning)
        flat = bayes.sample(Y, A, 1, priors={"theta_scale": None}, **small)
    assert flat["posterior"].attrs["nmfre_priors"] == "{'theta_scale': 'flat'}"
    np.testing.assert_array_equal(flat["posterior"]["theta"].values, dense["posterior"]["theta"].values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparse = bayes.sample(sp.csr_matrix(Y.to_numpy()), A.to_numpy(), 1, model="conditional",
                              num_warmup=50, num_samples=40, seed=seed(0))
    np.testing.assert_allclose(sparse["posterior"]["theta"].values, dense["posterior"]["theta"].values,
                               rtol=1e-6, atol=1e-8)


def test_relabel_draws_undoes_label_switching_within_chains():
    """Draws whose components were swapped part-way through a chain come back in the
    reference labelling, Theta's rows moving with X's columns."""
    from bayes.sampling import relabel_draws

    rng = np.random.default_rng(0)
    Xref = rng.dirichlet(np.ones(6), size=3).T  # 6 x 3
    tref = rng.normal(size=(3, 2))
    C, D = 2, 50
    X = Xref + 0.01 * rng.normal(size=(C, D, 6, 3))
    theta = tref + 0.01 * rng.normal(size=(C, D, 3, 2))
    Xs, ts = X.copy(), theta.copy()
    swap = [1, 2, 0]
    Xs[0, 20:] = X[0, 20:][..., swap]
    ts[1, :30] = theta[1, :30][:, [2, 0, 1]]
    Xs[1, :30] = X[1, :30][..., [2, 0, 1]]
    ts[0, 20:] = theta[0, 20:][:, swap]
    Xr, tr = relabel_draws(Xs, ts, Xref)
    np.testing.assert_array_equal(Xr, X)
    np.testing.assert_array_equal(tr, theta)
    # a single component is returned as it is
    X1, t1 = relabel_draws(X[..., :1], theta[:, :, :1], Xref[:, :1])
    assert X1 is not None and np.array_equal(X1, X[..., :1]) and np.array_equal(t1, theta[:, :, :1])


def test_mass_auto_is_dense_for_rank_one_and_diagonal_above():
    assert bayes.Sampler("joint", 1, 4, 27, 2).settings.mass == "dense"
    assert bayes.Sampler("joint", 2, 4, 27, 2).settings.mass == "diag"
    assert bayes.Sampler("joint", 2, 4, 27, 2, mass="dense").settings.mass == "dense"
    with pytest.raises(ValueError, match="mass"):
        bayes.Sampler("joint", 2, 4, 27, 2, mass="full")


@pytest.fixture(scope="session")
def post_chees_conditional(orthodont, ml_fit):
    Y, A = orthodont
    return bayes.sample(Y, A, 1, model="conditional", fit=ml_fit, kernel="chees", num_chains=8, num_warmup=300,
                        num_samples=500, seed=seed(5))


def test_chees_conditional_posterior_matches_closed_form(post_chees_conditional, ml_fit, inf_ortho):
    """ChEES-HMC (``kernel="chees"``) on the flat-prior conditional posterior N(theta_hat, I^-1):
    the same whitened moments and the same z = 4.42 per statistic as
    test_conditional_posterior_matches_closed_form (false alarm <= 5e-5). Power against a
    bias of half a posterior sd and a posterior twice too narrow, asserted from this run's
    MCSEs as there."""
    _check_closed_form(post_chees_conditional, ml_fit, inf_ortho, "chees_conditional_closed_form")


def test_chees_datatree_says_what_ran(post_chees_conditional, post_conditional):
    """Same groups and variables as NUTS's; the sampler attributes name ChEES and its settings;
    no tree depth (ChEES's n_steps is a trajectory length)."""
    ch, nu = post_chees_conditional, post_conditional
    assert set(ch["posterior"].data_vars) == set(nu["posterior"].data_vars)
    assert ch["posterior"].sizes["chain"] == 8 and ch["posterior"].sizes["draw"] == 500
    assert set(ch["sample_stats"].data_vars) == set(nu["sample_stats"].data_vars) - {"tree_depth"}
    attrs = {**ch.attrs, **ch["posterior"].attrs}
    assert attrs["sampler"].startswith("ChEES-HMC") and "blackjax" in attrs["inference_library"]
    assert "target_accept" not in attrs["sampler_settings"] and "'num_chains': 8" in attrs["sampler_settings"]
    nu_attrs = {**nu.attrs, **nu["posterior"].attrs}
    assert nu_attrs["sampler"].startswith("NUTS") and nu_attrs["inference_library"] == "numpyro"


def test_joint_chains_do_not_start_at_a_degenerate_fit():
    """``bayes.sample(model="joint")`` starts its chains from the non-negative fit where the
    sign-free fit it is given (or makes) ends at a degenerate configuration. The named fault:
    Orthodont, rank 2, whose sign-free fit ends with two components merging and ``max |Theta|``
    9.5e4; chains started there stayed there (sigma's r_hat 1.10, bulk ESS 53, 20 s); from the
    non-negative fit r_hat 1.00, ESS 1662, 8.3 s (seed 1; reported, not asserted). The models
    that hold X at the fit start from the fit. Deterministic: checks the starting values."""
    from bayes.spec import model_spec

    Y, A = nmfre.load_orthodont()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = nmfre.fit(Y, A, rank=2)
        g = nmfre.fit(Y, A, rank=2, theta="nonneg", n_init=1)
    assert degenerate(f) and np.abs(f.solution.theta).max() > 1e3
    spec = model_spec(Y, A, 2, "joint", fit=f)
    np.testing.assert_allclose(spec.init["theta"], g.solution.theta, rtol=1e-10)
    assert spec.init["sigma"] == pytest.approx(np.sqrt(g.sigma2), rel=1e-10) and spec.fit is f
    fixed = model_spec(Y, A, 2, "conditional_x", fit=f)
    np.testing.assert_array_equal(fixed.init["theta"], f.solution.theta)


def test_sbc_chains_do_not_start_at_a_degenerate_fit():
    """An SBC replicate's chains start at nmfre's sign-free ML fit unless that fit ends at a
    degenerate configuration; then at the non-negative fit. The named fault: this prior draw's
    data (20 x 300, rank 2, the joint model's default priors, Theta's scale 10) has a sign-free
    fit that converges with two components merging and ``max |Theta|`` 2.9e5; chains started
    there did not come back within the warm-up, and the 20 x 300 SBC below rejected (the
    log-likelihood's p = 2e-6, 6 of its 24 replicates at the top rank). Deterministic."""
    from bayes import calibration

    rng = np.random.default_rng(1)
    P, N, Q = 20, 300, 2
    A = np.vstack([np.ones(N), rng.binomial(1, 0.5, N)]).astype(float)
    X, theta, sigma, tau = calibration._prior_draw(rng, "joint", P, Q, 2, dict(calibration.DEFAULT_PRIORS), None)
    Y = X @ (theta @ A + rng.normal(0.0, tau, (Q, N))) + rng.normal(0.0, sigma, (P, N))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = nmfre.fit(Y, A, rank=2, n_init=1)
        nonneg = nmfre.fit(Y, A, rank=2, theta="nonneg", n_init=1)
    assert degenerate(fit) and np.abs(fit.solution.theta).max() > 1e3
    init = calibration._start("joint", Y, A, 2, None)
    np.testing.assert_array_equal(init["theta"], nonneg.theta.values)
    assert init["sigma"] == np.sqrt(nonneg.sigma2) and np.abs(init["theta"]).max() < 10 * np.abs(theta).max()


def test_sbc_joint_chees_rank2_reduced():
    """SBC of the default sampler at rank > 1 (``kernel="auto"`` runs ChEES-HMC there): the
    joint model, 8 x 60, rank 2, 4 chains, 24 replicates; the label-invariant column sums of
    Theta, sigma, tau and the log-likelihood ranked. Level 1e-4 (exact PIT-ECDF test,
    Bonferroni); power 1.0 against a posterior twice too narrow or wide
    (test_reduced_sbc_has_power's rates for 24 replicates and L = 99)."""
    r = bayes.sbc(24, model="joint", P=8, N=60, rank=2, num_warmup=300, num_chains=4, kernel="chees",
                  seed=seed(33))
    record("sbc_joint_chees_rank2", p=r.p_value, p_ecdf=r.tests["p_ecdf"].values)
    assert r.settings["kernel"] == "chees"
    assert not r.reject(SBC_ALPHA), r.tests
    with pytest.raises(ValueError, match="num_chains"):
        bayes.sbc(2, model="joint", kernel="chees", num_chains=1)


def test_sbc_joint_chees_20x300_reduced():
    """The issue's size for the default sampler: joint model, 20 x 300, rank 2, ChEES-HMC with 4
    chains, 24 replicates (the slow test below runs 200); level and power as above. About 30 s
    on two cores (the replicates are vectorised)."""
    r = bayes.sbc(24, model="joint", P=20, N=300, rank=2, num_warmup=500, num_chains=4, kernel="chees",
                  seed=seed(34))
    record("sbc_joint_chees_20x300_reduced", p=r.p_value, p_ecdf=r.tests["p_ecdf"].values)
    assert r.settings["kernel"] == "chees"
    assert not r.reject(SBC_ALPHA), r.tests


@pytest.mark.slow
def test_sbc_joint_chees_20x300_full():
    """As above with 200 replicates (power 0.98 at 1.2 x too narrow, 1.0 against half a posterior sd
    of bias: docs/testing.md)."""
    r = bayes.sbc(200, model="joint", P=20, N=300, rank=2, num_warmup=500, num_chains=4, kernel="chees",
                  seed=seed(35))
    record("sbc_joint_chees_20x300_full", p=r.p_value, p_ecdf=r.tests["p_ecdf"].values)
    assert r.settings["kernel"] == "chees"
    assert not r.reject(SBC_ALPHA), r.tests


def test_kernel_auto_resolution():
    """``kernel="auto"``: ChEES-HMC for the joint model with rank > 1 where it applies, NUTS
    otherwise; an explicit kernel is kept."""
    assert bayes.Sampler("joint", 2, 4, None, 2).kernel == "chees"
    assert bayes.Sampler("joint", 3, 4, None, 2, theta="nonneg", theta_coords="conditional").kernel == "chees"
    assert bayes.Sampler("joint", 1, 4, None, 2).kernel == "nuts"  # Orthodont's sampler is unchanged
    assert bayes.Sampler("conditional", 2, 4, None, 2).kernel == "nuts"
    assert bayes.Sampler("conditional_x", 2, 4, None, 2).kernel == "nuts"
    assert bayes.Sampler("joint", 2, 4, None, 2, theta_coords="marginal").kernel == "nuts"
    assert bayes.Sampler("joint", 2, 4, None, 2, chain_method="sequential").kernel == "nuts"
    assert bayes.Sampler("joint", 2, 4, None, 2, num_chains=1).kernel == "nuts"
    assert bayes.Sampler("joint", 2, 4, None, 2, num_warmup=0).kernel == "nuts"  # nothing to adapt ChEES with
    assert bayes.Sampler("joint", 2, 4, None, 2, kernel="nuts").kernel == "nuts"
    assert bayes.Sampler("joint", 1, 4, None, 2, kernel="chees").kernel == "chees"


def test_default_draws_follow_the_kernel_and_the_basis_size():
    """``num_samples=None`` (the default): 1000 draws per chain with NUTS (Orthodont's settings
    unchanged); with ChEES-HMC ``CHEES_SAMPLES[0]`` up to ``CHEES_LARGE`` basis entries ``P Q``
    and ``CHEES_SAMPLES[1]`` above, resolved from the data when P is not given; an explicit value
    is kept whatever the kernel and size, and a bad one is refused by name."""
    from bayes import sampling

    small, large = sampling.CHEES_SAMPLES
    assert (small, large, sampling.CHEES_LARGE) == (2000, 4000, 100)
    assert bayes.Sampler("joint", 2, 4, None, 2).settings.num_samples == small
    assert bayes.Sampler("joint", 2, 50, None, 2).settings.num_samples == small  # 100 entries: not above
    assert bayes.Sampler("joint", 3, 50, None, 2).settings.num_samples == large
    assert bayes.Sampler("joint", 3, 50, None, 2, kernel="nuts").settings.num_samples == 1000
    assert bayes.Sampler("joint", 1, 4, None, 2).settings.num_samples == 1000
    assert bayes.Sampler("joint", 1, 200, None, 2, kernel="chees").settings.num_samples == large
    assert bayes.Sampler("joint", 3, 50, None, 2, num_samples=300).settings.num_samples == 300
    assert bayes.Sampler("conditional", 2, 4, None, 2, num_samples=300).settings.num_samples == 300
    # P from the data: the run's settings (the compile cache key) carry the resolved draws
    d = nmfre.simulate.block_sparse(P=51, N=40, rank=2, K=2, seed=0)
    for num_samples, expected in ((None, large), (300, 300)):
        sampler = bayes.Sampler("joint", 2, None, None, 2, theta="nonneg", num_samples=num_samples)
        spec = sampler.spec(d["Y"], d["A"], fit=nmfre.fit(d["Y"], d["A"], rank=2, theta="nonneg"))
        assert sampler.settings_for(spec).num_samples == expected
    for bad in (0, -5, 2.5, "1000"):
        with pytest.raises((TypeError, ValueError), match="num_samples"):
            bayes.Sampler("joint", 2, 4, None, 2, num_samples=bad)


def test_kernel_auto_without_blackjax(monkeypatch):
    """Without blackjax (or optax), ``"auto"`` falls back to NUTS."""
    from bayes import sampling

    monkeypatch.setattr(sampling, "_has_blackjax", lambda: False)
    assert bayes.Sampler("joint", 2, 4, None, 2).kernel == "nuts"


def test_chees_bad_settings_fail_before_sampling():
    with pytest.raises(ValueError, match="chain_method"):
        bayes.Sampler("conditional", 1, 4, None, 2, kernel="chees", chain_method="sequential")
    with pytest.raises(ValueError, match="theta_coords"):
        bayes.Sampler("joint", 1, 4, None, 2, kernel="chees", theta_coords="marginal")
    with pytest.raises(ValueError, match="num_chains"):
        bayes.Sampler("conditional", 1, 4, None, 2, kernel="chees", num_chains=1)
    with pytest.raises(ValueError, match="num_warmup must be at least 1"):
        bayes.Sampler("joint", 2, 4, None, 2, kernel="chees", num_warmup=0)
    with pytest.raises(ValueError, match="num_warmup must be at least 1"):
        bayes.sbc(2, model="joint", kernel="chees", num_warmup=0)
    with pytest.raises(ValueError, match="kernel"):
        bayes.Sampler("conditional", 1, 4, None, 2, kernel="hmc")


def test_conditional_posterior_predictive(orthodont, ml_fit):
    """The conditional model's replicated Y (it failed in NumPyro's Predictive: the fixed
    variances were passed as scalar draws beside Theta's): one (unit, feature) replicate per
    draw, finite, with the data's labels."""
    Y, A = orthodont
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bayes.SamplingWarning)  # 2 x 20 draws: the layout is what is tested
        post = bayes.sample(Y, A, 1, model="conditional", fit=ml_fit, num_warmup=50, num_samples=20, num_chains=2,
                            seed=3, posterior_predictive=True)
    yrep = post["posterior_predictive"]["Y"]
    assert yrep.dims == ("chain", "draw", "feature", "unit") and yrep.shape == (2, 20, 4, 27)
    assert np.isfinite(yrep.values).all()
    assert list(yrep["unit"].values) == list(ml_fit.U["unit"].values)


def test_unlabelled_data_beside_a_labelled_fit_takes_its_labels(orthodont, ml_fit):
    """numpy Y and A with a fit of the labelled data: one set of labels in the tree (observed
    data and U had 0..n-1 beside the posterior's age8.../intercept, male); other labels are
    refused; a dask Y beside a dense fit gets a message about dask, not 'different data'."""
    import dask.array as da

    Y, A = orthodont
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # one chain: r_hat NaN, without numpy's warning
        warnings.simplefilter("ignore", bayes.SamplingWarning)  # 10 draws: the labels are what is tested
        post = bayes.sample(Y.to_numpy(), A.to_numpy(), 1, model="conditional", fit=ml_fit, num_warmup=30,
                            num_samples=10, num_chains=1, draw_U=True, seed=1)
    assert list(post["observed_data"]["Y"]["feature"].values) == list(ml_fit.X["feature"].values)
    assert list(post["posterior"]["U"]["unit"].values) == list(ml_fit.U["unit"].values)
    with pytest.raises(ValueError, match=r"the data's feature labels \['a', 'b', 'c', 'd'\] are not the fit's"):
        bayes.sample(Y.set_axis(list("abcd"), axis=0), A, 1, model="conditional", fit=ml_fit)
    with pytest.raises(ValueError, match="fit was estimated on a dense Y and a dask Y is given"):
        bayes.sample(da.from_array(Y.to_numpy()), A.to_numpy(), 1, model="conditional", fit=ml_fit)
    # the other way round: a fit of unlabelled data keeps the labelled data's labels, and A=None
    # beside a fit of an explicit intercept row is the same design (both were refused)
    from bayes.spec import model_spec

    plain = nmfre.fit(Y.to_numpy(), A.to_numpy(), rank=1)
    spec = model_spec(Y, A, 1, "conditional", fit=plain)
    assert list(spec.data.features) == list(Y.index) and list(spec.data.covariates) == list(A.index)
    ones = nmfre.fit(Y.to_numpy(), np.ones((1, Y.shape[1])), rank=1)
    assert list(model_spec(Y.to_numpy(), None, 1, "conditional", fit=ones).data.covariates) == ["covariate1"]
