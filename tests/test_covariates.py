"""Sign-free ML on orthonormal covariates (nmfre.core.covariates): the frame's algebra, and fits
that do not depend on how the covariates are coded (an uncentred covariate ``c + x``)."""

import warnings

import numpy as np
import pytest

import nmfre
from nmfre import engine
from nmfre.core.covariates import Frame
from nmfre.settings import FitSettings


def _data(seed: int = 1, P: int = 30, N: int = 200, Q: int = 2):
    """Y from the model with covariates ``[1; x]`` and sign-free Theta (sd 0.05 noise and
    random effects), and ``x``."""
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.full(P, 0.3), size=Q).T
    x = rng.normal(size=N)
    theta = rng.normal(size=(Q, 2)) * 3 + np.array([[5.0, 0.0]])
    U = rng.normal(scale=0.05, size=(Q, N))
    Y = X @ (theta @ np.vstack([np.ones(N), x]) + U) + rng.normal(scale=0.05, size=(P, N))
    return Y, x


def test_the_frame_is_orthonormal_and_reproduces_the_covariates():
    rng = np.random.default_rng(0)
    N = 50
    x = rng.normal(size=N)
    A = np.vstack([np.ones(N), 1e4 + x, rng.random(N)])
    f = Frame.of(A)
    np.testing.assert_allclose(f.A @ f.A.T / N, np.eye(3), atol=1e-14)
    np.testing.assert_allclose(f.T @ f.A, A, rtol=0, atol=1e-15 * np.abs(A).max() * N)
    assert np.all(np.triu(f.T, 1) == 0) and np.all(np.diag(f.T) > 0)
    # an intercept and one covariate: the intercept and the standardised covariate
    g = Frame.of(A[:2])
    np.testing.assert_allclose(g.A[0], 1.0, atol=1e-12)
    np.testing.assert_allclose(g.A[1], (x - x.mean()) / x.std(), atol=1e-9)
    theta = rng.normal(size=(2, 3))
    np.testing.assert_allclose(f.outward(f.inward(theta)), theta, atol=1e-10)
    np.testing.assert_allclose(f.inward(theta) @ f.A, theta @ A, rtol=1e-12, atol=1e-12 * np.abs(theta @ A).max())
    assert f.inward(None) is None


def test_only_sign_free_ml_gets_a_frame():
    A = np.vstack([np.ones(5), np.arange(5.0)])
    assert engine.covariate_frame(A, FitSettings.create()) is not None
    assert engine.covariate_frame(A, FitSettings.create(theta="nonneg")) is None
    assert engine.covariate_frame(A, FitSettings.create(method="paper", df_cap=0.2)) is None


def _fit(Y, A):
    with warnings.catch_warnings():
        warnings.simplefilter("error", nmfre.ConvergenceWarning)
        return nmfre.fit(Y, A, rank=2, theta="free", seed=1)


@pytest.mark.parametrize("c", [1e3, 1e5])
def test_an_uncentred_covariate_gives_the_fit_of_the_centred_one(c):
    # before the frame, c = 1e3 ran to max_iter = 5000 a whole unit of nll above the optimum
    # (c = 1e5 likewise; c = 1e6 stalled 1.3 above it): the statistics A A' and Y A' and the
    # effects (an intercept near -c times the slope) cancelled to eps c^2 (scale.md, thirty-seventh round)
    Y, x = _data()
    base = _fit(Y, np.vstack([np.ones(x.size), x]))
    fit = _fit(Y, np.vstack([np.ones(x.size), c + x]))
    b, s = base.solution, fit.solution
    assert s.converged and b.converged
    assert abs(s.nll - b.nll) <= 1e-10 * (1 + abs(b.nll))  # the stopping tolerance: measured <= 6e-13 relative
    assert abs(s.n_iter - b.n_iter) <= 2
    np.testing.assert_allclose(s.theta[:, 1], b.theta[:, 1], rtol=1e-6)  # the slopes
    # the intercepts on x are the intercepts on c + x plus c times the slopes
    np.testing.assert_allclose(s.theta[:, 0] + c * s.theta[:, 1], b.theta[:, 0], rtol=1e-6)
    np.testing.assert_allclose(s.X, b.X, atol=1e-6)
    np.testing.assert_allclose(s.U, b.U, atol=1e-6 * np.abs(b.U).max())


