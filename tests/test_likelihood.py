"""nmfre.core.likelihood and nmfre.core.dfcap: closed forms against direct computations."""

import numpy as np
import pytest
from helpers import direct_nll, load_script, rank2
from scipy.linalg import expm
from scipy.optimize import brentq

from nmfre.core import dfcap
from nmfre.core.likelihood import (
    Sufficient,
    _profile_derivatives,
    icc,
    nll,
    optimize_lambda,
    profile_objective,
    sufficient,
    variances_at,
)


def test_nll_formula_matches_dense_gaussian():
    Y, A, X, theta = rank2(1, N=20)
    val = nll(sufficient(Y, X, theta @ A), 0.3, 0.3 / 2.5)
    assert val == pytest.approx(direct_nll(Y, X, theta, A, 0.3, 2.5), rel=1e-10)


def test_the_likelihood_is_invariant_under_rotations_that_keep_the_column_sums():
    """``nll(X R, R' Theta) = nll(X, Theta)`` for every orthogonal ``R`` with ``R 1 = 1``.

    The mean ``X Theta A`` and the random effects' covariance ``tau2 X X'`` do not change, and
    neither do X's column sums. These ``R`` form a group of dimension ``(Q - 1)(Q - 2) / 2``
    (3 here, 36 at Q = 10). Only the bounds (X >= 0, and Theta >= 0 where constrained) can pin
    an ML estimate along it (benchmarks/results/scale.md, forty-eighth round).

    Checked on the compressed statistics and on dense Gaussian densities. A mixing that keeps
    the mean and the column sums but is not orthogonal changes the nll, because it changes
    ``X X'``: the named fault is random effects whose covariance is not isotropic across
    components, which would have no such invariance."""
    rng = np.random.default_rng(7)
    P, N, Q = 12, 30, 4
    X = rng.dirichlet(np.ones(P), Q).T
    theta = rng.normal(size=(Q, 2))
    A = np.vstack([np.ones(N), rng.normal(size=N)])
    Y = X @ (theta @ A + rng.normal(0, 2.0, (Q, N))) + rng.normal(0, 0.3, (P, N))
    B = np.linalg.qr(np.column_stack([np.ones(Q), rng.normal(size=(Q, Q - 1))]))[0][:, 1:]  # the complement of 1
    S = rng.normal(size=(Q - 1, Q - 1))
    R = np.eye(Q) + B @ (expm(S - S.T) - np.eye(Q - 1)) @ B.T
    np.testing.assert_allclose(R @ R.T, np.eye(Q), atol=1e-13)
    np.testing.assert_allclose(R @ np.ones(Q), np.ones(Q), atol=1e-13)
    assert np.abs(R - np.eye(Q)).max() > 0.5  # a large rotation, not a small perturbation
    Xr, Tr = X @ R, R.T @ theta
    np.testing.assert_allclose(Xr.sum(axis=0), 1.0, atol=1e-13)
    s2, t2 = 0.09, 4.0
    base = nll(sufficient(Y, X, theta @ A), s2, s2 / t2)
    assert nll(sufficient(Y, Xr, Tr @ A), s2, s2 / t2) == pytest.approx(base, rel=1e-12)
    assert direct_nll(Y, Xr, Tr, A, s2, t2) == pytest.approx(direct_nll(Y, X, theta, A, s2, t2), rel=1e-12)
    M = np.eye(Q) + B @ (0.3 * rng.normal(size=(Q - 1, Q - 1))) @ B.T
    np.testing.assert_allclose(X @ M @ np.linalg.solve(M, theta), X @ theta, atol=1e-13)
    moved = nll(sufficient(Y, X @ M, np.linalg.solve(M, theta) @ A), s2, s2 / t2)
    assert abs(moved - base) > 1e-3 * abs(base)


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


