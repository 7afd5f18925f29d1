"""Smoke test of benchmarks/bench_fit.py: the --quick run finishes and prints its table
(it imports nmfre's internal kernels, so an API change that breaks it fails here)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "bench_fit.py"


def test_quick_run_prints_every_method():
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--paper-max-iter", "200"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    for label in ("ml nonneg", "ml free", "paper (no cap)", "paper cap 0.21"):
        assert label in out
    diff = float(out.split("nll(ML nonneg) - nll(best paper fit) = ")[1].split()[0])
    assert diff < 0  # ML's nll is below the paper fits' on this design
    assert "ratio" in out
