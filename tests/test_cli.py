"""The command line: demo and fit."""

import numpy as np
import pandas as pd

import nmfre
from nmfre.cli import main


def test_demo_writes_results(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n-boot", "200", "--bayes-draws", "300"]) == 0
    out = capsys.readouterr().out
    assert "intercept" in out and "male" in out and "Basis1" in out and "Boot.SE" in out
    names = {p.name for p in tmp_path.iterdir()}
    assert {"orthodont_fit.nc", "orthodont_growth.png", "orthodont_theta.csv", "orthodont_theta.png",
            "orthodont_bayes_compare.csv", "orthodont_bayes_forest.png"} <= names
    assert "Bootstrap vs posterior" in out
    fit = nmfre.load(tmp_path / "orthodont_fit.nc")
    np.testing.assert_allclose(fit.theta.values.ravel(), [90.5058, 9.4227], atol=1e-4)
    assert (tmp_path / "orthodont_growth.png").stat().st_size > 10_000


def test_fit_command(tmp_path, capsys, orthodont):
    Y, A = orthodont
    Y.to_csv(tmp_path / "Y.csv")
    A.to_csv(tmp_path / "A.csv")
    rc = main(["fit", str(tmp_path / "Y.csv"), "--covariates", str(tmp_path / "A.csv"), "--rank", "1",
               "--n-boot", "100", "--out", str(tmp_path / "fit.nc")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "90.5058" in out and "male" in out
    assert nmfre.load(tmp_path / "fit.nc").theta.sizes == {"component": 1, "covariate": 2}


def test_fit_command_reports_bad_input(tmp_path, capsys):
    pd.DataFrame(np.ones((3, 4))).to_csv(tmp_path / "Y.csv")
    assert main(["fit", str(tmp_path / "Y.csv"), "--rank", "9"]) == 2
    assert "rank 9 is larger" in capsys.readouterr().err
