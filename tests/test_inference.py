"""Inference on Theta: parity with nmfkc, closed forms, invariances, coverage."""

import warnings

import numpy as np
import pytest
import xarray as xr
from helpers import blocky, rank2, record, rel, seed

import nmfre
from nmfre.core.bootstrap import align_components, draw_multipliers
from nmfre.core.covariance import COV_RIDGE, conditional
from nmfre.core.covariates import orthonormal_effects
from nmfre.inference import load_inference


def _paper_fit(orthodont, ref, run):
    Y, A = orthodont
    r = ref["runs"][run]
    init = {"X": np.array(r["X_init"]), "theta": np.array(r["C_init"])}
    return nmfre.fit(Y, A, rank=1, method="paper", df_cap="auto" if run == "paper_auto" else 0.2, init=init)


@pytest.mark.parametrize("run, tol", [("paper_auto", 1e-7), ("paper_rate0.2", 1e-7), ("head_signed", 1e-5)])
def test_parity_with_nmfkc(orthodont, ref, nmfkc_multipliers, ml_fit, run, tol):
    fit = ml_fit if run == "head_signed" else _paper_fit(orthodont, ref, run)
    inf = fit.infer(multipliers=nmfkc_multipliers)
    t, r = inf.table, ref["runs"][run]["inference"]
    assert rel(t.estimate, ref["runs"][run]["C"]) < tol
    assert rel(t.se, r["se"]) < tol
    assert rel(t.boot_se, r["boot_se"]) < tol
    assert rel(t.ci_low, r["ci_low"]) < tol
    assert rel(t.ci_high, r["ci_high"]) < tol
    assert rel(inf.sigma2_used, r["sigma2_used"]) < tol
    assert rel(inf.cov.values.ravel(), np.ravel(r["vec_cov"])) < 10 * tol
    pkey = "p_two_sided" if run == "head_signed" else "p_one_sided"
    assert rel(t.p_value.iloc[1], r[pkey][1]) < 100 * tol
    assert inf.alternative == ("two-sided" if run == "head_signed" else "greater")


def test_kernel_on_nmfkc_fit_is_exact(orthodont, ref, nmfkc_multipliers):
    """Fed nmfkc 0.9.5's own fit, the kernel with nmfkc's absolute ridge reproduces its numbers
    to rounding; with nmfre's (1e-14 of each diagonal entry: almost none) they differ by 1.2e-7
    relative, what nmfkc's absolute ridge does to its own numbers (8.1e-8 with nmfre's earlier
    ridge of 1e-8 of each diagonal entry)."""
    from nmfre.core.covariance import NMFKC_RIDGE

    Y, A = (d.to_numpy() for d in orthodont)
    r = ref["runs"]["head_signed"]
    X, C, U = (np.array(r[k]) for k in ("X", "C", "U"))
    k = conditional(Y, A, X, C, U, r["sigma2"] / r["tau2"], ridge=NMFKC_RIDGE)
    assert k.sigma2_used == pytest.approx(r["inference"]["sigma2_used"], rel=1e-12)
    np.testing.assert_allclose(np.sqrt(np.diag(k.cov)), np.ravel(r["inference"]["se"]), rtol=1e-10)
    draws = C.ravel(order="F")[:, None] - k.cov_model @ (k.scores @ nmfkc_multipliers)
    np.testing.assert_allclose(draws.std(axis=1, ddof=1), np.ravel(r["inference"]["boot_se"]), rtol=1e-10)
    own = conditional(Y, A, X, C, U, r["sigma2"] / r["tau2"])
    np.testing.assert_allclose(np.sqrt(np.diag(own.cov)), np.ravel(r["inference"]["se"]), rtol=2e-7)


