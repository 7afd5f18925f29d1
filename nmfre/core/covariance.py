"""Covariance of vec(Theta) conditional on the fitted basis X (and random effects U).

With ``Ys = Y - X U``, ``Rc = Ys - X Theta A``, ``M = X'X + lambda I``:

* ``sigma2_used = ||Rc||^2 / max(P N - df_U - Q K, 1)``, ``df_U = N tr(M^-1 X'X)``;
* information ``I = F + 1e-14 diag(F)`` with ``F = AA' (x) (X'X - X'X M^-1 X'X) / sigma2_used``
  (vec stacks Theta's columns; the ``(I - H)`` correction makes it the Fisher information of
  the marginal model given X), and model-based covariance ``I^-1``;
* unit scores ``s_n = -vec(X' r_n a_n') / sigma2_used``, meat ``J = N/(N-1) sum s_n s_n'``
  (CR1) and sandwich ``V = I^-1 J I^-1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the ridge added to the information, relative to each of its diagonal entries. nmfkc adds an
#: absolute 1e-8 (DESIGN.md's formula), which made standard errors depend on the units of Y
#: and of each covariate: in units 1e6 times smaller (Y times 1e6, as Orthodont in nanometres)
#: the information's entries fall by 1e12, the ridge dominates and the SEs collapse (SE / 1e6
#: 0.0001 instead of 2.47). One ridge relative to the mean diagonal (this module's first
#: version) fixed Y's units but not a covariate's: with ``male`` coded 0/1e4 the intercept's SE
#: was 1.43 instead of 2.47. Relative to each diagonal entry, inference is equivariant to the
#: units of Y and of every covariate. At 1e-8 (until 2026-12) it still took over wherever the
#: information's condition number (after scaling each coefficient) passed about 1e8: with a
#: covariate equal to another plus 1e-5 times noise the SEs of the two nearly collinear
#: covariates' coefficients were 0.0069 of their value (a QA helper's reference: the same model
#: in well-conditioned covariates), and a unit alone in its level of a dummy had leverage
#: 1 - 1e-8 instead of 1 (CR2's Satterthwaite df inf or below 1, varying by machine, instead of
#: N - 2). At 1e-14 the ridge keeps an exactly singular information invertible and changes the
#: SEs by about ``condition * 1e-14``; on Orthodont they differ from the absolute ridge's by
#: about 1e-7 relative (:func:`from_pieces`' ``ridge``)
COV_RIDGE = 1e-14
#: the condition number of the information (each coefficient scaled to unit information) above
#: which :func:`nmfre.infer` warns (:class:`nmfre.IllConditionedWarning`): the SEs are then
#: accurate to about ``condition * 1e-14`` relative, 1e-4 here
ILL_CONDITIONED = 1e10
#: nmfkc's absolute ridge, for reproducing its numbers to rounding (``from_pieces(..., ridge=)``)
NMFKC_RIDGE = 1e-8


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


def conditional(Y, A, X, theta, U, lam, ridge: float | None = None) -> Conditional:
    """Sandwich ingredients for vec(Theta) conditional on ``(X, U)``; ``Y`` dense (NaN =
    missing), sparse or dask (one pass, :func:`nmfre.core.passes.conditional_pieces`);
    ``ridge``: see :func:`from_pieces`."""
    from .passes import conditional_pieces

    return from_pieces(conditional_pieces(Y, A, X, theta, U, lam), A, theta, ridge)


def scaled_condition(info: np.ndarray, vectors: bool = False):
    """The condition number of ``info`` with each coefficient scaled to unit information
    (``D^-1/2 info D^-1/2``, ``D = diag(info)``; largest over smallest eigenvalue, ``inf`` where
    the smallest is not positive or a diagonal entry is zero or not finite): invariant to the
    units of Y and of every covariate. With ``vectors``, also the scaled matrix's eigenvectors
    (columns, from the smallest eigenvalue up)."""
    d = np.diag(info)
    ok = np.isfinite(d) & (d > 0)
    s = 1.0 / np.sqrt(np.where(ok, d, 1.0))
    w, V = np.linalg.eigh(info * s[:, None] * s[None, :])
    cond = float(w[-1] / w[0]) if np.all(ok) and w[0] > 0 else float("inf")
    return (cond, V) if vectors else cond


def working_sigma2(sigma2_used: float) -> float:
    """The residual variance the sandwich divides by: ``sigma2_used``, or 1e-12 for a fit
    without residual (``sigma2_used = 0``)."""
    return sigma2_used if sigma2_used > 0 else 1e-12


def from_pieces(pc, A: np.ndarray, theta: np.ndarray, ridge: float | None = None) -> Conditional:
    """:class:`Conditional` from :class:`nmfre.core.passes.Pieces`: ``sigma2_used =
    RSS / max(n_obs - df_U - QK, 1)``, ``I = F + D`` with ``F = core / sigma2_used`` and the
    ridge ``D`` :data:`COV_RIDGE` times ``diag(F)`` (or ``ridge`` times the identity, absolute:
    :data:`NMFKC_RIDGE` reproduces nmfkc), unit scores ``s_n = -vec(X_O' r_n a_n') /
    sigma2_used``, CR1 meat and sandwich. Equivariant to the units: Y times ``c`` gives SEs
    times ``c``; one covariate (a row of A) times ``c`` gives its effects' SEs over ``c`` and
    leaves the others'."""
    N = A.shape[1]
    Q, K = theta.shape
    sigma2_used = float(pc.rss) / max(pc.n_obs - pc.df_u - Q * K, 1)
    s2 = working_sigma2(sigma2_used)
    F = pc.core / s2
    if ridge is None:
        d = np.diag(F).copy()
        fallback = float(np.max(d[np.isfinite(d) & (d > 0)], initial=1.0))
        d[~(np.isfinite(d) & (d > 0))] = fallback  # (a zero diagonal entry: the largest one's scale)
        info = F + np.diag(COV_RIDGE * d)
    else:
        info = F + ridge * np.eye(Q * K)
    Hinv = np.linalg.inv(info)
    S = -(A[:, None, :] * pc.XtR[None, :, :]).reshape(Q * K, N) / s2  # rows k*Q + q (column-major vec)
    J = S @ S.T
    if N > 1:
        J *= N / (N - 1)
    V = Hinv @ J @ Hinv
    return Conditional(sigma2_used, pc.df_u, info, Hinv, S, J, V)


