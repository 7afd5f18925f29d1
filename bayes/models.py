"""NumPyro models of NMF-RE: plain model functions with plates named like nmfre's dims.

All three share the likelihood ``y_n ~ N(X Theta a_n, sigma^2 I_P + tau^2 X X')`` with
U marginalised out, so NUTS never sees the ``N Q`` random effects; :func:`u_conditional`
gives U's Gaussian conditional afterwards. ``Y`` may be

* an array (P x N; ``NaN`` marks a missing cell): it is reduced to compressed statistics
  (:func:`bayes.likelihood.statistics`) and the log-likelihood enters as
  ``numpyro.factor("Y", ...)``, so a gradient costs O(P^2 Q + P Q K) whatever N;
* a :class:`bayes.likelihood.Stats` (the statistics themselves: what the compiled
  sampler passes, so new data of the same shape reuse its compiled code; ``A`` may then
  be None);
* ``None``: ``Y`` is a sampled site (a low-rank-plus-diagonal normal over the units of
  ``A``), for prior and posterior predictive draws through ``numpyro.infer.Predictive``;
  give ``P`` (the number of features) for the joint model.

* :func:`joint`: columns of X ~ Dirichlet, Theta ~ Normal (free) or HalfNormal
  (non-negative), sigma and tau ~ HalfNormal. The prior is the same whatever the
  coordinates NUTS moves in (``simplex``): isometric log-ratios of X's columns
  (``"ilr"``, :mod:`bayes.simplex`), NumPyro's stick-breaking (``"stickbreaking"``), or
  folded coordinates (``"folded"``: each column is ``|w| / sum |w|`` and non-negative
  Theta is ``|v|``, so the boundary where a feature does not load is a reflection;
  what :func:`bayes.sample` uses).
* :func:`conditional_x`: X fixed (at the frequentist X-hat); sigma, tau, Theta sampled.
* :func:`conditional`: X and (sigma^2, tau^2) fixed; Theta with a flat prior by default.
  Its posterior is Gaussian with mean Theta-hat (GLS = OLS) and covariance the inverse of
  the information ``AA' (x) X' Sigma^-1 X`` that nmfre's inference uses.

Priors (``priors`` dict, every key optional; ``None`` means :func:`default_priors` of
``Y``): ``x_concentration`` (Dirichlet concentration, 1), ``theta_scale``,
``sigma_scale``, ``tau_scale`` (half-normal/normal scales) and, for ``conditional``,
``theta_scale=None`` meaning a flat prior.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import cho_solve, solve_triangular
from numpyro.distributions import constraints

from nmfre.exceptions import ArgumentTypeError
from nmfre.labels import renamed

from .likelihood import Stats, data_moments, loglik, statistics
from .simplex import DirichletILR, FoldedDirichlet

PRIOR_KEYS = ("x_concentration", "theta_scale", "sigma_scale", "tau_scale")
#: the priors each model uses (the conditional models fix X, and 'conditional' the variances)
USED_PRIORS = {"joint": PRIOR_KEYS, "conditional_x": PRIOR_KEYS[1:], "conditional": ("theta_scale",)}


def default_priors(Y, rank: int) -> dict:
    """Data-based weakly informative scales.

    ``sigma_scale = 2 sd(Y)``; ``tau_scale = 2 P sd(Y)`` (U lives on the scale of
    ``Theta a``, which is about P times that of Y because X's columns sum to 1);
    ``theta_scale = 10 P rms(Y)``; ``x_concentration = 1`` (uniform on the simplex).
    sd and rms are over the observed cells (``Y`` may hold ``NaN`` or be a
    :class:`bayes.likelihood.Stats`).

    Parameters
    ----------
    Y : array (P, N) or Stats
    rank : int

    Returns
    -------
    dict
        ``x_concentration``, ``theta_scale``, ``sigma_scale``, ``tau_scale``.
    """
    if isinstance(Y, Stats):
        P = Y.P
        mean, sq = data_moments(Y)
        sd = float(np.sqrt(max(sq - mean**2, 0.0))) or 1.0
        rms = float(np.sqrt(sq)) or 1.0
    else:
        Y = np.asarray(Y, dtype=float)
        P = Y.shape[0]
        sd = float(np.nanstd(Y)) or 1.0
        rms = float(np.sqrt(np.nanmean(Y**2))) or 1.0
    return {"x_concentration": 1.0, "theta_scale": 10.0 * P * rms, "sigma_scale": 2.0 * sd,
            "tau_scale": 2.0 * P * sd}


def check_priors(priors: dict | None, allow_flat: bool = False, values: bool = True) -> dict:
    """``priors`` checked: known keys and (``values``; not for traced arrays) each a positive
    finite number (``theta_scale=None``, a flat prior on Theta, only with ``allow_flat``: the
    conditional model). A copy."""
    if priors is not None and not isinstance(priors, dict):
        raise ArgumentTypeError(f"priors must be a dict such as {{'sigma_scale': 2.0}}, got {type(priors).__name__}")
    given = dict(priors or {})
    unknown = set(given) - set(PRIOR_KEYS)
    if unknown:
        raise ValueError(f"priors has unknown keys {sorted(unknown)}; allowed {PRIOR_KEYS}")
    for k, x in given.items() if values else ():
        if x is None and k == "theta_scale" and allow_flat:
            continue
        if x is None and k == "theta_scale":
            raise ValueError("priors['theta_scale']=None (a flat prior on Theta) is for model='conditional' only")
        try:  # a number, or a 0-d array of one (numpy or concrete JAX)
            value = float(x) if np.ndim(x) == 0 and not isinstance(x, bool | np.bool_ | str) else None
        except (TypeError, ValueError):
            value = None
        if value is None or not np.isfinite(value) or value <= 0:
            raise ValueError(f"priors['{k}'] must be a positive finite number, got {x!r}")
    return given


def resolve_priors(Y, rank: int, priors: dict | None) -> dict:
    """``default_priors(Y, rank)`` updated with ``priors`` (unknown keys are an error).

    When ``priors`` gives every scale, ``Y`` is not looked at (so models can be traced
    with ``Y`` as a JAX array or ``None``).
    """
    given = check_priors(priors, values=False)  # (the values are checked where users give them: bayes.spec)
    missing = [k for k in PRIOR_KEYS[1:] if k not in given]
    if not missing:
        return {"x_concentration": 1.0, **given}
    if Y is None:
        raise ValueError(f"with Y=None the priors cannot be set from the data: give priors with {missing} "
                         "(e.g. bayes.default_priors(Y, rank) of a data set)")
    return {**default_priors(Y, rank), **given}


def _likelihood(Y, A, X, theta, sigma2, tau2, P: int):
    if Y is None:
        N = A.shape[1]
        mean = (X @ theta @ A).T  # (N, P)
        with numpyro.plate("unit", N):
            numpyro.sample("Y", dist.LowRankMultivariateNormal(mean, jnp.sqrt(tau2) * X, sigma2 * jnp.ones(P)))
        return
    stats = Y if isinstance(Y, Stats) else statistics(Y, A)
    numpyro.factor("Y", loglik(stats, X, theta, sigma2, tau2))


def _x_columns(P: int, rank: int, concentration, simplex: str):
    """X's columns ~ Dirichlet(concentration), in the unconstrained coordinates of ``simplex``."""
    alpha = concentration * jnp.ones(P)
    with numpyro.plate("component", rank):
        if simplex == "folded":
            g = jnp.abs(numpyro.sample("X_raw", FoldedDirichlet(alpha)))
            return numpyro.deterministic("X_columns", g / jnp.sum(g, axis=-1, keepdims=True))
        return numpyro.sample("X_columns", (DirichletILR if simplex == "ilr" else dist.Dirichlet)(alpha))


def _shape(Y, A) -> tuple[int, int]:
    """(P, K) of the data (``Y`` an array or Stats; P is None when ``Y`` is None)."""
    if isinstance(Y, Stats):
        return Y.P, Y.K
    return (None if Y is None else Y.shape[0]), A.shape[0]


def _theta(rank, K, nonneg, scale, folded: bool = False, frame=None):
    """Theta (Q x K) as one site with event shape (Q, K) (no plates, so the ``component``
    plate of X's columns keeps one dim).

    With ``frame`` (``T``, K x K lower triangular, as :class:`nmfre.core.covariates.Frame`'s;
    free Theta only) the sampled site is ``theta_frame`` = ``Theta T``, the effects on the
    covariates ``T^-1 A`` that the data are given on (see :func:`joint`), with the density that
    ``Theta ~ Normal(0, scale)`` implies, ``p(Theta) |det T|^-Q`` (factor ``theta_prior``,
    evaluated at ``Theta`` itself: the same law as rows ``Normal(0, scale^2 T'T)``, whose
    Cholesky factor squares ``T``'s condition number and lost every digit on a covariate of
    Unix times); ``theta`` (on the given covariates) is deterministic. The function returns
    the effects the likelihood uses: ``Theta T`` with a frame."""
    shape = (rank, K)
    if frame is not None:
        T = jnp.asarray(frame)
        theta_o = numpyro.sample("theta_frame", dist.ImproperUniform(constraints.real_matrix, (), shape))
        theta = numpyro.deterministic("theta", solve_triangular(T, theta_o.T, lower=True, trans="T").T)
        if scale is not None:
            log_det = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(T))))
            numpyro.factor("theta_prior", jnp.sum(dist.Normal(0.0, scale).log_prob(theta)) - rank * log_det)
        return theta_o
    if nonneg and folded:  # Theta = |v|: HalfNormal(s) is |Normal(0, s)|, a flat prior |flat|
        base = (dist.ImproperUniform(constraints.real_matrix, (), shape) if scale is None
                else dist.Normal(0.0, scale).expand(shape).to_event(2))
        return numpyro.deterministic("theta", jnp.abs(numpyro.sample("theta_raw", base)))
    if scale is None:
        support = constraints.independent(constraints.positive if nonneg else constraints.real, 2)
        return numpyro.sample("theta", dist.ImproperUniform(support, (), shape))
    prior = dist.HalfNormal(scale) if nonneg else dist.Normal(0.0, scale)
    return numpyro.sample("theta", prior.expand(shape).to_event(2))


