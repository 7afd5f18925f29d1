"""bayes.compare: the interval table and the per-covariate forest plot."""

import numpy as np
import pytest
import xarray as xr
from helpers import record, seed
from test_plotting import assert_nothing_clipped

import bayes


@pytest.fixture(scope="module")
def inf_ortho(ml_fit):
    return ml_fit.infer(n_boot=4000, seed=1)


@pytest.fixture(scope="module")
def posts(orthodont, ml_fit):
    Y, A = orthodont
    kw = dict(fit=ml_fit, num_warmup=300, num_samples=500)
    return (bayes.sample(Y, A, 1, model="conditional", seed=seed(1), **kw),
            bayes.sample(Y, A, 1, model="joint", seed=seed(2), **kw))


def test_compare_and_plot(inf_ortho, posts, tmp_path):
    post_conditional, post_joint = posts
    tab = bayes.compare(inf_ortho, post_conditional, post_joint)
    assert list(tab.index.names) == ["component", "covariate"]
    for col in ["estimate", "wald_low", "boot_high", "conditional_low", "joint_high", "joint_width_ratio",
                "conditional_overlap"]:
        assert col in tab.columns
    # stochastic (seed offset): bounds >= 5 measured sds of these statistics from their
    # means over seed offsets (docs/testing.md: overlaps 0.93-0.96, sd <= 0.045; width
    # ratios 0.99-1.04, sd 0.03); an interval of another parameter or scale fails
    record("compare", **{c: tab[c].values for c in ("conditional_overlap", "joint_overlap", "joint_width_ratio")
                         if c in tab.columns})
    assert (tab.conditional_overlap > 0.7).all() and (tab.joint_overlap > 0.7).all()
    assert ((tab.joint_width_ratio > 0.8) & (tab.joint_width_ratio < 1.3)).all()
    fig = bayes.plot_compare(inf_ortho, post_conditional, post_joint)
    fig.savefig(tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").stat().st_size > 10_000
    fig = bayes.plot_diagnostics(post_joint)
    fig.savefig(tmp_path / "diag.png")
    fig = bayes.plot_diagnostics(post_joint, kind="rank")




def test_compare_table_values(inf_ortho, posts):
    """Wald interval = estimate +- z SE; bootstrap = percentiles of the draws; posterior = eti."""
    cond, _ = posts
    tab = bayes.compare(inf_ortho, cond, level=0.9)
    z = 1.6448536269514722
    np.testing.assert_allclose(tab.wald_high - tab.estimate, z * inf_ortho.se.values.ravel(), rtol=1e-12)
    q = np.quantile(inf_ortho.draws.values.reshape(inf_ortho.draws.shape[0], -1), [0.05, 0.95], axis=0)
    np.testing.assert_allclose(tab.boot_low, q[0], rtol=1e-12)
    th = cond["posterior"]["theta"].values.reshape(-1, 2)
    np.testing.assert_allclose(tab.conditional_high, np.quantile(th, 0.95, axis=0), rtol=1e-12)


def test_plot_compare_panels_per_covariate(inf_ortho, posts):
    fig = bayes.plot_compare(inf_ortho, *posts)
    assert len(fig.axes) == 2  # intercept (~90) and male (~9) on their own scales
    widths = [ax.get_xlim()[1] - ax.get_xlim()[0] for ax in fig.axes]
    assert widths[0] < 40 and widths[1] < 40
    assert_nothing_clipped(fig)


def test_compare_bad_input(ml_fit):
    with pytest.raises(TypeError, match="posterior"):
        bayes.compare(ml_fit.infer(n_boot=10), xr.DataTree())
    with pytest.raises(ValueError, match="at least one posterior"):
        bayes.compare(ml_fit.infer(n_boot=10))


def test_compare_refuses_another_model_or_a_string_of_names(inf_ortho, posts):
    """A posterior of non-negative Theta beside a sign-free inference is refused (it was
    compared); names given as one string are refused (each letter was a name)."""
    post = posts[0]
    nonneg = post.copy(deep=True)
    nonneg["posterior"].attrs["theta_kind"] = "nonneg"
    with pytest.raises(ValueError, match="theta_kind='free' and the posterior theta_kind='nonneg'"):
        bayes.compare(inf_ortho, nonneg)
    with pytest.raises(ValueError, match="names must be a list of names"):
        bayes.compare(inf_ortho, post, names="xyz")
    assert list(bayes.compare(inf_ortho, post, names=["c"]).columns)[-1].startswith("c_")