def test_optimize_lambda_grid_is_built_once_and_read_only():
    """The search grid over lambda's whole range is cached (the variance profile runs several
    times per ML iteration): the same numbers as building it afresh, read-only, the same object
    on every call; a narrower range (a df-cap floor) gets its own grid."""
    from nmfre.core import likelihood

    lo, hi = likelihood.LAMBDA_MIN, likelihood.LAMBDA_MAX
    grid, lams = likelihood._grid(lo, hi)
    fresh = np.linspace(np.log(lo), np.log(hi), 41)
    np.testing.assert_array_equal(grid, fresh)
    np.testing.assert_array_equal(lams, np.exp(fresh))
    assert not grid.flags.writeable and not lams.flags.writeable
    assert likelihood._grid(lo, hi)[1] is lams
    narrow = likelihood._grid(1e-3, hi)[0]
    np.testing.assert_array_equal(narrow, np.linspace(np.log(1e-3), np.log(hi), 41))


def _random_sufficient(rng):
    """A valid :class:`Sufficient` (``||R||^2 >= sum s / d``, a zero eigenvalue with zero ``s``)."""
    Q = int(rng.integers(1, 6))
    N = int(rng.integers(5, 500))
    d = rng.normal(size=Q) ** 2 * rng.choice([1e-3, 1.0, 100.0])
    s = np.abs(rng.normal(size=Q)) * rng.choice([0.1, 10.0, 1e4]) * N
    if rng.random() < 0.3:
        d[0] = s[0] = 0.0
    rss = float(np.sum(s[d > 0] / d[d > 0])) * rng.uniform(1.001, 3.0) + rng.uniform(0.0, 100.0)
    return Sufficient(rss, s, d, np.full(Q, float(N)), 50 * N)


@pytest.mark.parametrize("mode", ["free", "sigma2", "tau2"])
def test_profile_derivatives_match_finite_differences(mode):
    """Analytic first and second derivatives in log lambda against central differences."""
    rng = np.random.default_rng(["free", "sigma2", "tau2"].index(mode))
    for _ in range(40):
        suff = _random_sufficient(rng)
        s2, t2 = rng.uniform(0.05, 3.0, size=2)
        var = t2 if mode == "tau2" else s2
        t = rng.uniform(-4.0, 4.0)
        f = lambda x, suff=suff, s2=s2, t2=t2: float(profile_objective(suff, np.exp(x), mode, s2, t2))  # noqa: E731
        d1, d2 = _profile_derivatives(suff, float(np.exp(t)), mode, var)
        scale = abs(f(t)) + 1.0
        h = 1e-4
        fd1 = (f(t + h) - f(t - h)) / (2 * h)
        fd2 = (f(t + h) - 2 * f(t) + f(t - h)) / h**2
        # truncation (h^2 times the third derivative) and rounding (eps |f| / h^k)
        assert abs(fd1 - d1) <= 1e-6 * (abs(d1) + abs(d2)) + 1e-11 * scale
        assert abs(fd2 - d2) <= 1e-5 * (abs(d2) + abs(d1)) + 1e-7 * scale


@pytest.mark.parametrize("mode", ["free", "sigma2", "tau2"])
def test_optimize_lambda_is_the_minimiser_in_every_mode(mode):
    """Stationary (zero derivative) or on the floor, and no point of a fine grid is lower."""
    rng = np.random.default_rng(10 + ["free", "sigma2", "tau2"].index(mode))
    grid = np.exp(np.linspace(np.log(1e-8), np.log(1e8), 4001))
    for _ in range(40):
        suff = _random_sufficient(rng)
        s2, t2 = rng.uniform(0.05, 3.0, size=2)
        lo = 10 ** rng.uniform(-9, -3)
        lam = optimize_lambda(suff, mode, lo, None, s2, t2)
        val = float(profile_objective(suff, lam, mode, s2, t2))
        ref = profile_objective(suff, grid[grid >= lo], mode, s2, t2).min()
        assert val <= ref + 1e-12 * (1 + abs(ref))
        d1, d2 = _profile_derivatives(suff, lam, mode, t2 if mode == "tau2" else s2)
        if lo * 1.001 < lam < 1e11:
            assert abs(d1) <= 1e-8 * (1 + abs(d2)), (lam, d1, d2)
        # a start at the previous value changes nothing beyond the tolerance
        again = optimize_lambda(suff, mode, lo, lam * 1.3, s2, t2)
        assert float(profile_objective(suff, again, mode, s2, t2)) <= val + 1e-12 * (1 + abs(val))


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


