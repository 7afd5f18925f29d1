"""The command line: demo, fit, and one line on stderr with status 2 for every user error."""

import numpy as np
import pandas as pd
import pytest

import nmfre
from nmfre.cli import main


def test_demo_writes_results(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n-boot", "200", "--bayes-draws", "300"]) == 0
    out = capsys.readouterr().out
    assert "intercept" in out and "male" in out and "Basis1" in out and "Boot.SE" in out
    names = {p.name for p in tmp_path.iterdir()}
    assert {"orthodont_fit.nc", "orthodont_growth.png", "orthodont_theta.csv", "orthodont_theta.png",
            "orthodont_bayes_compare.csv", "orthodont_bayes_forest.png"} <= names
    assert "Bootstrap vs posterior" in out  # the bayes plugin (an nmfre.demo entry point) ran
    fit = nmfre.load(tmp_path / "orthodont_fit.nc")
    np.testing.assert_allclose(fit.theta.values.ravel(), [90.5058, 9.4227], atol=1e-4)
    table = pd.read_csv(tmp_path / "orthodont_bayes_compare.csv", index_col=[0, 1])
    assert ((table.joint_width_ratio > 0.8) & (table.joint_width_ratio < 1.3)).all()


def test_fit_command(tmp_path, capsys, orthodont):
    Y, A = orthodont
    Y.to_csv(tmp_path / "Y.csv")
    A.to_csv(tmp_path / "A.csv")
    rc = main(["fit", str(tmp_path / "Y.csv"), "--covariates", str(tmp_path / "A.csv"), "--rank", "1",
               "--n-boot", "100", "--out", str(tmp_path / "fit.nc")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "90.5058" in out and "male" in out and "Boot.SE" in out
    assert nmfre.load(tmp_path / "fit.nc").theta.sizes == {"component": 1, "covariate": 2}
    # without --n-boot the hint names the option, not the Python call
    assert main(["fit", str(tmp_path / "Y.csv"), "--rank", "1"]) == 0
    out = capsys.readouterr().out
    assert "--n-boot N (N >= 2) adds standard errors" in out and "fit.infer()" not in out


def _files(tmp_path):
    good = tmp_path / "Y.csv"
    pd.DataFrame(np.random.default_rng(0).uniform(1, 2, (4, 10))).to_csv(good)
    nan = tmp_path / "nan.csv"  # missing entries are fine for ML, but not a unit with none observed
    pd.DataFrame(np.where(np.arange(10)[None, :] == 3, np.nan, 1.0) + np.arange(4)[:, None]).to_csv(nan)
    text = tmp_path / "text.csv"
    text.write_text("id,a,b\nx,foo,bar\ny,baz,qux\n")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    bare = tmp_path / "bare.csv"  # no labels: pandas renamed the repeated values of the first row
    pd.DataFrame(np.round(np.random.default_rng(1).uniform(1, 2, (4, 10)), 1)).to_csv(bare, header=False, index=False)
    return {"good": good, "nan": nan, "text": text, "binary": binary, "empty": empty, "bare": bare, "dir": tmp_path}


@pytest.mark.parametrize("args, message", [
    (["fit", "{dir}/nope.csv", "--rank", "1"], "does not exist"),
    (["fit", "{dir}", "--rank", "1"], "is a directory"),
    (["fit", "{binary}", "--rank", "1"], "cannot read Y file"),
    (["fit", "{empty}", "--rank", "1"], "cannot read Y file"),
    (["fit", "{text}", "--rank", "1"], "Y must be numeric"),
    (["fit", "{nan}", "--rank", "1"], "no observed entry for unit"),
    (["fit", "{nan}", "--rank", "1", "--method", "paper"], "no observed entry for unit"),
    (["fit", "{good}", "--rank", "9"], "rank 9 is larger"),
    (["fit", "{good}", "--rank", "0"], "rank must be a positive integer"),
    (["fit", "{good}", "--rank", "x"], "argument --rank: invalid int value"),
    (["fit", "{good}", "--rank", "1", "--df-cap", "abc"], "argument --df-cap"),
    (["fit", "{good}", "--rank", "1", "--df-cap", "2"], "argument --df-cap: must be none, auto or a rate in (0, 1]"),
    (["fit", "{good}", "--rank", "1", "--method", "em"], "argument --method: invalid choice"),
    (["fit", "{good}", "--rank", "1", "--covariates", "{dir}/missing.csv"], "covariates file"),
    (["fit", "{good}", "--rank", "1", "--n-boot", "1"], "--n-boot must be an integer >= 2"),
    (["fit", "{good}", "--rank", "1", "--n-init", "0"], "--n-init must be a positive integer"),
    (["fit", "{good}", "--rank", "1", "--seed", "-1"], "--seed must be an integer >= 0"),
    (["fit", "{good}", "--rank", "1", "--out", "{dir}"], "is a folder; give the path of the netCDF file"),
    (["fit", "{good}", "--rank", "1", "--df-cap", "auto", "--n-init", "3"], "--n-init > 1 with --df-cap auto"),
    (["fit", "{bare}", "--rank", "1"], "its first row (the unit labels) repeats"),
    (["demo", "--out", "{good}"], "is a file; the demo writes its results into a folder"),
    (["fit", "{good}", "--rank", "1", "--out", "{dir}/no/such/dir/fit.nc"], "/no/such/dir does not exist"),
    (["fit", "{good}"], "the following arguments are required: --rank"),
    (["demo", "--out", "{good}/sub"], "error"),
    (["demo", "--out", "{dir}/d", "--n-boot", "1"], "--n-boot must be an integer >= 2"),
    (["demo", "--out", "{dir}/d", "--bayes-draws", "-1"], "--bayes-draws must be an integer >= 0"),
    (["frobnicate"], "invalid choice"),
])
def test_user_errors_are_one_line_and_status_2(tmp_path, capsys, args, message):
    files = _files(tmp_path)
    args = [a.format(**files) for a in args]
    try:
        rc = main(args)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    assert rc == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert message in lines[0] and lines[0].startswith("nmfre")
    assert "Traceback" not in captured.err


def test_warnings_are_one_line_and_a_closed_pipe_is_quiet(tmp_path, capsys, monkeypatch):
    """A warning is one line naming the command (it showed nmfre's source file and line); a
    first row of fractions (data read as labels) warns; a reader closing the pipe (| head)
    ends with status 141, not a user error."""
    import nmfre.cli as cli

    files = _files(tmp_path)
    assert main(["fit", str(files["good"]), "--rank", "4"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # at P = Q = 4 the fitted basis can also be rotated without changing the likelihood: two
    # warnings, one line each
    assert len(err) == 2 and err[0].startswith("nmfre fit: warning: IdentifiabilityWarning: P = 4 <= Q = 4")
    assert err[1].startswith("nmfre fit: warning: NonUniqueEstimateWarning: the ML estimate is not unique")
    fractions = tmp_path / "fractions.csv"
    pd.DataFrame(np.arange(40.0).reshape(4, 10) + 0.5).to_csv(fractions, header=False, index=False)
    assert main(["fit", str(fractions), "--rank", "1"]) == 0
    assert "its first row, read as unit labels, is all non-integer numbers" in capsys.readouterr().err

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_fit_command", closed)
    assert main(["fit", str(files["good"]), "--rank", "1"]) == 141
    assert capsys.readouterr().err == ""