def theta_conditional(stats: Stats, X, sigma2, tau2, scale):
    """Mean and Cholesky factor of the precision of ``vec(Theta)`` (column-major) given
    X, sigma^2 and tau^2 under a Normal(0, ``scale``) prior: the likelihood is Gaussian in
    Theta, with precision ``sum_b A_bA_b' (x) X_b'Sigma_b^-1 X_b + I / scale^2`` (with
    ``X_b'Sigma_b^-1 = C_b^-1 X_b' / sigma^2``, :mod:`bayes.likelihood`).

    Returns ``(mean (QK,), L (QK, QK) lower)`` with ``L L'`` the precision.
    """
    s = stats
    Q = X.shape[-1]
    K = s.AA.shape[-1]
    Xb = s.mask[:, :, None] * X
    XtX = jnp.einsum("bpq,bpr->bqr", Xb, Xb)
    C = jnp.eye(Q) + (tau2 / sigma2) * XtX
    M = jnp.linalg.solve(C, XtX) / sigma2  # X_b' Sigma_b^-1 X_b (symmetric)
    R = jnp.linalg.solve(C, jnp.einsum("bpq,bpk->bqk", Xb, s.YA)) / sigma2
    M = 0.5 * (M + jnp.swapaxes(M, 1, 2))
    prec = jnp.einsum("bkl,bqr->kqlr", s.AA, M).reshape(Q * K, Q * K)
    prec = prec + jnp.eye(Q * K) / scale**2
    L = jnp.linalg.cholesky(prec)
    rhs = jnp.sum(R, axis=0).T.reshape(-1)  # vec column-major
    return cho_solve((L, True), rhs), L


