"""The README: it opens with the two commands, and its out-of-core example runs as printed."""

import re
from pathlib import Path

import numpy as np

README = (Path(__file__).parent.parent / "README.md").read_text()


def _block(section: str) -> str:
    body = README.split(f"## {section}", 1)[1]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def test_readme_opens_with_the_two_commands():
    first = re.search(r"```sh\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert [line.split()[:2] for line in first] == [["make", "demo"], ["make", "test"]]


def test_out_of_core_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(_block("Data that do not fit in memory"), "README.md", "exec"), ns)  # noqa: S102
    fit, inf = ns["fit"], ns["inf"]
    assert fit.converged
    assert type(fit.U.data).__module__.startswith("dask")  # U stays lazy
    # equals the in-memory fit
    import nmfre

    mem = nmfre.fit(ns["d"]["Y"], ns["d"]["A"], rank=3, theta="nonneg")
    np.testing.assert_allclose(fit.theta.values, mem.theta.values, rtol=1e-8)
    assert inf.table["se"].gt(0).all()
    ns["Y"].close()
