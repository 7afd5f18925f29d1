"""The README is the landing page: it opens with the two commands, its tour runs as
printed, and its links lead to files that exist."""

import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    first = re.search(r"```sh\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert [line.split()[:2] for line in first] == [["make", "demo"], ["make", "test"]]
    assert README.index("```sh") < README.index("\n## ")  # before any section


def test_tour_runs(tmp_path, monkeypatch):
    """Every ```python block of the README, run in order in one namespace."""
    import nmfre

    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    ns: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), ns)  # noqa: S102
    fit, inf, few = ns["fit"], ns["inf"], ns["few"]
    assert fit.converged and fit.loglik == pytest.approx(-215.586901, abs=1e-6)
    np.testing.assert_allclose(fit.theta.values.ravel(), [90.50577, 9.42270], rtol=1e-6)
    assert inf.table["se"].gt(0).all() and inf.table["boot_se"].gt(0).all()
    assert (few.table["se"] > inf.table["se"]).all()  # CR2 widens CR1 at N = 27
    np.testing.assert_allclose(nmfre.load("fit.nc").theta.values, fit.theta.values)


def test_links_lead_to_files():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert {"docs/guide.md", "docs/methods.md", "docs/benchmarks.md"} <= set(links)
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not missing
