"""How far the prior on Theta moves its posterior (``bayes.prior_shift``): closed forms on fixed
data, and the warning before sampling where an uncentred covariate makes the prior decide.

All deterministic: fixed data and evaluation points, no draws. The warnings' tests use ML fits,
whose paths may differ between machines; their shifts are 2e-3 or less and over 1 (the threshold
is 0.1), far from where such differences matter.
"""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
from helpers import rank2

import bayes
import nmfre
from bayes import sampling, vi
from bayes.likelihood import statistics
from bayes.prior_shift import PRIOR_SHIFT_MAX, PriorWarning, theta_prior_shift, warn_prior_shift
from bayes.spec import _start_fit, model_spec
from nmfre.core.covariates import Frame


def _point(seed: int, P: int = 6, N: int = 40, Q: int = 2, K: int = 3):
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.ones(P), Q).T
    A = np.vstack([np.ones(N), 50.0 + rng.normal(size=N), rng.integers(0, 2, N)])[:K]
    theta = rng.normal(0.0, 20.0, (Q, K))
    Y = X @ (theta @ A + rng.normal(0.0, 1.0, (Q, N))) + rng.normal(0.0, 0.1, (P, N))
    return Y, A, X, 0.01, 1.0


def _dense_shift(Y, A, X, sigma2, tau2, scale):
    """The same move from the definition, unit by unit: ``y_n ~ N((a_n' kron X) vec Theta, Sigma_n)``
    over the observed rows, ``Sigma_n = sigma2 I + tau2 X_O X_O'``; the posterior under ``vec Theta ~
    N(0, scale^2 I)`` against the flat one."""
    Q, K = X.shape[1], A.shape[0]
    H = np.zeros((Q * K, Q * K))
    g = np.zeros(Q * K)
    for n in range(Y.shape[1]):
        o = ~np.isnan(Y[:, n])
        D = np.kron(A[:, n][None, :], X[o])  # mean of y_n[o] = D vec(Theta), vec column-major
        Si = np.linalg.inv(sigma2 * np.eye(o.sum()) + tau2 * X[o] @ X[o].T)
        H += D.T @ Si @ D
        g += D.T @ Si @ Y[o, n]
    m0 = np.linalg.solve(H, g)
    Pp = H + np.eye(Q * K) / scale**2
    ms = np.linalg.solve(Pp, g)
    return ((ms - m0) / np.sqrt(np.diag(np.linalg.inv(Pp)))).reshape(K, Q).T


@pytest.mark.parametrize("missing", [False, True])
def test_the_shift_is_the_move_of_the_gaussian_conditional_mean(missing):
    """Against the unit-by-unit Gaussian posterior with and without the prior (1e-8 relative), with
    complete data and with cells missing (the statistics' patterns); at a scale where the shifts
    are of order 1, so the comparison is not of two small numbers."""
    Y, A, X, s2, t2 = _point(1)
    if missing:
        rng = np.random.default_rng(5)
        Y = np.where(rng.random(Y.shape) < 0.15, np.nan, Y)
    scale = 5.0
    z = theta_prior_shift(statistics(Y, A), X, s2, t2, scale)
    ref = _dense_shift(Y, A, X, s2, t2, scale)
    assert z.shape == (2, 3)
    assert np.max(np.abs(ref)) > 0.5  # the prior binds here (the covariate's mean is 50)
    np.testing.assert_allclose(z, ref, rtol=1e-8, atol=1e-12)


def test_the_shift_in_one_dimension_is_its_closed_form():
    """Q = K = 1 (a single effect ``theta`` with precision ``h``): the move is ``-m0 / (1 + s^2 h)``
    and the posterior sd ``(h + 1 / s^2)^-1/2``, towards 0."""
    Y, A, X, s2, t2 = _point(2, Q=1, K=1)
    scale = 2.0
    x = X[:, 0]
    c = 1.0 + t2 / s2 * x @ x
    h = A[0] @ A[0] * (x @ x) / c / s2
    m0 = (x @ Y @ A[0]) / c / s2 / h
    want = -m0 / (1.0 + scale**2 * h) * np.sqrt(h + 1.0 / scale**2)
    z = theta_prior_shift(statistics(Y, A), X, s2, t2, scale)
    np.testing.assert_allclose(z[0, 0], want, rtol=1e-10)
    assert np.sign(z[0, 0]) == -np.sign(m0)


def test_the_shift_on_the_frame_is_the_shift_on_the_given_covariates():
    """Statistics of ``(Y, T^-1 A)`` with ``T`` give the shifts on the given covariates (1e-9)."""
    Y, A, X, s2, t2 = _point(3)
    fr = Frame.of(A)
    z = theta_prior_shift(statistics(Y, A), X, s2, t2, 30.0)
    zf = theta_prior_shift(statistics(Y, fr.A), X, s2, t2, 30.0, fr.T)
    np.testing.assert_allclose(zf, z, rtol=1e-9, atol=1e-12)