@pytest.mark.parametrize("c", [1e-6, 1e-3, 1e3, 1e6])
def test_inference_is_equivariant_to_the_units(orthodont, nmfkc_multipliers, c):
    """Y in other units (times c): Theta, its SEs (sandwich and model-based), the bootstrap's
    draws and intervals scale by c, the p-values do not change; A times c: SEs over c. Exact
    up to rounding at a given (X, Theta, U) (the named fault: nmfkc's absolute 1e-8 ridge on
    the information, which at c = 1e6 made the SEs 0.0001 c instead of 2.47 c); through
    nmfre.fit within its convergence tolerance."""
    Y, A = (d.to_numpy() for d in orthodont)
    fit = nmfre.fit(Y, A, rank=1)
    X, th, U, lam = fit.X.values, fit.theta.values, fit.solution.U, fit.lam
    k1 = conditional(Y, A, X, th, U, lam)
    kc = conditional(c * Y, A, X, c * th, c * U, lam)
    np.testing.assert_allclose(np.sqrt(np.diag(kc.cov)), c * np.sqrt(np.diag(k1.cov)), rtol=1e-10)
    np.testing.assert_allclose(np.sqrt(np.diag(kc.cov_model)), c * np.sqrt(np.diag(k1.cov_model)), rtol=1e-10)
    ka = conditional(Y, c * A, X, th / c, U, lam)
    np.testing.assert_allclose(np.sqrt(np.diag(ka.cov)), np.sqrt(np.diag(k1.cov)) / c, rtol=1e-10)
    # one covariate in other units (male coded 0/c): its effect's SE over c, the intercept's
    # unchanged (a single ridge relative to the mean diagonal gave 1.43 instead of 2.47 at c = 1e4)
    one = np.array([1.0, c])
    km = conditional(Y, A * one[:, None], X, th / one[None, :], U, lam)
    np.testing.assert_allclose(np.sqrt(np.diag(km.cov)), np.sqrt(np.diag(k1.cov)) / one, rtol=1e-10)
    i1 = fit.infer(multipliers=nmfkc_multipliers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmfre.SingularFitWarning)
        ic = nmfre.fit(c * Y, A, rank=1).infer(multipliers=nmfkc_multipliers)
    for name in ("estimate", "se", "se_model", "boot_se", "ci_low", "ci_high"):
        np.testing.assert_allclose(ic.table[name], c * i1.table[name], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(ic.table["p_value"], i1.table["p_value"], rtol=1e-5, atol=1e-12)


def test_sandwich_independent_of_lambda_and_equals_cr1_ols(ml_fit, orthodont):
    Y, A = (d.to_numpy() for d in orthodont)
    X, th = ml_fit.X.values, ml_fit.theta.values
    P, N = Y.shape
    ses, raws = [], []
    W = draw_multipliers("normal", N, 50, np.random.default_rng(0))
    for lam in [0.04, 1.0, 30.0]:  # (the 1e-8 ridge on I makes tiny lambda differ at ~1e-6)
        U = np.linalg.solve(X.T @ X + lam * np.eye(1), X.T @ (Y - X @ th @ A))
        k = conditional(Y, A, X, th, U, lam)
        ses.append(np.sqrt(np.diag(k.cov)))
        raws.append(k.cov_model @ k.scores @ W)
    for s, r in zip(ses[1:], raws[1:], strict=True):
        np.testing.assert_allclose(s, ses[0], rtol=1e-6)
        np.testing.assert_allclose(r, raws[0], rtol=1e-6, atol=1e-6 * np.abs(raws[0]).max())
    # CR1 cluster-robust covariance of OLS y_n ~ (a_n' (x) X) vec(Theta), clusters = units
    Z = [np.kron(A[:, n][None, :], X) for n in range(N)]
    bread = np.linalg.inv(sum(z.T @ z for z in Z))
    resid = [Y[:, n] - z @ th.ravel(order="F") for n, z in enumerate(Z)]
    meat = sum(np.outer(z.T @ e, z.T @ e) for z, e in zip(Z, resid, strict=True)) * N / (N - 1)
    np.testing.assert_allclose(ses[0], np.sqrt(np.diag(bread @ meat @ bread)), rtol=1e-6)


def test_model_based_cov_is_inverse_information(ml_fit, orthodont):
    inf = ml_fit.infer(n_boot=10, seed=0)
    assert (inf.table.se_model > 0).all()
    np.testing.assert_allclose(inf.cov_model.values, inf.cov_model.values.T, rtol=1e-10)
    np.testing.assert_allclose(inf.cov_model.values @ inf.info.values, np.eye(2), atol=1e-12)
    # the information is the Fisher information of the marginal model given X:
    # AA' (x) X' Sigma^-1 X at sigma2_used and the fit's lambda (plus a ridge of COV_RIDGE of
    # its diagonal)
    Y, A = (d.to_numpy() for d in orthodont)
    X = ml_fit.X.values
    s2 = inf.sigma2_used
    Sinv = np.linalg.inv(s2 * np.eye(4) + (s2 / ml_fit.lam) * X @ X.T)
    F = np.kron(A @ A.T, X.T @ Sinv @ X)
    np.testing.assert_allclose(inf.info.values, F + COV_RIDGE * np.diag(np.diag(F)), rtol=1e-10)
    assert str(inf.info.dims) == "('param', 'param_2')"


def test_projection_clips_nonneg_draws():
    rng = np.random.default_rng(3)
    Y, A, _, _ = rank2(10, N=60)
    A = np.vstack([A, rng.normal(0, 1, A.shape[1])])  # a covariate with no effect
    fit = nmfre.fit(Y, A, rank=2, theta="nonneg")
    inf = fit.infer(n_boot=400, seed=1)
    t = inf.table
    assert (t.ci_low >= 0).all()
    assert (inf.draws >= 0).all()
    clipped = (inf.draws == 0).any("draw")
    assert clipped.any()
    assert (t.boot_se.to_numpy()[clipped.values.ravel()] < t.se.to_numpy()[clipped.values.ravel()]).all()


def test_seed_reproducible_and_dists(ml_fit):
    a = ml_fit.infer(n_boot=200, seed=5)
    b = ml_fit.infer(n_boot=200, seed=np.random.default_rng(5))
    xr.testing.assert_identical(a.draws, b.draws)
    # moments of 200000 multipliers: mean 0, variance 1, checked at z = 4.9 of their exact
    # sampling SEs (8 checks at 1e-6: false alarm < 1e-5); an 8% variance error (an SE 4%
    # off) is caught with probability > 0.999 for every law
    rng = np.random.default_rng(seed(0))
    kurt = {"exp": 9.0, "rademacher": 1.0, "mammen": 2.0, "normal": 3.0}  # E w^4
    for dist in ["exp", "rademacher", "mammen", "normal"]:
        w = draw_multipliers(dist, 400, 500, rng)
        n = w.size
        se_var = np.sqrt((kurt[dist] - 1) / n)
        assert abs(w.mean()) < 4.9 / np.sqrt(n) and abs(w.var() - 1) <= 4.9 * se_var + 4.9**2 / n, dist
        assert 0.08 > 2 * 4.9 * max(se_var, 1 / np.sqrt(n))
        assert ml_fit.infer(n_boot=50, seed=1, dist=dist).attrs["dist"] == dist


def test_outputs_labelled_and_arviz_ready(ml_fit, tmp_path):
    import arviz as az

    inf = ml_fit.infer(n_boot=400, seed=2)
    assert inf.draws.dims == ("draw", "component", "covariate")
    assert list(inf.table.columns[:8]) == ["estimate", "se", "se_model", "boot_se", "z", "p_value", "ci_low",
                                           "ci_high"]
    assert inf.table.index.names == ["component", "covariate"]
    dt = inf.to_datatree(chains=4)
    assert dt["posterior"]["theta"].sizes == {"chain": 4, "draw": 100, "component": 1, "covariate": 2}
    xr.testing.assert_equal(dt["posterior"]["component"], ml_fit.theta["component"])
    s = az.summary(dt, ci_prob=0.95, ci_kind="eti")
    assert s.shape[0] == 2
    pc = az.plot_forest(dt, var_names=["theta"], combined=True)
    pc.savefig(tmp_path / "forest.png")
    assert (tmp_path / "forest.png").stat().st_size > 5000
    assert inf.ci.dims[0] == "ci_bound" and inf.ci.attrs["ci_kind"] == "percentile"
    path = tmp_path / "inf.nc"
    inf.to_netcdf(path)
    back = load_inference(path)
    assert back.to_dataset().identical(inf.to_dataset())
    ml_fit.to_netcdf(tmp_path / "fit.nc")
    with pytest.raises(ValueError, match="not an nmfre inference file .* read it with nmfre.load"):
        load_inference(tmp_path / "fit.nc")
    sel = inf.selection(0.05)
    assert bool(sel["significant"].sel(covariate="male").item())
    fig = inf.plot()
    fig.savefig(tmp_path / "theta.png")
    assert "Boot.SE" in str(ml_fit.summary(inference=inf))


def test_refit_bootstrap_agrees_with_onestep(ml_fit):
    one = ml_fit.infer(n_boot=60, seed=4)
    ref = ml_fit.infer(n_boot=60, seed=4, method="refit")
    assert ref.attrs["refit_converged_fraction"] == 1.0
    assert ref.attrs["refit_min_alignment_cosine"] > 0.999
    # same multipliers: each refit replicate is within 0.08 bootstrap SE of its one-step
    # replicate (the one-step is the first Newton step of the refit; measured: 0.038 and 0.012)
    gap = np.abs(ref.draws - one.draws).max("draw")
    assert (gap <= 0.08 * one.boot_se).all(), (gap / one.boot_se).values


def test_align_components_undoes_permutation():
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(6), size=3).T
    Xb = X[:, [2, 0, 1]] + rng.normal(0, 1e-3, X.shape)
    perm, cos = align_components(X, Xb)
    assert list(perm) == [1, 2, 0] and cos.min() > 0.99


