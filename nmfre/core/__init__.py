"""Numerical kernels of NMF-RE on plain numpy arrays (the bottom layer of nmfre).

* :mod:`~nmfre.core.likelihood`: the marginal nll and its exact variance profile;
* :mod:`~nmfre.core.dfcap`: df_U, the paper's cap and its scan rule;
* :mod:`~nmfre.core.basis`: simplex projection and starting bases;
* :mod:`~nmfre.core.ml`, :mod:`~nmfre.core.paper`: the two solvers, both returning a
  :class:`~nmfre.core.solution.Solution`;
* :mod:`~nmfre.core.covariates`: the orthonormal covariates sign-free ML runs on;
* :mod:`~nmfre.core.covariance`, :mod:`~nmfre.core.bootstrap`: the inference algebra
  (information, sandwich, multipliers, one-step replicates, component alignment).

Nothing here knows about labels, pandas or xarray.
"""

from .solution import Solution

__all__ = ["Solution"]
