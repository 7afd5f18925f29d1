"""nmfre.core.rotation: the likelihood's rotation invariance and the check for a non-unique ML estimate."""

import warnings

import numpy as np
import pytest
from helpers import direct_nll
from scipy.linalg import expm

import nmfre
from nmfre.core import rotation
from nmfre.core.likelihood import nll, sufficient


@pytest.mark.parametrize("Q", [1, 2, 3, 5, 10])
def test_generators_span_the_rotations_that_keep_the_column_sums(Q):
    """(Q - 1)(Q - 2) / 2 generators, orthonormal, antisymmetric, with A 1 = 0; their
    exponentials are orthogonal with R 1 = 1."""
    G = rotation.generators(Q)
    m = (Q - 1) * (Q - 2) // 2
    assert G.shape == (m, Q, Q)
    if m == 0:
        return
    np.testing.assert_allclose(G + np.transpose(G, (0, 2, 1)), 0.0, atol=1e-15)
    np.testing.assert_allclose(G @ np.ones(Q), 0.0, atol=1e-15)
    gram = np.einsum("aij,bij->ab", G, G)
    np.testing.assert_allclose(gram, np.eye(m), atol=1e-14)
    R = expm(np.tensordot(np.random.default_rng(Q).normal(size=m), G, axes=1))
    np.testing.assert_allclose(R @ R.T, np.eye(Q), atol=1e-13)
    np.testing.assert_allclose(R @ np.ones(Q), np.ones(Q), atol=1e-13)


def _interior(seed: int, P: int = 20, Q: int = 4, K: int = 2):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(P, 5.0), Q).T, rng.normal(3.0, 1.0, (Q, K)), rng


@pytest.mark.parametrize("nonneg", [False, True])
def test_an_estimate_off_every_bound_rotates_without_changing_the_likelihood(nonneg):
    """X with no entry at 0 (and Theta > 0): the check finds a rotation; it keeps X >= 0 (and
    Theta >= 0), moves X by at least ROTATION_MIN, and leaves the nll unchanged, on the
    compressed statistics and on dense Gaussian densities."""
    X, theta, rng = _interior(3)
    assert X.min() > 0 and theta.min() > 0
    free = rotation.free_rotation(X, theta, nonneg)
    assert free is not None
    R = free.R
    np.testing.assert_allclose(R @ R.T, np.eye(4), atol=1e-13)
    np.testing.assert_allclose(R @ np.ones(4), np.ones(4), atol=1e-13)
    Xr, Tr = X @ R, R.T @ theta
    assert Xr.min() >= -1e-14
    if nonneg:
        assert Tr.min() >= -1e-14 * np.abs(theta).max()
    assert free.dX == pytest.approx(np.abs(Xr - X).max()) and free.dX >= rotation.ROTATION_MIN * X.max()
    assert free.dtheta == pytest.approx(np.abs(Tr - theta).max()) and free.dtheta > 0
    N = 25
    A = np.vstack([np.ones(N), rng.normal(size=N)])
    Y = X @ (theta @ A + rng.normal(0, 2.0, (4, N))) + rng.normal(0, 0.1, (X.shape[0], N))
    s2, t2 = 0.01, 4.0
    assert nll(sufficient(Y, Xr, Tr @ A), s2, s2 / t2) == pytest.approx(nll(sufficient(Y, X, theta @ A), s2, s2 / t2),
                                                                      rel=1e-12)
    assert direct_nll(Y, Xr, Tr, A, s2, t2) == pytest.approx(direct_nll(Y, X, theta, A, s2, t2), rel=1e-12)


def test_anchor_rows_pin_the_rotation():
    """A row where only component q is non-zero (an anchor) forces ``A[q, r] >= 0`` for every
    ``r != q`` to first order; with an anchor for every component, antisymmetry leaves only
    ``A = 0``: no rotation, whatever the sign of Theta."""
    X, theta, _ = _interior(4)
    X[:4] = 0.0
    X[np.arange(4), np.arange(4)] = 0.2
    X /= X.sum(axis=0)
    for nonneg in (False, True):
        assert rotation.free_rotation(X, theta, nonneg) is None


def test_zeros_of_non_negative_theta_pin_the_rotation():
    """Theta = c I (non-negative, its off-diagonal entries at 0) forces ``A[q, k] <= 0`` for
    every ``q != k`` to first order, so only ``A = 0``: pinned with theta='nonneg', free
    without the bound (X off every bound)."""
    X, _, _ = _interior(5, Q=3)
    theta = 4.0 * np.eye(3)
    assert rotation.free_rotation(X, theta, nonneg=True) is None
    assert rotation.free_rotation(X, theta, nonneg=False) is not None


