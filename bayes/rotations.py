"""The joint posterior's rotation invariance, measured on its draws.

For orthogonal ``R`` (Q x Q) with ``R 1 = 1``, ``X -> X R``, ``Theta -> R' Theta`` keeps the
likelihood (:mod:`nmfre.core.rotation`), the flat Dirichlet prior on X's columns (``X R``'s
columns still sum to 1) and Theta's prior (independent Normal or HalfNormal entries of one
scale: ``R'`` keeps Theta's Frobenius norm), with unit Jacobian. So the joint posterior's
density is the same at a draw and at every rotation of it that keeps ``X >= 0`` (and ``Theta
>= 0`` where constrained): its components are identified only as far as those bounds pin them.
:func:`rotation_spread` measures how far on a subset of the draws (a deterministic one), with
:func:`nmfre.core.rotation.free_rotation`; :func:`bayes.datatree.warn_diagnostics` quotes it
where it names components as not identified by the data. The rotations are as large in
posteriors that mix (benchmarks/results/bayes.md, 2026-12-08): they say how far the components
are identified, not why chains fail to mix.
"""

from __future__ import annotations

import ast

import numpy as np
import xarray as xr

from nmfre import validation as v
from nmfre.core.rotation import ROTATION_MIN, free_rotation

__all__ = ["ROTATION_DRAWS", "ROTATION_SDS", "rotation_note", "rotation_spread"]

#: draws checked by default (evenly spaced over the chains' draws; 4-7 ms each at P = 100, Q = 5)
ROTATION_DRAWS = 100
#: :func:`rotation_note` speaks where the median draw's rotation moves an entry of Theta by at
#: least this many of its posterior sds, and names the components that such rotations move
#: (draws a little inside the bounds can always be rotated a little)
ROTATION_SDS = 0.1


def _invariant(dt: xr.DataTree) -> bool:
    """Whether the posterior's density is rotation invariant and its draws are a sampler's: the
    joint model (X sampled; not a variational approximation, whose spread is not the
    posterior's) with a flat Dirichlet prior on X (``x_concentration`` 1, as recorded in the
    posterior's ``nmfre_priors`` attribute), a recorded ``theta_kind`` (the bounds on Theta)
    and at least 3 components (below, the group is finite)."""
    if "posterior" not in dt.children:
        return False
    post = dt["posterior"]
    if post.attrs.get("model") != "joint" or post.attrs.get("approximate"):
        return False
    if "X" not in post or "chain" not in post["X"].dims or post.attrs.get("theta_kind") not in ("free", "nonneg"):
        return False
    if post.sizes.get("component", 0) < 3:
        return False
    try:
        priors = ast.literal_eval(str(post.attrs.get("nmfre_priors", "")))
    except (ValueError, SyntaxError):
        return False
    return isinstance(priors, dict) and priors.get("x_concentration") == 1.0


def rotation_spread(dt: xr.DataTree, draws: int = ROTATION_DRAWS) -> dict | None:
    """How far the joint posterior's draws can be rotated at an unchanged posterior density.

    For each of ``draws`` draws (evenly spaced over the chains' draws, in order; all where
    there are fewer), :func:`nmfre.core.rotation.free_rotation` looks for a rotation ``X R``,
    ``R' Theta`` (``R`` orthogonal, ``R 1 = 1``) that keeps ``X >= 0`` (and ``Theta >= 0``
    for non-negative Theta) and moves X by at least
    :data:`nmfre.core.rotation.ROTATION_MIN` of its largest entry. The density at the
    rotated point equals the draw's (see the module's docstring). The rotation found is the
    one that moves X most among at most 8 directions and angles up to pi / 4: each move is a
    lower bound on how far the draw can move, and a draw without one may still have one.

    Parameters
    ----------
    dt : xarray.DataTree
        From :func:`bayes.sample`.
    draws : int
        Draws to check (positive).

    Returns
    -------
    dict or None
        None where the posterior's density is not rotation invariant or its draws are not a
        sampler's (models other than ``"joint"``, a variational fit, a Dirichlet
        concentration other than 1, no recorded ``theta_kind``, fewer than 3 components).
        Otherwise ``checked`` (draws checked), ``rotatable`` (those with a rotation found),
        ``theta_sds`` (for each rotatable draw, the largest move of an entry of Theta in that
        entry's posterior sds), ``x_moves`` (the largest move of an entry of X, per rotatable
        draw) and ``components`` (the names of the components whose X column moves by at least
        ``ROTATION_MIN`` of X's largest entry under a rotation that moves Theta by at least
        :data:`ROTATION_SDS` posterior sds).
    """
    draws = v.integer(draws, "draws")
    if not _invariant(dt):
        return None
    post = dt["posterior"]
    X = post["X"].transpose("chain", "draw", "feature", "component").values
    th = post["theta"].transpose("chain", "draw", "component", "covariate").values
    nonneg = post.attrs["theta_kind"] == "nonneg"
    C, D = X.shape[:2]
    X, th = X.reshape(C * D, *X.shape[2:]), th.reshape(C * D, *th.shape[2:])
    sd = th.std(axis=0)
    idx = np.unique(np.linspace(0, C * D - 1, min(draws, C * D)).round().astype(int))
    names = [str(c) for c in post["component"].values]
    moved = np.zeros(len(names), bool)
    theta_sds, x_moves = [], []
    for i in idx:
        free = free_rotation(X[i], th[i], nonneg)
        if free is None:
            continue
        dth = np.abs(free.R.T @ th[i] - th[i])
        theta_sds.append(float(np.max(np.where(sd > 0, dth / np.where(sd > 0, sd, 1.0), 0.0))))
        x_moves.append(free.dX)
        if theta_sds[-1] >= ROTATION_SDS:
            moved |= np.abs(X[i] @ free.R - X[i]).max(axis=0) >= ROTATION_MIN * X[i].max()
    return {"checked": int(idx.size), "rotatable": len(theta_sds), "theta_sds": np.array(theta_sds),
            "x_moves": np.array(x_moves), "components": [n for n, m in zip(names, moved, strict=True) if m]}


def rotation_note(dt: xr.DataTree) -> str:
    """The sentence of :func:`bayes.datatree.warn_diagnostics` on the draws' rotations.

    Parameters
    ----------
    dt : xarray.DataTree
        From :func:`bayes.sample`.

    Returns
    -------
    str
        ``""`` where :func:`rotation_spread` gives None or the median checked draw's move of
        Theta (a draw without a rotation found counting 0) is below :data:`ROTATION_SDS`
        posterior sds; otherwise the sentence, which says that posteriors that mix show the
        same (it describes how far the components are identified, not why chains fail).
    """
    spread = rotation_spread(dt)
    if spread is None:
        return ""
    s = spread["theta_sds"]
    median = float(np.median(np.concatenate([s, np.zeros(spread["checked"] - s.size)])))
    if median < ROTATION_SDS:
        return ""
    bounds = "X >= 0 and Theta >= 0" if dt["posterior"].attrs["theta_kind"] == "nonneg" else "X >= 0"
    return (f". Part of their spread is exactly unidentified: the posterior density is unchanged by rotations of "
            f"the components (X R, R' Theta; R orthogonal, R 1 = 1) that keep {bounds}, and {spread['rotatable']} "
            f"of {spread['checked']} draws checked have one that moves an entry of Theta by at least "
            f"{median:.2g} of its posterior sds in the median draw (at least {s.max():.2g} in one), moving "
            f"components {spread['components']} (bayes.rotation_spread; posteriors that mix show rotations of "
            "this size too: they do not by themselves keep chains from mixing)")
