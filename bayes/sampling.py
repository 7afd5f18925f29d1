"""``bayes.sample``: run NUTS on one of the models and return an ArviZ ``xarray.DataTree``.

Chains run in parallel on the CPU when JAX sees enough devices (``bayes`` asks for
``max(4, cpu_count)`` host devices at import, before JAX starts; or set
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` yourself). On a GPU: install
``jax[cuda12]``; JAX then places the sampler there, and ``chain_method="vectorized"`` runs
all chains on the one device.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from nmfre.inference import align_components, conditional_kernel
from nmfre.labels import check_rank, coerce

from . import models

MODELS = ("joint", "conditional", "conditional_x")


class SamplingWarning(UserWarning):
    """The sampler's diagnostics fail a threshold (r_hat > 1.01, bulk ESS < 400, divergences)."""


def _check_fit(fit, data, rank, theta):
    import nmfre

    if fit is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nmfre.ConvergenceWarning)
            return nmfre.fit(xr.DataArray(data.Y, dims=("feature", "unit"),
                                          coords={"feature": data.features, "unit": data.units}),
                             xr.DataArray(data.A, dims=("covariate", "unit"),
                                          coords={"covariate": data.covariates, "unit": data.units}),
                             rank=rank, theta=theta, n_init=1)
    if not isinstance(fit, nmfre.NMFREFit):
        raise TypeError(f"fit must be an nmfre.NMFREFit, got {type(fit).__name__}")
    if fit.shape["Q"] != rank:
        raise ValueError(f"fit has rank {fit.shape['Q']} but rank={rank} was asked for")
    fd = fit._data
    if fd.Y.shape != data.Y.shape or fd.A.shape != data.A.shape or not (
            np.array_equal(fd.Y, data.Y) and np.array_equal(fd.A, data.A)):
        raise ValueError("fit was estimated on different data (Y or A differ from those given)")
    if fit.theta_kind != theta:
        raise ValueError(f"fit has theta={fit.theta_kind!r} but theta={theta!r} was asked for")
    return fit