def test_rounding_in_a_null_direction_of_x_is_not_amplified():
    """``s = ||R'X v||^2 <= rss d`` exactly, so a rounding residue of ``s`` where ``X'X`` has
    the eigenvalue 0 (here 1e-15) adds nothing to the quadratic form; unbounded, it would
    subtract ``1e-15 / 1e-10`` = 1e-5 at the smallest lambda. Exact closed form."""
    suff = Sufficient(10.0, np.array([1e-15, 2.0]), np.array([0.0, 1.0]), np.full(2, 5.0), 20)
    for lam in (1e-10, 1e-3, 1.0):
        assert suff.quad(lam) == 10.0 - 2.0 / (1.0 + lam)


def test_an_unresolved_quadratic_form_has_no_finite_likelihood():
    """A quadratic form at or below ``QUAD_RESOLVED`` times the size of the terms it was
    computed from (``scale``) is rounding: the nll there is +inf, so no step can be accepted
    into such a state; above it the nll is the formula's."""
    from nmfre.core.likelihood import QUAD_RESOLVED

    lam = np.array([1e-2, 1.0, 100.0])
    clean = Sufficient(10.0, np.array([2.0]), np.array([1.0]), np.full(1, 5.0), 20)
    noisy = Sufficient(10.0, np.array([2.0]), np.array([1.0]), np.full(1, 5.0), 20, scale=1e13 / QUAD_RESOLVED)
    assert clean.resolution == QUAD_RESOLVED * 10.0 and noisy.resolution == 1e13
    assert np.all(np.isfinite(profile_objective(clean, lam, "free")))
    assert np.all(np.isinf(profile_objective(noisy, lam, "free")))
    assert np.isinf(nll(noisy, 1.0, 1.0)) and np.isfinite(nll(clean, 1.0, 1.0))
    for mode in ("sigma2", "tau2"):
        assert np.all(np.isinf(profile_objective(noisy, lam, mode)))


def test_a_fit_through_a_singular_basis_reports_its_true_likelihood():
    """The named fault of ``QUAD_RESOLVED`` and of the bound in ``Sufficient.quad``: a sign-free
    fit (the iteration benchmark's ladder generator, 50 x 500, Q = 8, seed 2, c = 1, started
    from NNDSVD of the singular triplets 2 to 9, without ``TAIL_SPREAD``) whose basis becomes
    singular after one iteration (smallest singular value 1e-17) accepted a state with Theta
    1.7e20 whose computed nll (-6.5e4) was rounding (from Y directly: 1.8e8), and the next
    information matrix overflowed. Now it runs to convergence and its log-likelihood is the one
    computed from Y directly. Deterministic (no randomness)."""
    import nmfre
    from nmfre.core import basis

    bench = load_script("benchmarks/bench_iterations.py")
    Y, A = bench.generate(50, 500, 8, 3, seed=2, noise=1.0)
    U, _, Vt = np.linalg.svd(np.asarray(Y), full_matrices=False)
    X0 = basis.nndsvd_from_svd(U[:, :9], Vt[:9], 9)[:, 1:]
    f = nmfre.fit(Y, A, rank=8, theta="free", init={"X": X0}, max_iter=2000)
    assert f.converged
    sol = f.solution
    direct = nll(sufficient(np.asarray(Y), sol.X, sol.theta @ np.asarray(A)), sol.sigma2, sol.lam)
    assert abs(direct - sol.nll) <= 1e-9 * abs(sol.nll)
    assert np.max(np.abs(sol.theta)) < 1e6


