"""bayes: the Bayesian twin of nmfre, in NumPyro, with ArviZ (1.x, ``xarray.DataTree``).

Same model and labels as :mod:`nmfre`, so bootstrap intervals can be checked against
posteriors:

* :mod:`bayes.models`: ``joint``, ``conditional_x``, ``conditional`` (plain NumPyro
  model functions; U marginalised);
* :func:`sample`: NUTS, chains started at and aligned to the frequentist fit, returns an
  ArviZ DataTree with nmfre's coordinates;
* :func:`compare`, :func:`plot_compare`, :func:`plot_diagnostics`.

Importing ``bayes`` asks JAX for ``max(4, cpu_count)`` CPU devices (so 4 chains run in
parallel) unless ``XLA_FLAGS`` already sets a device count, and switches JAX to double
precision (``numpyro.enable_x64()``, global); both only work before JAX starts, so import
``bayes`` before using JAX.
"""

import os

import numpyro

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    numpyro.set_host_device_count(max(4, os.cpu_count() or 1))
numpyro.enable_x64()  # double precision, so posteriors can be checked against closed forms

import nmfre  # noqa: E402,F401  (bayes builds on nmfre, never the reverse)

from .compare import compare, plot_compare, plot_diagnostics  # noqa: E402
from .models import conditional, conditional_x, default_priors, joint  # noqa: E402
from .sampling import SamplingWarning, diagnostics, sample  # noqa: E402

__all__ = ["SamplingWarning", "compare", "conditional", "conditional_x", "default_priors", "diagnostics",
           "joint", "plot_compare", "plot_diagnostics", "sample"]
