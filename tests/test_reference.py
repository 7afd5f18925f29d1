"""Parity with the R package nmfkc on Orthodont (reference numbers in tests/data)."""

import numpy as np
import pytest

import nmfre


def rel(a, b):
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def test_embedded_orthodont_matches_reference_layout(orthodont, ref):
    Y, A = orthodont
    assert Y.shape == (4, 27) and list(A.index) == ["intercept", "male"]
    assert A.loc["male"].sum() == 16 and list(Y.columns[:2]) == ["M01", "M02"]
    # checksums of the reference CSV nmfkc was run on (matrix(Orthodont$distance, 4, 27))
    y = Y.to_numpy()
    assert y.sum() == 2594.5 and (y**2).sum() == 63245.75
    assert list(y[:, 0]) == [26.0, 25.0, 29.0, 31.0] and list(y[:, 26]) == [24.5, 25.0, 28.0, 28.0]


@pytest.mark.parametrize("theta", ["free", "nonneg"])
def test_ml_at_least_as_good_as_nmfkc(orthodont, ref, theta):
    Y, A = orthodont
    fit = nmfre.fit(Y, A, rank=1, theta=theta)
    r = ref["runs"]["head_signed"]
    assert fit.converged
    assert -fit.loglik <= 215.586901
    assert -fit.loglik <= r["marginal_nll_recomputed"] + 1e-9
    np.testing.assert_allclose(fit.theta.values.ravel(), [90.5058, 9.4227], atol=5e-5)
    assert fit.sigma2 == pytest.approx(1.93280, abs=1e-5)
    assert fit.tau2 == pytest.approx(48.19, abs=5e-3)
    # the ML optimum agrees with nmfkc 0.9.5's (converged to its own 1e-5 tolerance)
    assert rel(fit.theta, r["C"]) < 1e-6
    assert rel(fit.X, r["X"]) < 1e-6
    assert rel(fit.U, r["U"]) < 1e-4
    assert fit.icc == pytest.approx(r["ICC"], rel=1e-5)
    assert fit.df_u == pytest.approx(r["dfU"], rel=1e-5)


def test_ml_strictly_better_than_nmfkc_nonneg_run(orthodont, ref):
    """nmfkc 0.9.5's non-negative run stops short; our constrained optimum is better."""
    Y, A = orthodont
    fit = nmfre.fit(Y, A, rank=1, theta="nonneg")
    assert -fit.loglik < ref["runs"]["head_nonneg"]["marginal_nll_recomputed"] - 1e-4


@pytest.mark.parametrize("run", ["paper_auto", "paper_rate0.2"])
def test_paper_method_reproduces_nmfkc_070(orthodont, ref, run):
    Y, A = orthodont
    r = ref["runs"][run]
    init = {"X": np.array(r["X_init"]), "theta": np.array(r["C_init"])}
    cap = "auto" if run == "paper_auto" else 0.2
    fit = nmfre.fit(Y, A, rank=1, method="paper", df_cap=cap, init=init)
    assert fit.df_cap_rate == r["dfU_cap_rate"]
    for mine, theirs in [(fit.X, r["X"]), (fit.theta, r["C"]), (fit.U, r["U"])]:
        assert rel(mine, theirs) < 1e-8
    for key, val in [("sigma2", fit.sigma2), ("tau2", fit.tau2), ("dfU", fit.df_u), ("lambda", fit.lam)]:
        assert val == pytest.approx(r[key], rel=1e-8), key
    assert fit.n_iter == r["iter"]
    assert fit.cap_hit == r["dfU_hit_cap"]
    assert fit.converged == r["converged"]
    assert fit.df_cap == pytest.approx(r["dfU_cap"])
    assert -fit.loglik == pytest.approx(r["marginal_nll_recomputed"], rel=1e-10)
    assert len(fit.nll_trace) == fit.n_iter and fit.nll_trace[-1] == pytest.approx(-fit.loglik, rel=1e-13)
    assert fit.icc == pytest.approx(r["ICC"], rel=1e-8)


def test_df_scan_reproduces_nmfkc_table_and_choice(orthodont, ref):
    Y, A = orthodont
    r = ref["runs"]["paper_auto"]
    init = {"X": np.array(r["X_init"]), "theta": np.array(r["C_init"])}
    table = nmfre.df_scan(Y, A, rank=1, init=init)
    assert table.attrs["chosen_rate"] == ref["dfU_scan"]["cap_rate"] == 0.3
    theirs = ref["dfU_scan"]["table"]
    assert list(table.safeguard) == [t["safeguard"] for t in theirs]
    assert list(table.hit) == [t["hit"] for t in theirs]
    np.testing.assert_allclose(table.df_u.round(2), [t["dfU"] for t in theirs])
    np.testing.assert_allclose(table.tau2.round(3), [t["tau2"] for t in theirs])
