"""An independent optimiser started at nmfre's optimum (issue 17: "the nll reached against an
independent optimiser started at the returned optimum").

The marginal nll of NMF-RE, ``y_n ~ N(X Theta a_n, sigma2 I + tau2 X X')``, is written here
from the model's definition in JAX (float64), with nothing taken from nmfre but the point to
start at: by the matrix determinant lemma and Woodbury's identity, with ``lambda = sigma2 /
tau2``, ``M = X'X + lambda I`` and ``R = Y - X Theta A``,

    nll = 1/2 [ N P log(2 pi sigma2) + N (log det M - Q log lambda)
                + (||R||^2 - tr(M^-1 X'R R'X)) / sigma2 ],

``R`` formed explicitly for a dense Y of at most ``DIRECT_MAX`` entries; for larger or
``scipy.sparse`` Y the two quadratic forms come from the gram matrix ``G = Y Y'`` (formed
here once): ``||R||^2 = tr G - 2 tr(Theta'X'YA') + tr(Theta AA'Theta'X'X)`` and ``X'R R'X =
X'GX - X'YA'Theta'X'X - (.)' + X'X Theta AA' Theta' X'X``. Its gradient comes from JAX's automatic differentiation
(not from nmfre's formulas) and scipy's L-BFGS-B minimises it over ``X = Z / colsum(Z)``
(``Z >= 0``: the simplex columns without equality constraints), ``Theta`` (``>= 0`` for a
non-negative fit) and ``log sigma2``, ``log tau2``, started at nmfre's returned estimate. A
dense Y with NaN entries (missing) gets the nll of its observed entries, unit by unit
(:func:`_masked_nll`).

:func:`polish` returns the nll there by both codes (they must agree to rounding: a check of
the objective) and the lowest nll L-BFGS-B reached; a decrease larger than the fit's
tolerance ``tol (1 + |nll|)`` would mean nmfre stopped short of a local optimum.

Run on its own (a quick self-check on small data)::

    python benchmarks/check_optimum.py
"""

from __future__ import annotations

import time

import numpy as np

#: largest dense Y (entries) whose residuals are formed explicitly
DIRECT_MAX = 10_000_000


def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return jax, jnp


def make_nll(Y, A: np.ndarray, Q: int):
    """``nll(Z, Theta, log_sigma2, log_tau2)`` in JAX for data ``Y`` (dense or ``scipy.sparse``)."""
    jax, jnp = _jax()
    import scipy.sparse as sp

    P, N = Y.shape
    An = np.asarray(A, dtype=float)
    A = jnp.asarray(An)
    if not sp.issparse(Y) and np.isnan(np.asarray(Y, dtype=float)).any():
        return _masked_nll(np.asarray(Y, dtype=float), An, Q)
    if sp.issparse(Y) or P * N > DIRECT_MAX:
        G = Y @ Y.T
        G = jnp.asarray(G.toarray() if sp.issparse(G) else np.asarray(G))
        YA = jnp.asarray(np.asarray(Y @ An.T))
        AA = jnp.asarray(An @ An.T)
        trG = float(jnp.trace(G))

        def quad(X, theta):  # (||R||^2, X'RR'X) from the gram matrix
            XtX = X.T @ X
            C1 = theta @ AA @ theta.T
            XtYA = X.T @ YA
            rss = trG - 2.0 * jnp.sum(theta * XtYA) + jnp.sum(C1 * XtX)
            T = XtYA @ theta.T @ XtX
            return rss, X.T @ G @ X - T - T.T + XtX @ C1 @ XtX
    else:
        Yd = jnp.asarray(np.asarray(Y, dtype=float))

        def quad(X, theta):
            R = Yd - X @ (theta @ A)
            XtR = X.T @ R
            return jnp.sum(R * R), XtR @ XtR.T

    def nll(Z, theta, ls2, lt2):
        X = Z / jnp.sum(Z, axis=0)
        s2, t2 = jnp.exp(ls2), jnp.exp(lt2)
        lam = s2 / t2
        M = X.T @ X + lam * jnp.eye(Q)
        rss, WR = quad(X, theta)  # ||R||^2, X'R R'X
        L = jnp.linalg.cholesky(M)
        Li = jax.scipy.linalg.solve_triangular(L, jnp.eye(Q), lower=True)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diag(L)))
        return 0.5 * (N * P * jnp.log(2 * jnp.pi * s2) + N * (logdet - Q * jnp.log(lam))
                      + (rss - jnp.sum((Li @ WR) * Li)) / s2)

    return nll


