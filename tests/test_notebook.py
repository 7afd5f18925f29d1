"""The tour notebook executes (quick mode) and shows the numbers it promises."""

import os
from pathlib import Path

import pytest

NB = Path(__file__).parent.parent / "examples" / "tour.ipynb"


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    return output.get("data", {}).get("text/plain", "")


def test_tour_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("NMFRE_QUICK", "1")
    nb = nbformat.read(NB, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # effect matrix, forest plot
    text = "\n".join(_text(o) for o in outputs)
    assert "Log-likelihood  -215.586901" in text  # the fit's summary
    assert "Boot.SE" in text and "9.4227" in text  # summary with inference
    assert "-215.58690099" in text  # the fit loaded back from netCDF
    assert os.environ.get("NMFRE_QUICK") == "1"