def theta_marginal(stats: Stats, X, sigma2, tau2, scale):
    """Theta integrated out: ``log p(Y | X, sigma, tau)`` under ``vec(Theta) ~ N(0, scale^2 I)``,
    with the mean and Cholesky factor of the precision of Theta's Gaussian conditional.

    The log-likelihood is quadratic in ``theta = vec(Theta)``:
    ``l(theta) = l(0) + g'theta - theta'H theta / 2`` (:func:`theta_conditional` builds
    ``H + I / scale^2 = L L'`` and its mean ``m = (H + I / scale^2)^-1 g``), so
    ``log p(Y | X, sigma, tau) = l(0) - d log(scale) - log det L + |L'm|^2 / 2``
    (``d = QK``), an O(B P^2 Q + (QK)^3) evaluation whatever N.

    Returns ``(log marginal likelihood, mean (QK,), L (QK, QK) lower)``.
    """
    mean, L = theta_conditional(stats, X, sigma2, tau2, scale)
    d = mean.shape[0]
    l0 = loglik(stats, X, jnp.zeros((X.shape[-1], stats.AA.shape[-1]), dtype=mean.dtype), sigma2, tau2)
    Lm = L.T @ mean
    return l0 - d * jnp.log(scale) - jnp.sum(jnp.log(jnp.diagonal(L))) + 0.5 * jnp.dot(Lm, Lm), mean, L


