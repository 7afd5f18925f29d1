"""Seeds for bayes: an int, a ``numpy.random.Generator`` or a JAX PRNG key.

nmfre's vocabulary (``seed`` as an int, a ``SeedSequence`` or a Generator) carried over
to JAX: every public function of bayes with a ``seed`` turns it into a JAX key with
:func:`prng_key`.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np

from nmfre import validation as v
from nmfre.exceptions import ArgumentTypeError

__all__ = ["is_key", "prng_key"]


def is_key(seed: Any) -> bool:
    """A JAX PRNG key: a typed key array, or a raw ``uint32`` key (``jax.random.PRNGKey``)."""
    import jax

    if not isinstance(seed, jax.Array):
        return False
    if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return True
    return seed.dtype == np.uint32 and seed.ndim >= 1


def prng_key(seed: Any, name: str = "seed"):
    """A JAX PRNG key from ``seed``.

    Parameters
    ----------
    seed : int, numpy.random.Generator, numpy.random.SeedSequence or JAX PRNG key
        An int in ``[0, 2**64)`` gives ``jax.random.PRNGKey(seed)`` as with 64-bit seeds
        (``(seed >> 32, seed & 0xFFFFFFFF)``: for seeds below 2**32 the same key in either
        mode); a Generator (or a SeedSequence,
        through ``numpy.random.default_rng``) gives the key of one draw
        ``rng.integers(2**32)`` (deterministic: the same Generator state, the same key; the
        Generator's stream advances); a JAX key is returned as it is.
    name : str
        The argument's name in error messages.

    Raises
    ------
    nmfre.ArgumentTypeError
        Anything else (floats, strings, None, arrays that are not keys).
    """
    import jax

    if isinstance(seed, Integral) and not isinstance(seed, bool):
        seed = v.seed_key(seed, name)
        if seed >= 2**64:
            raise ValueError(f"{name} must be below 2**64 (a JAX key holds 64 bits), got {seed}")
        # the key PRNGKey(seed) is with 64-bit seeds: (high word, low word). Without x64,
        # PRNGKey kept the low 32 bits only, so seeds 2**32 apart gave the same draws
        return jax.numpy.asarray([seed >> 32, seed & 0xFFFFFFFF], dtype=jax.numpy.uint32)
    if isinstance(seed, np.random.SeedSequence):
        seed = np.random.default_rng(seed)
    if isinstance(seed, np.random.Generator):
        return jax.random.PRNGKey(int(seed.integers(2**32)))
    if is_key(seed):
        return seed
    raise ArgumentTypeError(f"{name} must be a non-negative int, a numpy.random.Generator or a JAX PRNG key "
                            f"(jax.random.key / PRNGKey), got {type(seed).__name__}")