def test_refit_rank2_runs_and_reports_alignment():
    Y, A, _, _ = rank2(11, N=120)
    fit = nmfre.fit(Y, A, rank=2)
    inf = fit.infer(n_boot=8, seed=0, method="refit")
    assert 0 <= inf.attrs["refit_permuted_fraction"] <= 1
    assert inf.attrs["refit_min_alignment_cosine"] > 0.8
    assert np.isfinite(inf.table.boot_se).all()


def test_refits_that_did_not_converge_are_left_out_and_said(ml_fit, tmp_path):
    """Refits stopped at max_iter = 2 (2 of 20 on the development machine; which ones depends
    on rounding, so the assertions hold for any number of them): "drop" gives exactly the
    converged replicates of "keep" (same multipliers, same refits), with their positions and
    stop reasons, and both warn with the count, at the caller's line; the named fault:
    degenerate refits of a sign-free rank-3 fit with |Theta| of 111-1361 once made the refit
    SEs 123-201 instead of 2.1-3.0 (examples/README.md, 50 x 1000)."""
    kw = dict(n_boot=20, seed=3, method="refit", max_iter=2)
    with warnings.catch_warnings(record=True) as said_keep:
        warnings.simplefilter("always")
        keep = ml_fit.infer(**kw, failed="keep")
    ok = keep.draws["stop_reason"].values == "tol"
    n_bad = int((~ok).sum())
    assert keep.attrs["refit_failed"] == n_bad and keep.draws.sizes["draw"] == 20
    assert keep.attrs["refit_converged_fraction"] == (20 - n_bad) / 20
    with warnings.catch_warnings(record=True) as said_drop:
        warnings.simplefilter("always")
        drop = ml_fit.infer(**kw)
    for said, what in ((said_keep, "they are kept"), (said_drop, "left out")):
        mine = [w for w in said if issubclass(w.category, nmfre.ConvergenceWarning)]
        assert len(mine) == (n_bad > 0)
        if n_bad:
            assert f"{n_bad} of 20 refits did not converge (max_iter: {n_bad})" in str(mine[0].message)
            assert what in str(mine[0].message) and mine[0].filename == __file__
    assert drop.attrs["n_boot"] == 20 - n_bad and drop.attrs["n_boot_requested"] == 20
    np.testing.assert_array_equal(drop.draws["draw"].values, np.flatnonzero(ok))
    assert (drop.draws["stop_reason"].values == "tol").all()
    np.testing.assert_array_equal(drop.draws.values, keep.draws.values[ok])
    np.testing.assert_array_equal(drop.dataset["X_draws"].values, keep.dataset["X_draws"].values[ok])
    np.testing.assert_allclose(drop.boot_se.values, keep.draws.values[ok].std(axis=0, ddof=1), rtol=1e-12)
    lo, hi = np.quantile(keep.draws.values[ok], [0.025, 0.975], axis=0)
    np.testing.assert_allclose(drop.dataset["ci"].values, np.stack([lo, hi]), rtol=1e-12)
    if n_bad:
        said = f"B = {20 - n_bad} of 20 ({n_bad} refits that did not converge left out: max_iter: {n_bad})"
        assert said in drop.describe()
        assert f"B = 20, Exp(1) - 1 multipliers, {n_bad} of them refits that did not converge" in keep.describe()
    path = tmp_path / "drop.nc"
    drop.to_netcdf(path)
    back = load_inference(path)
    np.testing.assert_array_equal(back.draws["draw"].values, np.flatnonzero(ok))
    assert list(back.draws["stop_reason"].values) == ["tol"] * (20 - n_bad)