def test_a_singular_precision_gives_no_shift():
    """Two identical covariates: the data alone do not identify Theta, no shift is claimed."""
    Y, A, X, s2, t2 = _point(4)
    A = np.vstack([A, A[1]])
    assert theta_prior_shift(statistics(Y, A), X, s2, t2, 30.0) is None


def _spec(z, name="joint", mean=1000.0, constant=1.0):
    theta = xr.DataArray(np.full((2, 3), 1500.0), dims=("component", "covariate"),
                         coords={"component": ["Basis1", "Basis2"], "covariate": ["(Intercept)", "age", "sex"]})
    rng = np.random.default_rng(0)
    A = np.vstack([np.full(50, constant), mean + rng.normal(size=50), rng.integers(0, 2, 50)])
    return SimpleNamespace(prior_shift=z, fit=SimpleNamespace(theta=theta, theta_kind="nonneg"),
                           priors={"theta_scale": 200.0}, name=name, data=SimpleNamespace(A=A))


def test_the_warning_names_the_entries_the_prior_moves():
    """Entries above the threshold, largest first, with their shifts; the others not named; the
    uncentred covariate named with its mean in sds; the joint model's caveat."""
    z = np.array([[-2.5, 0.05, 0.0], [0.3, -0.099, 0.0]])
    with pytest.warns(PriorWarning) as rec:
        out = warn_prior_shift(_spec(z), "data set 3: ")
    assert out is z
    msg = str(rec[0].message)
    assert msg.startswith("data set 3: the prior Theta ~ Normal(0, 200) moves the posterior mean of "
                          "theta[Basis1, (Intercept)] by -2.5, theta[Basis2, (Intercept)] by +0.3 posterior sds")
    assert "Basis1, age" not in msg and "sex" not in msg and "-0.099" not in msg
    assert "given the X, sigma and tau the chains start from" in msg and "joint posterior" in msg
    ratio = np.abs(_spec(z).data.A[1].mean()) / _spec(z).data.A[1].std()
    assert f"Uncentred covariates make intercepts far from 0: age (mean {ratio:.3g} sds from 0)" in msg
    assert rec[0].filename == __file__  # points at the caller outside bayes


@pytest.mark.parametrize("name", ["conditional_x", "conditional"])
def test_the_warning_says_what_the_shift_is_conditional_on(name):
    """The conditional models: no joint-posterior caveat; a centred covariate gets the general advice,
    and a row constant to rounding (0.1, sd 1e-17) is not called uncentred."""
    with pytest.warns(PriorWarning) as rec:
        warn_prior_shift(_spec(np.full((2, 3), 0.5), name, mean=0.0, constant=0.1))
    msg = str(rec[0].message)
    assert "joint posterior" not in msg and "Uncentred" not in msg
    assert ("fit's X, sigma and tau, as the model holds them" in msg) == (name == "conditional")
    assert msg.endswith("Give priors={'theta_scale': ...} above the effects you expect, if the data should decide them")


def test_no_warning_below_the_threshold_or_without_a_prior(recwarn):
    warn_prior_shift(_spec(np.full((2, 3), PRIOR_SHIFT_MAX * 0.99)))
    assert warn_prior_shift(_spec(None)) is None
    assert not [w for w in recwarn if issubclass(w.category, PriorWarning)]


@pytest.fixture(scope="module")
def uncentred():
    """rank-2 data with the covariate at ``c + x``: ``c`` = 0 and 1000, with their ML fits."""
    Y, A, _, _ = rank2(seed=3, N=120, P=6)
    out = {}
    for c in (0.0, 1000.0):
        Ac = A.copy()
        Ac[1] = c + (A[1] - A[1].mean()) / A[1].std()
        out[c] = (Y, Ac, nmfre.fit(Y, Ac, rank=2))
    return out


@pytest.mark.parametrize("model", ["joint", "conditional_x"])
def test_an_uncentred_covariate_makes_the_default_prior_decide(uncentred, model):
    """The default prior (``10 P rms(Y)``) at ``c = 0`` moves no entry by 2e-3 posterior sds; at
    ``c = 1000`` it moves an intercept (about ``-1000`` times its slope) by more than 1."""
    for c, small in ((0.0, True), (1000.0, False)):
        Y, A, fit = uncentred[c]
        spec = model_spec(Y, A, 2, model, fit, frame=True)
        z = np.abs(spec.prior_shift)
        if small:
            assert z.max() < 2e-3
        else:
            assert z[:, 0].max() > 1.0