def theta_draw(mean, L, e, rank: int):
    """Theta (..., Q, K) from standard-normal ``e`` (..., QK): ``vec(Theta) = mean + L'^-1 e``,
    a draw from the Gaussian conditional of :func:`theta_conditional` (column-major vec)."""
    v = mean + solve_triangular(L.T, jnp.reshape(e, (-1, mean.shape[0])).T, lower=False).T
    return jnp.swapaxes(v.reshape(jnp.shape(e)[:-1] + (-1, rank)), -1, -2)


def truncated_normal_quantile(a, u, newton_steps: int = 4):
    """``z >= a`` with ``P(Z >= z) = u P(Z >= a)`` for a standard normal ``Z``: the inverse CDF
    of N(0, 1) restricted to ``[a, inf)`` at ``1 - u``, in the tail's log scale.

    Where ``u P(Z >= a)`` underflows (``a`` beyond about 37), ``z`` solves
    ``log P(Z >= z) = log u + log P(Z >= a)`` by Newton's method from the tail approximation
    ``sqrt(a^2 - 2 log u)`` (the log survival function is concave and smooth there, so a few
    steps reach rounding)."""
    from jax.scipy.special import log_ndtr, ndtri

    target = jnp.log(u) + log_ndtr(-a)
    direct = -ndtri(jnp.exp(target))
    z = jnp.sqrt(jnp.maximum(a, 0.0) ** 2 - 2.0 * jnp.log(u))
    for _ in range(newton_steps):
        logsf = log_ndtr(-z)
        # d/dz log P(Z >= z) = -phi(z) / P(Z >= z)
        slope = -jnp.exp(-0.5 * z * z - 0.5 * jnp.log(2.0 * jnp.pi) - logsf)
        z = jnp.maximum(z - (logsf - target) / slope, a)
    return jnp.where(target > -700.0, direct, z)


def theta_truncated(mean, L, key, rank: int, sweeps: int = 20):
    """Theta (Q x K) from the Gaussian conditional N(mean, (L L')^-1) restricted to
    ``Theta >= 0``, by ``sweeps`` Gibbs sweeps over the entries (each an exact draw of a
    univariate truncated normal by the inverse CDF, in the tail's log scale) from the
    mean clipped at 0: an approximate draw whose error vanishes as ``sweeps`` grows."""
    import jax

    prec = L @ L.T
    d = mean.shape[0]
    diag = jnp.diagonal(prec)

    def entry(carry, i):
        v, key = carry
        key, k = jax.random.split(key)
        m = mean[i] - (jnp.dot(prec[i], v - mean) - diag[i] * (v[i] - mean[i])) / diag[i]
        sd = 1.0 / jnp.sqrt(diag[i])
        a = -m / sd  # lower bound in standard units
        u = jax.random.uniform(k, minval=1e-300)
        return (v.at[i].set(jnp.maximum(m + sd * truncated_normal_quantile(a, u), 0.0)), key), None

    def sweep(carry, _):
        return jax.lax.scan(entry, carry, jnp.arange(d))[0], None

    (v, _), _ = jax.lax.scan(sweep, (jnp.maximum(mean, 0.0), key), None, length=sweeps)
    return v.reshape(-1, rank).T


