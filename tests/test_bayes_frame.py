"""Free Theta sampled on orthonormal covariates (``theta_frame``): the same posterior as on the
given covariates, exactly (densities, starting values, reported draws, log-likelihood).

All deterministic: no draws beyond fixed data and fixed evaluation points.
"""

import jax
import numpy as np
import pytest
from helpers import rank2, seed
from numpyro.infer.util import log_density

import bayes
import nmfre
from bayes import compiled, models, postprocess
from bayes.likelihood import statistics
from bayes.spec import model_spec
from nmfre.core.covariates import Frame


@pytest.fixture(scope="module")
def data():
    """rank-2 data with the covariate moved to ``3 + x`` (uncentred, still exact arithmetic)."""
    Y, A, _, _ = rank2(seed=3, N=60, P=6)
    A = A.copy()
    A[1] = 3.0 + A[1]
    return Y, A


def _points(rng, P, Q, K, n=4):
    for _ in range(n):
        yield {"X_columns": rng.dirichlet(np.ones(P), Q), "theta": rng.normal(0.0, 5.0, (Q, K)),
               "sigma": rng.uniform(0.5, 2.0), "tau": rng.uniform(0.5, 5.0)}


@pytest.mark.parametrize("model", ["joint", "conditional_x", "conditional", "conditional_flat"])
def test_density_on_the_frame_is_the_given_density_times_a_constant(data, model):
    """``theta_frame = Theta T`` has density ``p(Theta) |det T|^-Q`` under the prior that
    ``Theta ~ Normal(0, s)`` implies, and the likelihood on ``T^-1 A`` at ``Theta T`` is that on
    ``A`` at ``Theta``: the log densities differ by ``-Q log |det T|`` (0 with a flat prior) at
    every point. Fails if the frame's prior were the given one unchanged (the difference would
    vary with Theta), or the likelihood used Theta instead of Theta T."""
    Y, A = data
    Q, K = 2, A.shape[0]
    fr = Frame.of(A)
    priors = {**bayes.default_priors(Y, Q), "theta_scale": 7.0}
    const = 0.0 if model == "conditional_flat" else -Q * np.log(abs(np.linalg.det(fr.T)))
    rng = np.random.default_rng(0)
    diffs = []
    with jax.enable_x64(True):
        for pt in _points(rng, Y.shape[0], Q, K):
            X = pt["X_columns"].T
            if model == "joint":
                fn, args, kw = models.joint, (Q,), {"priors": priors}
                given = dict(pt)
            elif model == "conditional_x":
                fn, args, kw = models.conditional_x, (X,), {"priors": priors}
                given = {k: pt[k] for k in ("theta", "sigma", "tau")}
            else:
                fn, args = models.conditional, (X, pt["sigma"] ** 2, pt["tau"] ** 2)
                kw = {"priors": None if model == "conditional_flat" else {"theta_scale": 7.0}}
                given = {"theta": pt["theta"]}
            on_frame = {**{k: x for k, x in given.items() if k != "theta"}, "theta_frame": pt["theta"] @ fr.T}
            a, _ = log_density(fn, (Y, A) + args, kw, given)
            b, tr = log_density(fn, (Y, fr.A) + args, {**kw, "frame": fr.T}, on_frame)
            np.testing.assert_allclose(np.asarray(tr["theta"]["value"]), pt["theta"], rtol=1e-12, atol=1e-12)
            diffs.append(float(b) - float(a))
    np.testing.assert_allclose(diffs, const, rtol=0, atol=1e-8 * max(1.0, abs(const)))


