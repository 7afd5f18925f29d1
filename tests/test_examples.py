"""Every example runs in --quick mode and writes its outputs."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_quick(path, tmp_path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(mod.parse(["--quick", "--out", str(tmp_path)]))
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())
