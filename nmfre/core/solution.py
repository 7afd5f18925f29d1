"""The result both solvers return: one frozen dataclass with the same fields."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Solution:
    """Estimates and convergence report of one solver run (plain arrays).

    Attributes
    ----------
    X : ndarray (P, Q)
        Basis, columns on the simplex.
    theta : ndarray (Q, K)
        Covariate effects.
    U : ndarray (Q, N)
        Random effects: the BLUP (ML) or the paper algorithm's centred U.
    sigma2, tau2, lam : float
        Variances and ``lambda = sigma2 / tau2``.
    nll : float
        Marginal negative log-likelihood at the estimate (ML: from the residuals where the
        compressed statistics cannot resolve it, :func:`nmfre.engine.resolved`).
    nll_trace : ndarray
        nll after each iteration (as the iterations computed it).
    converged : bool
    n_iter : int
    cap_hit : bool
        The df cap bound at some iteration.
    stop_reason : str
        ``"tol"``, ``"max_iter"``, ``"nonfinite"`` (paper), ``"degenerate"`` (ML, sign-free
        Theta: two components merge while their effects diverge,
        :func:`nmfre.core.ml.degeneracy`) or ``"stalled"`` (ML: iterations stopped changing the
        estimates before the tolerance was met, :data:`nmfre.core.ml.STALL_PATIENCE`).
    objective_trace : ndarray or None
        The paper algorithm's objective ``||R||^2 + lambda ||U||^2`` per iteration
        (None for ML).
    cap_hit_iters : tuple of int
        Iterations (1-based) at which the cap bound.
    rel_change : float
        Last relative change of the stopping criterion (paper method; NaN for ML).
    """

    X: np.ndarray
    theta: np.ndarray
    U: np.ndarray
    sigma2: float
    tau2: float
    lam: float
    nll: float
    nll_trace: np.ndarray
    converged: bool
    n_iter: int
    cap_hit: bool
    stop_reason: str
    objective_trace: np.ndarray | None = None
    cap_hit_iters: tuple[int, ...] = field(default_factory=tuple)
    rel_change: float = float("nan")

    def ordered(self) -> Solution:
        """Components in the paper's canonical order: increasing ``sum_p (p / P) X[p, q]``
        (the centre of mass of each column along the features; stable for ties)."""
        P, Q = self.X.shape
        if Q == 1:
            return self
        order = np.argsort((np.arange(1, P + 1) / P) @ self.X, kind="stable")
        if np.array_equal(order, np.arange(Q)):
            return self
        U = None if self.U is None else self.U[order]
        return replace(self, X=self.X[:, order], theta=self.theta[order], U=U)

    def rescaled(self, c: float, n_obs: int) -> Solution:
        """The solution for data multiplied by ``c`` (Theta, U by ``c``; variances by
        ``c^2``; the nll shifts by ``n_obs log c``, ``n_obs`` the number of observed entries)."""
        shift = n_obs * float(np.log(c))
        obj = None if self.objective_trace is None else self.objective_trace * c**2
        return replace(self, theta=self.theta * c, U=self.U * c, sigma2=self.sigma2 * c**2,
                       tau2=self.tau2 * c**2, nll=self.nll + shift, nll_trace=self.nll_trace + shift,
                       objective_trace=obj)
