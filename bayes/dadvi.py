"""Deterministic ADVI with linear-response covariances: ``bayes.fit_vi(method="dadvi")``.

The guide is a full Gaussian ``q = N(mu, L L')`` in the model's unconstrained coordinates
(those of :func:`bayes.compiled.potential`). It minimises the KL objective estimated with
``M`` standard-normal draws ``e_m`` drawn once, centred and then held fixed (DADVI; Giordano,
Ingram & Broderick, JMLR 2024)::

    F(mu, L) = (1/M) sum_m pe(mu + L e_m) - log |det L|

(``pe``: minus the log posterior density), a deterministic function of the guide's
parameters ``eta = (mu, L)`` (``L`` lower triangular, its diagonal through its log),
minimised from the Laplace approximation by SciPy's trust-region Newton-CG with exact
Hessian-vector products from JAX.

The guide's own covariance ``L L'`` is too narrow for these posteriors (the reverse KL fits
the local width of the curved ridge of near-equivalent factorisations, not its length:
Theta's sds 0.4-0.9 of NUTS's at 20 x 300). The draws use the **linear-response**
covariance instead (Giordano, Broderick & Jordan, JMLR 2018): the response of the guide's
mean to a linear tilt ``t'z`` of the log posterior, which for the exact posterior is its
covariance, ``Cov_LR(z) = d mu / d t = [H^-1]_(mu, mu)`` with ``H`` the Hessian of ``F`` in
all guide parameters at the optimum. For a Gaussian posterior (with centred draws) it is the
posterior covariance exactly (tested); draws ``z ~ N(mu, Cov_LR(z))`` are mapped to the
model's sites.

``H`` is assembled from the Hessians of ``pe`` at the fixed draws (:func:`hessian`). It is
dense (``n = d + d (d + 1) / 2`` parameters for ``d`` unconstrained coordinates), so the
method is for small posteriors: at most :data:`MAX_PARAMETERS`.
"""

from __future__ import annotations

import numpy as np

from . import compiled

__all__ = ["MAX_PARAMETERS", "NUM_DRAWS", "STALL", "fit", "hessian", "linear_response", "objective", "pack",
           "unpack"]

#: the most guide parameters (``d + d (d + 1) / 2``) for which the dense Hessian is formed
#: (4000: 128 MB, and 460 MB for the ``d^4`` intermediate of :func:`hessian` at ``d`` = 87);
#: the 20 x 300, rank-2 joint posterior has 1127 (46 coordinates)
MAX_PARAMETERS = 4000
#: fixed draws ``M`` of the objective by default: at 20 x 300 (46 coordinates) Theta's
#: linear-response sds moved from 0.74-1.04 of the reference's with 512 draws to 0.83-1.07 with
#: 1024 on the hardest data set measured, and 2048 changed little more (docs: benchmarks);
#: with fewer draws than coordinates the objective is unbounded below (see :func:`fit`)
NUM_DRAWS = 1024
#: the optimiser stops when ``F`` fell by less than ``STALL[1] * (1 + |F|)`` over the last
#: ``STALL[0]`` iterations: with folded coordinates ``F`` has kinks (draws crossing a fold),
#: so the gradient does not vanish and trust-region Newton creeps on (measured at 20 x 300 with
#: 512 draws: 642-2931 iterations on one data set, the objective moving by 0.03-0.8 after
#: iteration 50, the linear-response sds by at most 0.045 between iterations 100 and 800)
STALL = (50, 1e-5)
_CACHE: dict = {}


def unpack(eta, d: int):
    """``(mu, L)`` from the flat parameters ``eta`` (``mu``, then the lower triangle of ``L``
    row by row, its diagonal entries as logs)."""
    import jax.numpy as jnp

    rows, cols = np.tril_indices(d)
    vals = eta[d:]
    vals = jnp.where(jnp.asarray(rows == cols), jnp.exp(vals), vals)
    return eta[:d], jnp.zeros((d, d), eta.dtype).at[rows, cols].set(vals)


def pack(mu: np.ndarray, L: np.ndarray) -> np.ndarray:
    """The inverse of :func:`unpack`."""
    d = mu.shape[0]
    rows, cols = np.tril_indices(d)
    vals = np.asarray(L)[rows, cols].copy()
    vals[rows == cols] = np.log(vals[rows == cols])
    return np.concatenate([np.asarray(mu, float), vals])


