"""Every figure nmfre (and bayes) draws, in one place.

Figures use matplotlib's constrained layout and are sized from their content (number of
rows and columns, length of the labels), so labels are never clipped. Functions take
labelled objects (xarray, pandas) and return the matplotlib ``Figure``; matplotlib is
imported only when a figure is drawn.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from .labels import percent, significance_code

__all__ = ["coverage", "ecv", "effects", "growth", "intervals", "nested_loop", "zip_plot"]

_CHAR = 0.075  # inches per character of tick label at the default font size


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _stars(p: float, alpha: float) -> str:
    """R's significance code of ``p`` (:func:`nmfre.labels.significance_code`: ``.`` up to
    0.1, ``*`` up to 0.05, ...), shown only on cells significant at ``alpha`` (``p < alpha``)."""
    return significance_code(p) if p < alpha else ""


def effects(estimate, p_value, alpha: float = 0.05, ax=None, title: str | None = None):
    """Component x covariate effect matrix, coloured by estimate, stars for significance.

    Parameters
    ----------
    estimate, p_value : xarray.DataArray (component, covariate)
    alpha : float
        Level below which a cell shows its R significance code (``***``, ``**``, ``*``, ``.``).
    ax : matplotlib Axes, optional
    title : str, optional
        The caption (say which p-value this is); default "Covariate effects (R's codes where
        p < alpha)".
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
    lim = float(np.nanmax(np.abs(vals), initial=0.0)) or 1.0  # NaN cells left out of the scale
    im = ax.imshow(vals, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(K), covs, rotation=30, ha="right")
    ax.set_yticks(range(Q), comps)
    for i in range(Q):
        for j in range(K):
            color = "white" if abs(vals[i, j]) > 0.6 * lim else "black"  # readable on dark cells
            ax.text(j, i, f"{vals[i, j]:.3g}\n{_stars(p[i, j], alpha)}", ha="center", va="center", fontsize=9,
                    color=color)
    ax.figure.colorbar(im, ax=ax, label="Theta")
    ax.set_title(title or f"Covariate effects (R's codes where p < {alpha:.10g})", fontsize=10, wrap=True)
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


#: the most panels (distinct covariate patterns) :func:`growth` draws
GROWTH_MAX_PANELS = 12


def growth(Y: pd.DataFrame, A: pd.DataFrame, fixed: pd.DataFrame, blup: pd.DataFrame):
    """Data, fixed-effect fit and BLUP fit per unit, one panel per covariate pattern.

    All arguments are ``feature x unit`` (``A``: ``covariate x unit``) DataFrames. Meant for
    designs with a few distinct covariate patterns (groups); more than
    :data:`GROWTH_MAX_PANELS` (e.g. a continuous covariate) is an error.
    """
    x = range(Y.shape[0])
    groups = A.T.drop_duplicates()
    if len(groups) > GROWTH_MAX_PANELS:
        raise ValueError(f"growth draws one panel per covariate pattern, and A has {len(groups)} distinct patterns "
                         f"(more than {GROWTH_MAX_PANELS}: a continuous covariate?); plot a subset of units or "
                         "group the covariate")
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


def labels_of(obj, dim: str) -> list[str]:
    """The labels along ``dim``, as text (for messages)."""
    return [str(x) for x in obj[dim].values]


def label_position(obj, dim: str, wanted, prefix: str = "") -> int:
    """The position of the label ``wanted`` along ``dim`` (matched as text); a label that is
    not there is a ``ValueError`` naming the choices."""
    have = labels_of(obj, dim)
    if str(wanted) not in have:
        raise ValueError(f"{prefix}{dim}={wanted!r} is not in this study; choose among {have}")
    return have.index(str(wanted))


def restrict(obj, dim: str, wanted):
    """``obj`` restricted to the label(s) ``wanted`` along ``dim`` (kept as a dim)."""
    wanted = [wanted] if np.isscalar(wanted) else list(wanted)
    return obj.isel({dim: [label_position(obj, dim, w) for w in wanted]})


