"""``bayes.fit_vi``: the variational twin of :func:`bayes.sample` (NumPyro SVI, an AutoGuide).

The guide is a Gaussian in the model's unconstrained coordinates: ``"lowrank"``
(:class:`~numpyro.infer.autoguide.AutoLowRankMultivariateNormal`), ``"full"``
(:class:`~numpyro.infer.autoguide.AutoMultivariateNormal`) or ``"diag"``
(:class:`~numpyro.infer.autoguide.AutoDiagonalNormal`). It starts at the Laplace
approximation of :mod:`bayes.compiled` (mode and inverse Hessian at the frequentist fit)
and Adam maximises the ELBO from there; the data enter through the compressed statistics,
so each gradient step costs O(P^2 Q) whatever N. As with the sampler, the whole run
(optimisation and draws from the guide) is one function compiled once per (model, data
shape, settings) and cached: a loop over data sets of one shape compiles once.

The result has the layout of :func:`bayes.sample` (``posterior`` with ``(chain, draw)``:
the guide's draws split into ``num_chains`` groups, aligned to the fit for rank > 1;
``observed_data``) with ``posterior.attrs["approximate"] = True`` (``plot_compare`` labels
it "(approx.)"), and a ``variational`` group with the ELBO trace. :class:`VIWarning` when
the ELBO has not settled (see :func:`elbo_settled`).

``method="dadvi"`` (:mod:`bayes.dadvi`) fits the full guide to a fixed-draw objective with a
second-order optimiser and draws from the linear-response covariance of the guide's mean
instead of the guide's own covariance, which understates the spread of these posteriors.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import xarray as xr

from nmfre import validation as v
from nmfre.labels import coerce

from . import compiled, dadvi, datatree, sampling
from .prior_shift import warn_prior_shift
from .seeds import prng_key

__all__ = ["GUIDES", "METHODS", "VIWarning", "elbo_settled", "fit_vi"]

GUIDES = ("lowrank", "full", "diag")
METHODS = ("svi", "dadvi")
#: Adam's learning rate of ``method="svi"`` by default
LEARNING_RATE = 0.005
SITES = ["X", "theta", "sigma", "tau"]
_CACHE: dict = {}


class VIWarning(UserWarning):
    """The ELBO has not settled: run more steps or change the learning rate."""


@dataclass(frozen=True)
class VISettings:
    """Static settings of a variational fit (the cache key)."""

    base: compiled.Settings
    guide: str
    guide_rank: int | None
    num_steps: int
    learning_rate: float
    num_particles: int
    num_draws: int
    method: str = "svi"


def _guide(vs: VISettings, model, init_values):
    from numpyro.infer import autoguide, init_to_value

    kw = {"init_loc_fn": init_to_value(values=init_values)}
    if vs.guide == "lowrank":
        return autoguide.AutoLowRankMultivariateNormal(model, rank=vs.guide_rank, **kw)
    if vs.guide == "full":
        return autoguide.AutoMultivariateNormal(model, **kw)
    return autoguide.AutoDiagonalNormal(model, **kw)


def laplace_params(guide: str, z, cov, rank: int | None):
    """Guide parameters (constrained values) equal to, or for ``"lowrank"`` close to,
    the Gaussian ``N(z, cov)``."""
    import jax.numpy as jnp

    sd = jnp.sqrt(jnp.diagonal(cov))
    if guide == "full":
        return {"auto_loc": z, "auto_scale_tril": jnp.linalg.cholesky(cov)}
    if guide == "diag":
        return {"auto_loc": z, "auto_scale": sd}
    r = int(round(z.shape[0] ** 0.5)) if rank is None else rank
    w, U = jnp.linalg.eigh(cov / jnp.outer(sd, sd))  # correlation matrix, ascending eigenvalues
    W = U[:, ::-1][:, :r] * jnp.sqrt(jnp.maximum(w[::-1][:r] - 1.0, 0.0))
    return {"auto_loc": z, "auto_cov_factor": W, "auto_scale": sd}


def _run(vs: VISettings, key, init, args):
    """Optimise the ELBO from the Laplace approximation and draw from the guide."""
    import jax
    from numpyro.infer import SVI, Predictive, Trace_ELBO
    from numpyro.infer.util import constrain_fn
    from numpyro.optim import Adam

    compiled.TRACES[vs] += 1
    model = compiled.model_function(vs.base)
    z, cov, _, unravel = compiled.prepare(vs.base, init, args)
    start = constrain_fn(model, args, {}, unravel(z))
    guide = _guide(vs, model, start)
    svi = SVI(model, guide, Adam(vs.learning_rate), Trace_ELBO(num_particles=vs.num_particles))
    key_init, key_draw = jax.random.split(key)
    state = svi.init(key_init, *args, init_params=laplace_params(vs.guide, z, cov, vs.guide_rank))
    state, losses = jax.lax.scan(lambda st, _: svi.stable_update(st, *args), state, None, length=vs.num_steps)
    params = svi.get_params(state)
    key_draw, key_theta = jax.random.split(key_draw)
    pred = Predictive(model, guide=guide, params=params, num_samples=vs.num_draws, return_sites=SITES)
    draws = pred(key_draw, *args)
    if compiled.marginal(vs.base):  # Theta integrated out: drawn from its conditional given each draw
        draws["theta"] = _theta_draws(vs.base, args, draws, key_theta)
    return draws, losses


def _theta_draws(s: compiled.Settings, args, draws, key):
    """Theta given each guide draw of (X, sigma, tau): its Gaussian conditional (free) or
    that restricted to Theta >= 0 (Gibbs sweeps, :func:`bayes.models.theta_truncated`)."""
    import jax

    from . import models

    stats, priors = args

    def one(X, sigma, tau, k):
        mean, L = models.theta_conditional(stats, X, sigma**2, tau**2, priors["theta_scale"])
        if s.nonneg:
            return models.theta_truncated(mean, L, k, s.rank)
        return models.theta_draw(mean, L, jax.random.normal(k, mean.shape), s.rank)

    keys = jax.random.split(key, draws["X"].shape[0])
    return jax.vmap(one)(draws["X"], draws["sigma"], draws["tau"], keys)


def _runner(vs: VISettings):
    import jax

    fn = _CACHE.get(vs)
    if fn is None:
        fn = _CACHE[vs] = jax.jit(lambda key, init, args: _run(vs, key, init, args))
    return fn


def elbo_settled(elbo: np.ndarray, window: float = 0.1, tol: float = 0.5) -> tuple[bool, float]:
    """Has the ELBO trace settled?

    Compares the mean ELBO over the last ``window`` of the steps with the mean over the
    window before: settled when the gain is below ``tol`` times the step-to-step noise
    (the standard deviation of the ELBO estimates in the last window).

    Parameters
    ----------
    elbo : array (steps,)
    window : float
        Fraction of the steps in each window.
    tol : float

    Returns
    -------
    (bool, float)
        Settled or not, and the gain in units of the noise.
    """
    elbo = np.asarray(elbo, float)
    w = max(int(len(elbo) * window), 2)
    last, before = elbo[-w:], elbo[-2 * w:-w]
    if not np.isfinite(last).all():
        return False, float("nan")
    noise = float(np.std(last)) or 1e-12
    gain = (float(np.mean(last)) - float(np.mean(before))) / noise
    return bool(gain < tol), gain


def fit_vi(Y, A=None, rank: int = 1, *, model: str = "joint", guide: str = "full", fit=None,
           theta: str = "free", priors: dict | None = None, num_steps: int = 3000, learning_rate: float | None = None,
           num_particles: int | None = None, num_samples: int = 1000, num_chains: int = 4,
           guide_rank: int | None = None, simplex: str = "folded", theta_coords: str = "direct", seed=0,
           warn: bool = True, method: str = "svi") -> xr.DataTree:
    """Variational approximation of the posterior (NumPyro SVI with an AutoGuide, or DADVI with
    linear-response covariances).

    Parameters
    ----------
    Y, A, rank, model, fit, theta, priors :
        As for :func:`bayes.sample`.
    guide : {"full", "lowrank", "diag"}
        Gaussian guide in unconstrained space: full covariance (default: measured closest
        to NUTS), low rank plus diagonal, or mean-field.
    num_steps : int
        Adam steps (the guide starts at the Laplace approximation); ``method="dadvi"``: the
        most optimiser iterations.
    learning_rate : float, optional
        Adam's (default :data:`LEARNING_RATE`); ``method="svi"`` only (DADVI's optimiser has
        no learning rate, and one given with it is refused).
    num_particles : int, optional
        Monte Carlo draws per ELBO estimate (default 4); ``method="dadvi"``: the fixed draws
        of its objective (default :data:`bayes.dadvi.NUM_DRAWS` = 1024; must exceed the number
        of unconstrained coordinates).
    num_samples, num_chains : int
        Draws from the guide, shaped ``(chain, draw)`` like a sampler's.
    guide_rank : int, optional
        Rank of the ``"lowrank"`` guide (default ``round(sqrt(dim))``).
    simplex : {"folded", "ilr", "stickbreaking"}
        Unconstrained coordinates of X's columns (and, ``"folded"``, of non-negative
        Theta), as for :func:`bayes.sample`.
    theta_coords : {"direct", "marginal"}
        ``"marginal"`` (joint model): Theta integrated out, the guide covers X, sigma and
        tau only and Theta is drawn from its exact conditional given each guide draw (for
        non-negative Theta the guide fits the free-Theta marginal and Theta is drawn from
        the conditional restricted to Theta >= 0): the spread that X's uncertainty adds
        to Theta is carried by the conditional, not by the Gaussian guide.
    seed : int, numpy.random.Generator or JAX PRNG key
    warn : bool
        :class:`VIWarning` when the ELBO has not settled (``method="dadvi"``: when the
        optimiser ran out of iterations or the objective's Hessian is not positive definite
        at its end point); before the fit, :class:`bayes.PriorWarning` where the prior on
        Theta moves its posterior (as :func:`bayes.sample`).
    method : {"svi", "dadvi"}
        ``"svi"`` (default): Adam on the stochastic ELBO, draws from the guide.
        ``"dadvi"``: the full Gaussian guide fitted to a fixed-draw objective by a
        second-order optimiser, and draws from the **linear-response** covariance of its
        mean instead of the guide's own (:mod:`bayes.dadvi`): the guide's covariance
        understates Theta's posterior sds by up to 60% here, the linear-response one came
        within 25% of long ChEES-HMC runs on the ten 20 x 300 data sets of two generators measured (rank 2,
        docs: benchmarks). Full guide, folded simplex and direct Theta coordinates only
        (in ILR coordinates it overstated the sds by 27-94%); at most
        :data:`bayes.dadvi.MAX_PARAMETERS` guide parameters (a dense Hessian).

    Returns
    -------
    xarray.DataTree
        ``posterior`` (``attrs["approximate"] = True``, ``method``, ``guide``, ``elbo``,
        ``elbo_settled``; ``method="dadvi"``: ``covariance="linear_response"`` and the
        optimiser's report as ``optimizer_*``), ``observed_data`` and ``variational``
        (``elbo`` per step; ``method="dadvi"``: minus the fixed-draw objective per
        optimiser iteration, and ``loc`` and ``cov``, the guide's mean and the
        linear-response covariance in the model's unconstrained coordinates, dims
        ``unconstrained`` and ``unconstrained_bis``, labelled ``"site[i,j]"``: the sampled
        site and the index into its unconstrained value, e.g. ``"theta_raw[0,1]"``; the
        non-dimension coordinate ``site`` names each entry's site).
    """
    import jax

    v.choice(guide, "guide", GUIDES)
    if guide_rank is not None and guide != "lowrank":  # it was ignored
        raise ValueError(f"guide_rank is for guide='lowrank', got guide={guide!r}")
    warn = v.boolean(warn, "warn")
    v.choice(simplex, "simplex", ("ilr", "stickbreaking", "folded"))
    v.choice(method, "method", METHODS)
    if method == "dadvi":
        for name, value, need in (("guide", guide, "full"), ("simplex", simplex, "folded"),
                                  ("theta_coords", theta_coords, "direct")):
            if value != need:
                raise ValueError(f"method='dadvi' needs {name}={need!r}, got {value!r}")
        if learning_rate is not None:  # it was ignored
            raise ValueError(f"learning_rate is for method='svi' (Adam's step); method='dadvi' has none, got "
                             f"learning_rate={learning_rate!r}")
    if learning_rate is None:
        learning_rate = LEARNING_RATE
    if num_particles is None:
        num_particles = dadvi.NUM_DRAWS if method == "dadvi" else 4
    num_particles = v.integer(num_particles, "num_particles")
    data = coerce(Y, A)
    if method == "dadvi":  # refused before the fit and the statistics
        _check_dadvi(model, data.P, v.integer(rank, "rank"), data.K, num_particles)
    sampler = sampling.Sampler(model, rank, data.P, None, data.K, theta=theta, num_samples=num_samples,
                               num_chains=num_chains, simplex=simplex,
                               theta_coords=v.choice(theta_coords, "theta_coords", ("direct", "marginal")),
                               kernel="nuts")  # no sampler runs: the settings only shape the model
    # (free Theta on orthonormal covariates, as bayes.sample: on an uncentred covariate c + x at c =
    # 1000 the guides fitted on the given covariates had the slopes' sds 70 (SVI) and 170 (DADVI)
    # times too small; the variational group's loc and cov are mapped back to Theta's own coordinates)
    spec = sampler.spec(Y, A, fit=fit, priors=priors)
    if warn:
        warn_prior_shift(spec)
    base = dataclasses.replace(sampler.settings_for(spec), num_warmup=0, num_samples=0, num_chains=0)
    vs = VISettings(base, guide, None if guide_rank is None else v.integer(guide_rank, "guide_rank"),
                    v.integer(num_steps, "num_steps", minimum=10), v.positive_float(learning_rate, "learning_rate"),
                    num_particles, sampler.settings.num_samples * num_chains, method)
    info = lr = None
    with jax.enable_x64(True):
        if method == "dadvi":
            draws, elbo, info, loc, cov = dadvi.fit(vs, prng_key(seed), spec.init, spec.args)
            # minus DADVI's objective is the ELBO without the Gaussian entropy's constant
            # d (1 + log 2 pi) / 2 (the recorded elbo was 12.8 below SVI's at d = 9)
            elbo = np.asarray(elbo) + 0.5 * np.shape(loc)[0] * (1.0 + np.log(2.0 * np.pi))
            lr = _on_given_covariates(loc, cov, compiled.coordinate_labels(vs.base, spec.init, spec.args), spec.frame)
            draws = {k: x for k, x in draws.items() if k in SITES}
        else:
            draws, losses = jax.device_get(_runner(vs)(prng_key(seed), spec.init, spec.args))
            elbo = -np.asarray(losses)
    C, D = num_chains, sampler.settings.num_samples
    draws = {k: np.asarray(x).reshape((C, D) + np.shape(x)[1:]) for k, x in draws.items()}
    if spec.name == "conditional":
        draws.pop("sigma", None), draws.pop("tau", None)
        draws["sigma"], draws["tau"] = np.sqrt(spec.sigma2_fixed), np.sqrt(spec.sigma2_fixed / spec.fit.lam)
    return _datatree(spec, vs, draws, elbo, warn, info, lr)


def _on_given_covariates(loc, cov, labels, T) -> tuple:
    """``(loc, cov, labels)`` with the ``theta_frame`` coordinates (effects on orthonormal
    covariates, ``Theta T``) replaced by ``theta``'s (``Theta = theta_frame T^-1``: a linear map of
    the guide's mean and covariance), so that the variational group is on the given covariates
    whether or not the model sampled on the frame (``T`` None: unchanged)."""
    names, sites = list(labels[0]), list(labels[1])
    if T is None or "theta_frame" not in sites:
        return loc, cov, (names, sites)
    Tinv = np.linalg.inv(np.asarray(T, dtype=float))
    pos = {}
    for i, (name, site) in enumerate(zip(names, sites, strict=True)):
        if site == "theta_frame":  # "theta_frame[q,k]"
            q, k = (int(x) for x in name[name.index("[") + 1:-1].split(","))
            pos[q, k] = i
    J = np.eye(len(names))
    for (q, k), i in pos.items():  # theta[q, k] = sum_j theta_frame[q, j] (T^-1)[j, k]
        J[i, i] = 0.0
        for j in range(Tinv.shape[0]):
            J[i, pos[q, j]] = Tinv[j, k]
    for (q, k), i in pos.items():
        names[i], sites[i] = f"theta[{q},{k}]", "theta"
    return J @ np.asarray(loc), J @ np.asarray(cov) @ J.T, (names, sites)


def _dadvi_dimension(model: str, P: int, Q: int, K: int) -> int:
    """Unconstrained coordinates of ``model`` in folded coordinates: X's ``P Q``, Theta's
    ``Q K``, sigma and tau (only those the model samples; the tests check it against the
    length of the guide's mean)."""
    return {"joint": P * Q + Q * K + 2, "conditional_x": Q * K + 2}.get(model, Q * K)


def _check_dadvi(model: str, P: int, Q: int, K: int, num_particles: int) -> None:
    d = _dadvi_dimension(model, P, Q, K)
    n = d + d * (d + 1) // 2
    if n > dadvi.MAX_PARAMETERS:
        raise ValueError(f"method='dadvi': the guide would have {n} parameters ({d} coordinates), more than "
                         f"bayes.dadvi.MAX_PARAMETERS = {dadvi.MAX_PARAMETERS} (its Hessian is dense); "
                         "use method='svi'")
    if num_particles <= d:
        raise ValueError(f"num_particles must exceed the {d} unconstrained coordinates for method='dadvi' "
                         f"(with fewer fixed draws its objective is unbounded), got {num_particles}")


def _datatree(spec, vs: VISettings, draws: dict, elbo: np.ndarray, warn: bool, info: dict | None = None,
              lr: tuple | None = None) -> xr.DataTree:
    """The result tree; ``info`` (DADVI): the optimiser's report, ``lr``: the guide's mean, the
    linear-response covariance and the coordinates' names and sites
    (:func:`bayes.compiled.coordinate_labels`)."""
    settings = {"num_steps": vs.num_steps, "num_particles": vs.num_particles, "simplex": vs.base.simplex,
                "theta_coords": vs.base.theta_coords}
    if vs.guide == "lowrank":  # numpyro's default rank when none was given
        settings["guide_rank"] = vs.guide_rank or "round(sqrt(number of unconstrained coordinates))"
    if info is None:
        settled, gain = elbo_settled(elbo)
        settings["learning_rate"] = vs.learning_rate
        extra = {"method": "SVI", "elbo": float(np.mean(elbo[-max(len(elbo) // 10, 1):]))}
        problem = None if settled else (f"the ELBO has not settled (last-window gain {gain:.2f} noise sd >= 0.5): "
                                        "increase num_steps or adjust learning_rate")
    else:  # DADVI: the objective's last value (its fixed-draw estimate of the ELBO), the optimiser's report
        converged = info["status"] in (0, 99)  # gradient tolerance, or the stall rule (bayes.dadvi.STALL)
        settled = converged and info["min_eigenvalue"] > 0
        extra = {"method": "DADVI", "covariance": "linear_response", "elbo": float(elbo[-1]) if len(elbo) else np.nan,
                 **{f"optimizer_{k}": v for k, v in info.items()}}
        if not converged:
            problem = (f"the DADVI optimiser stopped after {info['iterations']} iterations without converging "
                       f"({info['message']}); increase num_steps if it ran out of them")
        elif not settled:
            problem = (f"the Hessian of the DADVI objective is not positive definite at the optimiser's end "
                       f"point (smallest eigenvalue {info['min_eigenvalue']:.3g}): the linear-response covariance "
                       "uses its eigenvalues' absolute values")
        else:
            problem = None
    attrs = {"model": spec.name, "theta_kind": spec.fit.theta_kind, "nmfre_priors": str(spec.priors),
             "inference_library": "numpyro", "approximate": True, "guide": vs.guide, **extra,
             "elbo_settled": int(settled), "vi_settings": str(settings)}
    dt = datatree.build(draws, None, spec.fit, spec.data, spec.name, attrs)
    variational = xr.Dataset({"elbo": ("step", elbo)}, coords={"step": np.arange(len(elbo))})
    if lr is not None:  # unconstrained coordinates, named by site and index
        names, sites = lr[2]
        variational["loc"] = ("unconstrained", lr[0])
        variational["cov"] = (("unconstrained", "unconstrained_bis"), lr[1])
        variational = variational.assign_coords(unconstrained=names, unconstrained_bis=names,
                                                site=("unconstrained", sites))
    dt["variational"] = xr.DataTree(variational)
    if warn and problem:
        warnings.warn(problem, VIWarning, stacklevel=3)
    return dt
