"""pytest plugin: how close every ``numpy.testing.assert_allclose`` and ``pytest.approx``
comparison came to failing.

For each call it appends a JSON line ``{"test", "at", "ratio", "rtol", "atol"}`` to
``$MARGIN_OUT`` (default ``allclose-margins.jsonl``), with ``ratio`` the largest
``|actual - desired| / (atol + rtol |desired|)`` over the entries (1 is the tolerance; for
``pytest.approx``, ``|actual - expected|`` over its tolerance, one line per scalar compared,
``rtol`` and ``atol`` null), then runs the comparison unchanged. An assertion whose ratio is
near 1 on one machine, or moves a lot under other floating point (``make test-portable``),
depends on rounding::

    PYTHONPATH=tools MARGIN_OUT=m.jsonl .venv/bin/python -m pytest -q -p allclose_margins

(docs/testing.md, Portability). Not used by the test suite itself.
"""

from __future__ import annotations

import json
import os
import traceback

import numpy as np
import numpy.testing as npt
import pytest

_assert_allclose = npt.assert_allclose


def _record(at: str, r: float | None, rtol, atol) -> None:
    with open(os.environ.get("MARGIN_OUT", "allclose-margins.jsonl"), "a") as f:
        f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], "at": at,
                            "ratio": r, "rtol": rtol, "atol": atol}) + "\n")


def ratio(actual, desired, rtol: float, atol: float) -> float | None:
    """Largest ``|actual - desired| / (atol + rtol |desired|)`` over the finite entries."""
    try:
        complex_ = np.iscomplexobj(actual) or np.iscomplexobj(desired)
        a = np.asarray(actual, dtype=complex if complex_ else float)
        d = np.asarray(desired, dtype=a.dtype)
        a, d = np.broadcast_arrays(a, d)
    except (TypeError, ValueError):
        return None
    err = np.abs(a - d)
    ok = np.isfinite(err)
    if not ok.any():
        return None
    allowed = (atol + rtol * np.abs(d))[ok]
    err = err[ok]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(allowed > 0, err / allowed, np.where(err > 0, np.inf, 0.0))
    return float(np.max(r))


def _test_frame():
    """The innermost frame in a file under ``tests/`` (the assertion's line)."""
    for frame in reversed(traceback.extract_stack()):
        if f"{os.sep}tests{os.sep}" in frame.filename:
            return f"{os.path.basename(frame.filename)}:{frame.lineno}"
    return "?"


_ApproxScalar = type(pytest.approx(1.0))
_approx_eq = _ApproxScalar.__eq__


def assert_allclose(actual, desired, rtol=1e-7, atol=0, *args, **kwargs):
    _record(_test_frame(), ratio(actual, desired, rtol, atol), rtol, atol)
    return _assert_allclose(actual, desired, rtol, atol, *args, **kwargs)


def approx_eq(self, actual) -> bool:
    out = _approx_eq(self, actual)
    try:
        tolerance = float(self.tolerance)
    except (TypeError, ValueError, ArithmeticError):  # not a number: nothing to measure
        return out
    _record(_test_frame(), ratio(actual, self.expected, 0.0, tolerance), None, None)
    return out


def pytest_configure(config) -> None:
    """Install the recording comparisons (``-p allclose_margins``; importing the module alone
    changes nothing)."""
    npt.assert_allclose = assert_allclose
    np.testing.assert_allclose = assert_allclose
    _ApproxScalar.__eq__ = approx_eq