def coverage(summary, component=None, covariate=None):
    """Coverage with Monte Carlo error bars (left) and mean width relative to the reference
    method (right: Wald when the study has it, ``width_ratio.attrs["relative_to"]``), one row
    per (component, covariate), methods along the x axis and one marker per cell of the grid.

    Parameters
    ----------
    summary : xarray.Dataset
        :func:`nmfre.study.summarize` of a study run with ``methods`` (``coverage``,
        ``coverage_mcse``, ``width_ratio`` over ``interval``, ``component``, ``covariate``
        and the grid's dims).
    component, covariate : optional
        Restrict to these labels (default: all).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if "coverage" not in summary:
        raise ValueError("summary has no per-method metrics: run the study with methods=(...) and summarize it")
    plt = _plt()
    s = summary
    if component is not None:
        s = restrict(s, "component", component)
    if covariate is not None:
        s = restrict(s, "covariate", covariate)
    rows = [(c, k) for c in s["component"].values for k in s["covariate"].values]
    cells = [d for d in s["coverage"].dims if d not in ("interval", "component", "covariate")]
    stacked = s.stack(cell=cells) if cells else s.expand_dims(cell=[""])
    methods = list(s["interval"].values)
    level = float(s.attrs.get("level", 0.95))
    ref = s["width_ratio"].attrs.get("relative_to", "wald" if "wald" in methods else methods[0])
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 2.8 * len(rows) + 0.9), squeeze=False,
                             layout="constrained")
    n_cells = stacked.sizes["cell"]
    offsets = np.linspace(-0.25, 0.25, n_cells) if n_cells > 1 else np.zeros(1)
    x = np.arange(len(methods))
    for (comp, cov), (ax_c, ax_w) in zip(rows, axes, strict=True):
        sel = stacked.sel(component=comp, covariate=cov)
        for j in range(n_cells):
            cell = sel.isel(cell=j)
            label = ", ".join(str(v) for v in np.atleast_1d(cell["cell"].item()))
            ax_c.errorbar(x + offsets[j], cell["coverage"].values, yerr=1.96 * cell["coverage_mcse"].values,
                          fmt="o", capsize=3, label=label or None)
            ax_w.plot(x + offsets[j], cell["width_ratio"].values, "o", label=label or None)
        ax_c.axhline(level, color="k", lw=0.8, ls="--")
        ax_w.axhline(1.0, color="k", lw=0.8, ls="--")
        for ax in (ax_c, ax_w):
            ax.set_xticks(x, methods, rotation=30, ha="right")
        ax_c.set_ylabel(f"{comp} / {cov}\ncoverage (+- 1.96 MCSE)")
        ax_w.set_ylabel(f"width / {ref} width")
    axes[0, 0].set_title(f"coverage of the {percent(level)} intervals")
    axes[0, 1].set_title(f"mean width relative to {ref}")
    if cells:
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, n_cells), fontsize="small",
                   frameon=False, title=", ".join(cells), title_fontsize="small")
    return fig


def zip_plot(point, lower, upper, truth: float, level: float = 0.95, ax=None, title: str | None = None):
    """Zip plot of one method's intervals in one cell of a study (Morris, White & Crowther
    2019, Fig. 4).

    Each replicate's interval is a horizontal line, ranked (y axis) by the fractional
    centile of ``|z|``, ``z = (point - truth) / s`` with ``s`` the interval's half-width over
    the normal quantile of ``level`` (the SE for a Wald interval); intervals covering the
    truth are blue, those missing it red. The dashed line is the observed coverage, the band
    its 95% Monte Carlo interval, the solid line the nominal level: non-covering intervals
    should start near it. Replicates with a NaN (failed) are left out.

    Parameters
    ----------
    point, lower, upper : array-like (replicate,)
    truth : float
    level : float
        Nominal level of the intervals.
    ax : matplotlib Axes, optional
    title : str, optional
    """
    from scipy.stats import norm

    point, lower, upper = (np.asarray(x, float).ravel() for x in (point, lower, upper))
    ok = np.isfinite(point) & np.isfinite(lower) & np.isfinite(upper)
    point, lower, upper = point[ok], lower[ok], upper[ok]
    n = point.size
    if n == 0:
        raise ValueError("no replicate has a finite point estimate and interval")
    s = (upper - lower) / (2 * norm.ppf(0.5 + level / 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(point - truth) / s
    order = np.argsort(z, kind="stable")
    centile = 100 * (np.arange(1, n + 1) - 0.5) / n
    covers = (lower <= truth) & (truth <= upper)
    if ax is None:
        _, ax = _plt().subplots(figsize=(6.4, 4.2), layout="constrained")
    for hit, color, label in ((True, "tab:blue", "covers"), (False, "tab:red", "misses")):
        rows = [i for i in range(n) if covers[order[i]] == hit]
        if rows:
            ax.hlines(centile[rows], lower[order[rows]], upper[order[rows]], color=color, lw=0.8, label=label)
    c = covers.mean()
    mcse = np.sqrt(c * (1 - c) / n)
    ax.axhspan(100 * (c - 1.96 * mcse), 100 * (c + 1.96 * mcse), color="0.85", zorder=0,
               label="coverage +- 1.96 MCSE")
    ax.axhline(100 * c, color="k", ls="--", lw=0.9, label=f"coverage {c:.3f}")
    ax.axhline(100 * level, color="k", lw=0.9, label=f"nominal {level:.10g}")
    ax.axvline(truth, color="0.3", lw=0.8)
    ax.set_ylim(0, 100)
    ax.set_xlabel("interval")
    ax.set_ylabel("fractional centile of |z|")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or f"Zip plot: {n} intervals", fontsize=10, wrap=True)
    return ax.figure


def nested_loop(values, reference: float | None = None, ylabel: str = "", title: str | None = None):
    """Nested-loop plot (Rücker & Schwarzer 2014) of one performance measure over many
    cells of a study: cells along the x axis in nested order of the grid's factors (the
    first factor the outermost loop), one step line per method, and below it one step line
    per factor showing its level.

    Parameters
    ----------
    values : xarray.DataArray
        The measure with dim ``interval`` (methods) and one dim per grid factor (any other
        dims must have been selected away).
    reference : float, optional
        A horizontal reference line (e.g. the nominal coverage).
    ylabel, title : str
    """
    factors = [d for d in values.dims if d != "interval"]
    if "interval" not in values.dims or not factors:
        raise ValueError(f"values needs dims 'interval' and at least one grid factor, got {values.dims}")
    stacked = values.transpose(*factors, "interval").stack(cell=factors)
    n_cells = stacked.sizes["cell"]
    x = np.arange(n_cells)
    plt = _plt()
    fig, (ax, ax_f) = plt.subplots(2, 1, figsize=(max(5.0, 0.35 * n_cells + 2.5), 4.2 + 0.45 * len(factors)),
                                   sharex=True, layout="constrained",
                                   gridspec_kw={"height_ratios": [3, 0.5 + 0.4 * len(factors)]})
    for m in values["interval"].values:  # markers: a line of one cell is a point
        ax.step(x, stacked.sel(interval=m).values, where="mid", label=str(m), marker="o", ms=3)
    if reference is not None:
        ax.axhline(reference, color="k", lw=0.8, ls="--")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncols=min(4, values.sizes["interval"]), loc="upper center", bbox_to_anchor=(0.5, -0.02),
              frameon=False)
    ax.grid(axis="y", color="0.92")
    ticks, names = [], []
    for j, f in enumerate(factors):
        levels = list(values[f].values)
        idx = np.array([levels.index(v) for v in stacked[f].values])
        y0 = -j * 1.2
        span = max(len(levels) - 1, 1)
        ax_f.step(x, y0 + 0.8 * idx / span, where="mid", color="0.3", lw=1, marker="o", ms=2)
        ticks.append(y0 + 0.4)
        names.append(f"{f}: {', '.join(map(str, levels))}")
    # the factors' names as tick labels, for which the layout makes room (as text at x = -0.6
    # they ran off the figure with one or two cells)
    ax_f.set_yticks(ticks, names, fontsize=7)
    ax_f.tick_params(axis="y", length=0)
    ax_f.set_ylim(-1.2 * (len(factors) - 1) - 0.2, 1.0)
    ax_f.set_xticks(x if n_cells <= 40 else ax_f.get_xticks())  # whole cells, not 0.2, 0.4, ...
    ax_f.set_xlim(-0.5, n_cells - 0.5)
    ax_f.set_xlabel("cell (nested loops over the factors)")
    for side in ("top", "right", "left"):
        ax_f.spines[side].set_visible(False)
    ax.set_title(title or "", fontsize=10)
    return fig


def loadings(summary, kind: str = "support", ax=None, title: str | None = None):
    """Feature x component figure of a loading summary (:func:`nmfre.loadings.summarize`,
    :meth:`nmfre.Inference.loadings`, :func:`bayes.loadings`).

    Parameters
    ----------
    summary : xarray.Dataset
        With ``estimate``, ``ci``, ``support``, ``selected`` over (feature, component) and
        attrs ``threshold``, ``min_support``.
    kind : {"support", "intervals"}
        A heat map of the support (share of draws above the threshold; selected cells
        framed, each annotated with the estimate), or one panel per component with each
        feature's interval and estimate against the threshold line (selected in colour).
    ax : matplotlib Axes, optional
        Only for ``kind="support"``.
    title : str, optional
    """
    if kind not in ("support", "intervals"):
        raise ValueError(f"kind must be 'support' or 'intervals', got {kind!r}")
    if ax is not None and kind == "intervals":
        raise ValueError("ax is only for kind='support' (kind='intervals' draws one panel per component)")
    s = summary.transpose("feature", "component", ...)
    feats = [str(f) for f in s["feature"].values]
    comps = [str(c) for c in s["component"].values]
    P, Q = len(feats), len(comps)
    thr, ms = float(summary.attrs["threshold"]), float(summary.attrs["min_support"])
    marked = "framed" if kind == "support" else "in colour"
    src = summary.attrs.get("source", "")
    what = f"{summary.attrs['n_draws']} draws" + (f" ({src})" if src else "") if "n_draws" in summary.attrs else "draws"
    numbers = f"; numbers: {summary.attrs['estimate_kind']}" if kind == "support" and "estimate_kind" in summary.attrs \
        else ""
    caption = title or (f"Loadings from {what}: support = share of draws with X > {thr:.3g}; {marked}: support >= "
                        f"{ms:g}{numbers}")
    plt = _plt()
    if kind == "support":
        if ax is None:
            width = 2.0 + max(map(len, feats)) * _CHAR + 0.9 * Q + 1.0
            _, ax = plt.subplots(figsize=(width, 1.4 + 0.32 * P), layout="constrained")
        sup = s["support"].values
        est = s["estimate"].values
        sel = s["selected"].values
        im = ax.imshow(sup, cmap="Greens", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(Q), comps, rotation=30, ha="right")
        ax.set_yticks(range(P), feats)
        for i in range(P):
            for j in range(Q):
                ax.text(j, i, f"{est[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if sup[i, j] > 0.6 else "black")
                if sel[i, j]:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
        ax.figure.colorbar(im, ax=ax, label="support")
        ax.set_title(caption, fontsize=9, wrap=True)
        return ax.figure
    fig, axes = plt.subplots(1, Q, figsize=(1.5 + max(map(len, feats)) * _CHAR + 2.4 * Q, 1.6 + 0.3 * P),
                             layout="constrained", sharey=True, squeeze=False)
    lo, hi = s["ci"].sel(ci_bound="lower").values, s["ci"].sel(ci_bound="upper").values
    y = np.arange(P)
    for j, a in enumerate(axes[0]):
        sel = s["selected"].values[:, j]
        for mask, color in ((sel, "tab:blue"), (~sel, "0.6")):
            a.hlines(y[mask], lo[mask, j], hi[mask, j], color=color, lw=2)
            a.plot(s["estimate"].values[mask, j], y[mask], "o", color=color, ms=4)
        a.axvline(thr, color="tab:red", ls=":", lw=1)
        a.set_title(comps[j], fontsize=9)
        a.set_xlabel("loading")
    axes[0][0].set_yticks(y, feats)
    axes[0][0].invert_yaxis()
    text = caption + f"; intervals {percent(summary.attrs.get('level', 0.95))}"
    # wrapped to the figure's width (one component: a narrow figure, where a single line was cut)
    per_line = max(int(fig.get_figwidth() * 72 / (0.55 * 9)), 20)
    fig.suptitle(textwrap.fill(text, per_line), fontsize=9)
    return fig


def profile_traces(profile, ncols: int = 3):
    """The profile traces of :func:`nmfre.profile.profile`: the signed root deviance
    ``zeta(psi)`` of each profiled quantity with the interval's cut-off ``+-sqrt(chi2_1(level))``
    (a straight line would mean a quadratic log-likelihood, where Wald and profile agree)."""
    labels = list(dict.fromkeys(str(t) for t in profile["trace_of"].values))
    if not labels:
        raise ValueError("profile has no traces (nothing was profiled)")
    ncols = min(ncols, len(labels))
    nrows = -(-len(labels) // ncols)
    plt = _plt()
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), layout="constrained", squeeze=False)
    cut = float(np.sqrt(profile.attrs["cutoff"]))
    of = profile["trace_of"].values.astype(str)
    for ax, lab in zip(axes.ravel(), labels, strict=False):
        m = of == lab
        ax.plot(profile["trace_value"].values[m], profile["trace_zeta"].values[m], "o-", ms=3)
        for c in (-cut, cut):
            ax.axhline(c, color="tab:red", ls=":", lw=1)
        ax.set_title(lab, fontsize=9)
        ax.set_ylabel("zeta")
    for ax in axes.ravel()[len(labels):]:
        ax.set_visible(False)
    fig.suptitle(f"Profile traces ({profile.attrs['x']} X); dotted: the {percent(profile.attrs['level'])} cut-off",
                 fontsize=9)
    return fig