def test_one_zero_of_x_allows_the_rotations_that_raise_it():
    """One entry of X at 0 (the rest off every bound): the linearised bound is one-sided, so a
    rotation exists, and the one found keeps that entry >= 0. With the constraint's sign flipped
    none is found (checked when this test was written)."""
    rng = np.random.default_rng(0)
    # Dirichlet(1) columns floored at 1e-4: small entries everywhere, so that only small
    # rotations keep X >= 0 (a large one could land inside the bounds whatever the sign)
    X = np.maximum(rng.dirichlet(np.ones(20), 3).T, 1e-4)
    X[0, 0] = 0.0
    X /= X.sum(axis=0)
    theta = rng.normal(3.0, 1.0, (3, 2))
    free = rotation.free_rotation(X, theta, nonneg=False)
    assert free is not None
    assert (X @ free.R)[0, 0] >= -1e-14 and (X @ free.R).min() >= -1e-14


def test_one_zero_of_non_negative_theta_allows_the_rotations_that_raise_it():
    """The same for one entry of non-negative Theta at 0 (X off every bound)."""
    X, theta, _ = _interior(8, Q=3)
    theta[1, 0] = 0.0
    free = rotation.free_rotation(X, theta, nonneg=True)
    assert free is not None
    assert (free.R.T @ theta)[1, 0] >= -1e-14 * np.abs(theta).max() and (free.R.T @ theta).min() >= -1e-13


def test_entries_just_above_their_bound_do_not_make_a_rotation():
    """Anchor rows whose off-anchor entries are 1e-5 instead of 0 (a fit can leave entries that
    belong at 0 slightly above it): a rotation can only use up that slack, which moves X by far
    less than ROTATION_MIN of its largest entry, so none is reported."""
    X, theta, _ = _interior(4)
    X[:4] = 1e-5
    X[np.arange(4), np.arange(4)] = 0.2
    X /= X.sum(axis=0)
    assert rotation.free_rotation(X, theta, nonneg=False) is None


def test_the_check_is_scale_equivariant_in_theta():
    """Theta times 1e-9 or 1e9 (the units of Y): the same rotation, Theta's move scaled."""
    X, theta, _ = _interior(9, Q=4)
    theta[0, 1] = 0.0
    ref = rotation.free_rotation(X, theta, nonneg=True)
    assert ref is not None
    for c in (1e-9, 1e9):
        got = rotation.free_rotation(X, c * theta, nonneg=True)
        assert got is not None
        np.testing.assert_allclose(got.R, ref.R, atol=1e-12)
        assert got.dtheta == pytest.approx(c * ref.dtheta, rel=1e-9)


def test_non_finite_input_gives_none():
    X, theta, _ = _interior(10, Q=3)
    X[0, 0] = np.nan
    assert rotation.free_rotation(X, theta, nonneg=False) is None


def test_rank_two_has_no_rotation():
    """Q = 2: the only orthogonal R with R 1 = 1 are I and the swap of the columns."""
    X, theta, _ = _interior(6, Q=2)
    assert rotation.free_rotation(X, theta, nonneg=False) is None


def _fit_data(seed: int, anchors: bool, P: int = 40, N: int = 400, Q: int = 3):
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.full(P, 5.0), Q).T
    if anchors:  # four rows per component where it alone is non-zero
        X[:Q * 4] = 0.0
        for q in range(Q):
            X[q * 4:(q + 1) * 4, q] = 0.05
        X /= X.sum(axis=0)
    A = np.vstack([np.ones(N), rng.normal(size=N)])
    theta = rng.normal(0, 3, (Q, 2)) + 5
    Y = X @ (theta @ A + rng.normal(0, 1.0, (Q, N))) + rng.normal(0, 0.02, (P, N))
    return Y, A


def test_fit_warns_where_its_estimate_is_not_unique():
    """Data whose basis is off every bound (Dirichlet(5) columns) fitted with sign-free Theta: the
    fitted X has no entry at 0 (smallest 2e-3 when this test was written), and the fit warns
    NonUniqueEstimateWarning. The rotation in its message is real: at ``X R``, ``R' Theta`` the
    dense Gaussian nll is the reported one. Data with anchor rows (their fitted X has entries at
    0) get no such warning."""
    Y, A = _fit_data(3, anchors=False)
    with pytest.warns(nmfre.NonUniqueEstimateWarning, match="not unique"):
        fit = nmfre.fit(Y, A, rank=3)
    s = fit.solution
    free = rotation.free_rotation(s.X, s.theta, nonneg=False)
    assert free is not None and (s.X @ free.R).min() >= -1e-14
    rotated = direct_nll(Y, s.X @ free.R, free.R.T @ s.theta, A, s.sigma2, s.tau2)
    assert rotated == pytest.approx(-fit.loglik, rel=1e-10)
    assert np.abs(s.X @ s.theta - (s.X @ free.R) @ (free.R.T @ s.theta)).max() < 1e-12 * np.abs(s.theta).max()
    Y, A = _fit_data(0, anchors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", nmfre.NonUniqueEstimateWarning)
        fit = nmfre.fit(Y, A, rank=3)
    assert (fit.solution.X <= 0).any()
