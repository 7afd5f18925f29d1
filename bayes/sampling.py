"""``bayes.sample``: run NUTS on one of the models and return an ArviZ ``xarray.DataTree``.

Chains run in parallel on the CPU when JAX sees enough devices (call
:func:`bayes.configure` before JAX starts, or set
``XLA_FLAGS=--xla_force_host_platform_device_count=N``); otherwise they run vectorized on
one device. On a GPU: install ``jax[cuda12]``; JAX then places the sampler there, and
``chain_method="vectorized"`` runs all chains on the one device.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import xarray as xr

from nmfre import validation as v
from nmfre.core.bootstrap import align_components
from nmfre.core.covariance import conditional as conditional_covariance
from nmfre.labels import Data, check_rank, coerce

from . import models

MODELS = ("joint", "conditional", "conditional_x")
CHAIN_METHODS = ("parallel", "sequential", "vectorized")


class SamplingWarning(UserWarning):
    """The sampler's diagnostics fail a threshold (r_hat > 1.01, bulk ESS < 400, divergences)."""


@dataclass(frozen=True)
class ModelSpec:
    """A model ready to sample: the function, its arguments, starting values and the
    fixed quantities the posterior is labelled with."""

    name: str
    fn: Any
    args: tuple
    init: dict
    data: Data
    fit: Any
    priors: dict
    sigma2_fixed: float | None = None


def _frequentist_fit(fit, data: Data, rank: int, theta: str):
    """The given fit (checked against the data) or a fresh ML fit."""
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
        raise v.ArgumentTypeError(f"fit must be an nmfre.NMFREFit, got {type(fit).__name__}")
    if fit.shape["Q"] != rank:
        raise ValueError(f"fit has rank {fit.shape['Q']} but rank={rank} was asked for")
    if not fit.data.same_data(data):
        raise ValueError("fit was estimated on different data (Y or A differ from those given)")
    if fit.theta_kind != theta:
        raise ValueError(f"fit has theta={fit.theta_kind!r} but theta={theta!r} was asked for")
    return fit


def model_spec(Y, A, rank: int, model: str, fit=None, theta: str = "free", priors: dict | None = None) -> ModelSpec:
    """Validate the inputs and build the :class:`ModelSpec` for ``model``."""
    model = v.choice(model, "model", MODELS)
    theta = v.choice(theta, "theta", ("free", "nonneg"))
    data = coerce(Y, A)
    rank = check_rank(rank, data.P, data.N)
    prior = models.resolve_priors(data.Y, rank, priors)
    fit = _frequentist_fit(fit, data, rank, theta)
    nonneg = theta == "nonneg"
    sol = fit.solution
    X = sol.X
    th0 = np.asarray(sol.theta, float)
    init = {"theta": np.maximum(th0, 1e-6 * (np.abs(th0).max() or 1.0)) if nonneg else th0}
    if model != "conditional":
        init.update(sigma=np.sqrt(fit.sigma2), tau=np.sqrt(fit.tau2))
    if model == "joint":
        Xi = X + 1e-3 / data.P
        init["X_columns"] = (Xi / Xi.sum(axis=0)).T
        return ModelSpec(model, partial(models.joint, nonneg=nonneg, priors=prior), (data.Y, data.A, rank),
                         init, data, fit, prior)
    if model == "conditional_x":
        return ModelSpec(model, partial(models.conditional_x, nonneg=nonneg, priors=prior), (data.Y, data.A, X),
                         init, data, fit, prior)
    s2 = conditional_covariance(data.Y, data.A, X, sol.theta, sol.U, fit.lam).sigma2_used
    cprior = {"theta_scale": (priors or {}).get("theta_scale")}
    fn = partial(models.conditional, nonneg=nonneg, priors=cprior)
    return ModelSpec(model, fn, (data.Y, data.A, X, s2, s2 / fit.lam), init, data, fit, prior, s2)


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
        Add a ``posterior_predictive`` group with replicated Y (``numpyro.infer.Predictive``).
    chain_method : {"parallel", "sequential", "vectorized"}, optional
        Default "parallel" when JAX has a device per chain (see :func:`bayes.configure`),
        else "vectorized".
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
    import jax

    num_warmup = v.integer(num_warmup, "num_warmup", minimum=0)
    num_samples = v.integer(num_samples, "num_samples")
    num_chains = v.integer(num_chains, "num_chains")
    target_accept = v.open_unit(target_accept, "target_accept")
    if chain_method is not None:
        v.choice(chain_method, "chain_method", CHAIN_METHODS)
    spec = model_spec(Y, A, rank, model, fit, theta, priors)
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(v.seed_key(seed)) if isinstance(seed, int | np.integer) else seed
        key_mcmc, key_u, key_pp = jax.random.split(key, 3)
        mcmc = _run_nuts(spec, key_mcmc, num_warmup, num_samples, num_chains, chain_method, target_accept, progress)
        dt = _to_datatree(spec, mcmc, key_u if draw_U else None, key_pp if posterior_predictive else None)
    _warn_diagnostics(dt)
    return dt


