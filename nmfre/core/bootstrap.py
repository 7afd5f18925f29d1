"""Wild-bootstrap algebra: multipliers, one-step Newton replicates, p-values, and the
alignment of replicate components to the point estimate."""

from __future__ import annotations

import os
from concurrent import futures

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import norm
from scipy.stats import t as student_t

DISTS = ("exp", "rademacher", "mammen", "normal")
ALTERNATIVES = ("two-sided", "greater", "less")


def draw_multipliers(dist: str, N: int, B: int, rng: np.random.Generator) -> np.ndarray:
    """``N x B`` iid multipliers with mean 0 and variance 1.

    ``exp``: Exp(1) - 1 (nmfkc); ``rademacher``: +-1, one random bit each (:func:`rademacher`);
    ``mammen``: Mammen's two-point distribution; ``normal``: N(0, 1).
    """
    if dist not in DISTS:
        raise ValueError(f"dist must be one of {DISTS}, got {dist!r}")
    return _fill(dist, rng, np.empty((N, B)))


def rademacher(rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (row-major) with +-1, each the next bit of the generator's 64-bit words
    (least significant first): 64 multipliers per generator call, an exact Rademacher law
    at a fraction of the cost of drawing each one. Consecutive calls continue the bit
    stream whenever each fills a multiple of 64 entries, so chunked filling reproduces one
    big fill."""
    np.multiply(_bits(rng, out.size).reshape(out.shape), 2.0, out=out)
    out -= 1.0
    return out


def rademacher_bits(rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` with the 0/1 bits from which :func:`rademacher` makes its multipliers
    (``W = 2 b - 1``, the same generator calls): :func:`onestep_sum` multiplies the bits and
    maps each stream's sum (``S W = 2 S b - S 1``), a pass over every chunk fewer than the
    +-1 values."""
    out[...] = _bits(rng, out.size).reshape(out.shape)
    return out


def _bits(rng: np.random.Generator, m: int) -> np.ndarray:
    """The next ``m`` bits of the generator's 64-bit words, least significant first (uint8)."""
    words = rng.integers(0, 2**64, size=-(-m // 64), dtype=np.uint64)
    return np.unpackbits(words.astype("<u8", copy=False).view(np.uint8), count=m, bitorder="little")


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
#: default units per chunk of drawn multipliers (:func:`onestep_sum`): one accumulation step.
#: Measured against 1024 (benchmarks/results/multipliers.md, N = 2e5, B = 2000, one thread):
#: 0.77-0.93x the time, probably because a smaller block of multipliers is still in cache when
#: the product reads it (4 MB against 16 MB there)
CHUNK_UNITS = 256


def _fill(dist: str, g: np.random.Generator, buf: np.ndarray) -> np.ndarray:
    """Fill ``buf`` (row-major) with multipliers of law ``dist`` drawn from ``g``, in place:
    the one place each law is drawn (:func:`draw_multipliers`, :func:`onestep_sum`)."""
    if dist == "exp":
        g.standard_exponential(out=buf)
        buf -= 1.0
    elif dist == "normal":
        g.standard_normal(out=buf)
    elif dist == "rademacher":
        rademacher(g, buf)
    else:  # mammen
        s5 = np.sqrt(5.0)
        g.random(out=buf)
        buf[...] = np.where(buf < (s5 + 1) / (2 * s5), -(s5 - 1) / 2, (s5 + 1) / 2)
    return buf


def onestep_sum(scores: np.ndarray, dist: str, B: int, rng: np.random.Generator, chunk: int = CHUNK_UNITS,
                workers: int | None = None) -> np.ndarray:
    """``scores @ W`` (``QK x B``) for the multipliers of :func:`multiplier_matrix`, holding at most
    ``chunk x B`` multipliers per worker thread (never ``N x B``).

    Each stream of :data:`STREAM_UNITS` units is drawn sequentially, ``chunk`` units at a
    time (numpy's generators give the same numbers whatever the chunk), and accumulated in
    fixed steps of :data:`SUB_UNITS` units; streams run in parallel threads (BLAS limited to
    one thread each) and their sums are added in stream order. The result is therefore
    bitwise independent of ``chunk`` and ``workers``. Rademacher multipliers enter as their
    bits (:func:`rademacher_bits`): each stream sums ``S b`` and returns ``2 S b - S 1``, equal
    to ``S W`` up to rounding.
    """
    from threadpoolctl import threadpool_limits

    N = scores.shape[1]
    streams = _streams(N, rng)
    bits = dist == "rademacher"
    chunk = max(SUB_UNITS, -(-int(chunk) // SUB_UNITS) * SUB_UNITS)

    def one(k: int) -> np.ndarray:
        a, b = k * STREAM_UNITS, min((k + 1) * STREAM_UNITS, N)
        acc = np.zeros((scores.shape[0], B))
        buf = np.empty((min(chunk, b - a), B))
        for c in range(a, b, chunk):
            d = min(c + chunk, b)
            W = rademacher_bits(streams[k], buf[: d - c]) if bits else _fill(dist, streams[k], buf[: d - c])
            for e in range(c, d, SUB_UNITS):
                f = min(e + SUB_UNITS, d)
                acc += scores[:, e:f] @ W[e - c:f - c]
        if bits:  # the stream's S b, mapped to S W with W = 2 b - 1
            acc = 2.0 * acc - scores[:, a:b].sum(axis=1)[:, None]
        return acc

    workers = workers or min(len(streams), os.cpu_count() or 1)
    out = None
    with threadpool_limits(1):
        if workers == 1 or len(streams) == 1:
            parts = (one(k) for k in range(len(streams)))
        else:
            pool = futures.ThreadPoolExecutor(workers)
            parts = pool.map(one, range(len(streams)))  # results in stream order, as they finish
        for part in parts:  # added in stream order: the same sum whatever the workers
            out = part if out is None else out + part
        if workers > 1 and len(streams) > 1:
            pool.shutdown()
    return out


def onestep_draws(theta_vec, cov_model, scores, W, nonneg: bool):
    """``theta_b = theta_hat - I^-1 S w_b`` for every column of ``W`` (one product).

    Returns ``(draws, raw)``: ``draws`` projected onto ``>= 0`` when ``nonneg``, ``raw``
    unprojected; both ``QK x B``.
    """
    raw = theta_vec[:, None] - cov_model @ (scores @ W)
    return (np.maximum(raw, 0.0) if nonneg else raw), raw


def p_values(z, alternative: str, df=None):
    """p-values for ``z = estimate / se``: normal, or Student t with ``df`` (per entry;
    ``inf`` is normal)."""
    if df is None:
        dist_sf, dist_cdf = norm.sf, norm.cdf
    else:
        df = np.asarray(df, float)

        def dist_sf(x):
            return np.where(np.isfinite(df), student_t.sf(x, np.where(np.isfinite(df), df, 1.0)), norm.sf(x))

        def dist_cdf(x):
            return np.where(np.isfinite(df), student_t.cdf(x, np.where(np.isfinite(df), df, 1.0)), norm.cdf(x))
    if alternative == "greater":
        return dist_sf(z)
    if alternative == "less":
        return dist_cdf(z)
    return 2 * dist_sf(np.abs(z))


def align_components(X_ref: np.ndarray, X_b: np.ndarray):
    """Permutation of ``X_b``'s columns that best matches ``X_ref`` (Hungarian, L1 cost),
    and the cosine similarity of each matched pair."""
    cost = np.abs(X_ref[:, :, None] - X_b[:, None, :]).sum(axis=0)
    _, perm = linear_sum_assignment(cost)
    Xp = X_b[:, perm]
    cos = np.sum(X_ref * Xp, axis=0) / (np.linalg.norm(X_ref, axis=0) * np.linalg.norm(Xp, axis=0))
    return perm, cos


def studentized_se(scores: np.ndarray, C: np.ndarray, A: np.ndarray, M: np.ndarray, delta: np.ndarray,
                   W: np.ndarray, chunk: int = 128) -> np.ndarray:
    """Each one-step replicate's own sandwich SE (``QK x B``), for the bootstrap-t.

    Replicate ``b`` has residuals ``w_nb e_n - Z_n delta_b`` (``delta_b = theta_b - theta_hat``),
    so its unit scores ``-Z_n'W_nA_n e*_n`` are ``w_nb s_n + (a_n a_n' (x) C_n) delta_b``
    (``s_n`` the point estimate's adjusted scores, ``C_n = X_O'W_nA_nX_O``; they sum to 0 at
    the replicate's estimate) and its SE of coefficient ``k`` is
    ``sqrt(sum_n (M (w_nb s_n + G_n delta_b))_k^2)``. Column-major vec, index ``k Q + q``.
    """
    QK, N = scores.shape
    K = A.shape[0]
    Q = QK // K
    V = M @ scores  # QK x N
    M3 = M.reshape(QK, K, Q)
    out = np.empty((QK, delta.shape[1]))
    for b0 in range(0, delta.shape[1], chunk):
        d = delta[:, b0:b0 + chunk].reshape(K, Q, -1)  # delta as Theta (k, q, b)
        u = np.einsum("kqb,kn->nqb", d, A)  # Delta_b a_n
        Cu = np.einsum("nqr,nrb->nqb", C, u)
        corr = np.einsum("ikq,nqb,kn->inb", M3, Cu, A)
        main = V[:, :, None] * W[:, b0:b0 + chunk][None, :, :]
        out[:, b0:b0 + chunk] = np.sqrt(np.sum((main + corr) ** 2, axis=1))
    return out
