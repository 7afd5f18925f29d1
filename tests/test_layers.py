"""The layering contract: nmfre works without JAX, and import-linter catches upward imports."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_nmfre_imports_without_jax():
    code = ("import sys; sys.modules['jax'] = None; sys.modules['numpyro'] = None; sys.modules['arviz'] = None; "
            "import nmfre; Y, A = nmfre.load_orthodont(); f = nmfre.fit(Y, A, rank=1); f.infer(n_boot=20); "
            "print('bayes' in sys.modules, 'ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False ok", out.stderr


def test_importing_bayes_changes_no_global_jax_setting():
    code = ("import bayes, jax, jax.numpy as jnp; print(jax.config.jax_enable_x64, jnp.ones(1).dtype)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False float32", out.stderr


def _lint(tree: Path):
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter not installed")
    return subprocess.run([exe, "--config", str(tree / "pyproject.toml")], cwd=tree, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("module, line, broken", [
    ("nmfre/core/ml.py", "from nmfre import results  # noqa", "nmfre.core"),  # kernel -> labelled layer
    ("nmfre/engine.py", "import nmfre.cli  # noqa", "nmfre.engine"),  # engine -> command line
    ("nmfre/results.py", "import bayes  # noqa", "bayes"),  # nmfre -> bayes
])
def test_lint_fails_on_an_upward_import(tmp_path, module, line, broken):
    for part in ("nmfre", "bayes", "pyproject.toml"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / part)
    assert _lint(tmp_path).returncode == 0
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}\n")
    out = _lint(tmp_path)
    assert out.returncode != 0 and "BROKEN" in out.stdout and broken in out.stdout, out.stdout[-2000:]
