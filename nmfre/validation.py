"""Checks of user arguments: the one place where every public entry point of nmfre (and
bayes) validates its scalars, choices and seeds.

Each check raises before any computation, with a message that names the argument and
says what is wrong. Wrong types raise :class:`~nmfre.exceptions.ArgumentTypeError`
(a ``TypeError`` that is also a ``ValueError``), wrong values ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

from .exceptions import ArgumentTypeError

__all__ = ["array_kind", "boolean", "choice", "component_labels", "integer", "open_unit", "positive_float", "rate",
           "rng", "seed_key"]


def integer(value: Any, name: str, *, minimum: int = 1) -> int:
    """``value`` as an ``int`` no smaller than ``minimum`` (bools are not integers)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ArgumentTypeError(f"{name} must be {kind}, got {value!r}")
    if value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` must be one of the strings in ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def positive_float(value: Any, name: str) -> float:
    """A finite number ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ArgumentTypeError(f"{name} must be a positive finite number, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def nonnegative_float(value: Any, name: str) -> float:
    """A finite number ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ArgumentTypeError(f"{name} must be a non-negative finite number, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def rate(value: Any, name: str) -> float:
    """A number in ``(0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ArgumentTypeError(f"{name} must be a number in (0, 1], got {value!r}")
    if not (0 < value <= 1):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def open_unit(value: Any, name: str) -> float:
    """A number in ``(0, 1)`` (levels, alphas, probabilities)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ArgumentTypeError(f"{name} must be a number in (0, 1), got {value!r}")
    if not (0 < value < 1):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def boolean(value: Any, name: str) -> bool:
    """A ``bool`` (numpy bools accepted)."""
    if not isinstance(value, bool | np.bool_):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def rng(seed: Any, name: str = "seed") -> np.random.Generator:
    """A ``numpy.random.Generator`` from ``None``, an int >= 0, a ``SeedSequence`` or a
    Generator (returned as is, so the caller's stream advances). Global state is never used."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise ArgumentTypeError(f"{name} must be None, a non-negative int, a SeedSequence or a "
                                f"numpy.random.Generator, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"{name} must be non-negative, got {seed}")
    return np.random.default_rng(int(seed))


def seed_key(seed: Any, name: str = "seed") -> int:
    """An int seed (>= 0) for libraries that need one (JAX keys)."""
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise ArgumentTypeError(f"{name} must be a non-negative int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"{name} must be non-negative, got {seed}")
    return int(seed)


def array_kind(values: Any) -> str:
    """How an array is held: ``"dask"`` (lazy), ``"sparse"`` (scipy) or ``"dense"`` (the one
    test behind :attr:`nmfre.labels.Data.kind` and :func:`nmfre.core.passes.kind`)."""
    if hasattr(values, "dask") and hasattr(values, "chunks"):
        return "dask"
    if hasattr(values, "tocsr"):
        return "sparse"
    return "dense"


def component_labels(Q: int) -> np.ndarray:
    """Default component names ``Basis1..BasisQ`` (as in nmfkc)."""
    return np.array([f"Basis{q + 1}" for q in range(Q)], dtype=object)