def _run_nuts(spec: ModelSpec, key, num_warmup, num_samples, num_chains, chain_method, target_accept, progress):
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_value

    if chain_method is None:
        chain_method = "parallel" if jax.local_device_count() >= num_chains else "vectorized"
    kernel = NUTS(spec.fn, init_strategy=init_to_value(values=spec.init), target_accept_prob=target_accept)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method=chain_method, progress_bar=progress)
    mcmc.run(key, *spec.args)
    return mcmc


def _to_datatree(spec: ModelSpec, mcmc, key_u, key_pp) -> xr.DataTree:
    """ArviZ DataTree with nmfre's coordinates; fixed quantities added, chains aligned."""
    import arviz as az

    fit, data = spec.fit, spec.data
    coords = {**fit.coords}
    dims = {"theta": ["component", "covariate"], "X": ["feature", "component"], "Y": ["unit", "feature"],
            "X_columns": ["component", "feature"]}
    pp = None
    if key_pp is not None:
        pp = _predictive(spec, mcmc, key_pp)
    dt = az.from_numpyro(mcmc, coords=coords, dims=dims, posterior_predictive=pp)
    post = dt["posterior"].to_dataset()
    if "X_columns" in post:
        post = post.drop_vars("X_columns")
    if spec.name != "joint":
        post["X"] = fit.X.copy()
    if spec.name == "conditional":
        post["sigma"] = xr.full_like(post["theta"].isel(component=0, covariate=0), np.sqrt(spec.sigma2_fixed))
        post["tau"] = xr.full_like(post["sigma"], np.sqrt(spec.sigma2_fixed / fit.lam))
    if spec.name == "joint" and fit.shape["Q"] > 1:
        post = align_chains(post, fit.solution.X)
    if key_u is not None:
        post["U"] = _draw_u(post, data, key_u)
    post.attrs.update({"model": spec.name, "theta_kind": fit.theta_kind, "nmfre_priors": str(spec.priors)})
    dt["posterior"] = xr.DataTree(post)
    return dt


def _predictive(spec: ModelSpec, mcmc, key) -> dict:
    """Replicated Y (chain, draw, unit, feature) from the model with ``Y=None``."""
    from numpyro.infer import Predictive

    samples = mcmc.get_samples(group_by_chain=True)
    args = (None,) + spec.args[1:]
    fn = spec.fn
    if spec.name == "joint":
        fn = partial(spec.fn, n_features=spec.data.P)
    out = Predictive(fn, posterior_samples=samples, return_sites=["Y"], batch_ndims=2)(key, *args)
    return {"Y": np.asarray(out["Y"])}


def align_chains(post: xr.Dataset, X_ref: np.ndarray) -> xr.Dataset:
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


def _draw_u(post, data: Data, key):
    import jax

    X = post["X"]
    if "chain" not in X.dims:
        X = X.broadcast_like(post["theta"].isel(component=0, covariate=0, drop=True))
    X = X.transpose("chain", "draw", "feature", "component").values
    th = post["theta"].transpose("chain", "draw", "component", "covariate").values
    s2 = (post["sigma"] ** 2).transpose("chain", "draw").values
    t2 = (post["tau"] ** 2).transpose("chain", "draw").values
    C, D, _, Q = X.shape
    z = np.asarray(jax.random.normal(key, (C, D, Q, data.N)))
    U = np.empty((C, D, Q, data.N))
    for c in range(C):
        for d in range(D):
            mean, cov = models.u_conditional(data.Y, data.A, X[c, d], th[c, d], s2[c, d], t2[c, d])
            U[c, d] = mean + np.linalg.cholesky(cov) @ z[c, d]
    return xr.DataArray(U, dims=("chain", "draw", "component", "unit"),
                        coords={"component": post["component"].values, "unit": data.units})


def diagnostics(dt: xr.DataTree, var_names=("theta", "sigma", "tau")) -> dict:
    """Max r_hat, min bulk ESS over ``var_names`` and the number of divergences."""
    import arviz as az

    names = [name for name in var_names if name in dt["posterior"].data_vars
             and dt["posterior"][name].std() > 0]
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
