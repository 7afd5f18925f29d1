"""Wild-bootstrap algebra: multipliers, one-step Newton replicates, p-values, and the
alignment of replicate components to the point estimate."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import norm

DISTS = ("exp", "rademacher", "mammen", "normal")
ALTERNATIVES = ("two-sided", "greater", "less")


def draw_multipliers(dist: str, N: int, B: int, rng: np.random.Generator) -> np.ndarray:
    """``N x B`` iid multipliers with mean 0 and variance 1.

    ``exp``: Exp(1) - 1 (nmfkc); ``rademacher``: +-1; ``mammen``: Mammen's two-point
    distribution; ``normal``: N(0, 1).
    """
    if dist == "exp":
        return rng.exponential(size=(N, B)) - 1.0
    if dist == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=(N, B))
    if dist == "mammen":
        s5 = np.sqrt(5.0)
        lo, hi = -(s5 - 1) / 2, (s5 + 1) / 2
        return np.where(rng.random((N, B)) < (s5 + 1) / (2 * s5), lo, hi)
    if dist == "normal":
        return rng.standard_normal((N, B))
    raise ValueError(f"dist must be one of {DISTS}, got {dist!r}")


#: units per multiplier stream: the multipliers of units [k L, (k+1) L) come from stream k
#: (stream 0 is the caller's generator itself, so for N <= L they are exactly
#: ``draw_multipliers(dist, N, B, rng)``), whatever chunk size the computation uses
STREAM_UNITS = 4096


def _streams(N: int, rng: np.random.Generator) -> list[np.random.Generator]:
    """One generator per block of :data:`STREAM_UNITS` units (the first is ``rng``)."""
    n = -(-N // STREAM_UNITS)
    if n == 1:
        return [rng]
    first = [rng]
    ss = np.random.SeedSequence(rng.integers(0, 2**63, size=4, dtype=np.int64).tolist())
    return first + [np.random.default_rng(c) for c in ss.spawn(n - 1)]


def multiplier_matrix(dist: str, N: int, B: int, rng: np.random.Generator) -> np.ndarray:
    """The full ``N x B`` multiplier matrix of the streamed scheme (:func:`onestep_sum`)."""
    W = np.empty((N, B))
    for k, g in enumerate(_streams(N, rng)) if N > STREAM_UNITS else [(0, rng)]:
        a = k * STREAM_UNITS
        b = min(a + STREAM_UNITS, N)
        W[a:b] = draw_multipliers(dist, b - a, B, g)
    return W


#: units per accumulation step of the streamed one-step sum (fixed, so results do not
#: depend on the chunk size)
SUB_UNITS = 256


def _fill(dist: str, g: np.random.Generator, buf: np.ndarray) -> np.ndarray:
    """Draw ``buf``'s shape of multipliers from ``g`` (in place where numpy allows)."""
    if dist == "exp":
        g.standard_exponential(out=buf)
        buf -= 1.0
        return buf
    if dist == "normal":
        g.standard_normal(out=buf)
        return buf
    return draw_multipliers(dist, buf.shape[0], buf.shape[1], g)


def onestep_sum(scores: np.ndarray, dist: str, B: int, rng: np.random.Generator, chunk: int = 1024,
                workers: int | None = None) -> np.ndarray:
    """``scores @ W`` (``QK x B``) for the multipliers of :func:`multiplier_matrix`, holding at most
    ``chunk x B`` multipliers per worker thread (never ``N x B``).

    Each stream of :data:`STREAM_UNITS` units is drawn sequentially, ``chunk`` units at a
    time (numpy's generators give the same numbers whatever the chunk), and accumulated in
    fixed steps of :data:`SUB_UNITS` units; streams run in parallel threads (BLAS limited to
    one thread each) and their sums are added in stream order. The result is therefore
    bitwise independent of ``chunk`` and ``workers``.
    """
    from threadpoolctl import threadpool_limits

    N = scores.shape[1]
    streams = _streams(N, rng)
    chunk = max(SUB_UNITS, -(-int(chunk) // SUB_UNITS) * SUB_UNITS)

    def one(k: int) -> np.ndarray:
        a, b = k * STREAM_UNITS, min((k + 1) * STREAM_UNITS, N)
        acc = np.zeros((scores.shape[0], B))
        buf = np.empty((min(chunk, b - a), B))
        for c in range(a, b, chunk):
            d = min(c + chunk, b)
            W = _fill(dist, streams[k], buf[: d - c])
            for e in range(c, d, SUB_UNITS):
                f = min(e + SUB_UNITS, d)
                acc += scores[:, e:f] @ W[e - c:f - c]
        return acc

    workers = workers or min(len(streams), os.cpu_count() or 1)
    with threadpool_limits(1):
        if workers == 1 or len(streams) == 1:
            parts = [one(k) for k in range(len(streams))]
        else:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(one, range(len(streams))))
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


def onestep_draws(theta_vec, cov_model, scores, W, nonneg: bool):
    """``theta_b = theta_hat - I^-1 S w_b`` for every column of ``W`` (one product).

    Returns ``(draws, raw)``: ``draws`` projected onto ``>= 0`` when ``nonneg``, ``raw``
    unprojected; both ``QK x B``.
    """
    raw = theta_vec[:, None] - cov_model @ (scores @ W)
    return (np.maximum(raw, 0.0) if nonneg else raw), raw


def p_values(z, alternative: str):
    """Normal p-values for ``z = estimate / se``."""
    if alternative == "greater":
        return norm.sf(z)
    if alternative == "less":
        return norm.cdf(z)
    return 2 * norm.sf(np.abs(z))


def align_components(X_ref: np.ndarray, X_b: np.ndarray):
    """Permutation of ``X_b``'s columns that best matches ``X_ref`` (Hungarian, L1 cost),
    and the cosine similarity of each matched pair."""
    cost = np.abs(X_ref[:, :, None] - X_b[:, None, :]).sum(axis=0)
    _, perm = linear_sum_assignment(cost)
    Xp = X_b[:, perm]
    cos = np.sum(X_ref * Xp, axis=0) / (np.linalg.norm(X_ref, axis=0) * np.linalg.norm(Xp, axis=0))
    return perm, cos
