"""Covariance of vec(Theta) conditional on the fitted basis X (and random effects U).

With ``Ys = Y - X U``, ``Rc = Ys - X Theta A``, ``M = X'X + lambda I``:

* ``sigma2_used = ||Rc||^2 / max(P N - df_U - Q K, 1)``, ``df_U = N tr(M^-1 X'X)``;
* information ``I = AA' (x) (X'X - X'X M^-1 X'X) / sigma2_used + 1e-8 I`` (vec stacks
  Theta's columns; the ``(I - H)`` correction makes it the Fisher information of the
  marginal model given X) and model-based covariance ``I^-1``;
* unit scores ``s_n = -vec(X' r_n a_n') / sigma2_used``, meat ``J = N/(N-1) sum s_n s_n'``
  (CR1) and sandwich ``V = I^-1 J I^-1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ridge nmfkc adds to the information (kept for parity)
COV_RIDGE = 1e-8


@dataclass(frozen=True)
class Conditional:
    """Sandwich ingredients for vec(Theta) (column-major vec, index ``k Q + q``).

    Attributes
    ----------
    sigma2_used : float
        ``RSS / max(PN - df_U - QK, 1)``.
    df_u : float
    info : ndarray (QK, QK)
        Information ``I``.
    cov_model : ndarray (QK, QK)
        ``I^-1``.
    scores : ndarray (QK, N)
        Unit scores ``s_n``.
    meat : ndarray (QK, QK)
        ``J = N/(N-1) sum_n s_n s_n'``.
    cov : ndarray (QK, QK)
        Sandwich ``I^-1 J I^-1``.
    """

    sigma2_used: float
    df_u: float
    info: np.ndarray
    cov_model: np.ndarray
    scores: np.ndarray
    meat: np.ndarray
    cov: np.ndarray


def conditional(Y, A, X, theta, U, lam) -> Conditional:
    """Sandwich ingredients for vec(Theta) conditional on ``(X, U)``; ``Y`` dense (NaN =
    missing), sparse or dask (one pass, :func:`nmfre.core.passes.conditional_pieces`)."""
    from .passes import conditional_pieces

    return from_pieces(conditional_pieces(Y, A, X, theta, U, lam), A, theta)


def from_pieces(pc, A: np.ndarray, theta: np.ndarray) -> Conditional:
    """:class:`Conditional` from :class:`nmfre.core.passes.Pieces`: ``sigma2_used =
    RSS / max(n_obs - df_U - QK, 1)``, ``I = core / sigma2_used + 1e-8 I``, unit scores
    ``s_n = -vec(X_O' r_n a_n') / sigma2_used``, CR1 meat and sandwich."""
    N = A.shape[1]
    Q, K = theta.shape
    sigma2_used = float(pc.rss) / max(pc.n_obs - pc.df_u - Q * K, 1)
    s2 = max(sigma2_used, 1e-12)
    info = pc.core / s2 + COV_RIDGE * np.eye(Q * K)
    Hinv = np.linalg.inv(info)
    S = -(A[:, None, :] * pc.XtR[None, :, :]).reshape(Q * K, N) / s2  # rows k*Q + q (column-major vec)
    J = S @ S.T
    if N > 1:
        J *= N / (N - 1)
    V = Hinv @ J @ Hinv
    return Conditional(sigma2_used, pc.df_u, info, Hinv, S, J, V)