def _cancelling(level: float, re_sd: float = 1.0):
    """A gram-form problem at a point whose components cancel: two nearly equal basis columns
    with effects ``+-level`` (so ``X Theta A`` is of order 1 while ``Theta AA' Theta'`` is of
    order ``level^2 N``), random effects of sd ``re_sd`` and noise of sd 0.01 around it (with
    ``re_sd`` = 30, lambda 1.2e-7 against a smallest eigenvalue of ``X'X`` of 1.8e-8: strong
    random effects along a nearly singular basis). Deterministic."""
    from nmfre.core import stats as cstats
    from nmfre.core.ml import Problem

    rng = np.random.default_rng(0)
    P, N = 40, 400
    base = rng.dirichlet(np.ones(P))
    X = np.column_stack([base, 0.999 * base + 0.001 * rng.dirichlet(np.ones(P))])
    A = np.vstack([np.ones(N), rng.normal(size=N)])
    theta = np.array([[level, 2.0], [-level, -1.0]])
    Y = X @ theta @ A + re_sd * X @ rng.normal(size=(2, N)) + 0.01 * rng.normal(size=(P, N))
    prob = Problem(cstats.from_arrays(Y, A, "gram"), 2, False, "free", 1.0, 1.0, None)
    return Y, A, X, theta, prob


def _penalised_nll(Y, A, X, theta, sigma2, lam):
    """The nll with its quadratic form as ``||R - X B||^2 + lambda ||B||^2``, ``B = M^-1 X'R``
    (the BLUP; one step of refinement), in long double: a reference that neither subtracts
    ``sum s / (d + lambda)`` from ``||R||^2`` nor uses nmfre's code."""
    from nmfre.core.likelihood import LOG_2PI

    ld = np.longdouble
    R = (Y - X @ (theta @ A)).astype(ld)
    Xl = X.astype(ld)
    M = Xl.T @ Xl + ld(lam) * np.eye(X.shape[1], dtype=ld)
    B = np.linalg.solve(M.astype(float), (Xl.T @ R).astype(float)).astype(ld)
    B = B + np.linalg.solve(M.astype(float), (Xl.T @ R - M @ B).astype(float))
    E = R - Xl @ B
    q = float((E * E).sum() + ld(lam) * (B * B).sum())
    d = np.linalg.eigvalsh(X.T @ X)
    return 0.5 * (Y.size * (LOG_2PI + np.log(sigma2)) + Y.shape[1] * np.sum(np.log1p(d / lam)) + q / sigma2)


def _rss_rounding(Y, A, X, theta) -> float:
    """A bound on the rounding of ``||R||^2`` (and of its parts along and outside the basis)
    however the residuals are formed: each entry of ``R = Y - X Theta A`` is rounded by a few
    ``eps (|X| |Theta A| + |Y|)``, so ``||R||^2`` by at most ``2 sum |R|`` times that (a factor 4
    for the few orders of summation the codes use). Machine-independent: the tests below compare
    two computations of the same sum to this, not to a fixed relative tolerance (at ``+-1e5``
    the residual pass and ``Y - X (Theta A)`` differ by 1.5e-12 relative with OpenBLAS's
    Sandybridge kernels, 0.3e-12 without)."""
    R = Y - X @ (theta @ A)
    size = np.abs(X) @ np.abs(theta @ A) + np.abs(Y)
    return 8.0 * np.finfo(float).eps * float(np.sum(np.abs(R) * size))


def test_rounding_size_sees_components_that_cancel():
    """:func:`nmfre.core.ml.rounding_size` sums the quadratic form's terms term by term: with
    effects ``+-level`` on nearly equal columns it grows as ``level^2`` (the ``Q x Q`` products
    that cancel) and is 4e5 to 1e6 times the sizes of the three sums (``rss_scale``, what the
    unresolved-likelihood guard uses), which do not see that cancellation; the compressed
    ``||R||^2`` is off the residuals' by at most ``eps`` times it (a bound, checked with a
    factor 10; measured 0.16 and 0.28 of it, 6e4 and 3e5 times ``eps rss_scale``; at ``level``
    = 1e5 the compressed ``||R||^2`` is 1.3e-6 off, relative). ``passes.residual_moments`` gives
    ``||R||^2 = perp + sum t``. Deterministic."""
    from nmfre.core import passes
    from nmfre.core.ml import rounding_size

    eps = np.finfo(float).eps
    sizes = []
    for level in (1e3, 1e5):
        Y, A, X, theta, prob = _cancelling(level)
        m = prob.moments(X, theta)[0]
        size = rounding_size(prob, X, theta, 1.0)
        d, t, perp = passes.residual_moments(Y, A, X, theta, prob.stats)[0]
        R = Y - X @ (theta @ A)
        assert abs(perp + t.sum() - float(np.vdot(R, R))) <= _rss_rounding(Y, A, X, theta)
        assert abs(m.rss - (perp + t.sum())) <= 10 * eps * size
        sizes.append((size, m.rss_scale))
    assert sizes[1][0] / sizes[0][0] == pytest.approx(1e4, rel=0.01)
    assert all(size >= 1e5 * scale for size, scale in sizes)


