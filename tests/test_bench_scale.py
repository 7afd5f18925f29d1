"""Smoke test of benchmarks/bench_scale.py: the --quick ladder runs to the end, each case in
its own process, and reports every case with nmfre's and scikit-learn's numbers."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import load_script

pytest.importorskip("sklearn")
pytest.importorskip("dask.array")
pytest.importorskip("psutil")

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "bench_scale.py"


def _module():
    return load_script(SCRIPT, register=True)  # dataclasses look their module up by name


def test_quick_ladder_reports_every_case(tmp_path):
    bench = _module()
    expected = [c.name for c in bench.ladder(quick=True)]
    assert expected == [c.name for c in bench.ladder(quick=False)]  # same cases, smaller sizes
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["quick"] and res["machine"]["cpu_count"] >= 1
    assert [c["case"] for c in res["cases"]] == expected
    for case in res["cases"]:
        assert "error" not in case, case["error"]
        rows = {r["method"]: r for r in case["results"]}
        want = {"nmfre", "sklearn"} | ({"nmfre infer"} if case["n_boot"] else set())
        assert set(rows) == want, case["case"]
        for method, r in rows.items():
            assert "error" not in r, (case["case"], method, r["error"])
            assert r["wall_s"] > 0 and r["cpu_s"] >= 0
            assert r["peak_mb"] >= r["rss_before_mb"] * 0.99 > 0
        for method in ("nmfre", "sklearn"):
            r = rows[method]
            assert r["n_iter"] >= 1 and isinstance(r["converged"], bool)
            assert r["resid_fro"] > 0 and r["objective"] == r["objective"]  # not NaN
        assert rows["nmfre"]["converged"], case["case"]
    lazy = {c["case"]: c for c in res["cases"]}["lazy"]
    assert {r["method"]: r for r in lazy["results"]}["nmfre"]["u_lazy"]  # U comes back lazily

    # the Markdown table: one row per case and method, after its header
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| case | data | method |"))
    table = [line for line in lines[head + 2:] if line.startswith("| ")]
    n_rows = sum(len(c["results"]) for c in res["cases"])
    assert len(table) == n_rows
    for name in expected:
        assert sum(line.startswith(f"| {name} |") for line in table) >= 2
    assert "machine:" in proc.stdout and "scikit-learn" in proc.stdout


def test_case_selection():
    bench = _module()
    cases = bench.ladder(quick=True)
    assert [c.name for c in bench.select(cases, "small-free,lazy")] == \
        [f"small-free-s{s}" for s in range(5)] + ["lazy"]
    assert len(bench.select(cases, "small")) == 10
    with pytest.raises(SystemExit, match="unknown case"):
        bench.select(cases, "nope")


ITER_SCRIPT = Path(__file__).parent.parent / "benchmarks" / "bench_iterations.py"


def test_iteration_ladder_quick_runs_every_rung(tmp_path):
    """benchmarks/bench_iterations.py --quick: every rung, two seeds and both noise levels,
    nmfre and scikit-learn on each data set, the summary table with one row per rung and noise."""
    out = tmp_path / "iters.json"
    pytest.importorskip("jax")
    proc = subprocess.run([sys.executable, str(ITER_SCRIPT), "--quick", "--seeds", "0,1", "--check", "--repeat", "1",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"small", "medium", "sparse"}
    for runs in res["results"].values():
        assert len(runs) == 4
        for r in runs:
            assert r["nmfre"]["converged"] and r["nmfre"]["n_iter"] >= 1
            assert r["sklearn"]["wall_s"] > 0 and r["ratio"] > 0
            assert len(r["nmfre"]["wall_all_s"]) == len(r["sklearn"]["wall_all_s"]) == 1  # --repeat 1
            # the independent optimiser started at nmfre's optimum finds nothing beyond the tolerance
            assert r["check"]["agree"] <= 1e-9 * abs(r["check"]["nll_nmfre"])
            assert r["check"]["decrease"] <= r["check"]["tol"]
    table = [line for line in res["table"].splitlines() if line.startswith("| ") and "rung" not in line]
    assert len(table) == 6


def test_timed_reports_the_fastest_run(monkeypatch):
    """``timed``: ``repeat`` runs, the fastest reported; ``"auto"`` stops once the runs took 1 s
    together, or after 5."""
    import time

    mod = load_script(ITER_SCRIPT)
    monkeypatch.setattr(mod, "PAUSE_S", 0.0)
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01 if len(calls) == 2 else 0.05)
        return len(calls)

    out, wall, cpu, walls = mod.timed(fn, 3)
    assert out == 3 and len(walls) == 3 and wall == min(walls) == walls[1] and cpu >= 0
    _, _, _, walls = mod.timed(lambda: time.sleep(0.3), "auto")
    assert len(walls) <= 5 and sum(walls[:-1]) < 1.0 <= sum(walls)
    _, _, _, walls = mod.timed(lambda: None, "auto")
    assert len(walls) == 5
    with pytest.raises(SystemExit, match="--repeat"):
        mod.main(["--quick", "--repeat", "0"])


def test_iteration_generator_is_not_the_tests_design():
    """The benchmark's generator: random supports (not contiguous blocks), Theta >= 0 with
    exact zeros, sparse Y never dense."""
    mod = load_script(ITER_SCRIPT)
    Y, A = mod.generate(60, 300, 4, 3, seed=1)
    assert Y.shape == (60, 300) and A.shape == (3, 300) and Y.min() >= 0
    np.testing.assert_array_equal(A[0], 1.0)
    Ys, _ = mod.generate(200, 400, 3, 2, seed=1, density=0.05)
    assert hasattr(Ys, "tocsr") and abs(Ys.nnz / (200 * 400) - 0.05) < 0.02


def test_the_common_level_generators_move_what_they_say():
    """``uncentred``: the same draws with the Gaussian covariates at ``10 + z``, and Y made on them;
    ``level``: the same covariates, and Y's mean raised by the 30 added to every intercept (X's
    columns sum to 1)."""
    mod = load_script(ITER_SCRIPT)
    Y0, A0 = mod.generate_level(40, 500, 3, 4, seed=2)
    Yu, Au = mod.GENERATORS["uncentred"](40, 500, 3, 4, seed=2)
    Yl, Al = mod.GENERATORS["level"](40, 500, 3, 4, seed=2)
    np.testing.assert_array_equal(Au[1:3], A0[1:3] + 10.0)
    np.testing.assert_array_equal(np.delete(Au, [1, 2], axis=0), np.delete(A0, [1, 2], axis=0))
    np.testing.assert_array_equal(Al, A0)
    assert set(np.unique(A0[3])) <= {0.0, 1.0} and Y0.min() >= 0 and Yu.min() >= 0
    # Y made on the shifted covariates: its column sums rise by 10 times the slopes' sum (81 here)
    assert Yu.sum(axis=0).mean() - Y0.sum(axis=0).mean() > 50.0
    # 30 per component, Q = 3 (the noise and the clipping at 0 move it by a few tenths: 89.8 here)
    assert abs(Yl.sum(axis=0).mean() - Y0.sum(axis=0).mean() - 90.0) < 2.0


def test_iteration_targets_say_what_was_not_measured():
    """Without scikit-learn (``--no-sklearn``) a rung with a ratio target is not reported as
    plainly met: the verdict says the ratio was not measured."""
    mod = load_script(ITER_SCRIPT)
    rung = {"targets": {"iters": 100, "ratio": 1.0}}
    run = {"seed": 0, "nmfre": {"converged": True, "n_iter": 30, "wall_s": 1.0}}
    assert mod.check(rung, [run]) == "met (ratio to scikit-learn not measured)"
    assert mod.check(rung, [dict(run, ratio=0.5)]) == "met"
    assert mod.check(rung, [dict(run, ratio=2.0)]) == "missed: max ratio 2 > 1"
    slow = {"seed": 1, "nmfre": {"converged": True, "n_iter": 130, "wall_s": 1.0}}
    assert mod.check(rung, [slow]) == "missed: max 130 iterations > 100 (ratio to scikit-learn not measured)"


def test_counts_generator():
    """``--generator counts``: Poisson counts (on a common scale) with mean 50 / c^2 per cell,
    correlated covariates; dense rungs only."""
    mod = load_script(ITER_SCRIPT)
    for c in (0.3, 1.0):
        Y, A = mod.generate_counts(60, 3000, 4, 3, seed=2, noise=c)
        assert Y.shape == (60, 3000) and A.shape == (3, 3000) and Y.min() >= 0
        step = np.min(Y[Y > 0])  # 1 / scale: every entry an integer multiple of it
        np.testing.assert_allclose(Y / step, np.round(Y / step), atol=1e-6)
        assert np.mean(Y / step) == pytest.approx(50 / c**2, rel=0.05)
        assert np.corrcoef(A[1], A[2])[0, 1] == pytest.approx(0.7, abs=0.05)
    with pytest.raises(ValueError, match="dense only"):
        mod.run_one(dict(P=40, N=100, Q=2, K=2, density=0.1), 0, 0.3, sklearn=False, generator="counts")


def test_overlap_generator():
    """``--generator overlap``: a categorical covariate (intercept and one dummy per level
    but the first, each unit in one level), Y >= 0, reproducible by seed; the noise level c
    leaves the covariates unchanged and the mean of Y within 20%; dense rungs only."""
    mod = load_script(ITER_SCRIPT)
    Y, A = mod.generate_overlap(50, 4000, 4, 3, seed=5, noise=0.3)
    assert Y.shape == (50, 4000) and A.shape == (3, 4000) and Y.min() >= 0
    np.testing.assert_array_equal(A[0], 1.0)
    assert set(np.unique(A[1:])) == {0.0, 1.0} and A[1:].sum(axis=0).max() == 1.0
    # three levels, equally likely: each dummy's share about 1/3 (sd 0.0075 at N = 4000)
    np.testing.assert_allclose(A[1:].mean(axis=1), 1 / 3, atol=0.04)
    Y2, A2 = mod.generate_overlap(50, 4000, 4, 3, seed=5, noise=0.3)
    np.testing.assert_array_equal(Y, Y2)
    np.testing.assert_array_equal(A, A2)
    Yc, Ac = mod.generate_overlap(50, 4000, 4, 3, seed=5, noise=1.0)
    np.testing.assert_array_equal(A, Ac)  # the noise level moves the noise only
    assert np.mean(Yc) == pytest.approx(np.mean(Y), rel=0.2)
    with pytest.raises(ValueError, match="dense only"):
        mod.run_one(dict(P=40, N=100, Q=2, K=2, density=0.1), 0, 0.3, sklearn=False, generator="overlap")
    with pytest.raises(ValueError, match="unknown generator"):
        mod.run_one(dict(P=40, N=100, Q=2, K=2), 0, 0.3, sklearn=False, generator="nope")


def test_hetero_generator():
    """``--generator hetero``: intercept, a centred log-normal ``exp(0.8 z) - exp(0.32)``, a rare
    binary (probability 0.1) and a Gaussian correlated 0.9 with ``z``; Y >= 0 with 2% of the
    features all zero; reproducible by seed; the noise level leaves the covariates unchanged;
    dense rungs only."""
    mod = load_script(ITER_SCRIPT)
    Y, A = mod.generate_hetero(100, 5000, 4, 4, seed=5, noise=0.3)
    assert Y.shape == (100, 5000) and A.shape == (4, 5000) and Y.min() >= 0
    np.testing.assert_array_equal(A[0], 1.0)
    z = np.log(A[1] + np.exp(0.32)) / 0.8
    # sd of the mean of z 0.014, of the binary's share 0.0042, of the correlation about 0.003
    assert abs(z.mean()) < 0.07 and abs(A[2].mean() - 0.1) < 0.02 and set(np.unique(A[2])) == {0.0, 1.0}
    assert np.corrcoef(z, A[3])[0, 1] == pytest.approx(0.9, abs=0.02)
    assert np.sum(Y.sum(axis=1) == 0) == 2
    Y2, A2 = mod.generate_hetero(100, 5000, 4, 4, seed=5, noise=0.3)
    np.testing.assert_array_equal(Y, Y2)
    Yc, Ac = mod.generate_hetero(100, 5000, 4, 4, seed=5, noise=1.0)
    np.testing.assert_array_equal(A, Ac)  # the noise level moves the noise only
    with pytest.raises(ValueError, match="dense only"):
        mod.run_one(dict(P=40, N=100, Q=2, K=2, density=0.1), 0, 0.3, sklearn=False, generator="hetero")


def test_tied_generator():
    """``--generator tied``: every second basis column is 0.8 times the one before plus 0.2
    times its own Dirichlet draw (so their cosine is high), columns on the simplex; Gaussian
    covariates after the intercept; reproducible by seed; the noise level leaves A unchanged;
    dense rungs only; Y can be negative, so a run with scikit-learn is refused."""
    mod = load_script(ITER_SCRIPT)
    Y, A = mod.generate_tied(60, 400, 4, 3, seed=5, noise=0.3)
    assert Y.shape == (60, 400) and A.shape == (3, 400)
    np.testing.assert_array_equal(A[0], 1.0)
    Y2, A2 = mod.generate_tied(60, 400, 4, 3, seed=5, noise=0.3)
    np.testing.assert_array_equal(Y, Y2)
    Yc, Ac = mod.generate_tied(60, 400, 4, 3, seed=5, noise=1.0)
    np.testing.assert_array_equal(A, Ac)
    # the noise level moves only the noise, sd 0.3 c sd(M) on the same standard normal draws:
    # Yc - Y = 0.21 sd(M) z, and sd(Y) = sd(M) (1 + 0.09^2)^(1/2); sd(z) is 1 within 0.01 at
    # 24 000 draws, so the ratio is 0.21 within 0.005
    assert float(np.std(Yc - Y)) / float(np.std(Y)) == pytest.approx(0.21, abs=0.005)
    with pytest.raises(ValueError, match="dense only"):
        mod.run_one(dict(P=40, N=100, Q=2, K=2, density=0.1), 0, 0.3, sklearn=False, generator="tied")
    assert Y.min() < 0  # not clipped: no scikit-learn comparison, refused before any fit
    with pytest.raises(ValueError, match="negative entries.*--no-sklearn"):
        mod.run_one(dict(P=40, N=100, Q=2, K=2), 0, 0.3, sklearn=True, generator="tied")


def test_blocks_generator():
    """``--generator blocks``: each feature loads on one component, in contiguous blocks, so
    without noise the rows of a block are positive multiples of one another (clipping at 0
    keeps that: ``max(w b, 0) = w max(b, 0)`` for ``w > 0``) and the mean has rank ``Q``;
    intercept first, U(0, 1) covariates; reproducible by seed; dense rungs only."""
    mod = load_script(ITER_SCRIPT)
    P, N, Q = 60, 400, 4
    Y, A = mod.generate_blocks(P, N, Q, 3, seed=5, noise=0.0)
    assert Y.shape == (P, N) and A.shape == (3, N)
    np.testing.assert_array_equal(A[0], 1.0)
    assert A[1:].min() >= 0 and A[1:].max() <= 1
    for j in range(Q):
        rows = Y[np.arange(P) * Q // P == j]
        s = np.linalg.svd(rows, compute_uv=False)
        assert s[1] / s[0] < 1e-12  # one profile per block
    s = np.linalg.svd(Y, compute_uv=False)
    assert s[Q - 1] / s[0] > 1e-3 and s[Q] / s[0] < 1e-12  # rank Q: Q distinct blocks
    Yn = mod.generate_blocks(P, N, Q, 3, seed=5, noise=0.3)[0]
    np.testing.assert_array_equal(Yn, mod.generate_blocks(P, N, Q, 3, seed=5, noise=0.3)[0])
    assert not np.array_equal(Yn, Y) and Yn.min() >= 0
    with pytest.raises(ValueError, match="dense only"):
        mod.run_one(dict(P=40, N=100, Q=2, K=2, density=0.1), 0, 0.3, sklearn=False, generator="blocks")


def test_zinb_generator():
    """``--generator zinb``: counts on a common scale (every entry an integer multiple of one
    step), mostly zeros, overdispersion growing with ``c`` for the same means (the draws before
    the counts do not depend on ``c``), an intercept, a binary treatment and centred Gamma
    covariates; reproducible by seed; dense rungs only."""
    mod = load_script(ITER_SCRIPT)
    P, N, Q, K = 80, 3000, 4, 3
    dispersion = []
    for c in (0.3, 1.0):
        Y, A = mod.generate_zinb(P, N, Q, K, seed=3, noise=c)
        assert Y.shape == (P, N) and A.shape == (K, N) and Y.min() >= 0
        step = np.min(Y[Y > 0])
        np.testing.assert_allclose(Y / step, np.round(Y / step), atol=1e-6)
        assert 0.6 < np.mean(Y == 0) < 0.99
        np.testing.assert_array_equal(A[0], 1.0)
        assert set(np.unique(A[1])) == {0.0, 1.0} and abs(A[1].mean() - 0.5) < 0.05
        assert abs(A[2].mean()) < 0.1 and A[2].min() >= -1.0
        counts = Y / step
        busy = counts.mean(axis=1) > 1.0
        dispersion.append(np.median(counts[busy].var(axis=1) / counts[busy].mean(axis=1)))
        np.testing.assert_array_equal(Y, mod.generate_zinb(P, N, Q, K, seed=3, noise=c)[0])
    assert dispersion[1] > dispersion[0] > 1.0
    with pytest.raises(ValueError, match="dense only"):
        mod.run_one(dict(P=40, N=100, Q=2, K=2, density=0.1), 0, 0.3, sklearn=False, generator="zinb")


def test_libsize_generator():
    """``--generator libsize``: the model's mean times a log-normal(0, 0.7) scale per unit (so
    the units' totals spread far more around what the covariates predict), plus Gaussian noise of sd
    ``0.3 c`` times the sd of that mean (drawn last: ``c = 0`` gives the scaled mean itself),
    clipped at 0; an intercept and Gaussian covariates; reproducible by seed; dense rungs only."""
    mod = load_script(ITER_SCRIPT)
    P, N, Q, K = 60, 4000, 4, 3
    M, A = mod.generate_libsize(P, N, Q, K, seed=5, noise=0.0)
    Y, A1 = mod.generate_libsize(P, N, Q, K, seed=5, noise=1.0)
    assert Y.shape == (P, N) and A.shape == (K, N) and Y.min() >= 0 and M.min() >= 0
    np.testing.assert_array_equal(A, A1)
    np.testing.assert_array_equal(A[0], 1.0)
    assert abs(A[1].mean()) < 0.1 and abs(A[1].std() - 1.0) < 0.1
    # the units' scales: the totals spread about what the covariates predict by a log-sd near the
    # factor's 0.7 (the same design without the factor: 0.2-0.4 on seeds 0-5)
    tot = M.sum(axis=0)
    pred = A.T @ np.linalg.lstsq(A.T, tot, rcond=None)[0]
    ok = (tot > 0) & (pred > 0)
    assert np.std(np.log(tot[ok] / pred[ok])) > 0.6
    # the noise: sd 0.3 c times the sd of the mean, where clipping cannot reach
    far = M > 1.5 * M.std()
    sd = np.std((Y - M)[far])
    assert abs(sd / (0.3 * M.std()) - 1.0) < 0.05
    np.testing.assert_array_equal(Y, mod.generate_libsize(P, N, Q, K, seed=5, noise=1.0)[0])
    with pytest.raises(ValueError, match="dense only"):
        mod.run_one(dict(P=40, N=100, Q=2, K=2, density=0.1), 0, 0.3, sklearn=False, generator="libsize")


def test_misfit_generators():
    """``--generator overfit`` / ``underfit``: without noise the mean has rank ``Q - 2`` / ``Q + 2``
    (the fit's rank is ``Q``): the next singular value is zero to rounding while the last one of
    that rank is not; intercept first; reproducible by seed; dense rungs only."""
    mod = load_script(ITER_SCRIPT)
    for gen, rank in ((mod.generate_overfit, 2), (mod.generate_underfit, 6)):
        Y, A = gen(60, 400, 4, 3, seed=5, noise=0.0)
        assert Y.shape == (60, 400) and A.shape == (3, 400)
        np.testing.assert_array_equal(A[0], 1.0)
        assert Y.min() > 0  # nothing clipped at this seed, so the rank is the mean's
        s = np.linalg.svd(Y, compute_uv=False)
        assert s[rank - 1] / s[0] > 1e-4 and s[rank] / s[0] < 1e-12
        Yn = gen(60, 400, 4, 3, seed=5, noise=0.3)[0]
        np.testing.assert_array_equal(Yn, gen(60, 400, 4, 3, seed=5, noise=0.3)[0])
        assert not np.array_equal(Yn, Y)
    with pytest.raises(ValueError, match="dense only"):
        mod.run_one(dict(P=40, N=100, Q=2, K=2, density=0.1), 0, 0.3, sklearn=False, generator="overfit")


def test_sweep_quick_lists_slow_and_unconverged_fits(tmp_path):
    """benchmarks/bench_sweep.py: one row per generator and a list of the fits above ``--slow``
    iterations or not converged (here every fit, with ``--slow 0``); bad arguments refused."""
    mod = load_script(Path(__file__).parent.parent / "benchmarks" / "bench_sweep.py")
    out = mod.main(["--quick", "--generators", "ladder,hetero", "--theta", "nonneg", "--slow", "0",
                    "--out", str(tmp_path / "s.json")])
    assert [r["generator"] for r in out["runs"]] == ["ladder", "hetero"]
    assert all(r["converged"] and r["n_iter"] > 0 for r in out["runs"])
    rows = [line for line in out["table"].splitlines() if line.startswith("| ladder") or line.startswith("| hetero")]
    assert len(rows) == 2 and out["table"].count("\n* ") == 2
    assert json.loads((tmp_path / "s.json").read_text())["runs"] == out["runs"]
    assert mod.int_list("0-2") == [0, 1, 2] and mod.int_list("50,100") == [50, 100]
    with pytest.raises(SystemExit, match="unknown nope"):
        mod.main(["--quick", "--generators", "nope"])
    with pytest.raises(SystemExit, match="--theta"):
        mod.main(["--quick", "--theta", "positive"])


def _check_module():
    pytest.importorskip("jax")
    return load_script("benchmarks/check_optimum.py")


@pytest.mark.parametrize("form", ["dense", "sparse", "missing"])
def test_independent_optimiser_agrees_at_the_optimum_and_finds_an_unconverged_point(form):
    """benchmarks/check_optimum.py: its nll (written in JAX from the model's definition; with
    NaN cells, that of the observed entries) equals nmfre's to rounding; started at nmfre's
    converged estimate L-BFGS-B finds no decrease beyond the fit's tolerance; started at the
    estimate after 2 iterations it finds one (its power)."""
    sparse = form == "sparse"
    import warnings

    import nmfre
    from nmfre.simulate import block_sparse

    chk = _check_module()
    d = block_sparse(P=20, N=300, rank=2, K=2, seed=3)
    Y, A = d["Y"].values, d["A"].values
    if sparse:
        import scipy.sparse as sp

        Y = sp.csr_matrix(np.where(Y > np.quantile(Y, 0.5), Y, 0.0))
    if form == "missing":
        Y = np.where(np.random.default_rng(0).random(Y.shape) < 0.1, np.nan, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = nmfre.fit(Y, A, rank=2, theta="nonneg")
        early = nmfre.fit(Y, A, rank=2, theta="nonneg", max_iter=2)
    assert fit.converged and not early.converged
    res = chk.check_fit(Y, A, fit, nonneg=True)
    assert res["agree"] <= 1e-9 * abs(res["nll_nmfre"])
    assert res["decrease"] <= res["tol"]
    res = chk.check_fit(Y, A, early, nonneg=True, maxiter=200)
    assert res["agree"] <= 1e-9 * abs(res["nll_nmfre"])
    assert res["decrease"] > 100 * res["tol"]


def test_iteration_ladder_runs_the_other_deterministic_start():
    """``--init nndsvd-tail``: nmfre's fits use that start (the fit's own record of its start
    says so) and the summary's data column names it; an unknown start is refused before any
    fitting."""
    mod = load_script(ITER_SCRIPT)
    spec = mod.rungs(quick=True)["small"]
    rec = mod.run_one(spec, 0, 0.3, sklearn=False, init="nndsvd-tail", repeat=1)
    assert rec["init"] == rec["nmfre"]["start"] == "nndsvd-tail" and rec["nmfre"]["converged"]
    assert "init nndsvd-tail" in mod.summary({"small": [rec]}, {"small": spec})
    assert mod.run_one(spec, 0, 0.3, sklearn=False, repeat=1)["nmfre"]["start"] == "nndsvd"
    with pytest.raises(ValueError, match="unknown init 'random'"):
        mod.run_one(spec, 0, 0.3, sklearn=False, init="random")


def test_bayes_ladder_takes_the_iteration_benchmarks_generators():
    """``bench_bayes.py --generator G --noise c``: the Bayesian ladder's data come from
    ``bench_iterations.py``'s generator ``G`` (the same arrays), block-sparse by default;
    ``--lengths W auto`` leaves the draws to the package and ``auto`` is refused for the warm-up."""
    pytest.importorskip("jax")
    bayes_mod = load_script(ITER_SCRIPT.parent / "bench_bayes.py")
    it = load_script(ITER_SCRIPT)
    Y, A, Q, theta = bayes_mod._data((20, 300, 2, 2), 3, "overlap", 0.5)
    Y2, A2 = it.generate_overlap(20, 300, 2, 2, 3, 0.5)
    np.testing.assert_array_equal(Y, Y2)
    np.testing.assert_array_equal(A, A2)
    assert (Q, theta) == (2, "nonneg")
    Yb = bayes_mod._data((20, 300, 2, 2), 3)[0]
    np.testing.assert_array_equal(Yb, bayes_mod.block_sparse(P=20, N=300, rank=2, K=2, seed=3)["Y"])
    assert bayes_mod._length("auto") is None and bayes_mod._length("40") == 40
    with pytest.raises(SystemExit):
        bayes_mod.main(["--chees", "--lengths", "auto", "100"])