def _theta_sheared(stats, X, sigma2, tau2, rank, K, nonneg, scale):
    """Theta in coordinates centred and scaled by its Gaussian conditional given X, sigma
    and tau (:func:`theta_conditional`): ``v = mean + L'^-1 delta``, Theta = v (free) or
    ``|v|`` (non-negative, folded), v ~ Normal(0, scale) a priori. A shear of
    ``(X, sigma, tau, v)`` with Jacobian ``det L^-1``: the density of Theta is unchanged,
    but the ridge along which Theta follows X (X' = X R, Theta' = R^-1 Theta) is straight
    and the conditional of ``delta`` is close to N(0, I) whatever X."""
    mean, L = theta_conditional(stats, X, sigma2, tau2, scale)
    delta = numpyro.sample("theta_delta", dist.ImproperUniform(constraints.real_vector, (), (rank * K,)))
    v = mean + solve_triangular(L.T, delta, lower=False)
    numpyro.factor("theta_jacobian", jnp.sum(dist.Normal(0.0, scale).log_prob(v))
                   - jnp.sum(jnp.log(jnp.diagonal(L))))
    theta = v.reshape(K, rank).T
    return numpyro.deterministic("theta", jnp.abs(theta) if nonneg else theta)


def theta_delta(stats: Stats, X, sigma2, tau2, theta, scale):
    """The ``theta_delta`` coordinates of ``theta`` (inverse of :func:`_theta_sheared`, for
    starting values; a non-negative Theta is taken as ``v = Theta``)."""
    mean, L = theta_conditional(stats, X, sigma2, tau2, scale)
    return L.T @ (jnp.asarray(theta).T.reshape(-1) - mean)


def _variances(p: dict):
    sigma = numpyro.sample("sigma", dist.HalfNormal(p["sigma_scale"]))
    tau = numpyro.sample("tau", dist.HalfNormal(p["tau_scale"]))
    return sigma**2, tau**2


@renamed(n_features="P")
def joint(Y, A, rank: int, nonneg: bool = False, priors: dict | None = None, *, P: int | None = None,
          simplex: str = "ilr", theta_coords: str = "direct", frame=None):
    """Full joint model: X, Theta, sigma, tau all sampled.

    Parameters
    ----------
    Y : array (P, N), Stats or None
        Data (``NaN`` = missing), their compressed statistics, or None to draw Y (then
        give ``P`` and ``priors``).
    A : array (K, N)
        Covariates (may be None when ``Y`` is a Stats).
    rank : int
    nonneg : bool
        Theta half-normal (>= 0) instead of normal.
    priors : dict, optional
        See the module docstring.
    P : int, optional
        P, when ``Y`` is None.
    simplex : {"ilr", "stickbreaking", "folded"}
        Unconstrained coordinates of X's columns (and, ``"folded"``, of non-negative
        Theta); the same prior either way. ``"folded"`` has sites ``X_raw`` (and
        ``theta_raw``) with ``X_columns`` (and ``theta``) deterministic.
    theta_coords : {"direct", "conditional", "marginal"}
        ``"conditional"`` (with data, and the folded simplex or free Theta): Theta is
        ``mean + L'^-1 theta_delta`` with (mean, L L') its Gaussian conditional given X,
        sigma, tau (:func:`theta_conditional`; ``|.|`` for non-negative Theta), an exact
        change of coordinates (site ``theta_delta``, ``theta`` deterministic).
        ``"marginal"`` (with data): Theta integrated out in closed form under its Normal
        prior (:func:`theta_marginal`); the sites are X, sigma and tau, and the density
        is their exact marginal posterior for free Theta. For non-negative Theta it is the
        density of the free-Theta model with the same (normal) scale, whose restriction to
        ``Theta >= 0`` is the half-normal model: :mod:`bayes.compiled` corrects for the
        restriction with an exact accept/reject step on a draw of Theta.
    frame : array (K, K), optional
        Free Theta in direct coordinates only: the data (``Y``'s statistics, or ``A``) are
        given on covariates ``A_o = T^-1 A`` (``A`` the covariates the priors refer to, e.g.
        :class:`nmfre.core.covariates.Frame`'s orthonormal ones), and the sampled site is
        ``theta_frame = Theta T`` with the prior that ``Theta ~ Normal(0, theta_scale)``
        implies; ``theta`` is deterministic. The posterior of Theta is the same; its geometry
        is not: on an uncentred covariate ``c + x`` the intercept and the slope of a
        component are correlated to about ``1 - 1 / (2 c^2)`` (in units of x's sd), and
        ChEES-HMC's diagonal metric cannot follow that ridge.
    """
    if frame is not None and (nonneg or theta_coords != "direct"):
        raise ValueError("frame is for free Theta in direct coordinates (theta_coords='direct')")
    if Y is None and P is None:
        raise ValueError("joint(Y=None, ...) needs P (the number of features; formerly n_features)")
    P_data, K = _shape(Y, A)
    P = P_data if P_data is not None else int(P)
    p = resolve_priors(Y, rank, priors)
    X = numpyro.deterministic("X", _x_columns(P, rank, p["x_concentration"], simplex).T)
    if theta_coords == "marginal" and Y is not None:
        sigma2, tau2 = _variances(p)
        stats = Y if isinstance(Y, Stats) else statistics(Y, A)
        numpyro.factor("Y", theta_marginal(stats, X, sigma2, tau2, p["theta_scale"])[0])
        return
    if theta_coords == "conditional" and Y is not None and (simplex == "folded" or not nonneg):
        sigma2, tau2 = _variances(p)
        stats = Y if isinstance(Y, Stats) else statistics(Y, A)
        theta = _theta_sheared(stats, X, sigma2, tau2, rank, K, nonneg, p["theta_scale"])
        _likelihood(stats, A, X, theta, sigma2, tau2, P)
        return
    theta = _theta(rank, K, nonneg, p["theta_scale"], simplex == "folded", frame)
    sigma2, tau2 = _variances(p)
    _likelihood(Y, A, X, theta, sigma2, tau2, P)