def test_the_quadratic_form_of_the_residuals_parts_does_not_cancel():
    """Strong random effects along a nearly singular basis (``_cancelling(1, 30)``: lambda
    1.2e-7, smallest ``d`` 1.8e-8): ``rss - sum s / (d + lambda)`` cancels (``rss`` 2.1e4 times
    the form) even from exact residuals, and the nll from the dense form's statistics is 1.6e-3
    off the long-double reference (330 tolerances); the form ``perp + sum t lambda / (d +
    lambda)`` of :func:`nmfre.core.ml.residual_sufficient` agrees with it to the rounding of the
    residuals (``_rss_rounding``, 3.5e-12 relative here; measured 0.9e-13 to 2e-13), as do its ``rss`` and
    ``s`` (``s = d t``) with the dense form's (1e-10 and 1e-6 of the largest) and its quadratic
    form at lambda = 1 (no cancellation there). Deterministic."""
    from nmfre.core import ml, passes
    from nmfre.core import stats as cstats

    Y, A, X, theta, prob = _cancelling(1.0, 30.0)
    exact = ml.residual_sufficient(prob, passes.residual_moments(Y, A, X, theta, prob.stats))
    dense = ml.sufficient(ml.Problem(cstats.from_arrays(Y, A, "dense"), 2, False, "free", 1.0, 1.0, None), X, theta)
    lam, s2 = 1.2e-7, 2e-4
    ref = _penalised_nll(Y, A, X, theta, s2, lam)
    assert abs(nll(exact, s2, lam) - ref) <= _rss_rounding(Y, A, X, theta) / (2 * s2) + 1e-13 * abs(ref)
    assert abs(nll(dense, s2, lam) - ref) >= 100 * 1e-12 * abs(ref)  # the construction cancels
    assert exact.rss == pytest.approx(dense.rss, rel=1e-10)
    # (the weak direction's s, 8e-10 of the other's 3.4e3, depends on which eigenvector of a
    # nearly singular X'X each form's decomposition picks: compared absolutely)
    np.testing.assert_allclose(np.sort(exact.s), np.sort(dense.s), rtol=1e-6, atol=1e-9 * dense.s.max())
    np.testing.assert_allclose(np.sort(exact.d), np.sort(dense.d), rtol=1e-6, atol=1e-14)
    assert abs(exact.quad(1.0) - dense.quad(1.0)) <= 2 * _rss_rounding(Y, A, X, theta)


@pytest.mark.parametrize("level, re_sd", [(1e5, 1.0), (1.0, 30.0)])
def test_a_fit_reports_the_nll_at_its_estimate_where_its_statistics_cannot_resolve_it(level, re_sd):
    """``engine.resolved``: where the quadratic form's rounding (``eps rounding_size / (2
    sigma2)``) exceeds ``RESOLVE_FRACTION`` of the tolerance, the returned variances and nll are
    those of the residuals' parts (the variances re-profiled at the returned X, Theta): their nll
    equals the long-double reference at the returned variances to the residuals' rounding
    (``_rss_rounding``), and is never
    above the reference at the compressed state's variances. Below the threshold the solution
    is returned unchanged (the same object). The faults: components that cancel with effects
    ``+-1e5`` (the gram form's nll 3.6e4 tolerances off) and strong random effects along a nearly
    singular basis (4e3 tolerances off; below a first version's bound, which counted only
    ``||R||^2``'s terms). Deterministic."""
    from nmfre import engine
    from nmfre.core import ml
    from nmfre.core.solution import Solution

    Y, A, X, theta, prob = _cancelling(level, re_sd)
    s2, lam, val, _, _ = ml.profile(prob, X, theta, None)
    sol = Solution(X, theta, None, s2, s2 / lam, lam, val, np.array([val]), True, 1, False, "tol")
    tol = 1e-10
    bound = np.finfo(float).eps * ml.rounding_size(prob, X, theta, lam) / (2 * s2)
    assert bound >= 1e3 * tol * (1 + abs(val))
    out = engine.resolved(prob, sol, Y, A, tol)
    ref = _penalised_nll(Y, A, X, theta, out.sigma2, out.lam)
    assert abs(out.nll - ref) <= _rss_rounding(Y, A, X, theta) / (2 * out.sigma2) + 1e-13 * abs(ref)
    assert out.sigma2 / out.lam == pytest.approx(out.tau2, rel=1e-12)
    assert out.nll <= _penalised_nll(Y, A, X, theta, s2, lam) + _rss_rounding(Y, A, X, theta) / (2 * s2)
    # a well-resolved fit: no pass, the same solution
    Y2, A2, X2, theta2, prob2 = _cancelling(0.0)
    s2b, lamb, valb, _, _ = ml.profile(prob2, X2, theta2, None)
    sol2 = Solution(X2, theta2, None, s2b, s2b / lamb, lamb, valb, np.array([valb]), True, 1, False, "tol")
    assert engine.resolved(prob2, sol2, Y2, A2, tol) is sol2


