"""Data sets shipped with the package (no download needed)."""

from __future__ import annotations

from importlib.resources import files

import pandas as pd


def load_orthodont(long: bool = False):
    """Orthodont growth data (``nlme::Orthodont``, Potthoff & Roy 1964).

    Distance (mm) from the pituitary to the pterygomaxillary fissure for 27 children
    (16 boys M01..M16, 11 girls F01..F11) at ages 8, 10, 12 and 14.

    Parameters
    ----------
    long : bool
        Return the long table (``distance, age, Subject, Sex``) instead.

    Returns
    -------
    Y : pandas.DataFrame
        4 x 27, rows ``age8..age14`` (features), columns subjects (units).
    A : pandas.DataFrame
        2 x 27, rows ``intercept`` and ``male``.
    """
    df = pd.read_csv(files("nmfre").joinpath("_data/orthodont.csv"))
    if long:
        return df
    subjects = list(dict.fromkeys(df["Subject"]))
    Y = df.pivot(index="age", columns="Subject", values="distance").loc[:, subjects]
    Y.index = [f"age{a}" for a in Y.index]
    Y.index.name, Y.columns.name = "feature", "unit"
    male = df.drop_duplicates("Subject").set_index("Subject").loc[subjects, "Sex"].eq("Male")
    A = pd.DataFrame([[1.0] * len(subjects), male.astype(float).to_list()],
                     index=pd.Index(["intercept", "male"], name="covariate"),
                     columns=pd.Index(subjects, name="unit"))
    return Y.astype(float), A
