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
from nmfre.core.covariates import Frame
from nmfre.core.rotation import free_rotation, generators


@pytest.mark.parametrize(("nonneg", "frame"), [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("missing", [False, True])
def test_joint_density_is_rotation_invariant(nonneg, frame, missing):
    """The joint model's log density (likelihood, flat Dirichlet prior on X's columns,
    Normal or HalfNormal prior on Theta, sigma's and tau's priors) is the same at (X, Theta)
    and at (X R, R' Theta) for R = expm(t G), G in the group's tangent space, where the
    rotated point keeps the bounds: 1e-10 relative, complete data and 10% missing; free Theta
    also on the orthonormal covariates ``bayes.sample`` uses (``theta_frame = Theta T`` becomes
    ``R' Theta T``). The module's premise; with a Dirichlet concentration of 2 the densities
    differ (by more than 1e-3), so the check can fail."""
    Y, A, _, _ = rank2(seed=4, N=50, P=8)
    if missing:
        Y = Y.copy()
        Y[np.random.default_rng(1).random(Y.shape) < 0.1] = np.nan
    Q, K = 3, A.shape[0]
    fr = Frame.of(A) if frame else None
    rng = np.random.default_rng(2)
    G = np.tensordot(rng.standard_normal(1), generators(Q), axes=1)
    R = expm(0.05 * G / np.linalg.norm(G))
    gaps, flat_gaps = [], []
    with jax.enable_x64(True):
        for _ in range(3):
            Xc = rng.dirichlet(5.0 * np.ones(Y.shape[0]), Q)  # (Q, P), entries well inside the simplex
            th = rng.uniform(5.0, 10.0, (Q, K)) if nonneg else rng.normal(0.0, 5.0, (Q, K))
            site = {"theta_frame": th @ fr.T} if frame else {"theta": th}
            moved_site = {k: R.T @ x for k, x in site.items()}
            pt = {"X_columns": Xc, "sigma": 0.7, "tau": 1.3, **site}
            moved = {**pt, "X_columns": (Xc.T @ R).T, **moved_site}
            assert moved["X_columns"].min() > 0 and (not nonneg or (R.T @ th).min() > 0)
            for conc, out in ((1.0, gaps), (2.0, flat_gaps)):
                priors = {**bayes.default_priors(Y, Q), "theta_scale": 5.0, "x_concentration": conc}
                kw = {"nonneg": nonneg, "priors": priors, "simplex": "stickbreaking"}
                args = (Y, A, Q)
                if frame:
                    kw["frame"], args = fr.T, (Y, fr.A, Q)
                a, _ = log_density(models.joint, args, kw, pt)
                b, _ = log_density(models.joint, args, kw, moved)
                out.append((abs(float(b) - float(a)), abs(float(a))))
    assert max(d / a for d, a in gaps) < 1e-10, gaps
    assert min(d for d, _ in flat_gaps) > 1e-3, flat_gaps


def _posterior(X, th, *, model="joint", conc=1.0, kind="nonneg", shift=0.0):
    """A DataTree of draws ``X`` (chain, draw, P, Q) and ``th`` (chain, draw, Q, K), with a
    log-likelihood ``shift`` lower in chains 2 and 3."""
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
    loglik = -100.0 - shift * (np.arange(C) >= 2)[:, None] + rng.standard_normal((C, D))
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


def _anchor(X, rows):
    """``X`` with anchor rows (feature ``rows[q]`` in component ``q`` only), columns renormalised."""
    X = X.copy()
    for q, p in enumerate(rows):
        if p is not None:
            X[..., p, :] = 0.0
            X[..., p, q] = 0.1
    return X / X.sum(axis=-2, keepdims=True)


def test_spread_of_interior_draws_is_free_rotation_on_the_draws_checked():
    """Exact: ``rotation_spread`` checks ``draws`` draws evenly spaced over the chains' draws,
    and each reported move (of Theta in the entry's posterior sds, and of X) is
    :func:`nmfre.core.rotation.free_rotation`'s on that draw; draws well inside X >= 0 are all
    rotatable, and every component moves."""
    X, th = _interior_draws()
    dt = _posterior(X, th)
    sp = bayes.rotation_spread(dt, draws=7)
    assert sp["checked"] == 7 and sp["rotatable"] == 7
    flat_X, flat_th = X.reshape(-1, *X.shape[2:]), th.reshape(-1, *th.shape[2:])
    sd = flat_th.std(axis=0)
    idx = np.linspace(0, flat_X.shape[0] - 1, 7).round().astype(int)
    want, want_x = [], []
    for i in idx:
        f = free_rotation(flat_X[i], flat_th[i], True)
        want.append(np.max(np.abs(f.R.T @ flat_th[i] - flat_th[i]) / sd))
        want_x.append(f.dX)
        assert (flat_X[i] @ f.R).min() >= -1e-12 and (f.R.T @ flat_th[i]).min() >= -1e-12
    np.testing.assert_array_equal(sp["theta_sds"], want)
    np.testing.assert_array_equal(sp["x_moves"], want_x)
    assert min(want) >= ROTATION_SDS and sp["components"] == ["c1", "c2", "c3"]
    assert bayes.rotation_spread(dt, draws=10_000)["checked"] == X.shape[0] * X.shape[1]


def test_a_component_pinned_by_an_anchor_row_is_not_named():
    """Q = 4, an anchor row for component c4 only: the rotations that keep X >= 0 fix c4's
    column (to first order the anchor forces R's row 4 to e4), so the components named are c1,
    c2 and c3; each draw's rotation leaves c4's column unchanged."""
    X, th = _interior_draws(Q=4)
    X = _anchor(X, [None, None, None, 0])
    dt = _posterior(X, th)
    sp = bayes.rotation_spread(dt, draws=20)
    assert sp["rotatable"] == 20 and sp["components"] == ["c1", "c2", "c3"]
    flat = X.reshape(-1, *X.shape[2:])
    f = free_rotation(flat[0], th.reshape(-1, *th.shape[2:])[0], True)
    np.testing.assert_allclose((flat[0] @ f.R)[:, 3], flat[0][:, 3], rtol=0, atol=1e-12)


def test_anchored_draws_have_no_rotation():
    """Draws whose X has an anchor row for every component (a feature in one component only)
    are pinned by X >= 0: no rotation, no sentence."""
    X, th = _interior_draws(P=12)
    dt = _posterior(_anchor(X, [0, 1, 2]), th)
    sp = bayes.rotation_spread(dt, draws=20)
    assert sp["checked"] == 20 and sp["rotatable"] == 0 and sp["components"] == []
    assert rotation_note(dt) == ""


def test_the_bounds_on_theta_follow_theta_kind():
    """Interior X with zeros in Theta at (c1, a0), (c2, a1) and (c3, a0): as non-negative Theta
    those zeros pin every draw (no rotation); as free Theta nothing bounds Theta, and every
    draw rotates. Fails if ``theta_kind`` were ignored either way."""
    X, th = _interior_draws()
    th = th.copy()
    th[..., 0, 0] = th[..., 1, 1] = th[..., 2, 0] = 0.0
    assert bayes.rotation_spread(_posterior(X, th, kind="nonneg"), draws=10)["rotatable"] == 0
    assert bayes.rotation_spread(_posterior(X, th, kind="free"), draws=10)["rotatable"] == 10


def test_only_an_invariant_density_of_a_sampler_is_checked():
    """None where the posterior's density is not rotation invariant, X is not sampled or the
    draws are not a sampler's: a Dirichlet concentration other than 1, the models that hold X,
    fewer than 3 components, no recorded priors or theta_kind, a variational fit
    (``approximate``); ``draws`` must be a positive integer."""
    X, th = _interior_draws()
    assert bayes.rotation_spread(_posterior(X, th, conc=2.0)) is None
    assert bayes.rotation_spread(_posterior(X, th, model="conditional_x")) is None
    X2, th2 = _interior_draws(Q=2)
    assert bayes.rotation_spread(_posterior(X2, th2)) is None
    for attr in ("nmfre_priors", "theta_kind"):
        dt = _posterior(X, th)
        del dt["posterior"].attrs[attr]
        assert bayes.rotation_spread(dt) is None
    dt = _posterior(X, th)
    dt["posterior"].attrs["approximate"] = True
    assert bayes.rotation_spread(dt) is None
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="draws must be a positive integer"):
            bayes.rotation_spread(_posterior(X, th), draws=bad)


def test_warning_on_components_that_do_not_mix_says_they_rotate():
    """Chains 2 and 3 sit at a rotation of chains 0 and 1 (the same posterior density, X
    Theta unchanged): the components do not mix, the invariant quantities do, and the
    warning names the components and adds the rotation's sentence with the median move
    (at least ROTATION_SDS), saying that mixing posteriors show the same; with a concentration
    of 2 (no invariance) it does not. Sign-free Theta: the bounds named are X's only. Where the
    log-likelihood does not mix either, the warning is about the chains' states, not rotations."""
    X, th = _interior_draws(rotate_half=True)
    dt = _posterior(X, th)
    table = bayes.mixing(dt)
    assert table.loc[["X_theta", "sigma", "tau", "loglik"], "ok"].all() and not table.loc["c1", "ok"]
    sp = bayes.rotation_spread(dt)
    median = float(np.median(sp["theta_sds"]))
    assert sp["rotatable"] == sp["checked"] == 100 and median >= ROTATION_SDS
    said = (r"are not identified by the data .* Part of their spread is exactly unidentified: the posterior density "
            r"is unchanged by rotations of the components \(X R, R' Theta; R orthogonal, R 1 = 1\) that keep X >= 0 "
            rf"and Theta >= 0, and 100 of 100 draws checked have one that moves an entry of Theta by at least "
            rf"{median:.2g} of its posterior sds in the median draw .* posteriors that mix show rotations")
    with pytest.warns(bayes.SamplingWarning, match=said):
        datatree.warn_diagnostics(dt)
    with pytest.warns(bayes.SamplingWarning) as rec:
        datatree.warn_diagnostics(_posterior(X, th, conc=2.0))
    assert "not identified" in str(rec[0].message) and "rotations" not in str(rec[0].message)
    with pytest.warns(bayes.SamplingWarning, match=r"that keep X >= 0, and \d+ of 100"):
        datatree.warn_diagnostics(_posterior(X, th, kind="free"))
    with pytest.warns(bayes.SamplingWarning) as rec:
        datatree.warn_diagnostics(_posterior(X, th, shift=10.0))
    msg = str(rec[0].message)
    assert "nor do the label-invariant" in msg and "states of the posterior" in msg and "rotations" not in msg


def test_small_rotations_are_not_said():
    """Draws a little inside anchor rows (1e-4 where an anchor would have 0) can be rotated,
    but only a little: the median draw's rotation moves Theta by less than ROTATION_SDS of
    its posterior sds (Theta's spread is 1 here), and no sentence is said; the same draws
    with Theta's spread 0.005 are said to rotate (what the threshold separates). Where 60% of
    the draws are pinned and the rest rotate far, the median draw (counting a pinned one as
    0) is below the threshold and nothing is said either."""
    X, th = _interior_draws(P=12)
    X[..., :3, :] = 1e-4
    for q in range(3):
        X[..., q, q] = 0.1
    X /= X.sum(axis=2, keepdims=True)
    th_wide = th.mean(axis=(0, 1)) + np.random.default_rng(6).normal(0.0, 1.0, th.shape)
    assert th_wide.min() > 0
    wide = _posterior(X, th_wide)
    sp = bayes.rotation_spread(wide)
    assert sp["rotatable"] > 50 and sp["theta_sds"].max() < ROTATION_SDS
    assert sp["components"] == [] and rotation_note(wide) == ""  # the components of material moves only
    narrow = _posterior(X, th.mean(axis=(0, 1)) + np.random.default_rng(6).normal(0.0, 0.005, th.shape))
    assert np.median(bayes.rotation_spread(narrow)["theta_sds"]) >= ROTATION_SDS
    assert rotation_note(narrow).startswith(". Part of their spread is exactly unidentified")
    Xi, thi = _interior_draws()
    Xm = Xi.copy()
    Xm[:, :120] = _anchor(Xi[:, :120], [0, 1, 2])  # 60% of each chain's draws pinned
    mixed = _posterior(Xm, thi)
    sp = bayes.rotation_spread(mixed)
    assert sp["rotatable"] == 40 and np.median(sp["theta_sds"]) >= ROTATION_SDS
    assert rotation_note(mixed) == ""
