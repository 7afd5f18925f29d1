"""Unconstrained coordinates for the simplex columns of X: isometric log-ratios and folding.

NumPyro maps a Dirichlet site to unconstrained space by stick-breaking, which treats the
features asymmetrically (the last coordinates are products of many sigmoids). Here a
column ``x`` of X is ``softmax(V z)`` with ``z`` in R^(P-1) and ``V`` the P x (P-1)
orthonormal Helmert basis of the sum-zero subspace: every feature is treated alike,
``z = V' log x`` and the log-Jacobian is ``sum_p log x_p + log(P) / 2`` (relative to the
first P-1 coordinates, NumPyro's convention for simplex densities), so the Dirichlet(1)
prior becomes ``exp(sum_p log x_p)`` in ``z``: a smooth, light-tailed density.

:class:`DirichletILR` is a Dirichlet whose support maps to R^(P-1) by this transform;
its density on the simplex is the Dirichlet's, so ``log_density`` with constrained values
is unchanged. :class:`FoldedDirichlet` gives the folded coordinates that
:func:`bayes.sample` uses by default (reflection at the boundary of the simplex).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.nn import log_softmax, softmax
from numpyro.distributions import constraints
from numpyro.distributions.transforms import ParameterFreeTransform, biject_to

from nmfre.core.rotation import helmert

__all__ = ["DirichletILR", "FoldedDirichlet", "ILRTransform", "helmert", "ilr_simplex"]


class ILRTransform(ParameterFreeTransform):
    """R^(P-1) -> simplex of dimension P: ``x = softmax(V z)`` (``V``: :func:`helmert`)."""

    domain = constraints.real_vector
    codomain = constraints.simplex

    def __call__(self, z):
        """Map ``z`` (..., P-1) to the simplex (..., P)."""
        return softmax(z @ helmert(z.shape[-1] + 1).T, axis=-1)

    def _inverse(self, x):
        return jnp.log(x) @ helmert(x.shape[-1])

    def log_abs_det_jacobian(self, z, x, intermediates=None):
        """``sum_p log x_p + log(P) / 2``, computed from ``z`` (no underflow)."""
        P = z.shape[-1] + 1
        return jnp.sum(log_softmax(z @ helmert(P).T, axis=-1), axis=-1) + 0.5 * np.log(P)

    def forward_shape(self, shape):
        """(..., P-1) -> (..., P)."""
        return shape[:-1] + (shape[-1] + 1,)

    def inverse_shape(self, shape):
        """(..., P) -> (..., P-1)."""
        return shape[:-1] + (shape[-1] - 1,)


class _ILRSimplex(constraints._Simplex):
    """The simplex, mapped to unconstrained space by :class:`ILRTransform`."""


#: the simplex constraint whose bijection is :class:`ILRTransform`
ilr_simplex = _ILRSimplex()


@biject_to.register(_ILRSimplex)
def _ilr_bijection(constraint):
    return ILRTransform()


class DirichletILR(dist.Dirichlet):
    """A Dirichlet whose support is mapped to unconstrained space by the ILR transform."""

    support = ilr_simplex


# --- folded coordinates: reflection at the boundary ----------------------------------------


class FoldedDirichlet(dist.Distribution):
    """A law of ``w`` in R^P whose ``|w| / sum |w|`` is Dirichlet(alpha), with the total
    ``G = sum |w|`` ~ LogNormal(log(total), total_sd) and independent random signs.

    The coordinates of :func:`bayes.models.joint` with ``simplex="folded"``: the boundary
    ``x_p = 0`` of the simplex sits at ``w_p = 0`` in the middle of the space, so a
    feature that does not load on a component (posterior piled against the boundary) is a
    symmetric bump around 0 that Hamiltonian trajectories cross (a reflection in ``x``),
    where log-ratio or stick-breaking coordinates turn it into a long exponential tail
    ending in a doubly exponential wall, and bend the linear trade-offs between such
    entries and Theta into curved ridges. The redundant direction (the total ``G``, which
    the likelihood does not see) is held in a narrow log-normal band so that it is not the
    longest direction of the posterior; the Dirichlet law of the columns is exact whatever
    ``total_sd``.

    Density: ``Dir(x; alpha) LogNormal(G) / (G^(P-1) 2^P)`` with ``x = |w| / G`` (the
    Jacobian of ``(x_1..x_(P-1), G) -> |w|`` is ``G^(P-1)``).
    """

    arg_constraints = {"concentration": constraints.independent(constraints.positive, 1)}
    support = constraints.real_vector
    reparametrized_params = []

    def __init__(self, concentration, total: float | None = None, total_sd: float = 0.05, *, validate_args=None):
        self.concentration = concentration
        P = jnp.shape(concentration)[-1]
        self.total = float(P) if total is None else total
        self.total_sd = total_sd
        super().__init__(jnp.shape(concentration)[:-1], (P,), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        """Dirichlet columns times a log-normal total, with random signs."""
        k1, k2, k3 = jax.random.split(key, 3)
        shape = sample_shape + self.batch_shape
        x = jax.random.dirichlet(k1, self.concentration, shape)
        G = self.total * jnp.exp(self.total_sd * jax.random.normal(k2, shape + (1,)))
        return jnp.where(jax.random.bernoulli(k3, 0.5, shape + self.event_shape), 1.0, -1.0) * G * x

    def log_prob(self, value):
        """``log Dir(|w|/G) + log LogNormal(G) - (P-1) log G - P log 2``."""
        from jax.scipy.special import gammaln

        a = self.concentration
        P = value.shape[-1]
        g = jnp.abs(value)
        G = jnp.sum(g, axis=-1)
        logG = jnp.log(G)
        logx = jnp.log(jnp.where(g > 0, g, 1.0)) - logG[..., None]
        dirichlet = (jnp.sum(jnp.where(a == 1.0, 0.0, (a - 1.0) * logx), axis=-1)
                     + gammaln(jnp.sum(a, axis=-1)) - jnp.sum(gammaln(a), axis=-1))
        z = (logG - np.log(self.total)) / self.total_sd
        lognormal = -0.5 * z**2 - logG - np.log(self.total_sd * np.sqrt(2.0 * np.pi))
        return dirichlet + lognormal - (P - 1) * logG - P * np.log(2.0)