def test_prior_on_the_frame_is_exact_for_a_covariate_of_unix_times():
    """A covariate of Unix times (about 1.65e9, sd 2.9e7; nmfre fits it: cond(A) 9e10): the
    frame's log prior at ``theta_frame = Theta T`` is ``log N(Theta; 0, s) - Q log |det T|``, the
    likelihood part that of the frame's statistics. Relative 1e-9 where a prior from
    ``cholesky(T'T)`` (the first version) was NaN: that squares T's condition number."""
    from scipy.stats import norm

    from bayes.likelihood import loglik

    rng = np.random.default_rng(5)
    N, P, Q = 40, 5, 2
    A = np.vstack([np.ones(N), 1.65e9 + 2.9e7 * rng.standard_normal(N)])
    Y = rng.uniform(1.0, 3.0, (P, N))
    fr = Frame.of(A)
    X = rng.dirichlet(np.ones(P), Q).T
    s2, t2, scale = 0.7, 1.3, 10.0
    with jax.enable_x64(True):
        for _ in range(3):
            theta = np.column_stack([rng.normal(0.0, 5.0, Q), rng.normal(0.0, 5.0, Q) * 1e-8])
            theta_o = theta @ fr.T
            got, tr = log_density(models.conditional, (Y, fr.A, X, s2, t2), {"priors": {"theta_scale": scale},
                                                                            "frame": fr.T}, {"theta_frame": theta_o})
            np.testing.assert_allclose(np.asarray(tr["theta"]["value"]), theta, rtol=1e-6, atol=1e-12)
            prior = norm.logpdf(theta, 0.0, scale).sum() - Q * np.log(np.abs(np.diag(fr.T))).sum()
            like = float(loglik(statistics(Y, fr.A), X, theta_o, s2, t2))
            assert np.isfinite(float(got))
            np.testing.assert_allclose(float(got), prior + like, rtol=1e-9)


def test_frame_is_refused_where_it_does_not_apply(data):
    Y, A = data
    X = np.full((Y.shape[0], 2), 1.0 / Y.shape[0])
    T = Frame.of(A).T
    with jax.enable_x64(True):
        with pytest.raises(ValueError, match="free Theta"):
            log_density(models.conditional_x, (Y, A, X), {"nonneg": True, "frame": T}, {})
        with pytest.raises(ValueError, match="direct"):
            log_density(models.joint, (Y, A, 2), {"theta_coords": "marginal", "frame": T}, {})
    with pytest.raises(ValueError, match="theta='free'"):
        model_spec(Y, A, 2, "joint", theta="nonneg", frame=True)


def test_sampler_uses_the_frame_for_free_theta_in_direct_coordinates():
    on = [bayes.Sampler("joint", 2, 6, None, 2).settings.frame,
          bayes.Sampler("conditional_x", 2, 6, None, 2).settings.frame,
          bayes.Sampler("conditional", 2, 6, None, 2).settings.frame]
    off = [bayes.Sampler("joint", 2, 6, None, 2, theta="nonneg").settings.frame,
           bayes.Sampler("joint", 2, 6, None, 2, theta_coords="marginal", kernel="nuts").settings.frame,
           bayes.Sampler("joint", 2, 6, None, 2, theta_coords="conditional", kernel="nuts").settings.frame]
    assert on == [True] * 3 and off == [False] * 3
    assert bayes.Sampler("joint", 2, 6, None, 2, frame=False).settings.frame is False
    with pytest.raises(ValueError, match="frame=True is for free Theta"):
        bayes.Sampler("joint", 2, 6, None, 2, theta="nonneg", frame=True)
    with pytest.raises(ValueError, match="frame=True is for free Theta"):
        bayes.Sampler("joint", 2, 6, None, 2, theta_coords="marginal", kernel="nuts", frame=True)
    with pytest.raises(TypeError, match="frame"):
        bayes.Sampler("joint", 2, 6, None, 2, frame="yes")


def test_a_spec_without_the_frame_is_refused_by_a_sampler_on_it(data):
    """A spec built by ``model_spec`` without ``frame`` given to a sampler that samples on the
    frame (and the reverse): a clear error, where the traced arguments were misread before."""
    Y, A = data
    fit = nmfre.fit(Y, A, rank=2, theta="free")
    on, off = (bayes.Sampler("joint", 2, Y.shape[0], None, A.shape[0], frame=f) for f in (True, False))
    with pytest.raises(ValueError, match="built without the covariates' frame"):
        on.settings_for(model_spec(Y, A, 2, "joint", fit=fit))
    with pytest.raises(ValueError, match="built with the covariates' frame"):
        off.settings_for(model_spec(Y, A, 2, "joint", fit=fit, frame=True))
    assert on.settings_for(on.spec(Y, A, fit=fit)).frame