def objective(pe, eps):
    """``eta -> F(eta)``: the fixed-draw KL objective (module docstring) for the potential
    ``pe`` and the fixed draws ``eps`` (``M x d``)."""
    import jax
    import jax.numpy as jnp

    d = eps.shape[1]
    diag = np.flatnonzero(np.equal(*np.tril_indices(d)))

    def F(eta):
        mu, L = unpack(eta, d)
        return jnp.mean(jax.vmap(pe)(mu + eps @ L.T)) - jnp.sum(eta[d:][diag])

    return F


def hessian(Hm: np.ndarray, L: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """The Hessian of ``F`` in ``(mu, lower triangle of L)`` (``L``'s entries themselves,
    diagonal included, in the order of :func:`numpy.tril_indices`) from the Hessians
    ``Hm[m]`` of ``pe`` at the draws ``z_m = mu + L e_m``::

        d2F / dmu dmu'        = mean_m Hm
        d2F / dmu_a dL_ij     = mean_m Hm[a, i] e_mj
        d2F / dL_ij dL_kl     = mean_m Hm[i, k] e_mj e_ml  (+ 1 / L_ii^2 where (i, j) = (k, l), i = j)

    ``M d`` Hessian-vector products of ``pe`` and one ``d^2 x M`` by ``M x d^2`` product,
    where differentiating ``F`` twice directly takes ``M`` products per parameter
    (``M d^2 / 2``). At a stationary point ``[H^-1]_(mu, mu)`` does not depend on how ``L``
    is parametrised (:func:`linear_response` of this and of the log-diagonal Hessian agree).
    """
    M, d = eps.shape
    rows, cols = np.tril_indices(d)
    H_mm = Hm.mean(0)
    H_mL = np.einsum("mai,mj->aij", Hm, eps)[:, rows, cols] / M
    ee = (eps[:, :, None] * eps[:, None, :]).reshape(M, d * d)
    T = (Hm.reshape(M, d * d).T @ ee / M).reshape(d, d, d, d)  # [i, k, j, l]
    H_LL = T[rows[:, None], rows[None, :], cols[:, None], cols[None, :]]
    diag = np.flatnonzero(rows == cols)
    H_LL[diag, diag] += 1.0 / np.diagonal(L) ** 2
    return np.block([[H_mm, H_mL], [H_mL.T, H_LL]])


def linear_response(H: np.ndarray, d: int) -> tuple[np.ndarray, float]:
    """``Cov_LR(z) = [H^-1]_(mu, mu)`` (the first ``d`` rows and columns of the inverse of
    the symmetrised ``H``) and ``H``'s smallest eigenvalue. Where ``H`` is not positive
    definite (not at a minimum: :func:`bayes.fit_vi` warns), its eigenvalues enter by their
    absolute values, floored at ``1e-8`` times the largest."""
    H = 0.5 * (H + H.T)
    w, V = np.linalg.eigh(H)
    floor = 1e-8 * max(float(np.max(np.abs(w))), 1e-300)
    Vd = V[:d]
    cov = (Vd / np.maximum(np.abs(w), floor)) @ Vd.T
    return 0.5 * (cov + cov.T), float(w[0])


def _functions(vs):
    """The compiled pieces for one :class:`bayes.vi.VISettings` (built once, cached)."""
    key = (vs.base, vs.num_particles, vs.num_draws)  # what shapes the compiled code
    fns = _CACHE.get(key)
    if fns is not None:
        return fns
    import jax

    s = vs.base

    def start(init, args):
        compiled.TRACES[key] += 1
        z, cov, _, _ = compiled.prepare(s, init, args)
        return z, cov

    def F(eta, eps, init, args):
        return objective(compiled.potential(s, init, args)[0], eps)(eta)

    def hvp(eta, v, eps, init, args):
        return jax.jvp(lambda e: jax.grad(F)(e, eps, init, args), (eta,), (v,))[1]

    def draw_hessians(eta, eps, init, args):
        mu, L = unpack(eta, eps.shape[1])
        return jax.vmap(jax.hessian(compiled.potential(s, init, args)[0]))(mu + eps @ L.T), L

    def draw(mu, C, key, init, args):
        _, unravel, _ = compiled.potential(s, init, args)
        zs = mu + jax.random.normal(key, (vs.num_draws, mu.shape[0]), mu.dtype) @ C.T
        return jax.tree.map(lambda x: x[0], compiled._constrain(s, args, unravel, zs[None])[0])

    fns = _CACHE[key] = {"start": jax.jit(start), "vg": jax.jit(jax.value_and_grad(F)), "hvp": jax.jit(hvp),
                        "hess": jax.jit(draw_hessians), "draw": jax.jit(draw)}
    return fns


def fit(vs, key, init, args) -> tuple[dict, np.ndarray, dict, np.ndarray, np.ndarray]:
    """DADVI with linear-response draws (call inside ``jax.enable_x64(True)``).

    The fixed draws are centred (their mean subtracted): for a Gaussian posterior
    ``N(m, S)`` the optimum then has ``mu = m`` and the linear-response covariance is ``S``
    exactly, whatever the draws' spread (with uncentred draws the tilt also moves ``L``, by
    ``O(1 / sqrt(M))``).

    Returns ``(draws, trace, info, mu, cov)``: the draws of the model's sites (``num_draws`` each),
    ``-F`` after every optimiser iteration (SciPy's trust-region iterations, rejected steps
    included: their value repeats; stopped by :data:`STALL`, or at ``vs.num_steps``), and
    ``info`` (``status``: SciPy's, 99 for a stop by :data:`STALL`, ``message``,
    ``iterations``, ``grad_max``: the largest absolute gradient entry at the end,
    ``min_eigenvalue`` of ``H``, ``num_parameters``), the guide's mean and the
    linear-response covariance (unconstrained coordinates). ``vs.num_particles`` fixed draws;
    with fewer than the ``d`` coordinates ``F`` is unbounded below (``L`` can grow in the
    directions the draws do not span), so ``M > d`` is required.
    """
    import jax
    import jax.numpy as jnp
    from scipy.optimize import minimize

    fns = _functions(vs)
    k_eps, k_draw = jax.random.split(key)
    z, cov = fns["start"](init, args)
    d = z.shape[0]
    eps = jax.random.normal(k_eps, (vs.num_particles, d), z.dtype)
    eps = eps - eps.mean(0)  # centred: the linear response is then exact for a Gaussian posterior
    eta0 = pack(np.asarray(z), np.linalg.cholesky(np.asarray(cov)))
    trace: list[float] = []

    def fun(e):
        val, g = fns["vg"](jnp.asarray(e), eps, init, args)
        return float(val), np.asarray(g)

    def hessp(e, p):
        return np.asarray(fns["hvp"](jnp.asarray(e), jnp.asarray(p), eps, init, args))

    window, rel = STALL

    def callback(intermediate_result):
        trace.append(-float(intermediate_result.fun))
        if len(trace) > window and trace[-1] - trace[-1 - window] < rel * (1.0 + abs(trace[-1])):
            raise StopIteration

    res = minimize(fun, eta0, jac=True, hessp=hessp, method="trust-ncg",
                   options={"gtol": 1e-6, "maxiter": vs.num_steps}, callback=callback)
    eta = jnp.asarray(res.x)
    Hm, L = fns["hess"](eta, eps, init, args)
    H = hessian(np.asarray(Hm), np.asarray(L), np.asarray(eps))
    if not np.all(np.isfinite(H)):
        raise FloatingPointError("the Hessian of the DADVI objective is not finite at its optimum")
    C_lr, wmin = linear_response(H, d)
    w, V = np.linalg.eigh(C_lr)
    root = V * np.sqrt(np.maximum(w, 0.0))  # C_lr = root root'
    draws = fns["draw"](eta[:d], jnp.asarray(root), k_draw, init, args)
    info = {"status": int(res.status), "message": str(res.message), "iterations": int(res.nit),
            "grad_max": float(np.max(np.abs(res.jac))), "min_eigenvalue": wmin,
            "num_parameters": int(eta.shape[0])}
    return jax.device_get(draws), np.asarray(trace), info, np.asarray(eta[:d]), C_lr
