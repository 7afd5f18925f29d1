"""nmfre.crossval: element-wise cross-validation picks the rank."""

import pytest

import nmfre


def test_ecv_picks_rank_one_on_orthodont(orthodont):
    Y, A = orthodont
    res = nmfre.ecv(Y, A, ranks=(1, 2, 3), seed=0)
    assert res.best_rank == 1
    assert list(res.table.index) == [1, 2, 3]
    assert res.errors.dims == ("rank", "fold")
    fig = res.plot()
    assert fig.axes
    with pytest.raises(ValueError, match="folds"):
        nmfre.ecv(Y, A, folds=1)