# ----------------------------------------------------------------------------- CR2
def _unit_blocks(M: np.ndarray, A: np.ndarray, Q: int) -> np.ndarray:
    """``(a_n' (x) I_Q) M (a_n (x) I_Q)`` for every unit: ``(N, Q, Q)`` (column-major vec)."""
    K = A.shape[0]
    M4 = M.reshape(K, Q, K, Q)
    return np.einsum("kn,kqlr,ln->nqr", A, M4, A)


def _subspace(Xo: np.ndarray, lam: float, s2: float):
    """Orthonormal basis ``U`` of col(X_O), ``T`` with ``X_O = U T`` and the working
    covariance on that subspace, ``S = U' Sigma_O U = s2 (I + T T' / lambda)``."""
    Uo, sv, Vt = np.linalg.svd(Xo, full_matrices=False)
    r = int(np.sum(sv > sv.max() * 1e-12)) if sv.size else 0
    Uo, T = Uo[:, :r], sv[:r, None] * Vt[:r]
    return Uo, T, s2 * (np.eye(r) + T @ T.T / lam)


#: directions in which a unit's ``1 - leverage`` (an eigenvalue of ``I - H_nn`` on col(X_O)) is at
#: most this are taken as of leverage 1 (:func:`_inv_sqrt`). Computed, an exact 1 - 1 comes out
#: at rounding times the information's condition: 3.2e-12 for a unit alone in its level of a
#: dummy whose other covariate is 300 there (1e-12 kept that direction: df ``inf``)
PINV_RTOL = 1e-8


