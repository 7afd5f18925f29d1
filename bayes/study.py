"""Posterior intervals in :func:`nmfre.study.run`: coverage of bootstrap versus posterior
intervals over replicates.

``nmfre`` never imports JAX, so its study runner takes interval methods as callables;
:class:`Posterior` is such a callable (picklable, so it runs on ``dask.distributed``
workers), and :func:`run` is :func:`nmfre.study.run` with the posterior methods named
like the models::

    ds = bayes.study.run("baseline", {"N": [27, 100]}, n_rep=200,
                         methods=("wald", "percentile", "cr2", "conditional", "joint"))
    nmfre.study.summarize(ds)

Each replicate samples with :func:`bayes.sample`, whose compiled sampler is cached per
(model, P, K, Q, settings) in the process (:mod:`bayes.compiled`): a loop of replicates,
or a dask worker, compiles each model shape once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from nmfre import study as nmfre_study
from nmfre import validation as v

from .datatree import diagnostics
from .models import check_priors
from .sampling import KERNELS, MODELS

__all__ = ["Posterior", "run"]


@dataclass(frozen=True)
class Posterior:
    """Equal-tailed posterior intervals of Theta as a study method.

    Parameters
    ----------
    model : {"joint", "conditional", "conditional_x"}
    num_warmup, num_samples, num_chains : int
        Sampler settings (see :func:`bayes.sample`).
    kernel : {"auto", "nuts", "chees"}
        The sampler (see :class:`bayes.Sampler`; ``"auto"``: ChEES-HMC for the joint model
        with rank > 1, NUTS otherwise).
    priors : tuple of (name, value) pairs, optional
        Overrides of :func:`bayes.models.default_priors` (a tuple so the object is hashable).

    Calling it as ``post(fit, seed=int, level=float)`` samples the posterior on
    ``fit.data`` (chains started at and aligned to ``fit``) and returns ``point``
    (posterior mean), ``lower``, ``upper`` (Q x K) and ``r_hat``, ``ess_bulk``,
    ``divergences`` (:func:`bayes.diagnostics` over theta, sigma, tau). Its
    ``SamplingWarning`` is not silenced: in a study it is counted in the method's
    ``warnings``.
    """

    model: str = "joint"
    num_warmup: int = 500
    num_samples: int = 500
    num_chains: int = 4
    priors: tuple = ()
    kernel: str = "auto"

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        v.integer(self.num_warmup, "num_warmup", minimum=0)  # 0: no warm-up, as bayes.sample allows
        for name in ("num_samples", "num_chains"):
            v.integer(getattr(self, name), name)
        check_priors(dict(self.priors))  # a misspelt name was dropped silently (each model takes its share)

    @property
    def name(self) -> str:
        """The method's name in the study (the model's)."""
        return self.model

    def __call__(self, fit, *, seed: int, level: float) -> dict:
        post = _sample(fit.Y, fit.A, fit, self, seed)  # a SamplingWarning is counted by the study
        theta = post["posterior"]["theta"].transpose("chain", "draw", "component", "covariate").values
        flat = theta.reshape(-1, *theta.shape[2:])
        a = (1.0 - level) / 2
        lower, upper = np.quantile(flat, [a, 1 - a], axis=0)
        diag = diagnostics(post)
        return {"point": flat.mean(axis=0), "lower": lower, "upper": upper, "r_hat": diag["max_r_hat"],
                "ess_bulk": diag["min_ess_bulk"], "divergences": diag["divergences"]}


def _sample(Y, A, fit, p: Posterior, seed: int):
    from .models import USED_PRIORS
    from .sampling import sample

    priors = {k: x for k, x in p.priors if k in USED_PRIORS[p.model]}  # one study's priors, each model's share
    return sample(Y, A, fit.shape["Q"], model=p.model, fit=fit, theta=fit.theta_kind,
                  priors=priors or None, num_warmup=p.num_warmup, num_samples=p.num_samples,
                  num_chains=p.num_chains, seed=seed, kernel=p.kernel)


def run(design="baseline", grid: dict | None = None, n_rep: int = 100, seed: int = 0, client=None, *,
        methods=("wald", "percentile", "conditional", "joint"), num_warmup: int = 500, num_samples: int = 500,
        num_chains: int = 4, priors: dict | None = None, **kwargs) -> xr.Dataset:
    """:func:`nmfre.study.run` with posterior methods by name.

    Parameters
    ----------
    design, grid, n_rep, seed, client :
        As for :func:`nmfre.study.run` (same seeds: the frequentist numbers equal those of
        a run without the posterior methods).
    methods : sequence
        nmfre's names (``"wald"``, ``"percentile"``, ``"cr2"``, ``"studentized"``,
        ``"refit"``), the models ``"joint"``, ``"conditional"``, ``"conditional_x"``, or
        :class:`Posterior` objects (other settings per model).
    num_warmup, num_samples, num_chains, priors :
        Settings of the posteriors named by model.
    **kwargs :
        Passed to :func:`nmfre.study.run` (``n_boot``, ``level``, ``fit_kwargs``, ...).

    Returns
    -------
    xarray.Dataset
        As :func:`nmfre.study.run`; ``r_hat``, ``ess_bulk``, ``divergences`` filled for the
        posterior methods.
    """
    if isinstance(methods, str):
        methods = (methods,)
    pri = tuple(sorted((priors or {}).items()))
    resolved = [Posterior(m, num_warmup, num_samples, num_chains, pri) if isinstance(m, str) and m in MODELS
                else m for m in methods]
    return nmfre_study.run(design, grid, n_rep, seed, client, methods=tuple(resolved), **kwargs)
