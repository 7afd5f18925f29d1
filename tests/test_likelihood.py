"""nmfre.core.likelihood and nmfre.core.dfcap: closed forms against direct computations."""

import numpy as np
import pytest
from helpers import direct_nll, rank2
from scipy.optimize import brentq

from nmfre.core import dfcap
from nmfre.core.likelihood import icc, nll, optimize_lambda, profile_objective, sufficient, variances_at


def test_nll_formula_matches_dense_gaussian():
    Y, A, X, theta = rank2(1, N=20)
    val = nll(sufficient(Y, X, theta @ A), 0.3, 0.3 / 2.5)
    assert val == pytest.approx(direct_nll(Y, X, theta, A, 0.3, 2.5), rel=1e-10)


def test_sigma2_closed_form_is_the_profile_minimiser():
    Y, A, X, theta = rank2(2, N=40)
    s = sufficient(Y, X, theta @ A)
    lam = 0.07
    s2, t2 = variances_at(s, lam, "free", 1.0, 1.0)
    assert t2 == pytest.approx(s2 / lam)
    f0 = nll(s, s2, lam)
    assert profile_objective(s, lam, "free") == pytest.approx(f0, rel=1e-13)
    for f in (0.99, 1.01):
        assert nll(s, s2 * f, lam) > f0


def test_optimize_lambda_finds_the_grid_minimum():
    Y, A, X, theta = rank2(3, N=60)
    s = sufficient(Y, X, theta @ A)
    lam = optimize_lambda(s, "free", 1e-10)
    grid = np.exp(np.linspace(np.log(1e-8), np.log(1e8), 20001))
    assert profile_objective(s, lam, "free") <= profile_objective(s, grid, "free").min() + 1e-9
    # a floor above the minimiser binds
    assert optimize_lambda(s, "free", 10 * lam) == pytest.approx(10 * lam)


def test_df_u_and_cap_root():
    d = np.array([0.3, 0.05, 0.001])
    N = 40
    lam = 0.02
    assert dfcap.df_u(d, N, lam) == pytest.approx(N * np.sum(d / (d + lam)))
    target = 0.4 * N * 3
    root = dfcap.lambda_for_df(d, N, target)
    assert dfcap.df_u(d, N, root) == pytest.approx(target, rel=1e-12)
    ref = brentq(lambda t: dfcap.df_u(d, N, t) - target, 1e-12, 1e6, xtol=1e-15)
    assert root == pytest.approx(ref, rel=1e-10)
    assert dfcap.lambda_for_df(d, N, N * 3.0) == 0.0  # cap cannot bind
    assert dfcap.cap_value(0.001, 10, 2) == 1.0


def test_zeroin_port_matches_brent():
    f = lambda x: x**3 - 2 * x - 5  # noqa: E731
    assert dfcap.zeroin(f, 2.0, 3.0, tol=1e-12) == pytest.approx(brentq(f, 2.0, 3.0), abs=1e-11)


def test_choose_rate_rule():
    rates = [0.1, 0.2, 0.3, 0.4]
    caps = [1, 2, 3, 4]
    # largest rate that hit and is safe
    assert dfcap.choose_rate(rates, [0.5, 1.5, 2.5, 3.99], caps, [True, True, True, True], [True] * 4) == 0.3
    # none hit: smallest safe
    assert dfcap.choose_rate(rates, [0.5, 1.5, 2.5, 3.0], caps, [False] * 4, [True] * 4) == 0.1
    assert dfcap.choose_rate(rates, [1, 2, 3, 4], caps, [True] * 4, [True] * 4) is None


def test_icc_closed_form():
    X = np.array([[0.5], [0.5]])
    assert icc(X, 1.0, 2.0) == pytest.approx(2 * 0.5 / (2 * 0.5 + 2))