def _inv_sqrt(G: np.ndarray, rank_loss: np.ndarray) -> np.ndarray:
    """Symmetric inverse square roots of a stack of symmetric PSD matrices, as pseudo-inverses:
    the ``rank_loss[n]`` smallest eigenvalues of matrix ``n`` get 0, as in clubSandwich's
    ``Sym_power`` (which zeroes eigenvalues below an absolute 1e-12 of the matrix it is given).

    ``G_n = D (I - H_nn) Sigma_O D'`` has as many zero eigenvalues as ``I - H_nn`` (Sylvester's
    law of inertia: ``G_n`` is congruent to it), so the count comes from the unit's leverages,
    which are scale-free, not from ``G_n``'s own eigenvalues, whose scale follows ``Sigma_O``'s
    (a threshold relative to its largest eigenvalue would zero true ones where ``Sigma_O`` is
    ill-conditioned). A unit of leverage 1 in some direction (e.g. alone in its level of a dummy
    covariate) has its residual 0 there; inverting with the eigenvalues floored at 1e-300
    instead multiplied rounding by up to 1e150 and gave Satterthwaite df of ``inf`` or below 1."""
    w, V = np.linalg.eigh(0.5 * (G + np.swapaxes(G, -1, -2)))  # ascending
    keep = np.arange(w.shape[-1]) >= np.asarray(rank_loss)[..., None]
    inv = np.where(keep, 1.0 / np.sqrt(np.maximum(w, 1e-300)), 0.0)
    return np.einsum("...ij,...j,...kj->...ik", V, inv, V)