def test_spec_start_and_reported_draws_on_the_given_covariates(data):
    """The spec's statistics are those of ``T^-1 A`` and its arguments end with ``T``; the start
    (the fit's Theta) becomes ``theta_frame = Theta T`` and the constrained draw reports it back
    as ``theta``; the per-draw log-likelihood equals the one on the given covariates."""
    Y, A = data
    fit = nmfre.fit(Y, A, rank=2, theta="free")
    spec = model_spec(Y, A, 2, "joint", fit=fit, frame=True)
    plain = model_spec(Y, A, 2, "joint", fit=fit)
    fr = Frame.of(A)
    np.testing.assert_array_equal(spec.args[-1], fr.T)
    np.testing.assert_array_equal(spec.frame, fr.T)
    assert len(plain.args) == 2 and plain.frame is None
    for got, want in zip(spec.stats, statistics(Y, fr.A), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-12)
    s = bayes.Sampler("joint", 2, Y.shape[0], None, A.shape[0]).settings_for(spec)
    with jax.enable_x64(True):
        start = compiled._coordinates(s, spec.init, spec.args)
        assert "theta" not in start
        np.testing.assert_allclose(start["theta_frame"], spec.init["theta"] @ fr.T, rtol=1e-13)
        _, unravel, z0 = compiled.potential(s, spec.init, spec.args)
        draws, _ = compiled._constrain(s, spec.args, unravel, z0[None, None])
    assert "theta_frame" not in draws
    np.testing.assert_allclose(np.asarray(draws["theta"])[0, 0], spec.init["theta"], rtol=1e-10, atol=1e-10)
    d = {k: np.asarray(x) for k, x in draws.items()}
    ll_frame = postprocess.draw_loglik(spec, d)
    ll_given = postprocess.draw_loglik(plain, d)
    np.testing.assert_allclose(ll_frame, ll_given, rtol=1e-11)


@pytest.mark.filterwarnings("ignore:sampler diagnostics")  # 2 x 50 draws: the layout, not the mixing
def test_posterior_reports_theta_on_the_given_covariates_and_records_the_frame(orthodont, ml_fit):
    """A short run: ``theta`` (component x covariate, the given labels) and no ``theta_frame``
    in the posterior; ``sampler_settings`` says Theta was sampled on orthonormal covariates."""
    Y, A = orthodont
    post = bayes.sample(Y, A, 1, model="conditional_x", fit=ml_fit, num_warmup=50, num_samples=50,
                        num_chains=2, seed=0)
    assert "theta_frame" not in post.posterior
    assert post.posterior["theta"].dims == ("chain", "draw", "component", "covariate")
    assert list(post.posterior["covariate"].values) == list(ml_fit.theta.coords["covariate"].values)
    assert "'theta_frame': 'orthonormal covariates'" in post["posterior"].attrs["sampler_settings"]
    given = bayes.sample(Y, A, 1, model="conditional_x", fit=ml_fit, num_warmup=50, num_samples=50, num_chains=2,
                         seed=0, frame=False)
    assert "theta_frame" not in given["posterior"].attrs["sampler_settings"]
    nonneg = bayes.sample(Y, A, 1, model="conditional_x", fit=nmfre.fit(Y, A, rank=1, theta="nonneg"),
                          theta="nonneg", num_warmup=50, num_samples=50, num_chains=2, seed=0)
    assert "theta_frame" not in nonneg["posterior"].attrs["sampler_settings"]


def test_the_variational_twin_of_an_uncentred_covariate_is_the_centred_ones():
    """``fit_vi`` (DADVI: a fixed-draw objective, optimised to SciPy's tolerance) with the
    covariate at ``c = 1000`` against ``c = 0``: the slopes' posterior sds within 5% (measured
    0.4%) with the prior's scale large enough not to bind at either (the given covariates'
    intercepts grow with ``c``). Before the guide was fitted on the frame they were 170 times too
    small, without a warning. The variational group stays labelled by Theta's own coordinates."""
    from nmfre.simulate import block_sparse

    d = block_sparse(P=20, N=300, rank=2, K=2, seed=11)
    Y, A0 = d["Y"], np.asarray(d["A"], float)
    z = (A0[1] - A0[1].mean()) / A0[1].std()
    priors = {**bayes.default_priors(np.asarray(Y), 2)}
    priors["theta_scale"] *= 100
    sds = {}
    for c in (0.0, 1000.0):
        A = np.vstack([A0[0], c + z])
        q = bayes.fit_vi(Y, A, 2, fit=nmfre.fit(Y, A, rank=2, theta="free"), priors=priors, method="dadvi",
                         seed=seed(5))  # the same fixed draws at both c: a paired comparison
        sds[c] = q["posterior"]["theta"].isel(covariate=1).std(("chain", "draw")).values
        assert "theta[1,1]" in q["variational"]["unconstrained"].values.tolist()
        assert "theta_frame" not in q["variational"]["site"].values.tolist()
    np.testing.assert_allclose(sds[1000.0], sds[0.0], rtol=0.05)
