import json
import os
from pathlib import Path

# 4 CPU devices for JAX so NumPyro chains run in parallel (must precede JAX's start)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import matplotlib
import numpy as np
import pandas as pd
import pytest

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


def simulate_rank2(seed=0, N=150, P=8):
    """A small well-separated rank-2 problem with known truth."""
    rng = np.random.default_rng(seed)
    X = np.zeros((P, 2))
    X[: P // 2 + 1, 0] = rng.uniform(0.5, 1.5, P // 2 + 1)
    X[P // 2 - 1:, 1] = rng.uniform(0.5, 1.5, P - P // 2 + 1)
    X /= X.sum(axis=0)
    A = np.vstack([np.ones(N), rng.binomial(1, 0.5, N)])
    theta = np.array([[20.0, 5.0], [30.0, 0.0]])
    U = rng.normal(0, 2.0, (2, N))
    Y = X @ (theta @ A + U) + rng.normal(0, 0.5, (P, N))
    return Y, A, X, theta
