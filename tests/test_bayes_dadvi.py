"""bayes.dadvi and ``bayes.fit_vi(method="dadvi")``: deterministic ADVI with linear-response
covariances.

The kernel is checked exactly on a Gaussian target (where the linear-response covariance is
the posterior covariance). The twin is checked against a long ChEES-HMC run on block-sparse
data, where the guide's own covariance understates Theta's sds by more than half."""

import jax
import numpy as np
import pytest
from helpers import record, seed

import bayes
import nmfre
from bayes import dadvi


def _whitened(M, d, rng):
    """``M x d`` draws with mean exactly 0 and covariance exactly I (1/M normalisation)."""
    e = rng.standard_normal((M, d))
    e -= e.mean(0)
    return e @ np.linalg.inv(np.linalg.cholesky(e.T @ e / M)).T


def test_pack_unpack_round_trip():
    rng = np.random.default_rng(0)
    L = np.tril(rng.normal(size=(4, 4)), -1) + np.diag(rng.uniform(0.5, 2, 4))
    mu = rng.normal(size=4)
    with jax.enable_x64(True):
        m2, L2 = dadvi.unpack(jax.numpy.asarray(dadvi.pack(mu, L)), 4)
    np.testing.assert_allclose(m2, mu, rtol=0, atol=1e-15)
    np.testing.assert_allclose(L2, L, rtol=1e-15, atol=1e-15)


def _newton(grad, hess, start, t):
    """Newton's method on ``F(eta) - t' mu`` (smooth here) to a gradient of 1e-12."""
    e = np.asarray(start, float)
    for _ in range(100):
        g = np.asarray(grad(e, t))
        if np.max(np.abs(g)) < 1e-12:
            return e
        e = e - np.linalg.solve(np.asarray(hess(e)), g)
    raise AssertionError("Newton did not converge")