def _check_frame(frame, nonneg: bool) -> None:
    if frame is not None and nonneg:
        raise ValueError("frame is for free Theta (the constraint Theta >= 0 is not kept by a change of covariates)")


def conditional_x(Y, A, X, nonneg: bool = False, priors: dict | None = None, *, folded: bool = False,
                  frame=None):
    """X fixed; Theta, sigma, tau sampled (``Y`` an array, a Stats or None; ``folded``:
    non-negative Theta sampled as ``|v|``, see :class:`bayes.simplex.FoldedDirichlet`;
    ``frame``: free Theta sampled on covariates ``T^-1 A``, as in :func:`joint`)."""
    _check_frame(frame, nonneg)
    p = resolve_priors(Y, X.shape[1], priors)
    theta = _theta(X.shape[1], _shape(Y, A)[1], nonneg, p["theta_scale"], folded, frame)
    sigma2, tau2 = _variances(p)
    _likelihood(Y, A, X, theta, sigma2, tau2, X.shape[0])


def conditional(Y, A, X, sigma2: float, tau2: float, nonneg: bool = False, priors: dict | None = None, *,
                folded: bool = False, frame=None):
    """X, sigma^2 and tau^2 fixed; Theta flat (``priors`` None or ``theta_scale`` None) or
    normal (``folded``: non-negative Theta sampled as ``|v|``; ``frame``: free Theta sampled
    on covariates ``T^-1 A``, as in :func:`joint`)."""
    _check_frame(frame, nonneg)
    scale = (priors or {}).get("theta_scale")
    theta = _theta(X.shape[1], _shape(Y, A)[1], nonneg, scale, folded, frame)
    _likelihood(Y, A, X, theta, sigma2, tau2, X.shape[0])


def u_conditional(Y, A, X, theta, sigma2, tau2):
    """Mean (Q x N) and covariance (Q x Q) of U given the data and the parameters.

    ``mean = M^-1 X'(Y - X Theta A)``, ``cov = sigma^2 M^-1``, ``M = X'X + lambda I`` with
    ``lambda = sigma^2 / tau^2`` (numpy). Leading axes of ``X``, ``theta``, ``sigma2`` and
    ``tau2`` broadcast, one conditional per posterior draw (then give ``sigma2`` and
    ``tau2`` trailing axes of size 1). For units that share a pattern of observed
    features, pass ``Y`` and ``X`` with the unobserved rows set to zero
    (:func:`bayes.datatree.draw_u`).
    """
    Q = X.shape[-1]
    Xt = np.swapaxes(X, -1, -2)
    M = Xt @ X + (sigma2 / tau2) * np.eye(Q)
    mean = np.linalg.solve(M, Xt @ (Y - X @ theta @ A))
    return mean, sigma2 * np.linalg.inv(M)
