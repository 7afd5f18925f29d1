"""The joint posterior's rotation invariance (:mod:`bayes.rotations`).

All deterministic: fixed data, fixed evaluation points and constructed draws; no sampler runs.
"""

import jax
import numpy as np
import pytest
import xarray as xr
from helpers import rank2
from numpyro.infer.util import log_density
from scipy.linalg import expm

import bayes
from bayes import datatree, models
from bayes.rotations import ROTATION_SDS, rotation_note
from nmfre.core.rotation import generators


@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("missing", [False, True])
def test_joint_density_is_rotation_invariant(nonneg, missing):
    """The joint model's log density (likelihood, flat Dirichlet prior on X's columns,
    Normal or HalfNormal prior on Theta, sigma's and tau's priors) is the same at (X, Theta)
    and at (X R, R' Theta) for R = expm(t G), G in the group's tangent space, where the
    rotated point keeps the bounds: 1e-10 relative, complete data and 10% missing. The
    module's premise; with a Dirichlet concentration of 2 the densities differ (by more than
    1e-3), so the check can fail."""
    Y, A, _, _ = rank2(seed=4, N=50, P=8)
    if missing:
        Y = Y.copy()
        Y[np.random.default_rng(1).random(Y.shape) < 0.1] = np.nan
    Q, K = 3, A.shape[0]
    rng = np.random.default_rng(2)
    G = np.tensordot(rng.standard_normal(1), generators(Q), axes=1)
    R = expm(0.05 * G / np.linalg.norm(G))
    gaps, flat_gaps = [], []
    with jax.enable_x64(True):
        for _ in range(3):
            Xc = rng.dirichlet(5.0 * np.ones(Y.shape[0]), Q)  # (Q, P), entries well inside the simplex
            th = rng.uniform(5.0, 10.0, (Q, K)) if nonneg else rng.normal(0.0, 5.0, (Q, K))
            pt = {"X_columns": Xc, "theta": th, "sigma": 0.7, "tau": 1.3}
            moved = {**pt, "X_columns": (Xc.T @ R).T, "theta": R.T @ th}
            assert moved["X_columns"].min() > 0 and (not nonneg or moved["theta"].min() > 0)
            for conc, out in ((1.0, gaps), (2.0, flat_gaps)):
                priors = {**bayes.default_priors(Y, Q), "theta_scale": 5.0, "x_concentration": conc}
                kw = {"nonneg": nonneg, "priors": priors, "simplex": "stickbreaking"}
                a, _ = log_density(models.joint, (Y, A, Q), kw, pt)
                b, _ = log_density(models.joint, (Y, A, Q), kw, moved)
                out.append((abs(float(b) - float(a)), abs(float(a))))
    assert max(d / a for d, a in gaps) < 1e-10, gaps
    assert min(d for d, _ in flat_gaps) > 1e-3, flat_gaps


def _posterior(X, th, *, model="joint", conc=1.0, kind="nonneg"):
    """A DataTree of draws ``X`` (chain, draw, P, Q) and ``th`` (chain, draw, Q, K)."""
    C, D, P, Q = X.shape
    K = th.shape[-1]
    rng = np.random.default_rng(3)
    post = xr.Dataset(
        {"X": (("chain", "draw", "feature", "component"), X),
         "theta": (("chain", "draw", "component", "covariate"), th),
         "sigma": (("chain", "draw"), 1.0 + 0.01 * rng.standard_normal((C, D))),
         "tau": (("chain", "draw"), 2.0 + 0.01 * rng.standard_normal((C, D)))},
        coords={"component": [f"c{q + 1}" for q in range(Q)], "covariate": [f"a{k}" for k in range(K)],
                "feature": [f"f{p}" for p in range(P)]},
        attrs={"model": model, "theta_kind": kind, "nmfre_priors": str({"x_concentration": conc, "theta_scale": 50.0})})
    loglik = -100.0 + rng.standard_normal((C, D))
    stats = xr.Dataset({"loglik": (("chain", "draw"), loglik)})
    return xr.DataTree.from_dict({"posterior": post, "sample_stats": stats})


def _interior_draws(C=4, D=200, P=12, Q=3, K=2, rotate_half=False):
    """Draws near one interior point (every entry of X at least 0.02, Theta in [5, 10]);
    ``rotate_half``: chains 2 and 3 rotated by a fixed R of the group (X R, R' Theta), so X
    Theta, sigma, tau and the log-likelihood mix while the components do not."""
    rng = np.random.default_rng(4)
    X0 = rng.dirichlet(20.0 * np.ones(P), Q).T
    th0 = rng.uniform(5.0, 10.0, (Q, K))
    X = X0 * np.exp(0.01 * rng.standard_normal((C, D, P, Q)))
    X /= X.sum(axis=2, keepdims=True)
    th = th0 + 0.05 * rng.standard_normal((C, D, Q, K))
    if rotate_half:
        R = expm(0.3 * generators(Q)[0])
        X[2:] = X[2:] @ R
        th[2:] = np.swapaxes(R, 0, 1) @ th[2:]
        assert X.min() > 0 and th.min() > 0
    return X, th


