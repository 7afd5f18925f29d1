"""nmfre.plotting: every label inside the figure; comparison panels on their own scales."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import nmfre
from nmfre import plotting


def assert_nothing_clipped(fig):
    """Everything drawn (each axes with its tick labels, titles and axis labels; legends;
    the suptitle) lies inside the figure."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box = fig.bbox
    parts = [(f"axes {ax.get_title()!r}", ax.get_tightbbox(r)) for ax in fig.axes]
    parts += [("legend", leg.get_window_extent(r)) for leg in fig.legends]
    if fig._suptitle is not None:
        parts.append(("suptitle", fig._suptitle.get_window_extent(r)))
    for name, b in parts:
        assert b.x0 >= box.x0 - 1 and b.y0 >= box.y0 - 1 and b.x1 <= box.x1 + 1 and b.y1 <= box.y1 + 1, \
            f"{name} at {b} outside the figure {box}"
    plt.close(fig)


def test_effect_matrix_labels_fit(ml_fit):
    inf = ml_fit.infer(n_boot=50, seed=0)
    assert_nothing_clipped(inf.plot())


def test_effect_matrix_stars_only_what_is_significant_at_alpha():
    """Cells with p < alpha show R's codes, the same as the summary table's; at alpha = 0.001 a
    cell with p = 0.002 has none (it once had '**', against the title's "p < 0.001"), and at
    alpha = 0.5 a cell with p = 0.07 has R's '.', not '*' (it once had '*', which in R's codes
    means p <= 0.05)."""
    est = xr.DataArray(np.ones((1, 5)), dims=("component", "covariate"),
                       coords={"component": ["B1"], "covariate": list("abcde")})
    p = xr.DataArray([[0.0005, 0.002, 0.03, 0.07, 0.2]], dims=est.dims, coords=est.coords)
    for alpha, want in [(0.05, ["***", "**", "*", "", ""]), (0.001, ["***", "", "", "", ""]),
                        (0.5, ["***", "**", "*", ".", ""])]:
        fig = plotting.effects(est, p, alpha=alpha)
        assert [t.get_text().split("\n")[1] for t in fig.axes[0].texts] == want, alpha


def test_effect_matrix_long_labels():
    comp = ["a rather long component name", "B2", "C3"]
    cov = ["intercept", "age (reversed, scaled)", "school = Pasteur"]
    est = xr.DataArray(np.arange(9.0).reshape(3, 3), dims=("component", "covariate"),
                       coords={"component": comp, "covariate": cov})
    assert_nothing_clipped(plotting.effects(est, est * 0 + 0.01))


def test_growth_refuses_a_continuous_covariate():
    """One panel per covariate pattern: a continuous covariate made 27 panels, 121 inches wide."""
    Y = pd.DataFrame(np.ones((3, 27)))
    A = pd.DataFrame([np.ones(27), np.arange(27.0)], index=["intercept", "age"])
    with pytest.raises(ValueError, match="A has 27 distinct patterns"):
        plotting.growth(Y, A, Y, Y)


def test_growth_and_ecv(ml_fit):
    fig = plotting.growth(ml_fit.Y.to_pandas(), ml_fit.A.to_pandas(), ml_fit.fitted(False).to_pandas(),
                          ml_fit.fitted(True).to_pandas())
    assert len(fig.axes) == 2  # one panel per covariate pattern (girls, boys)
    assert_nothing_clipped(fig)
    table = pd.DataFrame({"mse": [1.0, 1.2], "se": [0.1, 0.1]}, index=pd.Index([1, 2], name="rank"))
    assert_nothing_clipped(plotting.ecv(table, 1))


def test_intervals_give_each_covariate_its_own_scale():
    idx = pd.MultiIndex.from_product([["Basis1"], ["intercept", "male"]], names=["component", "covariate"])
    t = pd.DataFrame({"estimate": [90.5, 9.4], "a_low": [85.0, 3.0], "a_high": [95.0, 15.0],
                      "b_low": [86.0, 4.0], "b_high": [94.0, 14.0]}, index=idx)
    fig = plotting.intervals(t, {"A": ("a_low", "a_high"), "B": ("b_low", "b_high")}, approximate=("B",))
    ax1, ax2 = fig.axes
    for ax, (lo, hi) in ((ax1, (85, 95)), (ax2, (3, 15))):
        x0, x1 = ax.get_xlim()
        assert (hi - lo) / (x1 - x0) > 0.5  # the interval fills most of its own axis
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["A", "B (approx.)"]
    assert_nothing_clipped(fig)


def test_coverage_figure():
    dims = ("N", "interval", "component", "covariate")
    s = xr.Dataset({"coverage": (dims, np.array([0.93, 0.92, 0.95, 0.96]).reshape(2, 2, 1, 1)),
                    "coverage_mcse": (dims, np.full((2, 2, 1, 1), 0.01)),
                    "width_ratio": (dims, np.array([1.0, 0.98, 1.0, 1.02]).reshape(2, 2, 1, 1))},
                   coords={"N": [27, 100], "interval": ["wald", "percentile"], "component": ["Basis1"],
                           "covariate": ["male"]}, attrs={"level": 0.95})
    assert_nothing_clipped(plotting.coverage(s))
    s.attrs["level"] = 0.975  # the title gives the level's digits (it printed "98%")
    assert plotting.coverage(s).axes[0].get_title() == "coverage of the 97.5% intervals"


def test_effect_matrix_colour_scale_ignores_nan():
    """A NaN estimate is left out of the colour scale (the scale fell back to +-0.1 and the
    finite cell saturated)."""
    est = xr.DataArray([[np.nan, 2.0]], dims=("component", "covariate"),
                       coords={"component": ["B1"], "covariate": ["a", "b"]})
    fig = plotting.effects(est, est * 0 + 0.5)
    assert fig.axes[0].images[0].get_clim() == (-2.0, 2.0)


@pytest.mark.parametrize("alpha", [0, 1.5])
def test_plot_checks_alpha(ml_fit, alpha):
    with pytest.raises(ValueError, match="alpha"):
        ml_fit.infer(n_boot=10).plot(alpha=alpha)
    assert nmfre  # the public package is what draws these


@pytest.mark.parametrize("n_cells", [1, 2, 3])
def test_nested_loop_with_few_cells(n_cells):
    """With one or two cells the factors' labels ran off the figure (text placed left of the
    first cell) and the x axis showed fractions of a cell; now nothing is clipped and the ticks
    are whole cells."""
    import warnings

    vals = xr.DataArray(np.linspace(0.9, 0.96, 2 * n_cells).reshape(2, n_cells), dims=("interval", "N"),
                        coords={"interval": ["wald", "percentile"], "N": [27, 100, 300][:n_cells]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "constrained_layout not applied"
        fig = plotting.nested_loop(vals, reference=0.95, ylabel="coverage")
        assert_nothing_clipped(fig)
    assert list(fig.axes[1].get_xticks()) == list(range(n_cells))