def sample(Y, A=None, rank: int = 1, *, model: str = "joint", fit=None, theta: str = "free",
           priors: dict | None = None, num_warmup: int = 1000, num_samples: int = 1000,
           num_chains: int = 4, seed=0, progress: bool = False, draw_U: bool = False,
           posterior_predictive: bool = False, chain_method: str | None = None,
           target_accept: float = 0.9) -> xr.DataTree:
    """Sample the posterior of NMF-RE with NUTS.

    Parameters
    ----------
    Y, A, rank :
        Data and rank, as for :func:`nmfre.fit` (same coercion and checks).
    model : {"joint", "conditional", "conditional_x"}
        See :mod:`bayes.models`. The conditional models fix X at ``fit``'s X-hat;
        ``conditional`` also fixes sigma^2 at the ``sigma2_used`` of nmfre's inference and
        lambda at the fit's, so its flat-prior posterior is N(Theta-hat, I^-1).
    fit : nmfre.NMFREFit, optional
        The frequentist fit on the same data (fitted here when None). Chains start at it
        and, for rank > 1, are aligned to it (columns of X matched by Hungarian assignment).
    theta : {"free", "nonneg"}
    priors : dict, optional
        Overrides of :func:`bayes.models.default_priors`.
    num_warmup, num_samples, num_chains : int
    seed : int or JAX PRNG key
    progress : bool
        NumPyro's progress bar.
    draw_U : bool
        Add U (component x unit) drawn from its Gaussian conditional for every draw.
    posterior_predictive : bool
        Add a ``posterior_predictive`` group with replicated Y.
    chain_method : str, optional
        NumPyro chain method; default "parallel" when there are enough devices, else
        "sequential".
    target_accept : float
        NUTS target acceptance probability (higher: smaller steps, fewer divergences).

    Returns
    -------
    xarray.DataTree
        Groups ``posterior`` (``theta``, ``X``, ``sigma``, ``tau``, ``U`` when drawn),
        ``sample_stats``, ``observed_data`` (and ``posterior_predictive``), with the fit's
        coordinates. Warns (:class:`SamplingWarning`) when max r_hat > 1.01, min bulk ESS
        < 400 or there are divergences.
    """
    import arviz as az
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_value

    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if theta not in ("free", "nonneg"):
        raise ValueError(f"theta must be 'free' or 'nonneg', got {theta!r}")
    for name, v in (("num_warmup", num_warmup), ("num_samples", num_samples), ("num_chains", num_chains)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "num_warmup" else 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    data = coerce(Y, A)
    P, N = data.Y.shape
    rank = check_rank(rank, P, N)
    prior = models.default_priors(data.Y, rank)
    if priors:
        unknown = set(priors) - set(models.PRIOR_KEYS)
        if unknown:
            raise ValueError(f"priors has unknown keys {sorted(unknown)}; allowed {models.PRIOR_KEYS}")
        prior.update(priors)
    fit = _check_fit(fit, data, rank, theta)
    nonneg = theta == "nonneg"
    X = fit._res["X"]
    th0 = np.asarray(fit._res["theta"], float)
    th0 = np.maximum(th0, 1e-6 * (np.abs(th0).max() or 1.0)) if nonneg else th0
    init = {"theta": th0}
    if model == "joint":
        Xi = X + 1e-3 / P
        init["X_columns"] = (Xi / Xi.sum(axis=0)).T
    if model != "conditional":
        init["sigma"] = np.sqrt(fit.sigma2)
        init["tau"] = np.sqrt(fit.tau2)
    Yj, Aj = np.asarray(data.Y), np.asarray(data.A)
    if model == "joint":
        fn, args = models.joint, (Yj, Aj, rank, nonneg, prior)
    elif model == "conditional_x":
        fn, args = models.conditional_x, (Yj, Aj, X, nonneg, prior)
    else:
        k = conditional_kernel(data.Y, data.A, X, fit._res["theta"], fit._res["U"], fit.lam)
        s2 = k["sigma2_used"]
        cprior = {"theta_scale": priors.get("theta_scale") if priors else None}
        fn, args = models.conditional, (Yj, Aj, X, s2, s2 / fit.lam, nonneg, cprior)
    if chain_method is None:
        chain_method = "parallel" if jax.local_device_count() >= num_chains else "sequential"
    key = jax.random.PRNGKey(seed) if isinstance(seed, (int, np.integer)) else seed
    key_mcmc, key_u, key_pp = jax.random.split(key, 3)
    kernel = NUTS(fn, init_strategy=init_to_value(values=init), target_accept_prob=target_accept)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method=chain_method, progress_bar=progress)
    mcmc.run(key_mcmc, *args)
    coords = {**fit.coords}
    dims = {"theta": ["component", "covariate"], "X": ["feature", "component"], "Y": ["unit", "feature"],
            "X_columns": ["component", "feature"]}
    dt = az.from_numpyro(mcmc, coords=coords, dims=dims)
    post = dt["posterior"].to_dataset()
    if "X_columns" in post:
        post = post.drop_vars("X_columns")
    if model != "joint":
        post["X"] = xr.DataArray(X, dims=("feature", "component"),
                                 coords={"feature": coords["feature"], "component": coords["component"]})
    if model == "conditional":
        post["sigma"] = xr.full_like(post["theta"].isel(component=0, covariate=0), np.sqrt(s2))
        post["tau"] = xr.full_like(post["sigma"], np.sqrt(s2 / fit.lam))
    if model == "joint" and rank > 1:
        post = _align_chains(post, X)
    if draw_U:
        post["U"] = _draw_u(post, data, key_u)
    if posterior_predictive:
        dt["posterior_predictive"] = xr.DataTree(xr.Dataset({"Y": _replicate_y(post, data, key_pp)}))
    post.attrs.update({"model": model, "theta_kind": theta, "nmfre_priors": str(prior)})
    dt["posterior"] = xr.DataTree(post)
    _warn_diagnostics(dt)
    return dt