def test_spread_of_interior_draws_is_free_rotation_on_the_draws_checked():
    """Exact: ``rotation_spread`` checks ``draws`` draws evenly spaced over the chains' draws,
    and each reported move is :func:`nmfre.core.rotation.free_rotation`'s on that draw (Theta's
    move in the entry's posterior sds); draws well inside X >= 0 are all rotatable."""
    from nmfre.core.rotation import free_rotation

    X, th = _interior_draws()
    dt = _posterior(X, th)
    sp = bayes.rotation_spread(dt, draws=7)
    assert sp["checked"] == 7 and sp["rotatable"] == 7
    flat_X, flat_th = X.reshape(-1, *X.shape[2:]), th.reshape(-1, *th.shape[2:])
    sd = flat_th.std(axis=0)
    idx = np.linspace(0, flat_X.shape[0] - 1, 7).round().astype(int)
    want = []
    for i in idx:
        f = free_rotation(flat_X[i], flat_th[i], True)
        want.append(np.max(np.abs(f.R.T @ flat_th[i] - flat_th[i]) / sd))
        assert (flat_X[i] @ f.R).min() >= -1e-12 and (f.R.T @ flat_th[i]).min() >= -1e-12
    np.testing.assert_array_equal(sp["theta_sds"], want)
    assert sp["components"] == ["c1", "c2", "c3"]
    assert bayes.rotation_spread(dt, draws=10_000)["checked"] == X.shape[0] * X.shape[1]


def test_anchored_draws_have_no_rotation():
    """Draws whose X has an anchor row for every component (a feature in one component only)
    and zeros elsewhere in those rows are pinned by X >= 0: no rotation, no sentence."""
    X, th = _interior_draws(P=12)
    X[..., :3, :] = 0.0
    for q in range(3):
        X[..., q, q] = 0.1
    X /= X.sum(axis=2, keepdims=True)
    dt = _posterior(X, th)
    sp = bayes.rotation_spread(dt, draws=20)
    assert sp["checked"] == 20 and sp["rotatable"] == 0 and sp["components"] == []
    assert rotation_note(dt) == ""


def test_only_an_invariant_density_is_checked():
    """None where the posterior's density is not rotation invariant or X is not sampled: a
    Dirichlet concentration other than 1, the models that hold X, fewer than 3 components,
    no recorded priors; ``draws`` must be a positive integer."""
    X, th = _interior_draws()
    assert bayes.rotation_spread(_posterior(X, th, conc=2.0)) is None
    assert bayes.rotation_spread(_posterior(X, th, model="conditional_x")) is None
    X2, th2 = _interior_draws(Q=2)
    assert bayes.rotation_spread(_posterior(X2, th2)) is None
    dt = _posterior(X, th)
    del dt["posterior"].attrs["nmfre_priors"]
    assert bayes.rotation_spread(dt) is None
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="draws must be a positive integer"):
            bayes.rotation_spread(_posterior(X, th), draws=bad)


def test_warning_on_components_that_do_not_mix_says_they_rotate():
    """Chains 2 and 3 sit at a rotation of chains 0 and 1 (the same posterior density, X
    Theta unchanged): the components do not mix, the invariant quantities do, and the
    warning names the components and adds the rotation's sentence with the median move
    (at least ROTATION_SDS); with a concentration of 2 (no invariance) it does not. Also
    sign-free Theta: the bounds named are X's only."""
    X, th = _interior_draws(rotate_half=True)
    dt = _posterior(X, th)
    table = bayes.mixing(dt)
    assert table.loc[["X_theta", "sigma", "tau", "loglik"], "ok"].all() and not table.loc["c1", "ok"]
    sp = bayes.rotation_spread(dt)
    median = float(np.median(sp["theta_sds"]))
    assert sp["rotatable"] == sp["checked"] == 100 and median >= ROTATION_SDS
    said = (r"are not identified by the data .* The posterior density is unchanged by rotations of the components "
            r"\(X R, R' Theta; R orthogonal, R 1 = 1\) that keep X >= 0 and Theta >= 0: 100 of 100 draws checked "
            rf"have one, which moves an entry of Theta by {median:.2g} of its posterior sds")
    with pytest.warns(bayes.SamplingWarning, match=said):
        datatree.warn_diagnostics(dt)
    with pytest.warns(bayes.SamplingWarning) as rec:
        datatree.warn_diagnostics(_posterior(X, th, conc=2.0))
    assert "not identified" in str(rec[0].message) and "rotations" not in str(rec[0].message)
    with pytest.warns(bayes.SamplingWarning, match=r"that keep X >= 0: \d+ of 100"):
        datatree.warn_diagnostics(_posterior(X, th, kind="free"))


def test_small_rotations_are_not_said():
    """Draws a little inside anchor rows (1e-4 where an anchor would have 0) can be rotated,
    but only a little: the median draw's rotation moves Theta by less than ROTATION_SDS of
    its posterior sds (Theta's spread is 1 here), and no sentence is said; the same draws
    with Theta's spread 0.005 are said to rotate (what the threshold separates)."""
    X, th = _interior_draws(P=12)
    X[..., :3, :] = 1e-4
    for q in range(3):
        X[..., q, q] = 0.1
    X /= X.sum(axis=2, keepdims=True)
    th_wide = th.mean(axis=(0, 1)) + np.random.default_rng(6).normal(0.0, 1.0, th.shape)
    assert th_wide.min() > 0
    wide = _posterior(X, th_wide)
    sp = bayes.rotation_spread(wide)
    assert sp["rotatable"] > 50 and np.median(sp["theta_sds"]) < ROTATION_SDS
    assert rotation_note(wide) == ""
    narrow = _posterior(X, th.mean(axis=(0, 1)) + np.random.default_rng(6).normal(0.0, 0.005, th.shape))
    assert np.median(bayes.rotation_spread(narrow)["theta_sds"]) >= ROTATION_SDS
    assert rotation_note(narrow).startswith(". The posterior density is unchanged by rotations")