def test_failed_refits_are_picked_from_every_array():
    """Exact, on constructed replicates: the kept columns of the draws, the replicate SEs (the
    bootstrap-t) and the bases, their positions and stop reasons; attributes and the
    warning; "keep" keeps all; fewer than two converged is an error."""
    from nmfre.engine import RefitDraws
    from nmfre.inference import _failed_refits

    B = 6
    draws = np.arange(4 * B, dtype=float).reshape(4, B)
    conv = np.array([True, False, True, True, False, True])
    reasons = np.array(["tol", "degenerate", "tol", "tol", "max_iter", "tol"], dtype=object)
    got = RefitDraws(draws, {"refit_converged_fraction": 4 / 6}, draws + 100, np.arange(3 * 2 * B).reshape(3, 2, B),
                     conv, reasons)
    with pytest.warns(nmfre.ConvergenceWarning, match=r"2 of 6 refits did not converge \(degenerate: 1, max_iter: 1\)"):
        raw, attrs, se, X, (index, why) = _failed_refits(got, "drop")
    np.testing.assert_array_equal(raw, draws[:, conv])
    np.testing.assert_array_equal(se, draws[:, conv] + 100)
    np.testing.assert_array_equal(X, got.X_draws[..., conv])
    np.testing.assert_array_equal(index, [0, 2, 3, 5])
    assert list(why) == ["tol"] * 4
    assert attrs == {"refit_converged_fraction": 4 / 6, "n_boot_requested": 6, "refit_failed": 2,
                     "refit_failed_reasons": "degenerate: 1, max_iter: 1", "refit_failed_rule": "drop"}
    with pytest.warns(nmfre.ConvergenceWarning, match="they are kept"):
        raw, attrs, se, X, (index, why) = _failed_refits(got, "keep")
    np.testing.assert_array_equal(raw, draws)
    np.testing.assert_array_equal(index, np.arange(B))
    assert list(why) == list(reasons)
    one = got._replace(converged=np.eye(1, B, dtype=bool)[0])
    with pytest.raises(RuntimeError, match="only 1 of 6 refits converged"):
        _failed_refits(one, "drop")


def test_refits_that_converge_degenerate_count_as_degenerate():
    """Orthodont's sign-free rank-2 fit converges at a degenerate configuration (four ages,
    two merging components); its refits that also converge there are labelled "degenerate",
    not converged (measured: 4 of 6 here; without the rule all 6 were "tol"). Holds for any
    path: every refit labelled converged is not degenerating, by the fit's own test."""
    from nmfre.core import ml

    Y, A = nmfre.load_orthodont()
    with pytest.warns(nmfre.DegenerateFitWarning, match="the sign-free fit is degenerate"):
        f = nmfre.fit(Y, A, rank=2)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        inf = f.infer(n_boot=6, seed=1, method="refit", failed="keep")
    # warned before the refits that they start from a degenerate estimate, pointing at the caller
    said = [w for w in rec if issubclass(w.category, nmfre.DegenerateFitWarning)]
    assert len(said) == 1 and said[0].filename == __file__
    text = str(said[0].message)
    assert "refit bootstrap from a degenerate estimate (the sign-free fit converged at a degenerate" in text
    assert "max_iter=5000, each counted as not converged and kept (failed='keep')" in text
    Xd, th, why = inf.dataset["X_draws"].values, inf.draws.values, inf.draws["stop_reason"].values
    for b in range(6):
        if why[b] == "tol":
            assert not ml.degenerating(Xd[b], orthonormal_effects(th[b], f.data.A)), b
    assert inf.attrs["refit_converged_fraction"] == np.mean(why == "tol")


