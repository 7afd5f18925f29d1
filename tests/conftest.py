import json
import os
from pathlib import Path

# 4 CPU devices for JAX so NumPyro chains run in parallel (must precede JAX's start;
# bayes.configure() does the same for users)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import helpers  # noqa: E402
import matplotlib  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")


# -- seed offset (docs/testing.md) ----------------------------------------------------------
def pytest_addoption(parser):
    parser.addoption("--seed-offset", type=int, default=None, metavar="K",
                     help="re-draw every stochastic test: its seeds move by 1000 K "
                          f"(default: ${helpers.SEED_ENV} or 0)")


def pytest_configure(config):
    k = config.getoption("--seed-offset")
    if k is None:
        k = os.environ.get(helpers.SEED_ENV, "0")
    try:
        helpers.set_seed_offset(k)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None


def _offset_line():
    return (f"seed offset: {helpers.SEED_OFFSET} (stochastic tests use seed(n) = n + 1000 x offset; "
            f"set with --seed-offset or ${helpers.SEED_ENV})")


def pytest_report_header(config):
    return _offset_line()


def pytest_terminal_summary(terminalreporter):
    """Also under -q, which hides the header."""
    terminalreporter.write_line(_offset_line())


@pytest.fixture(scope="session")
def seed_offset():
    """The suite's seed offset (``helpers.seed`` applies it)."""
    return helpers.SEED_OFFSET


DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def ref():
    """nmfkc outputs on Orthodont (copied from the project's reference files)."""
    return json.loads((DATA / "nmfkc_orthodont.json").read_text())


@pytest.fixture(scope="session")
def nmfkc_multipliers():
    """The 27 x 1000 multipliers nmfkc drew (rexp(27) - 1 after set.seed(123))."""
    return pd.read_csv(DATA / "wild_multipliers_N27_B1000_seed123.csv.gz", index_col=0).to_numpy()


@pytest.fixture(scope="session")
def orthodont():
    import nmfre

    return nmfre.load_orthodont()


@pytest.fixture(scope="session")
def ml_fit(orthodont):
    import nmfre

    Y, A = orthodont
    return nmfre.fit(Y, A, rank=1)


@pytest.fixture(autouse=True)
def _close_figures():
    """Every figure a test opened is closed after it (matplotlib warns past 20 open figures,
    and nmfre's RuntimeWarnings are errors in the tests)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