def cr2(cond: Conditional, pieces, A: np.ndarray, X: np.ndarray, lam: float, satterthwaite: bool = True,
        kind: str = "CR2", contrasts: np.ndarray | None = None):
    """Bias-reduced linearisation (CR2, Bell & McCaffrey 2002; Pustejovsky & Tipton 2018)
    for vec(Theta), with Satterthwaite degrees of freedom per coefficient.

    The estimating equation is the GLS one ``sum_n Z_n' W_n (y_n - Z_n theta) = 0`` with
    ``Z_n = a_n' (x) X_O``, ``W_n = Sigma_O^-1`` (working covariance ``Sigma_O``, each unit's
    observed rows ``O``). CR2 replaces each unit's residual ``e_n`` by ``A_n e_n`` with
    ``A_n = D' [D (I - H_nn) Sigma_O D']^{-1/2} D`` (``D'D = Sigma_O``, ``H_nn = Z_n M Z_n' W_n``,
    ``M = (sum Z'WZ)^-1``), and drops CR1's ``N/(N-1)``. ``Sigma_O`` keeps col(X_O) invariant,
    so everything reduces to ``r x r`` matrices on that subspace (for complete data ``A_n`` acts
    there as ``(1 - h_n)^{-1/2}``, ``h_n = a_n'(AA')^{-1}a_n``). The Satterthwaite df of
    coefficient ``c`` is ``tr(Omega)^2 / tr(Omega^2)`` with ``Omega = diag(g_n' Sigma_O g_n) -
    B' M^-1 B`` the working-model covariance of the CR2 terms (``g_n = A_n W_n Z_n M c``,
    ``b_n = M Z_n' g_n``).

    ``kind="CR1"`` uses ``A_n = sqrt(N / (N - 1)) I`` instead (the CR1 sandwich and its
    Satterthwaite df).

    Inference is conditional on the fitted (X, U): the residuals are ``y_n - X_O (Theta a_n
    + u_n)`` with the fit's U, and ``W_n (y_n - Z_n theta)`` equals them over ``sigma2`` when
    ``u_n`` is the BLUP at the final (X, Theta, lambda), as an ML fit's is (to about 1e-12).
    The paper algorithm's last U is not exactly that BLUP (it stops on the change of its
    own objective), so for its fits the two forms differ by about the algorithm's
    convergence (2e-5 relative in the SEs on ``simulate.baseline(N=27)``); the package
    uses the fit's U, as nmfkc does.

    ``contrasts`` (L x QK, optional): the df are those of ``contrasts @ vec(Theta)`` (one per
    row) instead of each coefficient's (a fit on orthonormal covariates reports its
    coefficients on the given ones, ``vec(Theta) = M vec(Theta_o)``: the rows of ``M``).

    Returns ``(cov, df, scores, C)``: the covariance (QK x QK), the df per coefficient (QK,;
    or per row of ``contrasts``; NaN when ``satterthwaite`` is False), the adjusted unit
    scores ``-Z_n'W_nA_ne_n`` (QK x N) and ``C_n = X_O'W_nA_nX_O`` (N x Q x Q), what a
    replicate's own sandwich needs
    (:func:`nmfre.core.bootstrap.studentized_se`).
    """
    Q = X.shape[1]
    K, N = A.shape
    s2 = working_sigma2(cond.sigma2_used)
    M, Minv = cond.cov_model, cond.info
    Maa = _unit_blocks(M, A, Q)
    adj = np.zeros((Q * K, N))
    C = np.zeros((N, Q, Q))
    g_parts = []  # per pattern: (units, T, S, A_sub) for the df
    for rows, units in pieces.patterns:
        Xo = X if rows is None else X[rows]
        Uo, T, S = _subspace(Xo, lam, s2)
        r = S.shape[0]
        if kind == "CR1":
            Asub = np.broadcast_to(np.sqrt(N / (N - 1)) * np.eye(r), (units.size, r, r))
        else:
            Dl = np.linalg.cholesky(S)  # S = Dl Dl', D = Dl' (diagonal: _subspace's basis diagonalises S)
            B = S - np.einsum("ij,njk,lk->nil", T, Maa[units], T)  # (I - H_nn) Sigma_O on the subspace
            Li = np.linalg.inv(Dl)
            one_minus = np.linalg.eigvalsh(Li @ B @ Li.T)  # 1 - the unit's leverages (similar to I - H_nn)
            Asub = Dl @ _inv_sqrt(Dl.T @ B @ Dl, np.sum(one_minus <= PINV_RTOL, axis=-1)) @ Dl.T
        C[units] = np.einsum("ji,jk,nkl,lm->nim", T, np.linalg.inv(S), Asub, T)
        MO = Xo.T @ Xo + lam * np.eye(Q)
        Xte = MO @ pieces.XtR[:, units] / lam  # X_O' e_n from X_O' r_n (conditional residual)
        Ue = np.linalg.solve(T @ T.T, T @ Xte)  # U' e_n
        z = np.linalg.solve(S, np.einsum("nij,jn->in", Asub, Ue))
        adj[:, units] = -(A[:, units][:, None, :] * (T.T @ z)[None, :, :]).reshape(Q * K, -1)
        g_parts.append((units, T, S, Asub))
    V = M @ (adj @ adj.T) @ M
    L = np.eye(Q * K) if contrasts is None else np.asarray(contrasts, dtype=float)
    df = np.full(L.shape[0], np.nan)
    if satterthwaite:
        for c in range(L.shape[0]):
            df[c] = _satterthwaite(M, Minv, A, Maa, g_parts, L[c], Q)
    return V, df, adj, C


def _satterthwaite(M, Minv, A, Maa, g_parts, ell: np.ndarray, Q: int) -> float:
    """The Satterthwaite df of the contrast ``ell' vec(Theta)``."""
    K, N = A.shape
    m = np.einsum("kn,kq->qn", A, (M @ ell).reshape(K, Q))  # (a_n' (x) I) M ell
    d = np.zeros(N)
    B = np.zeros((Q * K, N))
    for units, T, S, Asub in g_parts:
        vv = np.einsum("nij,jn->in", Asub, np.linalg.solve(S, T @ m[:, units]))  # U' g_n
        d[units] = np.einsum("in,ij,jn->n", vv, S, vv)
        B[:, units] = M @ (A[:, units][:, None, :] * (T.T @ vv)[None, :, :]).reshape(Q * K, -1)
    bMb = np.einsum("in,ij,jn->n", B, Minv, B)
    MBB = Minv @ B @ B.T
    tr1 = d.sum() - np.trace(MBB)
    tr2 = np.sum(d**2) - 2 * np.sum(d * bMb) + np.sum(MBB * MBB.T)
    return float(tr1**2 / tr2) if tr2 > 0 else float("inf")