def test_no_converged_refit_is_an_error_unless_kept(ml_fit):
    """One iteration from the warm start never meets the tolerance on perturbed data. (The fit
    is not degenerate: no warning about the refits' start.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("error", nmfre.DegenerateFitWarning)
        with pytest.raises(RuntimeError, match="only 0 of 6"):
            ml_fit.infer(n_boot=6, seed=3, method="refit", max_iter=1)
    with pytest.raises(RuntimeError, match=r"only 0 of 6 refits converged \(max_iter: 6\)"):
        ml_fit.infer(n_boot=6, seed=3, method="refit", max_iter=1)
    with pytest.warns(nmfre.ConvergenceWarning, match=r"6 of 6 refits did not converge \(max_iter: 6\)"):
        kept = ml_fit.infer(n_boot=6, seed=3, method="refit", max_iter=1, failed="keep")
    assert kept.draws.sizes["draw"] == 6 and np.isfinite(kept.boot_se).all()


@pytest.mark.parametrize("kw, match", [
    ({"n_boot": 1}, "n_boot"), ({"n_boot": 10.5}, "n_boot"), ({"level": 1.0}, "level"),
    ({"level": 0}, "level"), ({"multipliers": np.ones((26, 10))}, "multipliers"),
    ({"multipliers": np.full((27, 10), np.nan)}, "multipliers"), ({"dist": "poisson"}, "dist"),
    ({"method": "jackknife"}, "method"), ({"alternative": "bigger"}, "alternative"),
    ({"method": "refit", "failed": "ignore"}, "failed"),
    ({"method": "refit", "max_iter": 0}, "max_iter"), ({"max_iter": 50}, r"max_iter applies to method='refit'"),
    ({"workers": 2, "max_iter": 5}, r"max_iter, workers apply to method='refit'"), ({"progress": "yes"}, "progress"),
    ({"failed": "keep"}, r"failed applies to method='refit'"),
    ({"multipliers": "abc"}, "multipliers must be a numeric"),
])
def test_bad_inference_input(ml_fit, kw, match):
    with pytest.raises(ValueError, match=match):
        ml_fit.infer(**kw)


def _coverage(n_rep, N, seed, B=200):
    """The paper's baseline design: P = 4, Q = 1, Orthodont-based truth, N(0,1) errors."""
    rng = np.random.default_rng(seed)
    x = np.array([0.2308, 0.2409, 0.2566, 0.2717])
    x = x / x.sum()
    theta = np.array([[90.502, 9.4285]])
    hits_wald = np.zeros(2)
    hits_pct = np.zeros(2)
    for _ in range(n_rep):
        A = np.vstack([np.ones(N), (np.arange(N) < N // 2).astype(float)])
        U = rng.normal(0, 1, (1, N))
        Y = x[:, None] @ (theta @ A + U) + rng.normal(0, 1, (4, N))
        fit = nmfre.fit(Y, A, rank=1)
        t = fit.infer(n_boot=B, seed=rng).table
        hits_wald += np.abs(t.estimate - theta.ravel()) <= 1.959964 * t.se
        hits_pct += (t.ci_low <= theta.ravel()) & (theta.ravel() <= t.ci_high)
    return hits_wald / n_rep, hits_pct / n_rep


def _coverage_bounds(n_rep, per_check=2.5e-5, low=0.93, high=0.965):
    """Acceptance range of a coverage estimate from ``n_rep`` replicates when the true
    coverage lies in [low, high] (the 95% intervals at N = 100: 0.942-0.963 over 1000
    replicates per cell, examples/results/baseline_ml.csv): exact binomial tails of
    ``per_check / 2`` each, so 4 checks (2 intervals x 2 entries) false-alarm <= 1e-4."""
    from scipy.stats import binom

    return binom.ppf(per_check / 2, n_rep, low) / n_rep, binom.isf(per_check / 2, n_rep, high) / n_rep


def test_coverage_reduced():
    """Stochastic (seed offset): false alarm <= 1e-4 (``_coverage_bounds``: accept 0.86-1.0
    at 300 replicates). Power: an SE a third too small (coverage 0.81) fails with
    probability 0.99, 30% too small (0.83) 0.91; over-coverage and a bias of half an SE
    (coverage 0.92) are beyond 300 replicates at this level (the slow test sees more)."""
    wald, pct = _coverage(300, 100, seed=seed(26))
    lo, hi = _coverage_bounds(300)
    record("coverage_reduced", wald=wald, pct=pct)
    assert np.all((wald >= lo) & (wald <= hi)), (wald, lo, hi)
    assert np.all((pct >= lo) & (pct <= hi)), (pct, lo, hi)


@pytest.mark.slow
def test_coverage_full():
    """As the reduced test with 1000 replicates: accept 0.906-0.985 (false alarm <= 1e-4);
    power 0.98 against an SE 20% too small (coverage 0.88)."""
    wald, pct = _coverage(1000, 100, seed=seed(7), B=1000)
    lo, hi = _coverage_bounds(1000)
    assert np.all((wald >= lo) & (wald <= hi)), (wald, lo, hi)
    assert np.all((pct >= lo) & (pct <= hi)), (pct, lo, hi)


# ----------------------------------------------------------------------------- small-sample inference
def _direct_cr2(Y, A, X, theta, lam, s2, M):
    """CR2 by its definition with full P_O x P_O matrices (Pustejovsky & Tipton 2018,
    clubSandwich's inverse-variance case), unit by unit."""
    from scipy.linalg import fractional_matrix_power

    meat = 0.0
    for n in range(Y.shape[1]):
        o = ~np.isnan(Y[:, n])
        Xo = X[o]
        Z = np.kron(A[:, n][None, :], Xo)
        Sig = s2 * (np.eye(o.sum()) + Xo @ Xo.T / lam)
        Wn = np.linalg.inv(Sig)
        e = Y[o, n] - Z @ theta.ravel(order="F")
        D = np.linalg.cholesky(Sig).T
        G = D @ (np.eye(o.sum()) - Z @ M @ Z.T @ Wn) @ Sig @ D.T
        An = D.T @ np.real(fractional_matrix_power(0.5 * (G + G.T), -0.5)) @ D
        sc = Z.T @ Wn @ An @ e
        meat = meat + np.outer(sc, sc)
    return M @ meat @ M


@pytest.mark.parametrize("missing", [False, True])
def test_cr2_equals_its_definition(orthodont, missing):
    Y, A = (d.to_numpy() for d in orthodont)
    Y = Y.copy()
    if missing:
        Y[np.random.default_rng(0).random(Y.shape) < 0.2] = np.nan
        Y[0] = orthodont[0].to_numpy()[0]
    f = nmfre.fit(Y, A, rank=1)
    inf = f.infer(n_boot=20, vcov="CR2", df="satterthwaite")
    direct = _direct_cr2(Y, A, f.X.values, f.theta.values, f.lam, inf.sigma2_used, inf.cov_model.values)
    np.testing.assert_allclose(inf.cov.values, direct, rtol=1e-10)
    assert inf.attrs["vcov"] == "CR2" and inf.attrs["df_kind"] == "satterthwaite"


def _direct_cr2_df(Y, A, X, theta, lam, s2, M):
    """CR2 and its Satterthwaite df by their definitions with full ``N P x N P`` matrices
    (complete data; Bell & McCaffrey 2002, Pustejovsky & Tipton 2018), the adjustment's inverse
    square root a pseudo-inverse: for a unit whose leverage in A (``a_n'(AA')^-1 a_n``) is 1
    the ``Q`` smallest eigenvalues (its ``I - H_nn`` loses col(X)) are zeroed, as
    clubSandwich's ``Sym_power`` zeroes those below 1e-12 (the count, not a cut-off: the
    zeroed eigenvalues are rounding, 1e-11 of the largest, too close to any cut-off);
    ``Omega = G' (Sigma (x) I - Z M Z') G`` with ``G`` the units' ``A_n W Z_n M e_c`` stacked
    block-diagonally."""
    P, N = Y.shape
    Q = X.shape[1]
    Sig = s2 * (np.eye(P) + X @ X.T / lam)
    W = np.linalg.inv(Sig)
    D = np.linalg.cholesky(Sig).T
    Z = [np.kron(A[:, n][None, :], X) for n in range(N)]
    lev = np.einsum("kn,kl,ln->n", A, np.linalg.inv(A @ A.T), A)
    An = []
    for z, h in zip(Z, lev, strict=True):
        B = D @ (np.eye(P) - z @ M @ z.T @ W) @ Sig @ D.T
        w, V = np.linalg.eigh(0.5 * (B + B.T))
        inv = 1 / np.sqrt(np.abs(w))
        if abs(1 - h) < 1e-8:
            inv[:Q] = 0.0
        An.append(D.T @ (V * inv) @ V.T @ D)
    sc = [z.T @ W @ a @ (Y[:, n] - z @ theta.ravel(order="F")) for n, (z, a) in enumerate(zip(Z, An, strict=True))]
    cov = M @ sum(np.outer(v, v) for v in sc) @ M
    Zs = np.vstack(Z)
    cov_e = np.kron(np.eye(N), Sig) - Zs @ M @ Zs.T
    df = []
    for c in range(M.shape[0]):
        G = np.zeros((N * P, N))
        for n, (z, a) in enumerate(zip(Z, An, strict=True)):
            G[n * P:(n + 1) * P, n] = a @ W @ z @ M[:, c]
        Om = G.T @ cov_e @ G
        df.append(np.trace(Om) ** 2 / np.trace(Om @ Om))
    return cov, np.array(df)


@pytest.mark.parametrize("N, K, other", [(5, 2, None), (20, 2, None), (8, 3, 300.0)])
def test_cr2_with_a_unit_of_leverage_one(N, K, other):
    """A 0/1 covariate with one treated unit: that unit's leverage is 1 and ``I - H_nn`` singular,
    so CR2's adjustment is a pseudo-inverse (clubSandwich's ``Sym_power``) and the unit's
    adjusted residual is 0. The CR2 covariance (1e-9) and the Satterthwaite df (1e-8) equal
    their definitions with full matrices (:func:`_direct_cr2_df`); with the dummy alone (K = 2)
    every coefficient's variance comes from the ``N - 1`` other units, as that of their mean,
    with Bell-McCaffrey df ``N - 2``. The named faults: the information's ridge of 1e-8
    (relative) made the leverage 1 - 1e-8, and eigenvalues floored at 1e-300 turned the df into
    ``inf`` and values below 1 (N = 5, K = 2); with the treated unit's other covariate at 300
    the computed ``1 - leverage`` is 3.2e-12, which a cut-off of 1e-12 kept (df ``inf``)."""
    Y, A = blocky(10, N, 2, seed=12, K=K)
    A[1] = 0.0
    A[1, -1] = 1.0
    if other is not None:
        A[2, -1] = other
    f = nmfre.fit(Y, A, rank=2, theta="free")
    inf = f.infer(n_boot=20, vcov="CR2", df="satterthwaite")
    cov, df = _direct_cr2_df(Y, A, f.X.values, f.theta.values, f.lam, inf.sigma2_used, inf.cov_model.values)
    np.testing.assert_allclose(inf.cov.values, cov, rtol=1e-9)
    got = inf.dataset["df"].values.ravel(order="F")  # (component, covariate) -> column-major vec
    np.testing.assert_allclose(got, df, rtol=1e-8)
    if K == 2:
        np.testing.assert_allclose(got, N - 2, rtol=1e-8)


def test_cr2_adjustment_zeroes_only_the_directions_of_leverage_one():
    """``covariance._inv_sqrt`` zeroes the ``rank_loss`` smallest eigenvalues and inverts the
    others, however small: ``G^+1/2 G G^+1/2`` is the identity (1e-2: the smallest eigenvalue,
    1e-13 of the largest, is known to about 1e-3 relative) or the projection off the zeroed
    eigenvector. A threshold at 1e-12 of the largest eigenvalue (this function's first version)
    zeroed the 1e-13 one without a loss of rank."""
    from nmfre.core import covariance

    V, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    G = (V * np.array([1e-13, 1e-3, 1.0])) @ V.T
    both = covariance._inv_sqrt(np.stack([G, G]), np.array([0, 1]))
    np.testing.assert_allclose(both[0] @ G @ both[0], np.eye(3), atol=1e-2)
    np.testing.assert_allclose(both[1] @ G @ both[1], np.eye(3) - np.outer(V[:, 0], V[:, 0]), atol=1e-9)


def _collinear(delta: float):
    """``(Y, A, T)``: ``A = [1; g; g + delta e]`` with ``delta`` a power of 2 and ``e`` on a grid
    of 1/8, so that ``T A = [1; g; e]`` is exact (an exact reparametrisation, ``vec(Theta) = (T'
    (x) I) vec(Theta')``)."""
    Y, A0 = blocky(15, 60, 2, seed=3)
    e = np.round(8 * np.random.default_rng(0).normal(size=60)) / 8
    A = np.vstack([A0, A0[1] + delta * e])
    T = np.array([[1, 0, 0], [0, 1, 0], [0, -1 / delta, 1 / delta]])
    assert np.array_equal(T @ A, np.vstack([A0, e]))
    return Y, A, T


def test_near_collinear_covariates_keep_their_standard_errors():
    """A covariate equal to another plus 2^-17 (7.6e-6) times noise: the estimates and SEs equal
    those of the same model in well-conditioned covariates. Sign-free Theta: infer works on the
    fit's orthonormal covariates, to 1e-8 (measured 2.7e-10 on the estimates, 7.9e-12 on the SEs)
    and without a warning (the covariates' condition number 2.6e5, a predicted loss of 5e-10); on the given
    covariates (until 2026-12-07) the SEs were 1.5e-4 off, with a warning (the information's
    condition number 4e10). Non-negative Theta keeps the given covariates: infer warns
    (:class:`nmfre.IllConditionedWarning`) naming the coefficients involved. The named fault: the
    information's ridge of 1e-8 relative to its diagonal (until 2026-12) took over at this
    conditioning: those SEs were 0.0069 of their value."""
    Y, A, T = _collinear(2.0**-17)
    f, g = nmfre.fit(Y, A, rank=2), nmfre.fit(Y, T @ A, rank=2)
    assert f.converged and g.converged and abs(f.loglik - g.loglik) < 1e-8 * abs(g.loglik)
    with warnings.catch_warnings():
        warnings.simplefilter("error", nmfre.IllConditionedWarning)
        inf = f.infer(n_boot=20)
        ref = g.infer(n_boot=20)
    L = np.kron(T.T, np.eye(2))
    np.testing.assert_allclose(inf.dataset["estimate"].values.ravel(order="F"),
                               L @ ref.dataset["estimate"].values.ravel(order="F"), rtol=1e-8)
    for name in ("cov", "cov_model"):
        want = np.sqrt(np.diag(L @ ref.dataset[name].values @ L.T))
        np.testing.assert_allclose(np.sqrt(np.diag(inf.dataset[name].values)), want, rtol=1e-8)
    nonneg = nmfre.fit(Y, A, rank=2, theta="nonneg")
    with pytest.warns(nmfre.IllConditionedWarning, match=r"condition number .*covariate3"):
        nonneg.infer(n_boot=20)


def test_collinear_covariates_of_a_sign_free_fit_warn_by_their_own_condition():
    """Sign-free: the information on the orthonormal covariates does not see the covariates'
    collinearity, so infer checks the covariates themselves: at ``delta = 2^-40`` (condition
    number 2.2e12; measured: the estimates 3.2e-3 off, the SEs 7.7e-5) it warns naming the two
    collinear covariates and the cost of mapping back; the basis's own conditioning is judged on
    the frame's information and named by component (its weakest direction repeats over the
    orthonormal covariates, so a covariate there would be arbitrary)."""
    from nmfre import inference
    from nmfre.core.covariates import Frame

    Y, A, _ = _collinear(2.0**-40)
    f = nmfre.fit(Y, A, rank=2)
    with pytest.warns(nmfre.IllConditionedWarning, match=r"covariates are nearly collinear .*combination of "
                                                          r"covariate2, covariate3 is nearly zero"):
        f.infer(n_boot=20)
    G = np.array([[1.0, 1 - 1e-12], [1 - 1e-12, 1.0]])  # two nearly parallel basis columns
    frame = Frame.of(np.vstack([np.ones(60), np.arange(60.0), np.random.default_rng(1).random(60)]))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        inference._check_conditioning(np.kron(60 * np.eye(3), G), f, frame)
    msgs = [str(w.message) for w in got]
    assert len(msgs) == 1 and "combines Basis1, Basis2: basis columns nearly parallel" in msgs[0]
    assert "covariate" not in msgs[0]


def test_satterthwaite_df_closed_forms(ml_fit):
    """Intercept + group dummy, homoskedastic working model: the Bell-McCaffrey df of the
    baseline mean is (n_girls - 1) = 10 and that of the difference is Welch's
    (1/n1 + 1/n2)^2 / (1/(n1^2 (n1 - 1)) + 1/(n2^2 (n2 - 1))) = 21.65 (n1 = 16 boys, n2 = 11)."""
    inf = ml_fit.infer(n_boot=20, vcov="CR2", df="satterthwaite")
    n1, n2 = 16, 11
    welch = (1 / n1 + 1 / n2) ** 2 / (1 / (n1**2 * (n1 - 1)) + 1 / (n2**2 * (n2 - 1)))
    np.testing.assert_allclose(inf.dataset["df"].values.ravel(), [n2 - 1, welch], rtol=1e-6)
    # and CR2 for complete data scales each unit's score by (1 - h_n)^(-1/2), h_n its leverage in A
    from nmfre.core import covariance, passes

    d, s = ml_fit.data, ml_fit.solution
    ker = covariance.from_pieces(passes.conditional_pieces(d.Y, d.A, s.X, s.theta, s.U, ml_fit.lam), d.A, s.theta)
    h = np.einsum("kn,kl,ln->n", d.A, np.linalg.inv(d.A @ d.A.T), d.A)
    adj = ker.scores / np.sqrt(1 - h)
    np.testing.assert_allclose(inf.cov.values, ker.cov_model @ adj @ adj.T @ ker.cov_model, rtol=1e-7)


def test_t_reference_and_wald_interval(ml_fit):
    from scipy.stats import t as student_t

    inf = ml_fit.infer(n_boot=50, df=20)
    est, se = inf.estimate.values.ravel(), inf.se.values.ravel()
    q = student_t.ppf(0.975, 20)
    np.testing.assert_allclose(inf.dataset["ci_wald"].values.reshape(2, -1), [est - q * se, est + q * se])
    np.testing.assert_allclose(inf.p_value.values.ravel(), 2 * student_t.sf(np.abs(est / se), 20))
    normal = ml_fit.infer(n_boot=50)
    assert (inf.p_value.values >= normal.p_value.values).all()


def test_studentized_replicate_se_is_the_replicates_own_sandwich(ml_fit, orthodont):
    """A one-step replicate is exact OLS on y* = Z theta + w e (the model is linear in Theta
    given X), so its own SE is the CR1 sandwich of OLS on y*, computed here from scratch."""
    from nmfre.core import bootstrap as cb
    from nmfre.core import covariance, passes

    Y, A = (d.to_numpy() for d in orthodont)
    s, lam = ml_fit.solution, ml_fit.lam
    pc = passes.conditional_pieces(Y, A, s.X, s.theta, s.U, lam)
    ker = covariance.from_pieces(pc, A, s.theta)
    _, _, scores, C = covariance.cr2(ker, pc, A, s.X, lam, satterthwaite=False, kind="CR1")
    W = cb.draw_multipliers("rademacher", 27, 5, np.random.default_rng(3))
    tv = s.theta.reshape(-1, order="F")
    _, raw = cb.onestep_draws(tv, ker.cov_model, ker.scores, W, False)
    se = cb.studentized_se(scores, C, A, ker.cov_model, raw - tv[:, None], W)
    X = s.X
    Z = [np.kron(A[:, n][None, :], X) for n in range(27)]
    e = [Y[:, n] - Z[n] @ tv for n in range(27)]
    bread = np.linalg.inv(sum(z.T @ z for z in Z))
    for b in range(5):
        ystar = [Z[n] @ tv + W[n, b] * e[n] for n in range(27)]
        beta = bread @ sum(z.T @ y for z, y in zip(Z, ystar, strict=True))
        np.testing.assert_allclose(beta, raw[:, b], rtol=1e-6)
        r = [y - z @ beta for z, y in zip(Z, ystar, strict=True)]
        meat = sum(np.outer(z.T @ rr, z.T @ rr) for z, rr in zip(Z, r, strict=True)) * 27 / 26
        np.testing.assert_allclose(se[:, b], np.sqrt(np.diag(bread @ meat @ bread)), rtol=1e-5)


def test_studentized_interval(ml_fit):
    inf = ml_fit.infer(n_boot=2000, seed=1, ci="studentized")
    pct = ml_fit.infer(n_boot=2000, seed=1)
    assert inf.attrs["ci_kind"] == "studentized"
    lo, hi = inf.ci.values
    # bootstrap-t at N = 27 is wider than the Wald interval (heavier-tailed t*)
    assert np.all(hi - lo > pct.dataset["ci_wald"].values[1] - pct.dataset["ci_wald"].values[0])
    ref = ml_fit.infer(n_boot=30, seed=1, ci="studentized", method="refit", vcov="CR2")
    assert np.isfinite(ref.ci.values).all()


@pytest.mark.parametrize("kw, match", [({"vcov": "HC3"}, "vcov"), ({"df": "kenward"}, "df"), ({"df": 0}, "df"),
                                       ({"df": "Satterthwaite"},
                                        r"df must be None \(normal reference\), 'satterthwaite' or a positive integer"),
                                       ({"ci": "bca"}, "ci")])
def test_bad_small_sample_options(ml_fit, kw, match):
    with pytest.raises(ValueError, match=match):
        ml_fit.infer(n_boot=10, **kw)


def test_labelled_multipliers_are_aligned_by_unit(ml_fit, nmfkc_multipliers):
    """Multipliers labelled by unit (a DataFrame's index, a DataArray's ``unit`` coordinate, its
    dims in any order) give each unit its own weight: the same draws as the plain array in the
    fit's order (they were taken by position, so reversed rows gave other draws). Labels that
    are not the fit's units, complex and masked arrays are refused."""
    import pandas as pd

    W = nmfkc_multipliers[:, :40]
    units = ml_fit.U["unit"].values
    plain = ml_fit.infer(multipliers=W).draws.values
    frame = pd.DataFrame(W, index=units).iloc[::-1]
    array = xr.DataArray(W.T, dims=("draw", "unit"), coords={"unit": units}).isel(unit=slice(None, None, -1))
    for labelled in (frame, array):
        np.testing.assert_array_equal(ml_fit.infer(multipliers=labelled).draws.values, plain)
    np.testing.assert_array_equal(ml_fit.infer(multipliers=pd.DataFrame(W)).draws.values, plain)  # 0..N-1: as is
    for bad, match in [(pd.DataFrame(W, index=[f"z{i}" for i in range(27)]), "are not the fit's units"),
                       (pd.DataFrame(W, index=[units[0]] * 27), "are not the fit's units"),
                       (W + 1j, "real numbers, got dtype complex"), (np.ma.masked_array(W), "masked array"),
                       (xr.DataArray(W, dims=("u", "draw")), "'unit' dim")]:
        with pytest.raises(ValueError, match=match):
            ml_fit.infer(multipliers=bad)


def test_seed_is_checked_first_and_recorded(ml_fit, monkeypatch):
    """A bad seed is refused before any computation (it was checked after the sandwich); the
    attributes say how to draw the same multipliers again: ``seed``, or the generator's state."""
    import json

    import nmfre.inference as inference

    def boom(*args, **kwargs):
        raise AssertionError("computed before the seed was checked")

    with monkeypatch.context() as m:
        m.setattr(inference, "conditional_pieces", boom)
        for bad, kind in ((-1, ValueError), ("abc", TypeError), (1.5, TypeError)):
            with pytest.raises(kind, match="seed"):
                ml_fit.infer(n_boot=20, seed=bad, vcov="CR2", df="satterthwaite")
    by_int = ml_fit.infer(n_boot=20, seed=5)
    assert by_int.attrs["seed"] == 5 and "rng_state" not in by_int.attrs
    by_gen = ml_fit.infer(n_boot=20, seed=np.random.default_rng(5))
    again = np.random.default_rng()
    again.bit_generator.state = json.loads(by_gen.attrs["rng_state"])
    np.testing.assert_array_equal(ml_fit.infer(n_boot=20, seed=again).draws, by_gen.draws)
    np.testing.assert_array_equal(by_gen.draws, by_int.draws)
    assert "seed" not in ml_fit.infer(multipliers=np.ones((27, 3))).attrs
    # other bit generators hold arrays in their state (MT19937, Philox, SFC64); seeds beyond
    # 64 bits are recorded as text (a netCDF attribute holds 64-bit integers)
    for bits in (np.random.MT19937, np.random.Philox, np.random.SFC64):
        inf = ml_fit.infer(n_boot=20, seed=np.random.Generator(bits(5)))
        again = np.random.Generator(bits())
        again.bit_generator.state = json.loads(inf.attrs["rng_state"])
        np.testing.assert_array_equal(ml_fit.infer(n_boot=20, seed=again).draws, inf.draws)
    big = ml_fit.infer(n_boot=20, seed=2**70)
    assert big.attrs["seed"] == str(2**70)


def test_labels_give_the_level_with_its_digits_and_r_codes(ml_fit):
    """A level near 1 is printed with its digits (it was '100%'); the table's codes are R's,
    closed on the right (p = 0.05 is '*', p = 0.001 '***', as R's symnum)."""
    from nmfre.labels import percent, significance_code

    inf = ml_fit.infer(n_boot=20, seed=1, level=0.9999999)
    assert "99.99999% percentile interval" in inf.describe()
    assert "n_missing" not in inf.attrs and "missing" not in inf.describe()  # complete data
    assert list(inf.summary_table().columns[-2:]) == ["5e-06%", "99.999995%"]
    assert [percent(x) for x in (0.95, 0.07, 0.025)] == ["95%", "7%", "2.5%"]
    codes = [significance_code(p) for p in (1e-5, 0.001, 0.0011, 0.01, 0.05, 0.0501, 0.1, 0.2, np.nan)]
    assert codes == ["***", "***", "**", "**", "*", ".", ".", "", ""]
