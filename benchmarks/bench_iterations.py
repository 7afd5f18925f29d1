"""Benchmark: iterations to convergence on data the tests never see (issue 17).

Every rung fits ``nmfre.fit(Y, A, rank=Q, theta="nonneg")`` (maximum likelihood, default
settings and tolerance) and scikit-learn's ``NMF(n_components=Q, init="nndsvda")``
(solver ``"cd"``, ``max_iter=200``) on the same Y, one after the other in the same
process, over several data seeds and two noise levels, and reports the distribution
(median and max) of iterations and wall time and the ratio of wall times.

The generator (:func:`generate`) is written here and shares nothing with
:func:`nmfre.simulate.block_sparse` or the tests' designs:

* X: every feature loads on one component drawn at random (random supports, not
  contiguous blocks), with weight Gamma(2, 1), and on each other component with
  probability ``overlap / Q`` with weight Gamma(1, 0.5); columns scaled to sum 1;
* Theta >= 0: Exp(mean 5) entries, a quarter of them exactly 0, plus 1 on the intercept;
* A: intercept, then alternating binary (Bernoulli 0.4) and Gaussian N(0, 1) covariates
  (``K`` varies by rung);
* U ~ N(0, tau2) with ``tau2 ~ U(0.1, 1)`` per data set; noise sd ``c / sqrt(P)`` with
  ``c`` in ``{0.3, 1.0}``; Y clipped at 0;
* sparse rung: positions drawn uniformly without replacement at the given density, values
  from the model mean at those positions plus noise, clipped at 0 (never a dense P x N).

A second generator, ``--generator counts`` (:func:`generate_counts`, dense rungs only), is
further from the model: dense basis columns (Dirichlet(0.5), no exact zeros), Theta >= 0
with a fifth of its entries 0 plus 3 on the intercept, correlated Gaussian covariates
(correlation 0.7 between the second and third), ``tau2 = 0.5`` and Poisson counts with mean
``50 / c^2`` per cell on average (``c`` as above), divided back by their scale. ``--theta
free`` fits sign-free Theta (the package default) instead of ``"nonneg"``.

A third generator, ``--generator overlap`` (:func:`generate_overlap`, dense rungs only), has
two components that overlap: basis columns Dirichlet(0.1) (sparse-ish) and Dirichlet(1)
alternately, the second column replaced by ``0.6`` times the first plus ``0.4`` times its
own draw; a categorical covariate (intercept and ``K - 1`` dummies of ``K`` equally likely
levels); Theta >= 0 log-normal(1, 0.8) with 30% exact zeros, plus 2 on the intercept;
``U ~ N(0, tau^2)`` with ``tau ~ U(0.3, 1.5)``; multiplicative log-normal(0, 0.3 c) noise on
the mean plus Gaussian noise of sd ``c / sqrt(P)``, clipped at 0.

A fourth generator, ``--generator hetero`` (:func:`generate_hetero`, dense rungs only), breaks
the model's assumptions in other ways: anchor features (a tenth of the features per component
load mainly on it, weights Gamma(2, 1), over a Dirichlet(0.3) background holding about 0.3 of each
column's mass), 2% of the features all zero, skewed and correlated covariates (a centred
log-normal ``exp(0.8 z)``, a rare binary with probability 0.1, then Gaussians correlated 0.9 with
``z``), components on scales ``10^U(-1, 1)`` (weak and strong ones), a random-effect sd per
component (``U(0.2, 2)`` times its scale: the model's common tau is misspecified) and Gamma noise
with coefficient of variation ``0.32 c`` around the mean clipped at 0 (heteroscedastic; cells
with mean 0 are 0).

A fifth generator, ``--generator tied`` (:func:`generate_tied`, dense rungs only), has pairs
of components that nearly coincide: basis columns Dirichlet(1), every second one replaced by
``0.8`` times the one before plus ``0.2`` times its own draw; Gaussian covariates; Theta >= 0
uniform on (0.5, 3) plus 5 on the intercept; heavy-tailed random effects ``0.7 t(3)``;
Gaussian noise of sd ``0.3 c`` times the sd of the mean (not clipped: Y may be negative, so
scikit-learn's NMF cannot be compared on it: run with ``--no-sklearn``).

Two more, ``--generator overfit`` and ``--generator underfit`` (:func:`generate_misfit`, dense
rungs only), fit the wrong rank: the data have rank ``max(1, Q - 2)`` (overfit: two fitted
components too many, so the fit has flat directions) or ``Q + 2`` (underfit: two true components
too few), with basis columns Gamma(0.4) scaled to sum 1 (many small entries, no exact zeros),
Gaussian covariates, Theta Gamma(2, 1) plus 10 on the intercept, ``U ~ N(0, 0.36)`` and Gaussian
noise of sd ``0.3 c`` times the sd of the mean, clipped at 0.

An eighth, ``--generator blocks`` (:func:`generate_blocks`, dense rungs only), is the design
issue 17 was measured on ("block-sparse X, non-negative Theta, noise sd 0.3/sqrt(P)"): every
feature loads on exactly one component, in contiguous blocks (``(Q - 1) / Q`` of X exactly 0),
Theta U(0, 10), U(0, 1) covariates, ``U ~ N(0, 0.25)``, noise sd ``c / sqrt(P)``, clipped at 0.
It calls :func:`nmfre.simulate.block_sparse` (the tests' and the Bayesian ladder's design) with
this ladder's noise and a random stream of its own, so none of its draws are the tests'.

A ninth, ``--generator zinb`` (:func:`generate_zinb`, dense rungs only), mimics single-cell
counts: features of power-law abundance (Pareto(1.5)), each loading mainly on one component
(log-normal(0, 1) weights) and on others with probability 0.3 and weights 20 times smaller; an
intercept, a binary treatment (half the units) and centred Gamma(2, 0.5) covariates; Theta >= 0
Gamma(1, 3) with 30% zeros plus 4 on the intercept, the treatment acting on half the
components; random effects with an sd proportional to each component's intercept (the model's
common tau is misspecified); negative-binomial counts of shape ``2 / c`` with mean 0.5 per cell,
then each cell set to 0 with probability ``exp(-m / 2)`` (``m`` its mean count): about 90% zeros.

Two more, ``--generator uncentred`` and ``--generator level`` (:func:`generate_level`, dense
rungs only), give the components a common level far above their variation (benchmarks/results/
scale.md, forty-first round): basis columns Dirichlet(0.5), an intercept, then ``min(2, K - 1)``
Gaussian covariates (correlated 0.7 where there are two) and ``K - 1`` less that many binary ones,
Theta >= 0 Gamma(2, 1) with each entry 0 with probability 0.2, plus 3 on the intercept,
``U ~ N(0, 0.49)``, Gaussian noise of sd ``0.3 c`` times the sd of the mean, clipped at 0.
``uncentred``: the Gaussian covariates at ``10 + z`` (the data follow the non-negative Theta on
them, as with an uncentred age); ``level``: centred covariates and 30 added to every intercept.

A twelfth, ``--generator libsize`` (:func:`generate_libsize`, dense rungs only), gives every unit
its own scale, as library sizes do in sequencing counts and total intensities do in spectra
(benchmarks/results/scale.md, forty-sixth round): basis columns Dirichlet(0.3) (many small
entries), an intercept and Gaussian covariates, Theta >= 0 Gamma(2, 2) with each entry 0 with
probability 0.3, plus 2 on the intercept, ``U ~ N(0, 0.49)``, the mean ``max(X B, 0)`` times a
log-normal(0, 0.7) factor per unit (the model has no such factor: its variation goes into U and
the noise), plus Gaussian noise of sd ``0.3 c`` times the sd of the scaled mean, clipped at 0.

Targets (issue 17, on two cores): every dense rung converged in <= 100 iterations with
wall time no more than scikit-learn's (ratio <= 1); 2000 x 20000, Q = 10 in <= 60 s on every
seed; the sparse rung's ratio <= 3.

Run::

    python benchmarks/bench_iterations.py                        # the whole ladder (long)
    python benchmarks/bench_iterations.py --rungs medium,large --seeds 0-4 --noise 0.3,1.0
    python benchmarks/bench_iterations.py --quick                # smoke test (seconds)
    python benchmarks/bench_iterations.py --solver second-order  # the experimental solver
    python benchmarks/bench_iterations.py --solver fisher        # scoring with the expected information only
    python benchmarks/bench_iterations.py --check                # + an independent optimiser at each optimum
    python benchmarks/bench_iterations.py --generator counts --theta free --rungs small,medium
    python benchmarks/bench_iterations.py --generator overlap --rungs small,medium,large
    python benchmarks/bench_iterations.py --generator hetero --rungs small,medium,large
    python benchmarks/bench_iterations.py --generator tied --theta free --rungs small,medium --no-sklearn
    python benchmarks/bench_iterations.py --generator overfit --rungs small,medium,large
    python benchmarks/bench_iterations.py --generator blocks --rungs small,medium,large
    python benchmarks/bench_iterations.py --generator zinb --rungs small,medium,large
    python benchmarks/bench_iterations.py --generator uncentred --rungs small,medium --seeds 0-2
    python benchmarks/bench_iterations.py --generator level --rungs small,medium --seeds 0-2
    python benchmarks/bench_iterations.py --generator libsize --rungs small,medium,large
    python benchmarks/bench_iterations.py --init nndsvd-tail       # nmfre's other deterministic start
    python benchmarks/bench_iterations.py --out results.json
    python benchmarks/bench_iterations.py --repeat 1             # one timed run per fit

Timing: each fit (nmfre's and scikit-learn's) is timed after a 0.2 s pause (so that no BLAS
thread of the previous fit still spins on a core) and repeated until its runs took 1 s
together, at most 5 times; the fastest run is reported, as :mod:`timeit` advises (``--repeat
R``: exactly ``R`` runs). Fits under 0.2 s varied by up to 3x from run to run without this
(benchmarks/results/scale.md, thirteenth round).

Columns of the summary table (one row per rung and noise level): ``runs``; nmfre's
``iters median/max``, ``conv`` (converged runs), ``wall s median/max``;
scikit-learn's ``wall s median/max``; ``ratio median/max`` (nmfre / scikit-learn wall time
per data set); ``target`` (met or what was missed); with ``--check``, ``L-BFGS-B decrease
max`` (the largest nll decrease the independent optimiser found from nmfre's optimum, and the
fits' convergence threshold ``1e-10 (1 + |nll|)``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sibling benchmark scripts

#: noise levels: sd = c / sqrt(P)
NOISE = (0.3, 1.0)


def rungs(quick: bool = False) -> dict:
    """The rungs: name -> sizes, density (sparse) and targets."""
    if quick:
        return {
            "small": dict(P=30, N=400, Q=3, K=2, targets={}),
            "medium": dict(P=60, N=1200, Q=3, K=3, targets={}),
            "sparse": dict(P=400, N=2000, Q=3, K=3, density=0.02, targets={}),
        }
    return {
        "small": dict(P=100, N=2000, Q=5, K=4, targets={"iters": 100, "ratio": 1.0}),
        "medium": dict(P=500, N=5000, Q=5, K=3, targets={"iters": 100, "ratio": 1.0}),
        "large": dict(P=2000, N=20_000, Q=10, K=3, targets={"iters": 100, "ratio": 1.0, "wall_s": 60.0}),
        "sparse": dict(P=5000, N=20_000, Q=10, K=3, density=0.01, targets={"ratio": 3.0}),
    }


def _design(P: int, Q: int, K: int, rng, overlap: float = 1.5):
    X = np.zeros((P, Q))
    X[np.arange(P), rng.integers(0, Q, P)] = rng.gamma(2.0, 1.0, P)
    extra = rng.random((P, Q)) < (overlap - 1.0) / Q
    X[extra] += rng.gamma(1.0, 0.5, int(extra.sum()))
    empty = X.sum(axis=0) == 0
    X[rng.integers(0, P, int(empty.sum())), np.flatnonzero(empty)] = 1.0
    X /= X.sum(axis=0)
    theta = rng.exponential(5.0, (Q, K)) * (rng.random((Q, K)) >= 0.25)
    theta[:, 0] += 1.0
    return X, theta


def _covariates(K: int, N: int, rng) -> np.ndarray:
    rows = [np.ones(N)]
    for k in range(1, K):
        rows.append(rng.binomial(1, 0.4, N).astype(float) if k % 2 else rng.normal(0.0, 1.0, N))
    return np.vstack(rows)


def generate(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3, density: float | None = None):
    """One data set ``(Y, A)`` of the benchmark's own design (see the module docstring).

    Parameters
    ----------
    P, N, Q, K : int
    seed : int
    noise : float
        ``c`` in the noise sd ``c / sqrt(P)``.
    density : float or None
        Fraction of stored entries for a sparse (CSR) Y; None: dense.
    """
    rng = np.random.default_rng([17, seed, P, Q, K])
    X, theta = _design(P, Q, K, rng)
    A = _covariates(K, N, rng)
    tau2 = rng.uniform(0.1, 1.0)
    B = theta @ A + rng.normal(0.0, np.sqrt(tau2), (Q, N))
    sd = noise / np.sqrt(P)
    if density is None:
        Y = X @ B
        Y += rng.normal(0.0, sd, (P, N))
        np.maximum(Y, 0.0, out=Y)
        return Y, A
    from bench_scale import sparse_at_random  # (benchmarks/ is on sys.path: see the imports)

    return sparse_at_random(X, B, density, sd, rng), A


def generate_counts(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3):
    """One dense data set ``(Y, A)`` of the counts design (see the module docstring).

    Parameters
    ----------
    P, N, Q, K : int
    seed : int
    noise : float
        ``c``: the counts have mean ``50 / c^2`` per cell on average.
    """
    rng = np.random.default_rng([23, seed, P, Q, K])
    A = np.vstack([np.ones(N)] + [rng.normal(size=N) for _ in range(K - 1)])
    if K > 2:
        A[2] = 0.7 * A[1] + np.sqrt(1.0 - 0.49) * A[2]
    X = rng.dirichlet(np.full(P, 0.5), size=Q).T
    theta = rng.gamma(2.0, 2.0, (Q, K)) * (rng.random((Q, K)) < 0.8)
    theta[:, 0] += 3.0
    M = np.maximum(X @ (theta @ A + rng.normal(0.0, np.sqrt(0.5), (Q, N))), 0.0)
    scale = 50.0 / noise**2 / M.mean()
    return rng.poisson(M * scale) / scale, A


def generate_overlap(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3):
    """One dense data set ``(Y, A)`` of the overlap design (see the module docstring).

    Parameters
    ----------
    P, N, Q, K : int
    seed : int
    noise : float
        ``c``: multiplicative log-normal noise of log-sd ``0.3 c`` and additive Gaussian
        noise of sd ``c / sqrt(P)``.
    """
    rng = np.random.default_rng([31, seed, P, Q, K])
    X = np.empty((P, Q))
    for q in range(Q):
        X[:, q] = rng.dirichlet(np.full(P, 0.1 if q % 2 == 0 else 1.0))
    if Q >= 2:
        X[:, 1] = 0.6 * X[:, 0] + 0.4 * X[:, 1]
    level = rng.integers(0, K, N)
    A = np.vstack([np.ones(N)] + [(level == k).astype(float) for k in range(1, K)])
    theta = rng.lognormal(1.0, 0.8, (Q, K)) * (rng.random((Q, K)) < 0.7)
    theta[:, 0] += 2.0
    tau = rng.uniform(0.3, 1.5)
    M = X @ (theta @ A + tau * rng.standard_normal((Q, N)))
    Y = M * rng.lognormal(0.0, 0.3 * noise, M.shape) + (noise / np.sqrt(P)) * rng.standard_normal(M.shape)
    return np.maximum(Y, 0.0), A


def generate_hetero(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3):
    """One dense data set ``(Y, A)`` of the hetero design (see the module docstring).

    Parameters
    ----------
    P, N, Q, K : int
    seed : int
    noise : float
        ``c``: Gamma noise with coefficient of variation ``sqrt(0.1) c`` (shape
        ``1 / (0.1 c^2)``).
    """
    rng = np.random.default_rng([47, seed, P, Q, K])
    X = 0.3 * rng.dirichlet(np.full(P, 0.3), size=Q).T
    anchors = rng.permutation(P)[: (P // 10) * Q].reshape(Q, -1)
    for q in range(Q):
        X[anchors[q], q] += rng.gamma(2.0, 1.0, anchors.shape[1]) / anchors.shape[1]
    X[rng.permutation(P)[: max(1, P // 50)]] = 0.0
    X /= X.sum(axis=0)
    z = rng.normal(size=N)
    rows = [np.ones(N)]
    for k in range(1, K):
        if k == 1:
            rows.append(np.exp(0.8 * z) - np.exp(0.32))
        elif k == 2:
            rows.append((rng.random(N) < 0.1).astype(float))
        else:
            rows.append(0.9 * z + np.sqrt(1.0 - 0.81) * rng.normal(size=N))
    A = np.vstack(rows)
    scale = 10.0 ** rng.uniform(-1.0, 1.0, Q)
    theta = rng.gamma(1.5, 2.0, (Q, K)) * (rng.random((Q, K)) < 0.75) * scale[:, None]
    theta[:, 0] += 2.0 * scale
    tau = rng.uniform(0.2, 2.0, Q) * scale
    M = np.maximum(X @ (theta @ A + tau[:, None] * rng.standard_normal((Q, N))), 0.0)
    shape = 1.0 / (0.1 * noise**2)
    return rng.gamma(shape, np.where(M > 0, M / shape, 1.0)) * (M > 0), A


def generate_tied(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3):
    """One dense data set ``(Y, A)`` of the tied design (see the module docstring).

    Parameters
    ----------
    P, N, Q, K : int
    seed : int
    noise : float
        ``c``: Gaussian noise of sd ``0.3 c`` times the sd of the mean.
    """
    rng = np.random.default_rng([57, seed, P, Q, K])
    base = rng.dirichlet(np.full(P, 1.0), size=Q).T
    X = base.copy()
    for q in range(1, Q, 2):
        X[:, q] = 0.8 * base[:, q - 1] + 0.2 * base[:, q]
    A = np.vstack([np.ones(N)] + [rng.normal(size=N) for _ in range(K - 1)])
    theta = rng.uniform(0.5, 3.0, (Q, K))
    theta[:, 0] += 5.0
    M = X @ (theta @ A + 0.7 * rng.standard_t(3, (Q, N)))
    return M + 0.3 * noise * M.std() * rng.standard_normal(M.shape), A


def generate_misfit(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3, shift: int = -2):
    """One dense data set ``(Y, A)`` of rank ``max(1, Q + shift)``, for a fit of rank ``Q``
    (``--generator overfit``: ``shift = -2``; ``underfit``: ``+2``; see the module docstring).

    Parameters
    ----------
    P, N, Q, K : int
        Sizes; ``Q`` is the rank the benchmark fits, not the data's.
    seed : int
    noise : float
        ``c``: Gaussian noise of sd ``0.3 c`` times the sd of the mean.
    shift : int
        Data rank minus fitted rank.
    """
    R = max(1, Q + shift)
    rng = np.random.default_rng([61, seed, P, Q, K, R])
    X = rng.gamma(0.4, 1.0, (P, R))
    X /= X.sum(axis=0)
    A = np.vstack([np.ones(N)] + [rng.normal(size=N) for _ in range(K - 1)])
    theta = rng.gamma(2.0, 1.0, (R, K))
    theta[:, 0] += 10.0
    M = X @ (theta @ A + rng.normal(0.0, 0.6, (R, N)))
    return np.maximum(M + 0.3 * noise * M.std() * rng.standard_normal(M.shape), 0.0), A


def generate_blocks(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3):
    """One dense data set ``(Y, A)`` of the blocks design (``--generator blocks``; see the
    module docstring): :func:`nmfre.simulate.block_sparse` (feature ``p`` loads only on
    component ``p Q // P``; Theta U(0, 10); U(0, 1) covariates; ``U ~ N(0, 0.25)``; clipped at
    0) with noise sd ``c / sqrt(P)``, drawn from this script's own stream ``[71, seed, P, Q, K]``
    (not the tests' integer seeds)."""
    from nmfre.simulate import block_sparse

    d = block_sparse(P, N, Q, K, noise_sd=noise / np.sqrt(P), seed=np.random.default_rng([71, seed, P, Q, K]))
    return d["Y"].values, d["A"].values


def generate_zinb(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3):
    """One dense data set ``(Y, A)`` of the zinb design (``--generator zinb``; see the module
    docstring): zero-inflated negative-binomial counts on a common scale.

    Parameters
    ----------
    P, N, Q, K : int
    seed : int
        The stream is ``default_rng(10_000 + seed)`` (this design's first draft, on which the
        twenty-fifth round of benchmarks/results/scale.md found a fit that stalled; kept so
        that it reproduces).
    noise : float
        ``c``: the counts' negative-binomial shape is ``2 / c`` (more overdispersed as ``c``
        grows); their mean is 0.5 per cell before the zeros are inflated.
    """
    rng = np.random.default_rng(10_000 + seed)
    abundance = rng.pareto(1.5, P) + 0.05
    X = np.empty((P, Q))
    primary = rng.integers(0, Q, P)
    for q in range(Q):
        main = rng.lognormal(0.0, 1.0, P)
        other = rng.lognormal(-3.0, 1.0, P) * (rng.random(P) < 0.3)
        X[:, q] = np.where(primary == q, main, other) * abundance
    X /= X.sum(axis=0)
    A = np.empty((K, N))
    A[0] = 1.0
    if K > 1:
        A[1] = rng.random(N) < 0.5
    for k in range(2, K):
        A[k] = rng.gamma(2.0, 0.5, N) - 1.0
    theta = rng.gamma(1.0, 3.0, (Q, K)) * (rng.random((Q, K)) < 0.7)
    theta[:, 0] += 4.0
    if K > 1:
        theta[:, 1] *= rng.choice([0.0, 1.0], Q)
    U = rng.normal(0.0, 0.6, (Q, N)) * theta[:, :1] / 4.0
    M = np.maximum(X @ (theta @ A + U), 0.0)
    scale = 5.0 * P / max(M.sum() / N, 1e-12) / 10.0  # 0.5 counts per cell on average
    shape = 2.0 / noise
    Y = rng.poisson(rng.gamma(shape, (scale * M) / shape)).astype(float)
    Y[rng.random((P, N)) < np.exp(-scale * M / 2.0)] = 0.0
    return Y / scale, A


def generate_overfit(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3):
    """:func:`generate_misfit` with data of rank ``max(1, Q - 2)``."""
    return generate_misfit(P, N, Q, K, seed, noise, -2)


def generate_underfit(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3):
    """:func:`generate_misfit` with data of rank ``Q + 2``."""
    return generate_misfit(P, N, Q, K, seed, noise, 2)


def generate_level(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3, shift: float = 0.0,
                   level: float = 0.0):
    """One dense data set ``(Y, A)`` of the common-level design (see the module docstring):
    ``shift`` moves the Gaussian covariates to ``shift + z`` before Y is made, ``level`` is added
    to every intercept.

    Parameters
    ----------
    P, N, Q, K : int
    seed : int
    noise : float
        ``c``: the noise sd is ``0.3 c`` times the sd of the mean.
    shift, level : float
    """
    rng = np.random.default_rng([777, seed])
    X = rng.dirichlet(np.full(P, 0.5), Q).T
    g = min(2, K - 1)
    z = rng.standard_normal((g, N))
    if g == 2:
        z[1] = 0.7 * z[0] + np.sqrt(1.0 - 0.49) * z[1]
    A = np.vstack([np.ones((1, N)), shift + z, rng.integers(0, 2, (K - 1 - g, N)).astype(float)])
    theta = rng.gamma(2.0, 1.0, (Q, K)) * (rng.random((Q, K)) > 0.2)
    theta[:, 0] += 3.0 + level
    M = X @ (theta @ A + rng.normal(0.0, 0.7, (Q, N)))
    return np.maximum(M + noise * M.std() * 0.3 * rng.standard_normal(M.shape), 0.0), A


def generate_uncentred(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3):
    """:func:`generate_level` with the Gaussian covariates at ``10 + z``."""
    return generate_level(P, N, Q, K, seed, noise, shift=10.0)


def generate_level30(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3):
    """:func:`generate_level` with 30 added to every intercept."""
    return generate_level(P, N, Q, K, seed, noise, level=30.0)


def generate_libsize(P: int, N: int, Q: int, K: int, seed: int, noise: float = 0.3):
    """One dense data set ``(Y, A)`` of the libsize design (see the module docstring): the
    model's mean times a log-normal(0, 0.7) scale per unit, plus Gaussian noise of sd ``0.3 c``
    times the sd of the scaled mean, clipped at 0.

    Parameters
    ----------
    P, N, Q, K : int
    seed : int
    noise : float
        ``c`` in the noise sd.
    """
    rng = np.random.default_rng([101, seed, P, Q, K])
    X = rng.dirichlet(np.full(P, 0.3), size=Q).T
    A = np.vstack([np.ones(N)] + [rng.normal(size=N) for _ in range(K - 1)])
    theta = rng.gamma(2.0, 2.0, (Q, K)) * (rng.random((Q, K)) < 0.7)
    theta[:, 0] += 2.0
    B = theta @ A + rng.normal(0.0, 0.7, (Q, N))
    M = np.maximum(X @ B, 0.0) * rng.lognormal(0.0, 0.7, N)
    Y = M + noise * M.std() * 0.3 * rng.standard_normal(M.shape)
    return np.maximum(Y, 0.0), A


#: generators whose Y can be negative (no scikit-learn comparison)
SIGNED = frozenset({"tied"})
#: nmfre's deterministic starts (``--init``)
INITS = ("nndsvd", "nndsvd-tail")
GENERATORS = {"ladder": generate, "counts": generate_counts, "overlap": generate_overlap, "hetero": generate_hetero,
              "tied": generate_tied, "overfit": generate_overfit, "underfit": generate_underfit,
              "blocks": generate_blocks, "zinb": generate_zinb, "uncentred": generate_uncentred,
              "level": generate_level30, "libsize": generate_libsize}


#: seconds of sleep before each timed run (not timed): OpenBLAS's threads spin for up to about
#: 0.1 s after a call, and would otherwise still hold a core when the next run starts
PAUSE_S = 0.2


def timed(fn, repeat: int | str = "auto"):
    """``(result of the last call, wall s, CPU s, all wall s)``: ``fn()`` run ``repeat`` times
    after a :data:`PAUSE_S` pause each, the fastest run reported (as :mod:`timeit` advises);
    ``"auto"``: until the runs took 1 s together, at most 5 (one run when a run takes 1 s)."""
    runs, out = [], None
    while True:
        time.sleep(PAUSE_S)
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        runs.append((time.perf_counter() - w0, time.process_time() - c0))
        if (len(runs) >= 5 or sum(w for w, _ in runs) >= 1.0) if repeat == "auto" else len(runs) >= int(repeat):
            break
    wall, cpu = min(runs)
    return out, wall, cpu, [w for w, _ in runs]


def run_one(spec: dict, seed: int, noise: float, sklearn: bool = True, solver: str = "default",
            check: bool = False, generator: str = "ladder", theta: str = "nonneg",
            repeat: int | str = "auto", init: str = "nndsvd") -> dict:
    """Fit nmfre and scikit-learn on one data set; wall and CPU seconds, iterations, nll.

    Each side's time is the fastest of ``repeat`` runs (:func:`timed`; ``wall_all_s`` lists
    them all).

    ``check``: start an independent optimiser at nmfre's estimate
    (:func:`check_optimum.check_fit`: L-BFGS-B on a JAX nll written from the model's
    definition) and record the nll decrease it finds (``rec["check"]``).

    ``solver``: ``"default"`` (nmfre's default ML iteration), ``"fisher"`` (the default
    iteration with the expected-information direction only:
    :data:`nmfre.core.ml.OBSERVED_HESSIAN` off) or ``"second-order"``
    (:data:`nmfre.core.ml.SECOND_ORDER` switched on for this fit).

    ``generator``: ``"ladder"`` (:func:`generate`), ``"counts"`` (:func:`generate_counts`,
    dense only), ``"overlap"`` (:func:`generate_overlap`, dense only), ``"hetero"``
    (:func:`generate_hetero`, dense only), ``"tied"`` (:func:`generate_tied`, dense only),
    ``"overfit"`` or ``"underfit"`` (:func:`generate_misfit`, dense only: the data's rank is
    two below or above ``spec["Q"]``), ``"blocks"`` (:func:`generate_blocks`), ``"zinb"``
    (:func:`generate_zinb`), ``"uncentred"`` or ``"level"`` (:func:`generate_level`),
    ``"libsize"`` (:func:`generate_libsize`; these five dense only); ``theta``: the sign of Theta in nmfre's fit
    (``"nonneg"`` or ``"free"``); ``init``: nmfre's start (``"nndsvd"``, the package default,
    or ``"nndsvd-tail"``; the fit's ``restarts`` name the start it used).
    """
    import nmfre
    from nmfre.core import ml

    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; deterministic starts: {', '.join(INITS)}")
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; generators: {', '.join(GENERATORS)}")
    if sklearn and generator in SIGNED:
        raise ValueError(f"the {generator} generator makes Y with negative entries, which scikit-learn's NMF does not "
                         "take: run it without scikit-learn (--no-sklearn)")
    if generator != "ladder":
        if spec.get("density"):
            raise ValueError(f"the {generator} generator is dense only")
        Y, A = GENERATORS[generator](spec["P"], spec["N"], spec["Q"], spec["K"], seed, noise)
    else:
        Y, A = generate(spec["P"], spec["N"], spec["Q"], spec["K"], seed, noise, spec.get("density"))
    rec = {"seed": seed, "noise": noise, "generator": generator, "theta": theta, "init": init}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saved = ml.SECOND_ORDER, ml.OBSERVED_HESSIAN
        ml.SECOND_ORDER = solver == "second-order" or (saved[0] and solver == "default")
        ml.OBSERVED_HESSIAN = saved[1] and solver != "fisher"
        try:
            fit, wall, cpu, walls = timed(lambda: nmfre.fit(Y, A, rank=spec["Q"], theta=theta, init=init), repeat)
        finally:
            ml.SECOND_ORDER, ml.OBSERVED_HESSIAN = saved
        rec["solver"] = solver
        rec["nmfre"] = {"wall_s": wall, "cpu_s": cpu, "wall_all_s": walls,
                        "n_iter": int(fit.n_iter), "converged": bool(fit.converged), "nll": float(-fit.loglik),
                        "stop_reason": fit.stop_reason, "start": str(fit.restarts["init"].iloc[0]),
                        "warnings": sorted({f"{w.category.__name__}: {str(w.message)[:120]}" for w in caught})}
    if check:
        from check_optimum import check_fit  # (benchmarks/ is on sys.path: see the imports)

        rec["check"] = check_fit(Y, A, fit, nonneg=theta == "nonneg")
    del fit
    if sklearn:
        from sklearn.decomposition import NMF

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = NMF(n_components=spec["Q"], init="nndsvda", random_state=0)
            _, wall, cpu, walls = timed(lambda: model.fit_transform(Y), repeat)
            rec["sklearn"] = {"wall_s": wall, "cpu_s": cpu, "wall_all_s": walls,
                              "n_iter": int(model.n_iter_), "err": float(model.reconstruction_err_)}
        rec["ratio"] = rec["nmfre"]["wall_s"] / rec["sklearn"]["wall_s"]
    return rec


def check(spec: dict, runs: list[dict]) -> str:
    """``met`` or what was missed, against the rung's targets."""
    t = spec.get("targets", {})
    if not t:
        return "n/a"
    miss = []
    bad = [r["seed"] for r in runs if not r["nmfre"]["converged"]]
    if bad:
        miss.append(f"not converged (seeds {bad})")
    if "iters" in t:
        worst = max(r["nmfre"]["n_iter"] for r in runs)
        if worst > t["iters"]:
            miss.append(f"max {worst} iterations > {t['iters']}")
    if "wall_s" in t:
        worst = max(r["nmfre"]["wall_s"] for r in runs)
        if worst > t["wall_s"]:
            miss.append(f"max {worst:.3g} s > {t['wall_s']:g} s")
    unmeasured = ""
    if "ratio" in t and all("ratio" in r for r in runs):
        worst = max(r["ratio"] for r in runs)
        if worst > t["ratio"]:
            miss.append(f"max ratio {worst:.3g} > {t['ratio']:g}")
    elif "ratio" in t:
        unmeasured = " (ratio to scikit-learn not measured)"
    return ("met" if not miss else "missed: " + "; ".join(miss)) + unmeasured


def summary(results: dict, specs: dict) -> str:
    """Markdown table, one row per rung and noise level."""
    head = ["rung", "data", "noise c", "runs", "iters median/max", "conv", "nmfre wall s median/max",
            "sklearn wall s median/max", "ratio median/max", "target"]
    if any("check" in r for runs in results.values() for r in runs):
        head.append("L-BFGS-B decrease max")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in results.items():
        spec = specs[name]
        data = (f"{'sparse' if spec.get('density') else 'dense'} {spec['P']}×{spec['N']}, Q={spec['Q']}, "
                f"K={spec['K']}" + (f", {spec['density']:.0%}" if spec.get("density") else ""))
        gens = sorted({(r.get("generator", "ladder"), r.get("theta", "nonneg"), r.get("init", "nndsvd")) for r in runs})
        data += "".join(f", {g} generator, Theta {t}, init {i}" for g, t, i in gens)
        for c in sorted({r["noise"] for r in runs}):
            rr = [r for r in runs if r["noise"] == c]
            it = [r["nmfre"]["n_iter"] for r in rr]
            wt = [r["nmfre"]["wall_s"] for r in rr]
            cells = [name, data, f"{c:g}", str(len(rr)), f"{np.median(it):g} / {max(it)}",
                     f"{sum(r['nmfre']['converged'] for r in rr)}/{len(rr)}",
                     f"{np.median(wt):.3g} / {max(wt):.3g}"]
            if all("sklearn" in r for r in rr):
                sw = [r["sklearn"]["wall_s"] for r in rr]
                ra = [r["ratio"] for r in rr]
                cells += [f"{np.median(sw):.3g} / {max(sw):.3g}", f"{np.median(ra):.3g} / {max(ra):.3g}"]
            else:
                cells += ["—", "—"]
            cells.append(check(spec, rr))
            if all("check" in r for r in rr):
                dec = max(r["check"]["decrease"] for r in rr)
                cells.append(f"{dec:.2g} (tol {max(r['check']['tol'] for r in rr):.2g})")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    """``"0-4"`` (a range, both ends included) or ``"50,100"`` -> list of ints."""
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--rungs", help="comma-separated rung names (default: all)")
    parser.add_argument("--seeds", default="0-4", help="data seeds, '0-4' or '0,3' (default 0-4)")
    parser.add_argument("--noise", default=",".join(str(c) for c in NOISE), help="noise levels c (sd c/sqrt(P))")
    parser.add_argument("--no-sklearn", action="store_true", help="nmfre only")
    parser.add_argument("--solver", default="default", choices=["default", "fisher", "second-order"],
                        help="nmfre's ML iteration (default: the package default)")
    parser.add_argument("--check", action="store_true",
                        help="start an independent optimiser (L-BFGS-B, JAX nll) at each nmfre optimum "
                             "and report the nll decrease it finds (needs jax)")
    parser.add_argument("--generator", default="ladder", choices=list(GENERATORS),
                        help="data generator (default: the ladder's; every other one: "
                             "dense rungs only)")
    parser.add_argument("--theta", default="nonneg", choices=["nonneg", "free"], help="sign of Theta in the fits")
    parser.add_argument("--init", default="nndsvd", choices=list(INITS),
                        help="nmfre's start (default 'nndsvd', the package default)")
    parser.add_argument("--repeat", default="auto",
                        help="timed runs per fit, the fastest reported; 'auto' (default): until they took "
                             "1 s together, at most 5")
    parser.add_argument("--out", help="write all numbers as JSON")
    args = parser.parse_args(argv)
    if args.repeat != "auto" and not (args.repeat.isdigit() and int(args.repeat) >= 1):
        raise SystemExit(f"--repeat must be 'auto' or a positive integer, got {args.repeat!r}")
    specs = rungs(args.quick)
    dense = [n for n in specs if not specs[n].get("density")]
    names = ((list(specs) if args.generator == "ladder" else dense) if not args.rungs
             else [s.strip() for s in args.rungs.split(",")])
    for n in names:
        if n not in specs:
            raise SystemExit(f"unknown rung {n!r}; rungs: {', '.join(specs)}")
        if args.generator != "ladder" and n not in dense:
            raise SystemExit(f"--generator {args.generator} is dense only; rung {n!r} is sparse")
    seeds = int_list(args.seeds)
    noises = [float(c) for c in args.noise.split(",")]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cpus usable {cpus}; load average {os.getloadavg()}", flush=True)
    results: dict = {}
    for n in names:
        results[n] = []
        for c in noises:
            for s in seeds:
                rec = run_one(specs[n], s, c, sklearn=not args.no_sklearn, solver=args.solver, check=args.check,
                              generator=args.generator, theta=args.theta, repeat=args.repeat, init=args.init)
                results[n].append(rec)
                m = rec["nmfre"]
                line = (f"{n} c={c:g} seed={s}: nmfre {m['wall_s']:.3g} s, {m['n_iter']} it, "
                        f"converged={m['converged']}, nll={m['nll']:.10g}")
                if "sklearn" in rec:
                    line += f"; sklearn {rec['sklearn']['wall_s']:.3g} s ({rec['sklearn']['n_iter']} it), " \
                            f"ratio {rec['ratio']:.3g}"
                if "check" in rec:
                    k = rec["check"]
                    line += (f"; L-BFGS-B from the optimum: decrease {k['decrease']:.3g} (tol {k['tol']:.2g}, "
                             f"objectives agree to {k['agree']:.2g}, {k['n_iter']} it, {k['message'][:40]})")
                print(line, flush=True)
    table = summary(results, specs)
    print(f"\nload average at end {os.getloadavg()}\n\n" + table)
    out = {"quick": args.quick, "cpus": cpus, "solver": args.solver, "generator": args.generator,
           "theta": args.theta, "results": results, "table": table}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
