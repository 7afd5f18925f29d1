"""bayes: the Bayesian twin of nmfre, in NumPyro, with ArviZ (1.x, ``xarray.DataTree``).

Same model and labels as :mod:`nmfre`, so bootstrap intervals can be checked against
posteriors:

* :mod:`bayes.models`: ``joint``, ``conditional_x``, ``conditional`` (plain NumPyro
  model functions with plates named like nmfre's dims; U marginalised; callable with
  ``Y=None`` for prior and posterior predictive draws);
* :func:`sample`: NUTS, chains started at and aligned to the frequentist fit, returns an
  ArviZ DataTree with nmfre's coordinates;
* :func:`compare`, :func:`plot_compare`, :func:`plot_diagnostics`;
* :func:`rotation_spread`: how far the joint posterior's draws can be rotated at an
  unchanged density (components identified only by the bounds);
* :func:`theta_prior_shift` and :class:`PriorWarning`: how far the prior on Theta moves its
  posterior (checked before sampling);
* :func:`configure`: parallel CPU chains (call before JAX starts);
* :func:`fit_vi`: the variational twin; :func:`sbc`: simulation-based calibration;
* :mod:`bayes.study`: posterior intervals in :func:`nmfre.study.run` (coverage studies).

Importing ``bayes`` changes no global JAX setting. :func:`sample` computes in double
precision inside ``jax.enable_x64(True)``; :func:`configure` sets the CPU device count.
"""

import nmfre  # noqa: F401  (bayes builds on nmfre, never the reverse)

from . import study
from .calibration import SBCResult, plot_sbc, sbc, sbc_power
from .compare import compare, compare_loadings, plot_compare, plot_diagnostics
from .config import configure
from .datatree import mixing
from .likelihood import Stats, statistics
from .loadings import loadings
from .models import conditional, conditional_x, default_priors, joint, u_conditional
from .prior_shift import PriorWarning, theta_prior_shift
from .rotations import rotation_spread
from .sampling import Sampler, SamplingWarning, diagnostics, sample
from .vi import VIWarning, fit_vi

__all__ = ["Sampler", "SamplingWarning", "Stats", "compare", "compare_loadings", "conditional", "conditional_x",
           "configure", "default_priors", "diagnostics", "joint", "mixing", "loadings", "plot_compare",
           "plot_diagnostics", "PriorWarning", "rotation_spread", "sample", "theta_prior_shift",
           "statistics", "u_conditional", "VIWarning", "fit_vi", "plot_sbc", "sbc", "sbc_power", "SBCResult", "study"]
