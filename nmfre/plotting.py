"""Every figure nmfre (and bayes) draws, in one place.

Figures use matplotlib's constrained layout and are sized from their content (number of
rows and columns, length of the labels), so labels are never clipped. Functions take
labelled objects (xarray, pandas) and return the matplotlib ``Figure``; matplotlib is
imported only when a figure is drawn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["coverage", "ecv", "effects", "growth", "intervals"]

_CHAR = 0.075  # inches per character of tick label at the default font size


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _stars(p: float, alpha: float) -> str:
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < alpha else ""


def effects(estimate, p_value, alpha: float = 0.05, ax=None, title: str | None = None):
    """Component x covariate effect matrix, coloured by estimate, stars for significance.

    Parameters
    ----------
    estimate, p_value : xarray.DataArray (component, covariate)
    alpha : float
        Level below which a cell is starred.
    ax : matplotlib Axes, optional
    title : str, optional
        The caption (say which p-value this is); default "Covariate effects (p < alpha starred)".
    """
    est = estimate.transpose("component", "covariate")
    p = p_value.transpose("component", "covariate").values
    comps = [str(c) for c in est["component"].values]
    covs = [str(c) for c in est["covariate"].values]
    Q, K = est.shape
    if ax is None:
        width = 1.6 + max(1.0, max(map(len, comps)) * _CHAR) + 1.15 * K + 1.0
        height = 1.3 + 0.75 * Q + max(map(len, covs)) * _CHAR * 0.6
        _, ax = _plt().subplots(figsize=(width, height), layout="constrained")
    vals = est.values
    lim = float(np.max(np.abs(vals))) or 1.0
    im = ax.imshow(vals, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(K), covs, rotation=30, ha="right")
    ax.set_yticks(range(Q), comps)
    for i in range(Q):
        for j in range(K):
            color = "white" if abs(vals[i, j]) > 0.6 * lim else "black"  # readable on dark cells
            ax.text(j, i, f"{vals[i, j]:.3g}\n{_stars(p[i, j], alpha)}", ha="center", va="center", fontsize=9,
                    color=color)
    ax.figure.colorbar(im, ax=ax, label="Theta")
    ax.set_title(title or f"Covariate effects (p < {alpha:g} starred)", fontsize=10, wrap=True)
    return ax.figure


def ecv(table: pd.DataFrame, best_rank: int, ax=None):
    """Held-out MSE (mean +- SE over folds) against the rank."""
    if ax is None:
        _, ax = _plt().subplots(figsize=(4.5, 3.2), layout="constrained")
    ax.errorbar(table.index, table["mse"], yerr=table["se"], marker="o", capsize=3)
    ax.axvline(best_rank, color="0.7", ls="--")
    ax.set_xlabel("rank Q")
    ax.set_ylabel("held-out MSE")
    ax.set_xticks(list(table.index))
    ax.set_title("Element-wise cross-validation")
    return ax.figure


def growth(Y: pd.DataFrame, A: pd.DataFrame, fixed: pd.DataFrame, blup: pd.DataFrame):
    """Data, fixed-effect fit and BLUP fit per unit, one panel per covariate pattern.

    All arguments are ``feature x unit`` (``A``: ``covariate x unit``) DataFrames.
    """
    x = range(Y.shape[0])
    groups = A.T.drop_duplicates()
    fig, axes = _plt().subplots(1, len(groups), figsize=(4.5 * len(groups), 3.8), sharey=True, squeeze=False,
                                layout="constrained")
    for ax, (_, pattern) in zip(axes[0], groups.iterrows(), strict=True):
        units = [u for u in Y.columns if (A[u] == pattern).all()]
        for u in units:
            ax.plot(x, Y[u], "o", color="0.6", ms=3)
            ax.plot(x, blup[u], "-", color="tab:blue", lw=0.8, alpha=0.6)
        ax.plot(x, fixed[units[0]], "-", color="tab:red", lw=2.5, label="fixed effects X Theta a")
        ax.plot([], [], "-", color="tab:blue", label="with BLUP X (Theta a + u)")
        ax.plot([], [], "o", color="0.6", label="data")
        ax.set_xticks(list(x), [str(f) for f in Y.index], rotation=30 if Y.shape[0] > 6 else 0)
        ax.set_title(f"{_pattern_label(pattern)} ({len(units)} units)", fontsize=9, wrap=True)
        ax.set_xlabel("feature")
    axes[0][0].set_ylabel("Y")
    axes[0][0].legend(fontsize=8)
    return fig


def _pattern_label(pattern: pd.Series) -> str:
    """Short name of a covariate pattern: its non-zero covariates other than an intercept
    (``k=v``, or ``k`` for indicators), or ``baseline``."""
    shown = [(str(k), float(x)) for k, x in pattern.items() if str(k) != "intercept" and x != 0]
    if not shown:
        return "baseline"
    return "\n".join(k if x == 1 else f"{k}={x:g}" for k, x in shown)


def intervals(table: pd.DataFrame, sources: dict[str, tuple[str, str]], estimate: str | None = "estimate",
              title: str | None = None, approximate: tuple[str, ...] = ()):
    """Forest plot of interval estimates, one panel per covariate with its own x scale.

    Parameters
    ----------
    table : DataFrame indexed by (component, covariate)
    sources : dict
        ``{label: (low column, high column)}``, drawn top to bottom within each component.
    estimate : str, optional
        Column of the point estimate (a dotted vertical mark per component).
    title : str, optional
    approximate : tuple of str
        Source labels to mark "(approx.)" in the legend (e.g. variational posteriors).
    """
    plt = _plt()
    comps = list(dict.fromkeys(table.index.get_level_values(0)))
    covs = list(dict.fromkeys(table.index.get_level_values(1)))
    n_src = len(sources)
    width = max(3.0, 2.6 * len(covs)) + max(map(len, map(str, comps))) * _CHAR
    labels = [f"{n} (approx.)" if n in approximate else n for n in sources]
    entry = 0.6 + 0.065 * max(map(len, labels))  # inches per legend entry at fontsize 8
    ncols = max(1, min(n_src, 4, int(width // entry)))
    height = 1.0 + len(comps) * (0.3 + 0.22 * n_src) + 0.2 * -(-n_src // ncols)
    fig, axes = plt.subplots(1, len(covs), figsize=(width, height), sharey=True, squeeze=False,
                             layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    offsets = np.linspace(0.3, -0.3, n_src) if n_src > 1 else np.zeros(1)
    for ax, cov in zip(axes[0], covs, strict=True):
        for i, comp in enumerate(comps):
            row = table.loc[(comp, cov)]
            y0 = len(comps) - 1 - i
            for j, (name, (lo, hi)) in enumerate(sources.items()):
                ax.plot([row[lo], row[hi]], [y0 + offsets[j]] * 2, lw=2.5, color=colors[j % len(colors)],
                        solid_capstyle="butt", label=name if i == 0 else None)
            if estimate is not None:
                ax.plot([row[estimate]] * 2, [y0 - 0.42, y0 + 0.42], ":", color="0.3", lw=1)
        ax.set_title(str(cov), fontsize=10)
        ax.set_yticks(range(len(comps)), [str(c) for c in reversed(comps)])
        ax.set_ylim(-0.6, len(comps) - 0.4)
        ax.grid(axis="x", color="0.9")
    handles, names = axes[0][0].get_legend_handles_labels()
    names = [f"{n} (approx.)" if n in approximate else n for n in names]
    fig.legend(handles, names, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def coverage(summary: pd.DataFrame, target: float = 0.95, cells: str = "cell", method: str = "method"):
    """Coverage with Monte Carlo error bars (left) and mean width relative to Wald (right).

    ``summary`` has one row per (cell, method) with columns ``coverage``, ``coverage_mcse``
    and ``width_ratio``.
    """
    plt = _plt()
    cell_names = list(dict.fromkeys(summary[cells]))
    methods = list(dict.fromkeys(summary[method]))
    height = 1.5 + 0.32 * len(cell_names) * max(1, len(methods)) / 3
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, height), sharey=True, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    offsets = np.linspace(0.35, -0.35, len(methods)) if len(methods) > 1 else np.zeros(1)
    for j, m in enumerate(methods):
        sub = summary[summary[method] == m].set_index(cells).reindex(cell_names)
        y = np.arange(len(cell_names))[::-1] + offsets[j]
        a1.errorbar(sub["coverage"], y, xerr=1.96 * sub["coverage_mcse"], fmt="o", ms=4, capsize=2,
                    color=colors[j % len(colors)], label=m)
        a2.plot(sub["width_ratio"], y, "o", ms=4, color=colors[j % len(colors)])
    a1.axvline(target, color="0.3", ls="--", lw=1)
    a2.axvline(1.0, color="0.3", ls="--", lw=1)
    a1.set_yticks(np.arange(len(cell_names))[::-1], cell_names)
    a1.set_xlabel(f"coverage (nominal {target:g}; bars: +-1.96 Monte Carlo SE)")
    a2.set_xlabel("mean width / mean Wald width")
    fig.legend(loc="outside lower center", ncols=min(len(methods), 8), fontsize=8, frameon=False)
    return fig
