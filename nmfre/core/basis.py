"""Simplex geometry and starting bases (columns of X are probability vectors)."""

from __future__ import annotations

import numpy as np


def project_simplex(V: np.ndarray) -> np.ndarray:
    """Euclidean projection of each column of ``V`` onto the probability simplex."""
    P = V.shape[0]
    U = -np.sort(-V, axis=0)
    css = np.cumsum(U, axis=0) - 1.0
    idx = np.arange(1, P + 1)[:, None]
    cond = U - css / idx > 0
    rho = P - 1 - np.argmax(cond[::-1], axis=0)
    theta = css[rho, np.arange(V.shape[1])] / (rho + 1)
    return np.maximum(V - theta, 0.0)


def normalise_columns(W: np.ndarray) -> np.ndarray:
    """Clip at 0 and scale each column to sum 1 (a zero column becomes uniform)."""
    W = np.maximum(W, 0.0)
    s = W.sum(axis=0)
    bad = s <= 0
    W = W / np.where(bad, 1.0, s)
    W[:, bad] = 1.0 / W.shape[0]
    return W


def nndsvd(Y: np.ndarray, rank: int) -> np.ndarray:
    """Basis from the NNDSVD of ``max(Y, 0)`` (Boutsidis & Gallopoulos 2008), columns
    normalised to sum to 1. Deterministic."""
    Yp = np.maximum(Y, 0.0)
    Uu, _, Vt = np.linalg.svd(Yp, full_matrices=False)
    W = np.zeros((Y.shape[0], rank))
    W[:, 0] = np.abs(Uu[:, 0])
    for j in range(1, rank):
        x, y = Uu[:, j], Vt[j, :]
        xp, xn = np.maximum(x, 0), np.maximum(-x, 0)
        yp, yn = np.maximum(y, 0), np.maximum(-y, 0)
        mp = np.linalg.norm(xp) * np.linalg.norm(yp)
        mn = np.linalg.norm(xn) * np.linalg.norm(yn)
        W[:, j] = xp if mp >= mn else xn
    return normalise_columns(W)


def random_basis(P: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """Random simplex columns (uniform on the simplex)."""
    return normalise_columns(rng.exponential(size=(P, rank)))
