"""The loading selection from a posterior: per-loading intervals and posterior support of
each feature belonging to each component, from the joint posterior's draws of X (the
twin of :meth:`nmfre.Inference.loadings` for the refit bootstrap)."""

from __future__ import annotations

import xarray as xr

from nmfre.loadings import MIN_SUPPORT, summarize


def posterior_X(posterior) -> xr.DataArray:
    """The draws of X (chain, draw, feature, component) of a posterior; ValueError when X
    was held fixed (conditional models)."""
    if not isinstance(posterior, xr.DataTree) or "posterior" not in posterior.children:
        raise ValueError("posterior must be an xarray.DataTree from bayes.sample (with a posterior group)")
    post = posterior["posterior"]
    if "X" not in post.data_vars or not {"chain", "draw"} <= set(post["X"].dims):
        model = post.attrs.get("model", "?")
        raise ValueError(f"posterior: X has no draws in this posterior (model {model!r} holds X at the fit's "
                         "estimate); sample with model='joint'")
    return post["X"].transpose("chain", "draw", "feature", "component")


def loadings(posterior, threshold: float | None = None, level: float = 0.95,
             min_support: float = MIN_SUPPORT) -> xr.Dataset:
    """Per-loading equal-tailed posterior intervals and posterior support (share of draws with
    ``X[p, q]`` above ``threshold``, default ``1/P``), as :func:`nmfre.loadings.summarize`.

    Parameters
    ----------
    posterior : xarray.DataTree
        A joint posterior from :func:`bayes.sample` (components relabelled to the fit).
    threshold, level, min_support :
        As in :meth:`nmfre.Inference.loadings`.

    Returns
    -------
    xarray.Dataset (feature, component)
        ``estimate`` (the posterior mean), ``mean``, ``sd``, ``ci``, ``support``, ``selected``.
    """
    X = posterior_X(posterior)
    model = posterior["posterior"].attrs.get("model", "joint")
    approx = " (variational approximation)" if posterior["posterior"].attrs.get("approximate") else ""
    return summarize(X, None, threshold=threshold, level=level, min_support=min_support,
                     source=f"{model} posterior{approx}")


__all__ = ["loadings", "posterior_X"]
