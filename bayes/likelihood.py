"""The marginal likelihood of NMF-RE on compressed statistics, with missing values.

Given X, Theta, sigma^2 and tau^2, unit ``n`` has ``y_n ~ N(X Theta a_n, Sigma)`` with
``Sigma = sigma^2 I + tau^2 X X'`` (U marginalised). The log-likelihood of all units
depends on ``Y`` only through ``G = Y Y'`` (P x P), ``Y A'`` (P x K), ``A A'`` (K x K)
and the counts (the compressed statistics of :mod:`nmfre.core.stats`; docs: Methods):

* ``||R||^2 = tr G - 2 tr(X'YA'Theta') + tr(Theta AA'Theta' X'X)``;
* ``W = X'RR'X = X'GX - X'YA'Theta'X'X - X'X Theta AY'X + X'X Theta AA'Theta'X'X``;
* with ``C = I_Q + (tau^2 / sigma^2) X'X`` (= ``M / lambda``, ``M = X'X + lambda I``):
  ``log det Sigma = P log sigma^2 + log det C`` and
  ``sum_n r_n' Sigma^-1 r_n = (||R||^2 - (tau^2/sigma^2) tr(C^-1 W)) / sigma^2``.

One evaluation (and its gradient) costs O(P^2 Q + P Q K) whatever the number of units.

Missing values: ``NaN`` in ``Y`` marks a missing cell (missing at random). Units that
share a pattern of observed features share their statistics; the pattern's ``X_O`` is X
with the missing rows set to zero, so every pattern has the same array shapes and the
log-likelihood is one vectorised sum over patterns (cost O(B P^2 Q) for B patterns).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from nmfre.core.stats import patterns as observed_patterns

__all__ = ["Stats", "loglik", "statistics"]


class Stats(NamedTuple):
    """Compressed statistics of ``(Y, A)``, one entry per pattern of observed features.

    A ``NamedTuple`` of arrays, hence a JAX pytree: it can be passed to jitted functions
    and to the models in place of ``Y``. Leading axis: pattern ``b`` (one for complete data).

    Attributes
    ----------
    G : array (B, P, P)
        ``Y_b Y_b'`` with the missing cells set to zero.
    YA : array (B, P, K)
        ``Y_b A_b'``.
    AA : array (B, K, K)
        ``A_b A_b'``.
    ysum : array (B, P)
        Row sums of ``Y_b`` (used by the default priors).
    n : array (B,)
        Number of units with the pattern.
    mask : array (B, P)
        1.0 where the pattern observes the feature, else 0.0.
    """

    G: Any
    YA: Any
    AA: Any
    ysum: Any
    n: Any
    mask: Any

    @property
    def P(self) -> int:
        """Number of features."""
        return self.mask.shape[-1]

    @property
    def K(self) -> int:
        """Number of covariates."""
        return self.AA.shape[-1]

    @property
    def n_patterns(self) -> int:
        """Number of patterns of observed features."""
        return self.mask.shape[-2]


def _is_tracer(x) -> bool:
    import jax

    return isinstance(x, jax.core.Tracer)


def statistics(Y, A) -> Stats:
    """Compressed statistics of ``Y`` (P x N, ``NaN`` = missing) and ``A`` (K x N).

    Parameters
    ----------
    Y : array (P, N)
        Data; ``NaN`` marks a missing cell. A JAX array being traced is taken as
        complete (patterns need concrete values).
    A : array (K, N)
        Covariates.

    Returns
    -------
    Stats
        numpy arrays (JAX arrays when ``Y`` is traced), patterns sorted
        lexicographically (:func:`nmfre.core.stats.patterns` with ``order="sorted"``);
        units with no observed feature are dropped.
    """
    if _is_tracer(Y) or _is_tracer(A):
        Y, A = jnp.asarray(Y), jnp.asarray(A)
        return Stats((Y @ Y.T)[None], (Y @ A.T)[None], (A @ A.T)[None], Y.sum(axis=1)[None],
                     jnp.full((1,), Y.shape[1], dtype=Y.dtype), jnp.ones((1, Y.shape[0]), dtype=Y.dtype))
    Y = np.asarray(Y, dtype=float)
    A = np.asarray(A, dtype=float)
    obs = ~np.isnan(Y)
    if obs.all():
        return Stats((Y @ Y.T)[None], (Y @ A.T)[None], (A @ A.T)[None], Y.sum(axis=1)[None],
                     np.array([float(Y.shape[1])]), np.ones((1, Y.shape[0])))
    patterns, inverse = observed_patterns(obs, order="sorted")
    Y0 = np.where(obs, Y, 0.0)
    keep = [b for b in range(len(patterns)) if patterns[b].any()]  # units with nothing observed drop out
    G, YA, AA, ys, n = [], [], [], [], []
    for b in keep:
        units = inverse == b
        Yb, Ab = Y0[:, units], A[:, units]
        G.append(Yb @ Yb.T)
        YA.append(Yb @ Ab.T)
        AA.append(Ab @ Ab.T)
        ys.append(Yb.sum(axis=1))
        n.append(float(units.sum()))
    return Stats(np.array(G), np.array(YA), np.array(AA), np.array(ys), np.array(n), patterns[keep].astype(float))


def loglik(stats: Stats, X, theta, sigma2, tau2):
    """Marginal log-likelihood of all units from the compressed statistics.

    Parameters
    ----------
    stats : Stats
        From :func:`statistics`.
    X : array (P, Q)
    theta : array (Q, K)
    sigma2, tau2 : float
        Noise and random-effect variances.

    Returns
    -------
    jax scalar
        ``sum_n log N(y_n,O | X_O Theta a_n, sigma2 I + tau2 X_O X_O')``.
    """
    s = stats
    Q = X.shape[-1]
    Xb = s.mask[:, :, None] * X  # (B, P, Q): rows of unobserved features set to 0
    XtX = jnp.einsum("bpq,bpr->bqr", Xb, Xb)
    F = jnp.einsum("bpq,bpk,rk->bqr", Xb, s.YA, theta)  # X'YA'Theta'
    H = jnp.einsum("qk,bkl,rl->bqr", theta, s.AA, theta)  # Theta AA'Theta'
    XtGX = jnp.einsum("bpq,bps,bsr->bqr", Xb, s.G, Xb)
    trG = jnp.trace(s.G, axis1=1, axis2=2)
    rss = trG - 2.0 * jnp.trace(F, axis1=1, axis2=2) + jnp.einsum("bqr,brq->b", H, XtX)
    FX = F @ XtX
    W = XtGX - FX - jnp.swapaxes(FX, 1, 2) + XtX @ H @ XtX
    inv_lam = tau2 / sigma2  # 1 / lambda (nmfre's lam = sigma2 / tau2)
    C = jnp.eye(Q) + inv_lam * XtX
    L = jnp.linalg.cholesky(C)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=1, axis2=2)), axis=1)
    CinvW = cho_solve((L, True), W)
    quad = (rss - inv_lam * jnp.trace(CinvW, axis1=1, axis2=2)) / sigma2
    nobs = jnp.sum(s.mask, axis=1)
    return -0.5 * jnp.sum(s.n * (nobs * jnp.log(2.0 * jnp.pi * sigma2) + logdet) + quad)


def data_moments(stats: Stats) -> tuple[float, float]:
    """Mean and mean square of the observed cells (numpy statistics)."""
    count = float(np.sum(np.asarray(stats.n) * np.asarray(stats.mask).sum(axis=1)))
    total = float(np.sum(np.asarray(stats.ysum)))
    sq = float(np.sum(np.trace(np.asarray(stats.G), axis1=1, axis2=2)))
    return total / count, sq / count