@pytest.mark.parametrize("seed", [4, 7])
def test_a_sign_free_fit_is_equivariant_under_recoded_covariates(seed):
    # A -> M A with Theta -> Theta M^-1: the frame's covariates differ by a rotation at most, so
    # the iterations are the same up to rounding (measured: the same counts on seeds 1, 4, 7,
    # 10 and 11, one apart on seed 5; nll to 2e-16 relative, Theta to 6e-9 of its largest entry)
    Y, x = _data(seed=seed)
    N = x.size
    A = np.vstack([np.ones(N), x, np.random.default_rng(1).random(N)])
    M = np.array([[2.0, 0.5, -1.0], [0.3, -1.5, 0.2], [1.0, 0.0, 3.0]])
    a, b = _fit(Y, A).solution, _fit(Y, M @ A).solution
    assert a.converged and b.converged and abs(a.n_iter - b.n_iter) <= 1
    assert abs(a.nll - b.nll) <= 1e-12 * abs(a.nll)
    np.testing.assert_allclose(b.theta @ M, a.theta, rtol=0, atol=1e-6 * np.abs(a.theta).max())


def test_the_refit_bootstrap_of_an_uncentred_covariate_gives_the_centred_ones_slopes():
    # Rademacher multipliers at seed 7's data: every refit converges at both codings (measured:
    # the slopes agree to 1.5e-9 of the largest); Exp(1) - 1 multipliers on seed 1's data send some
    # refits to a degenerate configuration or along a flat direction, where Theta is not an estimate
    Y, x = _data(seed=7)
    W = np.random.default_rng(5).choice([-1.0, 1.0], size=(x.size, 8))
    draws = {}
    for c in (0.0, 1e4):
        inf = _fit(Y, np.vstack([np.ones(x.size), c + x])).infer(method="refit", multipliers=W)
        assert inf.attrs["n_boot"] == 8  # every refit converged
        draws[c] = inf.draws.isel(covariate=1).values
    np.testing.assert_allclose(draws[1e4], draws[0.0], rtol=0, atol=1e-6 * np.abs(draws[0.0]).max())


@pytest.mark.parametrize(("vcov", "df", "ci"), [("CR1", None, "percentile"), ("CR2", "satterthwaite", "studentized")])
def test_inference_on_an_uncentred_covariate_is_the_centred_ones(vcov, df, ci):
    """``fit.infer`` at ``c = 1e6`` against ``c = 0`` with the same multipliers: the slopes' SEs,
    model-based SEs, Satterthwaite df, one-step draws and intervals equal, and every covariance is
    the exact reparametrisation ``L V L'`` (``vec(Theta_c) = L vec(Theta_0)``, ``L = S^-T (x) I``
    for ``A_c = S A_0``), to 1e-8 relative (measured 5e-12 to 1.5e-10). Before the inference ran
    on the fit's orthonormal covariates it formed the information on the given ones, whose
    condition grows as ``c^2``: here the slopes' SEs were 3.8e-2 off, model-based 1.8e-2, the
    intervals 1.4e-3 and the df 1.1e-3 (on Orthodont the model-based SE 1% at ``c = 1e6``, 44% at
    ``1e7``)."""
    Y, x = _data(seed=7)
    N, c = x.size, 1e6
    W = np.random.default_rng(5).choice([-1.0, 1.0], size=(N, 200))
    out = {}
    for shift in (0.0, c):
        fit = _fit(Y, np.vstack([np.ones(N), shift + x]))
        with warnings.catch_warnings():
            warnings.simplefilter("error", nmfre.IllConditionedWarning)
            out[shift] = fit.infer(multipliers=W, vcov=vcov, df=df, ci=ci).dataset
    a, b = out[0.0], out[c]
    for name in ("se", "se_model", "df", "ci", "ci_wald"):
        np.testing.assert_allclose(b[name].isel(covariate=1), a[name].isel(covariate=1), rtol=1e-8)
    np.testing.assert_allclose(b["draws"].isel(covariate=1), a["draws"].isel(covariate=1), rtol=0,
                               atol=1e-8 * float(np.abs(a["draws"].isel(covariate=1)).max()))
    L = np.kron(np.linalg.inv(np.array([[1.0, 0.0], [c, 1.0]])).T, np.eye(2))
    for name in ("cov", "cov_model"):
        want = L @ a[name].values @ L.T
        np.testing.assert_allclose(b[name].values, want, rtol=1e-8, atol=1e-8 * np.abs(want).max())


