import json
import os
from pathlib import Path

# 4 CPU devices for JAX so NumPyro chains run in parallel (must precede JAX's start;
# bayes.configure() does the same for users)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import matplotlib  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")

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