def test_the_spec_takes_the_shift_at_the_point_the_model_uses(uncentred):
    """Against the unit-by-unit posterior (1e-7) at the fit's X with its variances (joint,
    ``conditional_x``) or with the ``sigma2_used`` the conditional model holds (and ``tau2 =
    sigma2_used / lambda``); with the frame and without."""
    Y, A, fit = uncentred[1000.0]
    X, lam = fit.solution.X, fit.lam
    scale = model_spec(Y, A, 2, "joint", fit).priors["theta_scale"]
    joint = _dense_shift(Y, A, X, float(fit.sigma2), float(fit.tau2), scale)
    for model, frame in (("joint", True), ("joint", False), ("conditional_x", True)):
        np.testing.assert_allclose(model_spec(Y, A, 2, model, fit, frame=frame).prior_shift, joint, rtol=1e-7)
    spec = model_spec(Y, A, 2, "conditional", fit, priors={"theta_scale": 50.0}, frame=True)
    s2 = spec.sigma2_fixed
    assert abs(s2 - float(fit.sigma2)) > 1e-6 * s2  # the conditional model's own sigma2
    np.testing.assert_allclose(spec.prior_shift, _dense_shift(Y, A, X, s2, s2 / lam, 50.0), rtol=1e-7)
    assert model_spec(Y, A, 2, "conditional", fit).prior_shift is None  # flat by default


def test_the_joint_shift_is_taken_where_the_chains_start():
    """A degenerate sign-free fit (Orthodont, rank 2: max |Theta| about 6e4) is not where the joint
    model's chains start (the non-negative fit is, ``bayes.spec._start_fit``): the shift is the
    one there (1e-9), not the one at the degenerate fit (over 1)."""
    import nmfre.exceptions

    Y, A = nmfre.load_orthodont()
    Y, A = np.asarray(Y, float), np.asarray(A, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmfre.exceptions.DegenerateFitWarning)
        fit = nmfre.fit(Y, A, rank=2)
        spec = model_spec(Y, A, 2, "joint", fit, frame=True)
        start = _start_fit("joint", fit, spec.data, 2, "free")
    assert start is not fit
    scale = spec.priors["theta_scale"]
    at_start = theta_prior_shift(statistics(Y, A), start.solution.X, float(start.sigma2), float(start.tau2), scale)
    at_fit = theta_prior_shift(statistics(Y, A), fit.solution.X, float(fit.sigma2), float(fit.tau2), scale)
    np.testing.assert_allclose(spec.prior_shift, at_start, rtol=1e-9)
    assert np.abs(at_start).max() < PRIOR_SHIFT_MAX < 1.0 < np.abs(at_fit).max()


def test_non_negative_theta_is_not_checked(uncentred):
    """The Gaussian shift does not describe a truncated posterior: no shift, no warning."""
    Y, A, _ = uncentred[1000.0]
    fit = nmfre.fit(Y, A, rank=2, theta="nonneg")
    for model, priors in (("joint", None), ("conditional_x", None), ("conditional", {"theta_scale": 50.0})):
        spec = model_spec(Y, A, 2, model, fit, "nonneg", priors)
        assert spec.prior_shift is None and warn_prior_shift(spec) is None


def test_a_degenerate_fit_held_fixed_is_named_as_the_cause():
    """``conditional_x`` holds X at the fit: at Orthodont's degenerate rank-2 sign-free fit the data do
    not identify the merging components' effects and the prior decides them (shift over 1); the
    advice names the fit, not the covariates."""
    import nmfre.exceptions

    Y, A = nmfre.load_orthodont()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmfre.exceptions.DegenerateFitWarning)
        fit = nmfre.fit(Y, A, rank=2)
    spec = model_spec(Y, A, 2, "conditional_x", fit, frame=True)
    with pytest.warns(PriorWarning) as rec:
        z = warn_prior_shift(spec)
    assert np.abs(z).max() > 1.0
    msg = str(rec[0].message)
    assert "The fit X is held at is degenerate" in msg and "Uncentred" not in msg


class _Stop(Exception):
    pass


def test_sample_and_fit_vi_warn_before_they_run(uncentred, monkeypatch):
    """The warning comes before the sampler or the guide's fit runs (stopped here), and not with
    ``warn=False``."""
    Y, A, fit = uncentred[1000.0]

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(sampling.Sampler, "run", stop)
    monkeypatch.setattr(vi, "_runner", stop)
    monkeypatch.setattr(sampling.compiled, "batch_runner", stop)
    sampler = sampling.Sampler("joint", 2, Y.shape[0], None, A.shape[0])
    with pytest.warns(PriorWarning, match=r"posterior mean of theta\[Basis1, covariate1\] by [+-]"), \
            pytest.raises(_Stop):
        bayes.sample(Y, A, 2, fit=fit)
    with pytest.warns(PriorWarning), pytest.raises(_Stop):
        bayes.fit_vi(Y, A, 2, fit=fit)
    with pytest.warns(PriorWarning) as rec, pytest.raises(_Stop):
        sampler.sample_batch([(Y, A), (Y, A)], fits=[fit, fit], warn=True)
    assert [str(w.message)[:24] for w in rec] == ["data set 0: the prior Th", "data set 1: the prior Th"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorWarning)
        with pytest.raises(_Stop):
            sampler.sample(Y, A, fit=fit, warn=False)
