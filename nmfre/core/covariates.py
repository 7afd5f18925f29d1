"""Orthonormal covariates for sign-free Theta: the ML solver's internal frame.

With ``A' = Q R`` (thin QR, ``R``'s diagonal positive) the covariates ``A_o = sqrt(N) Q'``
have orthogonal rows of mean square 1 and ``A = T A_o`` with ``T = R' / sqrt(N)`` (lower
triangular), so ``Theta A = (Theta T) A_o``: a sign-free fit of ``(Y, A)`` is the fit of
``(Y, A_o)`` with ``Theta = Theta_o T^-1``. The likelihood does not depend on the frame, but
its arithmetic does: on uncentred covariates (``A = [1; c + x]``) the statistics ``A A'`` and
``Y A'`` and the effects themselves (an intercept near ``-c`` times a slope) cancel to
``eps c^2``, and fits at ``c = 1e3`` stopped a whole unit of nll short of the optimum (run
to ``max_iter``, or degenerate); in the frame ``(Y, A_o)`` they are the fits at ``c = 0``
(``benchmarks/results/scale.md``, thirty-seventh round). For ``A = [1; x]``, ``A_o`` is
``[1; (x - mean) / sd]`` (population sd). Non-negative Theta keeps its covariates (the
constraint is not invariant under ``T``).

The degeneracy rule (:func:`nmfre.core.ml.degeneracy`, :func:`nmfre.core.ml.cancellation`)
judges effects in this frame (:func:`orthonormal_effects`): the inner product of two rows of
``Theta T`` is that of the components' effects on the units, ``theta_i A A' theta_j' / N``,
whatever the coding of the covariates. On the given coordinates an uncentred covariate makes the
rows of Theta nearly parallel or opposite (the intercepts, near ``-c`` times the slopes,
dominate them): a non-degenerate fit at ``c = 1e3`` has an index of -0.94 there and -0.43 on the
frame, and of eight refits that converged at ``c = 0``, one (at ``c = 1e4``) would have been
called degenerate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular


@dataclass(frozen=True)
class Frame:
    """Orthonormal covariates ``A`` (K x N, ``A A' = N I``) and ``T`` with ``A_given = T A``."""

    A: np.ndarray
    T: np.ndarray

    @classmethod
    def of(cls, A: np.ndarray) -> Frame:
        """The frame of ``A`` (K x N, full row rank)."""
        q, r = np.linalg.qr(A.T)
        sign, T = _lower(r, A.shape[1])
        return cls(A=np.ascontiguousarray((q * sign).T) * np.sqrt(A.shape[1]), T=T)

    @staticmethod
    def transform(A: np.ndarray) -> np.ndarray:
        """``T`` alone (the triangular factor of the QR, without forming ``A_o``)."""
        return _lower(np.linalg.qr(A.T, mode="r"), A.shape[1])[1]

    def inward(self, theta: np.ndarray | None) -> np.ndarray | None:
        """Effects on the given covariates -> effects on the frame's (``Theta T``)."""
        return None if theta is None else theta @ self.T

    def outward(self, theta: np.ndarray) -> np.ndarray:
        """Effects on the frame's covariates -> effects on the given ones (``Theta T^-1``)."""
        return solve_triangular(self.T, theta.T, trans="T", lower=True).T

    def vec_outward(self, Q: int) -> np.ndarray:
        """``M`` with ``vec(Theta) = M vec(Theta_o)`` (column-major vec of a ``Q x K`` Theta):
        ``T^-T kron I_Q``."""
        return np.kron(self.outward(np.eye(self.T.shape[0])).T, np.eye(Q))

    def cov_outward(self, cov: np.ndarray, Q: int) -> np.ndarray:
        """A covariance of ``vec(Theta_o)`` (effects on the frame's covariates) as one of
        ``vec(Theta)`` on the given ones: ``M cov M'`` with ``M`` of :meth:`vec_outward`."""
        M = self.vec_outward(Q)
        return M @ cov @ M.T


def _lower(r: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray]:
    """The signs that make QR's ``R`` diagonal positive, and ``T = R' / sqrt(N)`` with them."""
    sign = np.where(np.diag(r) < 0, -1.0, 1.0)
    return sign, (r * sign[:, None]).T / np.sqrt(N)


def orthonormal_effects(theta: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Effects on ``A`` expressed on its frame's orthonormal covariates (``Theta T``)."""
    return theta @ Frame.transform(A)