def _replicate_y(post, data, key):
    """Replicated Y (chain, draw, unit, feature) from the marginal model at each draw."""
    import jax

    X = post["X"].broadcast_like(post["sigma"]).transpose("chain", "draw", "feature", "component").values
    th = post["theta"].transpose("chain", "draw", "component", "covariate").values
    sig = post["sigma"].transpose("chain", "draw").values
    tau = post["tau"].transpose("chain", "draw").values
    C, D, P, Q = X.shape
    N = data.Y.shape[1]
    k1, k2 = jax.random.split(key)
    zu = np.asarray(jax.random.normal(k1, (C, D, Q, N)))
    ze = np.asarray(jax.random.normal(k2, (C, D, P, N)))
    mean = np.einsum("cdpq,cdqk,kn->cdpn", X, th, data.A)
    rep = mean + tau[..., None, None] * np.einsum("cdpq,cdqn->cdpn", X, zu) + sig[..., None, None] * ze
    return xr.DataArray(np.swapaxes(rep, 2, 3), dims=("chain", "draw", "unit", "feature"),
                        coords={"unit": data.units, "feature": data.features})


def _align_chains(post: xr.Dataset, X_ref: np.ndarray) -> xr.Dataset:
    """Match each chain's components to the frequentist fit (label switching)."""
    Xs = post["X"].transpose("chain", "draw", "feature", "component").values.copy()
    th = post["theta"].transpose("chain", "draw", "component", "covariate").values.copy()
    perms = []
    for c in range(Xs.shape[0]):
        perm, _ = align_components(X_ref, Xs[c].mean(axis=0))
        Xs[c] = Xs[c][..., perm]
        th[c] = th[c][:, perm, :]
        perms.append(perm.tolist())
    post = post.copy()
    post["X"] = (("chain", "draw", "feature", "component"), Xs)
    post["theta"] = (("chain", "draw", "component", "covariate"), th)
    post.attrs["chain_permutations"] = str(perms)
    return post


def _draw_u(post, data, key):
    import jax

    X = post["X"]
    if "chain" not in X.dims:
        X = X.broadcast_like(post["theta"].isel(component=0, covariate=0, drop=True))
    X = X.transpose("chain", "draw", "feature", "component").values
    th = post["theta"].transpose("chain", "draw", "component", "covariate").values
    s2 = (post["sigma"] ** 2).transpose("chain", "draw").values
    t2 = (post["tau"] ** 2).transpose("chain", "draw").values
    C, D, _, Q = X.shape
    N = data.Y.shape[1]
    z = np.asarray(jax.random.normal(key, (C, D, Q, N)))
    U = np.empty((C, D, Q, N))
    for c in range(C):
        for d in range(D):
            mean, cov = models.u_conditional(data.Y, data.A, X[c, d], th[c, d], s2[c, d], t2[c, d])
            U[c, d] = mean + np.linalg.cholesky(cov) @ z[c, d]
    return xr.DataArray(U, dims=("chain", "draw", "component", "unit"),
                        coords={"component": post["component"].values, "unit": data.units})


def diagnostics(dt: xr.DataTree, var_names=("theta", "sigma", "tau")) -> dict:
    """Max r_hat, min bulk ESS over ``var_names`` and the number of divergences."""
    import arviz as az

    names = [v for v in var_names if v in dt["posterior"].data_vars
             and dt["posterior"][v].std() > 0]
    with warnings.catch_warnings():  # arviz divides by zero for coordinates held constant
        warnings.simplefilter("ignore", RuntimeWarning)
        s = az.summary(dt, var_names=names, ci_prob=0.95, ci_kind="eti")
    div = int(dt["sample_stats"]["diverging"].sum()) if "diverging" in dt["sample_stats"] else 0
    return {"max_r_hat": float(np.nanmax(s["r_hat"].astype(float))),
            "min_ess_bulk": float(np.nanmin(s["ess_bulk"].astype(float))), "divergences": div}


def _warn_diagnostics(dt):
    d = diagnostics(dt)
    problems = []
    if d["max_r_hat"] > 1.01:
        problems.append(f"max r_hat {d['max_r_hat']:.3f} > 1.01")
    if d["min_ess_bulk"] < 400:
        problems.append(f"min bulk ESS {d['min_ess_bulk']:.0f} < 400")
    if d["divergences"]:
        problems.append(f"{d['divergences']} divergent transitions")
    if problems:
        warnings.warn("sampler diagnostics: " + "; ".join(problems), SamplingWarning, stacklevel=3)
