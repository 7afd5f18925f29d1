"""The documentation pages: the benchmarks page is the recorded runs of ``benchmarks/``
(included, and their derived figures consistent), the README quotes no number the pages
lack, and the guide's out-of-core example runs as printed."""

import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
RECORDS = sorted(p for p in RESULTS.glob("*.md") if p.name != "README.md")
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w])")


def _numbers(text: str) -> set[str]:
    return set(NUMBER.findall(text))


def _iv(s: str) -> tuple[float, float]:
    """The interval a printed number stands for (rounded to its last digit)."""
    h = 0.5 * 10.0 ** -(len(s.split(".")[1]) if "." in s else 0)
    return float(s) - h, float(s) + h


def _ratio(a: str, b: str) -> tuple[float, float]:
    (a0, a1), (b0, b1) = _iv(a), _iv(b)
    return a0 / b1, a1 / b0


def _agrees(printed: str, interval: tuple[float, float]) -> bool:
    lo, hi = _iv(printed)
    return lo <= interval[1] and hi >= interval[0]


def _table(text: str, first_header: str) -> list[dict[str, str]]:
    """The Markdown table whose header starts with ``| first_header |``, as dicts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


def _lead(cell: str) -> list[str]:
    """The number or range ``a-b`` a cell starts with."""
    m = re.match(r"(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?", cell)
    return [g for g in m.groups() if g] if m else []


def _record(name: str) -> str:
    return (RESULTS / f"{name}.md").read_text()


def test_benchmarks_page_includes_every_record():
    page = (DOCS / "benchmarks.md").read_text()
    included = re.findall(r"```\{include\} \.\./benchmarks/results/(\S+\.md)", page)
    assert sorted(included) == [p.name for p in RECORDS]
    own = re.sub(r"```\{include\}.*?```", "", page, flags=re.S)  # every number it adds is in a record
    assert not _numbers(own) - set().union(*(_numbers(p.read_text()) for p in RECORDS))


def test_every_record_names_a_script_that_exists():
    for path in RECORDS:
        scripts = re.findall(r"benchmarks/(\w+\.py)", path.read_text())
        assert scripts, path.name
        for script in scripts:
            assert (ROOT / "benchmarks" / script).exists(), (path.name, script)


def test_scale_ladder_ratios_and_peaks():
    text = _record("scale")
    rows = _table(text, "case")
    checked = 0
    for row in rows:
        ours, theirs, ratio = _lead(row["nmfre wall s"]), _lead(row["scikit-learn wall s"]), _lead(row["ratio"])
        if not (ours and theirs and ratio):
            continue
        for o, r in zip(ours, ratio, strict=True):  # a range: its ends
            assert _agrees(r, _ratio(o, theirs[0])), row["case"]
        checked += 1
        peak = re.fullmatch(r"(\d+) \((\d+\.\d+)\)", row["peak MB (peak / Y)"])
        size = re.search(r"Y (\d+) MiB", row["case"])
        if peak and size:
            assert _agrees(peak[2], _ratio(peak[1], size[1]))
            checked += 1
    assert checked == 7
    # the two-core re-run of the large case, and the bootstrap's cost per unit-replicate pair
    rerun = re.search(r"took (\S+) s \(scikit-learn (\S+) s,\s+ratio (\S+)\)", text)
    assert _agrees(rerun[3], _ratio(rerun[1], rerun[2]))
    size = re.search(r"Y (\d+) MiB", text)[1]
    for mb, times in re.findall(r"(\d+) MB = (\d+\.\d+) x\s+Y", text):
        assert _agrees(times, _ratio(mb, size))
    one = next(r for r in rows if r["case"].startswith("`infer"))["nmfre wall s"]
    two = re.search(r"`infer\(n_boot=10000\)` (\S+) s", text)[1]
    pairs = re.search(r"handles (1e\d+) unit-replicate pairs \((\S+) ns each on one core, (\S+) ns on two", text)
    for seconds, ns in ((one, pairs[2]), (two, pairs[3])):
        lo, hi = _iv(seconds)
        assert _agrees(ns, (lo / float(pairs[1]) * 1e9, hi / float(pairs[1]) * 1e9))


def test_bayes_ess_per_second():
    rows = _table(_record("bayes"), "case")
    assert len(rows) == 6
    for row in rows:
        assert _agrees(row["ESS/s"], _ratio(row["min bulk ESS"], row["time s"])), row


def test_stated_ratios():
    """'a against b ... (..., ratio r)' in the fit and repeated-sampling records."""
    found = re.findall(r"(\d+\.\d+) (?:us/replicate )?against (\d+\.\d+) (?:s|us)[^()]*\((?:\w+, )?ratio (\d+\.\d+)\)",
                       _record("fit") + _record("repeated"))
    found += re.findall(r"(\d+\.\d+) against (\d+\.\d+) s \(joint, (\d+\.\d+)\)", _record("repeated"))
    assert len(found) == 3
    for a, b, r in found:
        assert _agrees(r, _ratio(a, b)), (a, b, r)


def test_readme_numbers_are_in_the_docs():
    """The README quotes no number (a measurement above all) that the pages do not have."""
    pages = [p for p in DOCS.glob("*.md") if p.name != "readme.md"]
    pages += [*RESULTS.glob("*.md"), ROOT / "examples" / "README.md"]
    known = set().union(*(_numbers(p.read_text()) for p in pages))
    extra = _numbers((ROOT / "README.md").read_text()) - known
    assert not extra, sorted(extra)


def test_guide_out_of_core_example_runs(tmp_path, monkeypatch):
    import nmfre

    guide = (DOCS / "guide.md").read_text()
    body = guide.split("## Data that do not fit in memory", 1)[1]
    block = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(block, "docs/guide.md", "exec"), ns)  # noqa: S102
    fit, inf = ns["fit"], ns["inf"]
    assert fit.converged
    assert type(fit.U.data).__module__.startswith("dask")  # U stays lazy
    mem = nmfre.fit(ns["d"]["Y"], ns["d"]["A"], rank=3, theta="nonneg")  # equals the in-memory fit
    # the same optimum: the nll to the convergence tolerance; Theta to 1e-6, where the two
    # statistics' rounding (chunked sums against one product) decides the last digits, and how
    # it does differs between machines (2e-8 apart with numpy's and OpenBLAS's SIMD kernels
    # restricted, against 1e-8 asserted before: docs/testing.md, portability)
    assert fit.loglik == pytest.approx(mem.loglik, rel=1e-10)
    np.testing.assert_allclose(fit.theta.values, mem.theta.values, rtol=1e-6)
    assert inf.table["se"].gt(0).all()
    ns["Y"].close()


@pytest.mark.parametrize("page", ["vocabulary", "testing", "guide", "methods", "benchmarks", "development"])
def test_pages_are_in_the_toctree(page):
    toctree = (DOCS / "index.rst").read_text().split(".. toctree::", 1)[1]
    assert re.search(rf"^\s+{page}$", toctree, re.M)