def test_linear_response_is_the_covariance_of_a_gaussian_target():
    """Closed form: for ``pe(z) = (z - m)' S^-1 (z - m) / 2`` and centred fixed draws, the
    DADVI optimum has ``mu = m`` and the linear-response covariance ``[H^-1]_(mu, mu)`` is
    ``S`` exactly (to 1e-9), whatever the draws' spread; with whitened draws also ``L L' = S``.
    Uncentred draws miss ``S`` by O(1 / sqrt(M)) (asserted: more than 1e-3 here), which is why
    :func:`bayes.dadvi.fit` centres them."""
    rng = np.random.default_rng(1)
    d, M = 5, 40
    B = rng.normal(size=(d, d))
    S = B @ B.T + 0.5 * np.eye(d)
    m = rng.normal(size=d)
    raw = rng.standard_normal((M, d))
    cases = {"whitened": _whitened(M, d, rng), "centred": raw - raw.mean(0), "raw": raw}
    with jax.enable_x64(True):
        Si, jm = jax.numpy.asarray(np.linalg.inv(S)), jax.numpy.asarray(m)
        covs = {}
        for name, eps in cases.items():
            F = dadvi.objective(lambda z: 0.5 * (z - jm) @ Si @ (z - jm), jax.numpy.asarray(eps))
            grad = jax.jit(jax.grad(lambda e, t, F=F: F(e) - t @ e[:d]))
            eta = _newton(grad, jax.jit(jax.hessian(F)), dadvi.pack(m, np.linalg.cholesky(S)), np.zeros(d))
            mu, L = (np.asarray(x) for x in dadvi.unpack(jax.numpy.asarray(eta), d))
            H = dadvi.hessian(np.broadcast_to(np.linalg.inv(S), (M, d, d)), L, eps)
            covs[name], wmin = dadvi.linear_response(H, d)
            assert wmin > 0
            if name != "raw":
                np.testing.assert_allclose(mu, m, rtol=0, atol=1e-10)
            if name == "whitened":
                np.testing.assert_allclose(L @ L.T, S, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(covs["whitened"], S, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(covs["centred"], S, rtol=1e-9, atol=1e-9)
    assert np.max(np.abs(covs["raw"] - S)) > 1e-3


def test_linear_response_is_the_response_of_the_mean_to_a_tilt():
    """The definition, on a non-Gaussian target with raw (not whitened) fixed draws, where the
    mean and scale parameters are coupled in ``H``: ``[H^-1]_(mu, mu)`` equals ``d mu* / d t``,
    the optimum's mean under the tilted objective ``F(eta) - t' mu``, by central differences
    of fits re-optimised by Newton's method (agreement 1e-6; taking the (mu, mu) block of H instead of the
    block of its inverse is off by far more here)."""
    rng = np.random.default_rng(2)
    d = 3
    B = rng.normal(size=(d, d))
    S = B @ B.T + 0.5 * np.eye(d)
    m = rng.normal(size=d)
    with jax.enable_x64(True):
        Si, jm = jax.numpy.asarray(np.linalg.inv(S)), jax.numpy.asarray(m)
        eps = rng.standard_normal((20, d))

        def pe(z):
            return 0.5 * (z - jm) @ Si @ (z - jm) + 0.05 * jax.numpy.sum(z**4)

        F = dadvi.objective(pe, jax.numpy.asarray(eps))
        grad = jax.jit(jax.grad(lambda e, t: F(e) - t @ e[:d]))
        hess = jax.jit(jax.hessian(F))

        def optimum(t, start):
            return _newton(grad, hess, start, t)

        eta = optimum(np.zeros(d), dadvi.pack(m, np.linalg.cholesky(S)))
        H_log = np.asarray(jax.hessian(F)(jax.numpy.asarray(eta)))
        mu, L = (np.asarray(x) for x in dadvi.unpack(jax.numpy.asarray(eta), d))
        H = dadvi.hessian(np.asarray(jax.vmap(jax.hessian(pe))(jax.numpy.asarray(mu + eps @ L.T))), L, eps)
        h = 1e-4
        resp = np.column_stack([(optimum(h * e, eta)[:d] - optimum(-h * e, eta)[:d]) / (2 * h) for e in np.eye(d)])
    assert np.max(np.abs(H[d:, :d])) > 0.01  # mean and scale coupled
    for h in (H, H_log):
        cov, wmin = dadvi.linear_response(h, d)
        assert wmin > 0
        np.testing.assert_allclose(cov, resp, rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(np.linalg.inv(H[:d, :d]) - resp)) > 1e-3


def test_assembled_hessian_equals_jax_hessian():
    """:func:`bayes.dadvi.hessian` against JAX differentiating the objective twice in
    ``(mu, L's lower triangle)`` directly, away from any optimum, to 1e-10 relative."""
    rng = np.random.default_rng(3)
    d, M = 4, 7
    eps = rng.standard_normal((M, d))
    L = np.tril(rng.normal(size=(d, d)), -1) + np.diag(rng.uniform(0.5, 1.5, d))
    mu = rng.normal(size=d)
    rows, cols = np.tril_indices(d)
    with jax.enable_x64(True):
        jnp = jax.numpy

        def pe(z):
            return jnp.sum(jnp.cosh(z)) + 0.3 * (z[0] * z[1] + z[2] ** 3 * z[3])

        def F_raw(p):
            Lp = jnp.zeros((d, d)).at[rows, cols].set(p[d:])
            return jnp.mean(jax.vmap(pe)(p[:d] + jnp.asarray(eps) @ Lp.T)) - jnp.sum(jnp.log(jnp.diagonal(Lp)))

        want = np.asarray(jax.hessian(F_raw)(jnp.asarray(np.concatenate([mu, L[rows, cols]]))))
        Hm = np.asarray(jax.vmap(jax.hessian(pe))(jnp.asarray(mu + eps @ L.T)))
    got = dadvi.hessian(Hm, L, eps)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * np.max(np.abs(want)))


def test_conditional_orthodont_is_the_closed_form(orthodont, ml_fit):
    """X and the variances fixed at the fit: Theta's posterior is Gaussian, ``N(theta_hat, I^-1)``
    up to its Normal(0, 968^2) prior (a relative effect near 1e-7), so the twin's mean and
    linear-response covariance are those of nmfre's model-based inference (1e-5), and the
    smooth objective is minimised to SciPy's gradient tolerance."""
    Y, A = orthodont
    q = bayes.fit_vi(Y, A, 1, model="conditional", fit=ml_fit, method="dadvi", seed=seed(3))
    inf = ml_fit.infer(n_boot=10, seed=1)
    np.testing.assert_allclose(q["variational"]["loc"], ml_fit.theta.values.ravel(), rtol=1e-5)
    np.testing.assert_allclose(q["variational"]["cov"], inf.cov_model.values, rtol=1e-5)
    assert q["variational"]["cov"].dims == ("unconstrained", "unconstrained_bis")
    assert q["variational"]["unconstrained"].values.tolist() == ["theta[0,0]", "theta[0,1]"]
    assert q["variational"]["unconstrained_bis"].values.tolist() == ["theta[0,0]", "theta[0,1]"]
    assert bayes.vi._dadvi_dimension("conditional", 4, 1, 2) == q["variational"]["loc"].size == 2
    qx = bayes.fit_vi(Y, A, 1, model="conditional_x", fit=ml_fit, method="dadvi", seed=seed(4), warn=False)
    assert bayes.vi._dadvi_dimension("conditional_x", 4, 1, 2) == qx["variational"]["loc"].size == 4
    assert qx["variational"]["site"].values.tolist() == ["sigma", "tau", "theta", "theta"]
    post = q["posterior"]
    assert post.attrs["optimizer_status"] == 0 and post.attrs["elbo_settled"] == 1
    assert post["theta"].shape == (4, 1000, 1, 2)
    # its elbo is the ELBO, as SVI's (it lacked the Gaussian entropy's constant, 2.84 at d = 2):
    # on this Gaussian posterior a full-covariance guide matches it, so SVI's estimate is almost
    # noiseless (measured: -212.246 against -212.306)
    svi = bayes.fit_vi(Y, A, 1, model="conditional", fit=ml_fit, num_steps=3000, seed=seed(3))
    assert abs(post.attrs["elbo"] - svi["posterior"].attrs["elbo"]) < 0.25


@pytest.mark.parametrize("theta", ["nonneg", "free"])
def test_coordinate_labels_name_each_entry_of_the_flat_vector(theta):
    """``compiled.coordinate_labels`` against the flat vector's own unravelling: entry ``i`` of
    ``arange(d)`` unravels to the site and index its label names (exact; rank 2, so every site
    but the variances is a matrix). Fails on labels in another site order or an index
    transposed."""
    import dataclasses

    import jax.numpy as jnp

    from bayes import compiled, sampling

    d = nmfre.simulate.block_sparse(P=6, N=40, rank=2, K=2, seed=1)
    Y, A = d["Y"], d["A"]
    fit = nmfre.fit(Y, A, rank=2, theta=theta)
    sampler = sampling.Sampler("joint", 2, 6, None, 2, theta=theta, simplex="folded", theta_coords="direct",
                               kernel="nuts")
    spec = sampler.spec(Y, A, fit=fit)
    s = dataclasses.replace(sampler.settings_for(spec), num_warmup=0, num_samples=0, num_chains=0)
    names, sites = compiled.coordinate_labels(s, spec.init, spec.args)
    _, unravel, z0 = compiled.potential(s, spec.init, spec.args)
    tree = unravel(jnp.arange(z0.shape[0], dtype=z0.dtype))
    assert len(names) == len(sites) == z0.shape[0] == 6 * 2 + 2 * 2 + 2
    assert sorted(set(sites)) == sorted(tree)
    for i, (name, site) in enumerate(zip(names, sites, strict=True)):
        index = tuple(int(j) for j in name[len(site) + 1:-1].split(",")) if name != site else ()
        assert name.startswith(site) and float(tree[site][index]) == i


#: Theta's posterior sds on ``block_sparse(20, 300, rank=2, K=2, seed=12)`` with non-negative
#: Theta and the default priors: ChEES-HMC, 16 chains x (1000 + 4000) (seed 7), max r_hat 1.002,
#: min bulk ESS 8602 (Monte Carlo error of each sd about 0.8%)
REF_SD_12 = np.array([[0.90496532, 1.07314755], [0.90896893, 1.06987038]])


def test_theta_sds_match_a_long_chees_run_20x300():
    """Issue 18's target for the variational twin: Theta's sds within 25% of a mixed run.
    Measured over ten seeds (fixed draws and output draws; docs: benchmarks): ratios
    1.00-1.09, mean 1.04-1.06 per entry, sd 0.021-0.025, so the nearer bound (1.25) is 7.8 sd
    away (false alarm below 1e-4 for the four correlated entries even with the sd estimate
    half the truth). Fault caught: draws from the guide's own covariance (ratios about 0.4 on
    these data; the default ``method="svi"`` 0.41-0.45)."""
    d = nmfre.simulate.block_sparse(20, 300, rank=2, K=2, seed=12)
    fit = nmfre.fit(d["Y"], d["A"], rank=2, theta="nonneg")
    before = sum(bayes.compiled.TRACES.values())
    q = bayes.fit_vi(d["Y"], d["A"], 2, fit=fit, theta="nonneg", method="dadvi", seed=seed(1))
    post = q["posterior"]
    ratio = post["theta"].std(("chain", "draw")).values / REF_SD_12
    record("dadvi_block_sparse", ratio=ratio.ravel())
    assert ((ratio > 0.75) & (ratio < 1.25)).all(), ratio
    assert post.attrs["method"] == "DADVI" and post.attrs["covariance"] == "linear_response"
    assert post.attrs["elbo_settled"] == 1 and post.attrs["optimizer_min_eigenvalue"] > 0
    assert post["theta"].shape == (4, 1000, 2, 2) and (post["theta"] >= 0).all()
    assert bayes.vi._dadvi_dimension("joint", 20, 2, 2) == q["variational"]["loc"].size == 46
    np.testing.assert_allclose(post["X"].sum("feature"), 1.0, atol=1e-10)
    elbo = q["variational"]["elbo"].values
    assert np.all(np.diff(elbo) >= 0)  # trust-region steps only ever decrease the objective
    # another seed and iteration limit reuse the compiled code
    q2 = bayes.fit_vi(d["Y"], d["A"], 2, fit=fit, theta="nonneg", method="dadvi", seed=seed(2), num_steps=50,
                      warn=False)
    assert sum(bayes.compiled.TRACES.values()) - before == 1
    assert len(q2["variational"]["elbo"]) <= 50


def test_bad_settings_are_refused_before_any_work(orthodont, ml_fit, monkeypatch):
    Y, A = orthodont
    for kw, name in (({"guide": "diag"}, "guide"), ({"simplex": "ilr"}, "simplex"),
                     ({"theta_coords": "marginal"}, "theta_coords")):
        with pytest.raises(ValueError, match=f"method='dadvi' needs {name}="):
            bayes.fit_vi(Y, A, 1, fit=ml_fit, method="dadvi", **kw)
    with pytest.raises(ValueError, match="method"):
        bayes.fit_vi(Y, A, 1, fit=ml_fit, method="laplace")
    # DADVI has no learning rate: one given is refused (it was ignored)
    with pytest.raises(ValueError, match="learning_rate is for method='svi'"):
        bayes.fit_vi(Y, A, 1, fit=ml_fit, method="dadvi", learning_rate=0.01)
    # refused before the ML fit that fit=None asks for (the joint model at rank 1 here has
    # P + K + 2 = 8 unconstrained coordinates)
    def no_work(*args, **kwargs):
        raise AssertionError("work done before the refusal")

    monkeypatch.setattr(nmfre, "fit", no_work)
    monkeypatch.setattr(dadvi, "fit", no_work)
    with pytest.raises(ValueError, match="num_particles must exceed the 8 unconstrained coordinates"):
        bayes.fit_vi(Y, A, 1, method="dadvi", num_particles=8)
    monkeypatch.setattr(dadvi, "MAX_PARAMETERS", 10)
    with pytest.raises(ValueError, match="MAX_PARAMETERS = 10"):
        bayes.fit_vi(Y, A, 1, method="dadvi")
