"""The tour notebook executes (quick mode)."""

import os
from pathlib import Path

import pytest

NB = Path(__file__).parent.parent / "examples" / "tour.ipynb"


def test_tour_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("NMFRE_QUICK", "1")
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "--xla_force_host_platform_device_count=4"))
    nb = nbformat.read(NB, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)
