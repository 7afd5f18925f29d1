"""The developer tools under ``tools/`` (not part of the package)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture
def margins():
    spec = importlib.util.spec_from_file_location("allclose_margins_under_test", TOOLS / "allclose_margins.py")
    mod = importlib.util.module_from_spec(spec)
    before = np.testing.assert_allclose, type(pytest.approx(1.0)).__eq__
    spec.loader.exec_module(mod)
    # importing changes nothing: only pytest_configure (``-p allclose_margins``) installs it
    assert (np.testing.assert_allclose, type(pytest.approx(1.0)).__eq__) == before
    return mod


def test_ratio_is_the_error_over_the_tolerance(margins):
    assert margins.ratio([1.0, 2.0], [1.0, 2.2], rtol=0.1, atol=0.0) == pytest.approx(0.2 / 0.22)
    assert margins.ratio(3.0, [1.0, 3.5], rtol=0.0, atol=1.0) == pytest.approx(2.0)  # broadcast
    assert margins.ratio([1 + 1j], [1 + 2j], rtol=0.0, atol=2.0) == pytest.approx(0.5)
    assert margins.ratio([1.0, np.nan], [1.0, np.nan], rtol=1e-7, atol=0.0) == 0.0  # NaN entries left out
    assert margins.ratio([1.0], [1.0 + 1e-300], rtol=0.0, atol=0.0) == 0.0  # exact: 1 + 1e-300 == 1
    assert margins.ratio([2.0], [1.0], rtol=0.0, atol=0.0) == np.inf
    assert margins.ratio([np.nan], [1.0], rtol=0.1, atol=0.0) is None
    assert margins.ratio(["a"], [1.0], rtol=0.1, atol=0.0) is None


def test_each_comparison_is_recorded_and_still_asserted(margins, tmp_path, monkeypatch):
    out = tmp_path / "m.jsonl"
    monkeypatch.setenv("MARGIN_OUT", str(out))
    margins.assert_allclose([1.0, 2.0], [1.0, 2.1], rtol=0.1)
    with pytest.raises(AssertionError):
        margins.assert_allclose([1.0], [2.0], rtol=0.1)
    assert margins.approx_eq(pytest.approx(10.0, abs=2.0), 11.0)
    assert not margins.approx_eq(pytest.approx(10.0, abs=2.0), 13.0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["ratio"] for r in rows] == pytest.approx([0.1 / 0.21, 1 / 0.2, 0.5, 1.5])
    calls = [n for n, line in enumerate(Path(__file__).read_text().splitlines(), 1)
             if line.lstrip().startswith(("margins.assert_allclose(", "assert margins.approx_eq(",
                                          "assert not margins.approx_eq("))]
    assert [r["at"] for r in rows] == [f"test_tools.py:{n}" for n in calls]  # the comparisons' own lines
    assert rows[0]["rtol"] == 0.1 and rows[2]["rtol"] is None
    assert all(r["test"].startswith("tests/test_tools.py::") for r in rows)