@pytest.mark.parametrize("c", [1e3, 1e4])
def test_the_profile_likelihood_of_an_uncentred_covariate_is_the_centred_ones(c):
    # the profile's (and the likelihood-ratio tests') own maximisation on the given covariates (its
    # ridge of 1e-12 of the mean diagonal of kron(AA', X'WX) as large as AA's smallest eigenvalue,
    # ~N / c^2) found a maximum
    # 321 below the fit's at c = 1e3 and a slope interval 16 times too wide (x="fixed"; x="free":
    # 277 below, slopes 0.59 and -0.37 for 1.19 and -0.84); on the frame the held entry of Theta
    # is a linear constraint (profile.Likelihood._constrained)
    Y, x = _data(seed=7)
    out = {}
    for shift in (0.0, c):
        fit = _fit(Y, np.vstack([np.ones(x.size), shift + x]))
        comps, covs = fit.theta.coords["component"].values, fit.theta.coords["covariate"].values
        pr = fit.profile(params=[(comps[0], covs[1]), (comps[1], covs[0])], x="fixed")
        assert abs(pr.attrs["loglik"] - fit.loglik) <= 1e-10 * abs(fit.loglik)
        # the test of tau2 = 0 maximises with X free; at tol=1e-10 its statistic moved by 7e-5
        # relative between codings (2.3282-2.3284: where the null maximisation stopped)
        out[shift] = pr["ci"].values, pr["estimate"].values, nmfre.lrt_tau2(fit, tol=1e-13).statistic
    ci0, est0, lr0 = out[0.0]
    ci, est, lr = out[c]
    np.testing.assert_allclose(ci[:, 0, 1], ci0[:, 0, 1], rtol=1e-7)  # a slope: the same interval
    np.testing.assert_allclose(est[:, 1], est0[:, 1], rtol=1e-7)
    # an intercept on c + x is the intercept on x less c times the slope: its interval is
    # another one, but the estimate maps exactly
    np.testing.assert_allclose(est[:, 0] + c * est[:, 1], est0[:, 0], rtol=1e-6)
    assert np.all(np.isfinite(ci[:, 1, 0])) and ci[0, 1, 0] < est[1, 0] < ci[1, 1, 0]
    # before the frame: 1243 at c = 1e3 and 4707 at c = 1e4 (p = 1e-272 and 0) for 2.33 (p = 0.064)
    np.testing.assert_allclose(lr, lr0, rtol=1e-5)


@pytest.mark.parametrize("form", ["missing", "sparse", "dask"])
def test_an_uncentred_covariate_gives_the_centred_fit_for_every_form_of_y(form):
    # the frame's statistics for each kind of Y: per-pattern blocks (missing values), the sparse
    # products, dask's one pass (engine.ml_stats). Before the frame (abbf6ea) all three stalled at
    # c = 1e4: 580.6 above c = 0's nll with missing values (25 iterations for 10), 0.050 sparse
    # (405 for 14), 0.067 dask (23 for 9)
    Y, x = _data(seed=4)
    if form == "missing":
        Y = Y.copy()
        Y[np.random.default_rng(2).random(Y.shape) < 0.05] = np.nan
    elif form == "sparse":
        import scipy.sparse as sp

        Y = sp.csr_matrix(np.maximum(Y, 0.0))
    else:
        import dask.array as da

        Y = da.from_array(Y, chunks=(Y.shape[0], 50))
    fits = [_fit(Y, np.vstack([np.ones(x.size), c + x])).solution for c in (0.0, 1e4)]
    a, b = fits
    assert a.converged and b.converged and abs(a.n_iter - b.n_iter) <= 1
    assert abs(a.nll - b.nll) <= 1e-10 * (1 + abs(a.nll))
    np.testing.assert_allclose(b.theta[:, 1], a.theta[:, 1], rtol=1e-6)