def _common_level():
    """50 x 2000 data of rank 2 on a common level of about 1e4 (intercept effects ``1e4 P`` and
    ``0.8e4 P`` on simplex columns), random effects of sd ``P``, noise of sd 1. Deterministic."""
    rng = np.random.default_rng(0)
    P, N = 50, 2000
    X = rng.dirichlet(np.ones(P), 2).T
    A = np.vstack([np.ones(N), rng.uniform(size=N)])
    theta = np.array([[1e4 * P, 2.0 * P], [0.8e4 * P, 1.0 * P]])
    return X @ (theta @ A + rng.normal(size=(2, N)) * P) + rng.normal(size=(P, N)), A


@pytest.mark.parametrize("kind", ["nonneg", "free"])
def test_a_fit_of_data_on_a_large_common_level_reports_the_nll_at_its_estimate(kind):
    """Data on a common level of 1e4 against noise of sd 1 (a 50 x 2000 fit in gram form): the
    compressed ``||R||^2`` cancels ``||Y||^2`` of about 1e8 per entry to about 1 per entry, and its
    rounding is hundreds of tolerances of the nll; the reported nll is the one computed from the
    residuals at the returned estimate (to 1% of the tolerance). The fault, measured before
    ``engine.resolved``: 0.0017 (109 tolerances) off after these 30 iterations, 0.0086 after 500. Whatever path the
    iterations take (this data's fits run to ``max_iter``: ``ConvergenceWarning``, ignored), the
    property holds at the point returned. Sign-free Theta is fitted on orthonormal covariates
    (the residual pass must use those, with the frame's Theta)."""
    import warnings

    import nmfre

    Y, A = _common_level()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmfre.ConvergenceWarning)
        f = nmfre.fit(Y, A, rank=2, theta=kind, max_iter=30)
    s = f.solution
    direct = nll(sufficient(Y, s.X, s.theta @ A), s.sigma2, s.lam)
    assert abs(s.nll - direct) <= 0.01 * 1e-10 * (1 + abs(direct))


def test_the_rate_scan_reports_what_the_fit_at_that_rate_reports():
    """``df_scan``'s rows go through ``engine.resolved`` too: at the same rate, start and
    iterations, the scan's nll and sigma2 equal the fit's (1e-12 relative) on data where the
    pass fires (the common-level data of the test above, sign-free, 30 iterations). The fault,
    measured on a version that skipped the pass in the scan: 214 tolerances apart."""
    import warnings

    import nmfre

    Y, A = _common_level()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmfre.ConvergenceWarning)
        f = nmfre.fit(Y, A, rank=2, theta="free", max_iter=30, df_cap=0.5)
        row = nmfre.df_scan(Y, A, rank=2, rates=[0.5], method="ml", theta="free", max_iter=30).iloc[0]
    assert row.nll == pytest.approx(f.solution.nll, rel=1e-12)
    assert row.sigma2 == pytest.approx(f.sigma2, rel=1e-12)