def _masked_nll(Y: np.ndarray, A: np.ndarray, Q: int):
    """The nll of the observed entries (NaN in ``Y`` missing): unit ``n``'s observed features
    ``O`` follow ``N(X_O Theta a_n, sigma2 I + tau2 X_O X_O')``; per unit, with ``M_n = X_O'X_O
    + lambda I``, ``|O| log(2 pi sigma2) + log det M_n - Q log lambda + (||r||^2 - r'X_O M_n^-1
    X_O'r) / sigma2`` (halved and summed), ``r`` the unit's observed residuals. Dense arrays of
    ``N x Q x Q``: for the sizes of a check, not for large data."""
    jax, jnp = _jax()
    W = jnp.asarray((~np.isnan(Y)).astype(float))
    Y0, A = jnp.asarray(np.nan_to_num(Y)), jnp.asarray(A)
    n_obs = jnp.sum(W, axis=0)

    def nll(Z, theta, ls2, lt2):
        X = Z / jnp.sum(Z, axis=0)
        s2, t2 = jnp.exp(ls2), jnp.exp(lt2)
        lam = s2 / t2
        R = W * (Y0 - X @ (theta @ A))
        M = jnp.einsum("pn,pq,pr->nqr", W, X, X) + lam * jnp.eye(Q)
        L = jnp.linalg.cholesky(M)
        z = jax.scipy.linalg.solve_triangular(L, (X.T @ R).T[..., None], lower=True)[..., 0]
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=1, axis2=2)), axis=1)
        quad = (jnp.sum(R * R, axis=0) - jnp.sum(z * z, axis=1)) / s2
        return 0.5 * jnp.sum(n_obs * jnp.log(2 * jnp.pi * s2) + logdet - Q * jnp.log(lam) + quad)

    return nll


def polish(Y, A: np.ndarray, X: np.ndarray, theta: np.ndarray, sigma2: float, tau2: float, nonneg: bool,
           maxiter: int = 500) -> dict:
    """L-BFGS-B from ``(X, Theta, sigma2, tau2)``; returns ``nll_start`` (this file's objective
    at the start), ``nll_end`` (the lowest it reached), ``n_iter``, ``n_eval``, ``seconds`` and
    L-BFGS-B's ``message``."""
    jax, jnp = _jax()
    from scipy.optimize import minimize

    P, Q = X.shape
    K = A.shape[0]
    nll = make_nll(Y, A, Q)
    vg = jax.jit(jax.value_and_grad(lambda v: nll(v[: P * Q].reshape(P, Q), v[P * Q:P * Q + Q * K].reshape(Q, K),
                                                  v[-2], v[-1])))

    def fun(v):
        f, g = vg(jnp.asarray(v))
        return float(f), np.asarray(g, dtype=float)

    v0 = np.concatenate([np.asarray(X, float).ravel(), np.asarray(theta, float).ravel(),
                         [np.log(sigma2), np.log(tau2)]])
    bounds = [(0.0, None)] * (P * Q) + [(0.0 if nonneg else None, None)] * (Q * K) + [(None, None)] * 2
    f0 = fun(v0)[0]
    t0 = time.perf_counter()
    res = minimize(fun, v0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": maxiter, "maxfun": 2 * maxiter, "ftol": 1e-16, "gtol": 1e-12})
    return {"nll_start": f0, "nll_end": float(min(res.fun, f0)), "n_iter": int(res.nit), "n_eval": int(res.nfev),
            "seconds": time.perf_counter() - t0, "message": str(res.message)}


def check_fit(Y, A: np.ndarray, fit, nonneg: bool, maxiter: int = 500) -> dict:
    """:func:`polish` from an :class:`nmfre.NMFREFit` ``fit`` of ``Y``; adds ``nll_nmfre``
    (the fit's own), ``agree`` (``|nll_start - nll_nmfre|``), ``decrease`` (``nll_nmfre -
    nll_end``) and ``tol`` (the fit's convergence threshold ``1e-10 (1 + |nll|)``)."""
    out = polish(Y, A, fit.X.values, fit.theta.values, fit.sigma2, fit.tau2, nonneg, maxiter)
    nll_fit = -float(fit.loglik)
    out.update(nll_nmfre=nll_fit, agree=abs(out["nll_start"] - nll_fit), decrease=nll_fit - out["nll_end"],
               tol=1e-10 * (1 + abs(nll_fit)))
    return out


if __name__ == "__main__":
    import warnings

    import nmfre
    from nmfre.simulate import block_sparse

    d = block_sparse(P=30, N=400, rank=3, K=2, seed=0)
    Y, A = d["Y"].values, d["A"].values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = nmfre.fit(Y, A, rank=3, theta="nonneg")
    print(check_fit(Y, A, fit, nonneg=True))
