"""The fit object: labelled results, summary tables, prediction and the netCDF round trip."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from . import validation as v
from ._version import __version__
from .core import passes
from .core.bootstrap import CHUNK_UNITS
from .core.dfcap import cap_value
from .core.likelihood import icc as icc_of
from .core.paper import SIGMA2_FROM
from .core.solution import Solution
from .exceptions import ArgumentTypeError
from .labels import (
    DIMS_A,
    DIMS_Y,
    SIGNIF_LEGEND,
    Data,
    coerce,
    component_labels,
    label_order,
    some_labels,
    to_matrix,
)
from .labels import labels as unique_labels
from .settings import FitSettings

if TYPE_CHECKING:
    from .inference import Inference

#: the summary's footnote when no inference is given
INFER_HINT = "fit.summary(inference=fit.infer()) adds standard errors, bootstrap intervals and p-values."
_SCALARS = ("sigma2", "tau2", "lam", "nll", "converged", "n_iter", "cap_hit", "stop_reason")


def _frame_to_json(df: pd.DataFrame) -> str:
    return json.dumps({"__frame__": df.to_dict(orient="list"), "attrs": dict(df.attrs)})


def _frame_from_json(text: str) -> pd.DataFrame:
    obj = json.loads(text)
    df = pd.DataFrame(obj["__frame__"])
    df.attrs.update(obj.get("attrs", {}))
    return df


class Summary:
    """Text/HTML summary of a fit; prints like R's and renders as tables in notebooks.

    Parameters
    ----------
    header : list of (str, str)
        Key-value lines shown first.
    tables : list of (str, DataFrame)
        Titled tables.
    notes : list of str
        Footnotes.
    """

    def __init__(self, header: list[tuple[str, str]], tables: list[tuple[str, pd.DataFrame]],
                 notes: list[str]):
        self.header, self.tables, self.notes = header, tables, notes

    def as_text(self) -> str:
        """The summary as plain text."""
        w = max(len(k) for k, _ in self.header)
        lines = [f"{k:<{w}}  {v}" for k, v in self.header]
        for title, df in self.tables:
            lines += ["", title, df.to_string()]
        lines += [""] + self.notes if self.notes else []
        return "\n".join(lines)

    def as_html(self) -> str:
        """The summary as HTML tables (what notebooks show)."""
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
                       for k, v in self.header)
        parts = [f"<table>{rows}</table>"]
        for title, df in self.tables:
            parts.append(f"<p><b>{title}</b></p>{df.to_html()}")
        parts += [f"<p><small>{n}</small></p>" for n in self.notes]
        return "".join(parts)

    def __str__(self) -> str:
        return self.as_text()

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self.as_html()


#: how the summary words each stop reason (:attr:`NMFREFit.stop_reason`)
STOP_TEXT = {"tol": "stopped at the tolerance", "max_iter": "stopped at max_iter",
             "stalled": "stalled at a fixed point of the iteration", "degenerate": "stopped as degenerate",
             "nonfinite": "stopped at a non-finite value"}


class NMFREFit:
    """Result of :func:`nmfre.fit`. Arrays are ``xarray.DataArray`` with named dims.

    The object is a read-only view of a :class:`~nmfre.core.solution.Solution` and the
    labelled data it was estimated on; :meth:`infer` returns a new
    :class:`~nmfre.inference.Inference` and leaves the fit unchanged.

    Attributes
    ----------
    X : DataArray (feature, component)
        Basis, columns on the simplex.
    theta : DataArray (component, covariate)
        Covariate effects.
    U : DataArray (component, unit)
        Random effects: the BLUP at the final ``(X, Theta, lambda)`` (ML); the
        algorithm's centred U (paper method).
    sigma2, tau2, lam : float
        Residual variance, random-effect variance, ``lambda = sigma2 / tau2``.
    df_u, df_cap, df_cap_rate : float
        Effective df of U, the cap ``max(rate N Q, 1)`` (None without cap), its rate.
    icc : float
        ``tau2 tr(X'X) / (tau2 tr(X'X) + sigma2 P)``.
    loglik : float
        Marginal log-likelihood at the estimate (with the ``2 pi`` term).
    converged, n_iter, nll_trace, stop_reason :
        Convergence report; ``nll_trace`` holds the nll after each iteration.
    restarts : pandas.DataFrame
        One row per start (init, nll, converged, n_iter).
    scan : pandas.DataFrame or None
        The df-cap scan when ``df_cap="auto"``.
    data : nmfre.labels.Data
        The validated arrays and labels the fit was estimated on.
    solution : nmfre.core.solution.Solution
        The solver's output (plain arrays).
    settings : nmfre.settings.FitSettings
    """

    def __init__(self, data: Data, solution: Solution, *, settings: FitSettings, rate: float | None,
                 restarts: pd.DataFrame, scan: pd.DataFrame | None = None, components: Sequence | None = None):
        self._data = data
        self._solution = solution
        self._settings = settings
        self.df_cap_rate = rate
        self.restarts = restarts
        self.scan = scan
        Q = solution.X.shape[1]
        # text labels as Python strings, however they were stored (netCDF: <U, zarr: StringDType)
        self._components = (component_labels(Q) if components is None
                            else unique_labels(components, Q, "components", None))

    # ------------------------------------------------------------------ public parts
    @property
    def data(self) -> Data:
        """The validated data (:class:`nmfre.labels.Data`)."""
        return self._data

    @property
    def solution(self) -> Solution:
        """The solver's output (:class:`nmfre.core.solution.Solution`)."""
        return self._solution

    @property
    def settings(self) -> FitSettings:
        """The estimation settings (:class:`nmfre.settings.FitSettings`)."""
        return self._settings

    @property
    def coords(self) -> dict:
        """Coordinates of the dims ``feature``, ``unit``, ``component``, ``covariate``."""
        d = self._data
        return {"feature": d.features, "unit": d.units, "component": self._components, "covariate": d.covariates}

    def _da(self, values, dims, name):
        return xr.DataArray(values, dims=dims, coords={k: self.coords[k] for k in dims}, name=name)

    @property
    def X(self) -> xr.DataArray:
        """Basis (feature, component)."""
        return self._da(self._solution.X, ("feature", "component"), "X")

    @property
    def theta(self) -> xr.DataArray:
        """Covariate effects (component, covariate)."""
        return self._da(self._solution.theta, ("component", "covariate"), "theta")

    @property
    def U(self) -> xr.DataArray:
        """Random effects (component, unit)."""
        return self._da(self._solution.U, ("component", "unit"), "U")

    @property
    def Y(self) -> xr.DataArray:
        """The data (feature, unit): lazy when Y is a dask array; a sparse Y is made dense
        only when that takes at most 1e7 entries (otherwise use ``fit.data.Y``)."""
        Y = self._data.Y
        if self._data.kind == "sparse":
            P, N = Y.shape
            if P * N > 10_000_000:
                raise ValueError(f"fit.Y would densify a {P} x {N} sparse Y; use fit.data.Y (scipy.sparse)")
            Y = Y.toarray()
        return self._da(Y, ("feature", "unit"), "Y")

    @property
    def A(self) -> xr.DataArray:
        """The covariates (covariate, unit)."""
        return self._da(self._data.A, ("covariate", "unit"), "A")

    # ------------------------------------------------------------------ scalars
    @property
    def method(self) -> str:
        """``'ml'`` or ``'paper'``."""
        return self._settings.method

    @property
    def theta_kind(self) -> str:
        """``'free'`` or ``'nonneg'``."""
        return self._settings.theta

    @property
    def sigma2(self) -> float:
        """Residual variance."""
        return float(self._solution.sigma2)

    @property
    def tau2(self) -> float:
        """Random-effect variance."""
        return float(self._solution.tau2)

    @property
    def lam(self) -> float:
        """``lambda = sigma2 / tau2``."""
        return float(self._solution.lam)

    @property
    def converged(self) -> bool:
        """Whether the fit met its tolerance."""
        return bool(self._solution.converged)

    @property
    def n_iter(self) -> int:
        """Iterations run."""
        return int(self._solution.n_iter)

    @property
    def stop_reason(self) -> str:
        """Why the solver stopped."""
        return str(self._solution.stop_reason)

    @property
    def cap_hit(self) -> bool:
        """The df cap bound at some iteration."""
        return bool(self._solution.cap_hit)

    @property
    def nll_trace(self) -> np.ndarray:
        """nll per iteration."""
        return np.asarray(self._solution.nll_trace, float)

    @property
    def loglik(self) -> float:
        """Maximised marginal log-likelihood."""
        return -float(self._solution.nll)


    @property
    def n_params(self) -> int:
        """Number of free parameters: ``Q (P - 1)`` for the simplex columns of X, ``Q K`` for
        Theta and the free variances (2, fewer with ``fix_sigma2`` / ``fix_tau2``). U is not a
        parameter (it is integrated out); the df cap and Theta's sign do not change the count."""
        s = self.shape
        n_var = 2 - int(self._settings.fix_sigma2) - int(self._settings.fix_tau2)
        return s["Q"] * (s["P"] - 1) + s["Q"] * s["K"] + n_var

    @property
    def n_obs(self) -> int:
        """Number of observed entries of Y (``P N`` for complete data): the ``n`` of :attr:`bic`."""
        Y = self._data.Y
        if self._data.kind == "dense":
            return int(np.sum(~np.isnan(Y)))
        if self._data.kind == "dask":  # missing entries counted in the pass R-squared makes (cached)
            return int(self._sums["n_obs"])
        return int(Y.shape[0]) * int(Y.shape[1])

    @property
    def aic(self) -> float:
        """Akaike's criterion ``-2 loglik + 2 n_params`` (:attr:`n_params`; marginal likelihood)."""
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        """Schwarz's criterion ``-2 loglik + n_params log(n_obs)`` with ``n_obs`` the number of
        observed entries of Y (as lme4 and statsmodels' MixedLM count observations)."""
        return -2.0 * self.loglik + self.n_params * float(np.log(self.n_obs))

    @property
    def shape(self) -> dict[str, int]:
        """``{"P": ..., "N": ..., "Q": ..., "K": ...}``."""
        return dict(P=self._data.P, N=self._data.N, Q=self._solution.X.shape[1], K=self._data.K)

    @cached_property
    def df_u(self) -> float:
        """Effective df of U: ``sum_n tr((X_O'X_O + lambda I)^-1 X_O'X_O)`` over units and their
        observed features ``O`` (``N sum_q d_q / (d_q + lambda)`` for complete data)."""
        return passes.df_u(self._data.Y, self._solution.X, self.lam)

    @property
    def df_cap(self) -> float | None:
        """The cap ``max(rate N Q, 1)``, or None without a cap."""
        if self.df_cap_rate is None:
            return None
        return cap_value(self.df_cap_rate, self.shape["N"], self.shape["Q"])

    @property
    def icc(self) -> float:
        """``tau2 tr(X'X) / (tau2 tr(X'X) + sigma2 P)``."""
        return icc_of(self._solution.X, self.sigma2, self.tau2)

    # ------------------------------------------------------------------ fitted values
    def fitted(self, random: bool = True) -> xr.DataArray:
        """Fitted values ``X (Theta A + U)`` (``random=True``) or ``X Theta A``."""
        s = self._solution
        B = s.theta @ self._data.A + (s.U if random else 0.0)
        return self._da(s.X @ B, ("feature", "unit"), "fitted")

    @cached_property
    def _sums(self) -> dict:
        s, d = self._solution, self._data
        return passes.fitted_sums(d.Y, d.A, s.X, s.theta, s.U)

    def _r2(self, random: bool, centred: bool) -> float:
        sums = self._sums
        rss = sums["rss_random" if random else "rss_fixed"]
        n = sums["n_obs"]
        tss = sums["ss"] - sums["sum"] ** 2 / n if centred else sums["ss"]
        return 1.0 - rss / tss if tss > 0 else float("nan")

    @property
    def r_squared(self) -> float:
        """``1 - ||Y - X(Theta A + U)||^2 / ||Y - mean(Y)||^2``."""
        return self._r2(True, True)

    @property
    def r_squared_fixed(self) -> float:
        """``1 - ||Y - X Theta A||^2 / ||Y - mean(Y)||^2``."""
        return self._r2(False, True)

    @property
    def r_squared_uncentered(self) -> float:
        """``1 - ||Y - X(Theta A + U)||^2 / ||Y||^2``."""
        return self._r2(True, False)

    @property
    def r_squared_fixed_uncentered(self) -> float:
        """``1 - ||Y - X Theta A||^2 / ||Y||^2``."""
        return self._r2(False, False)


    def predict(self, A_new: Any = None, random: bool = True, Y_new: Any = None) -> xr.DataArray:
        """Predicted means ``X (Theta a + u)``.

        Parameters
        ----------
        A_new : array-like, DataFrame, Series or DataArray, optional
            ``covariate x unit`` design of new units (a 1-D array, or a Series indexed by
            covariate, is one unit). Default: the fitted units.
        random : bool
            Include the random effects. For the fitted units this adds ``X U``. New units
            without ``Y_new`` have no data, so their U is 0 (its prior mean).
        Y_new : array-like, DataFrame or DataArray, optional
            ``feature x unit`` data of the new units (NaN = not observed): their U is the
            BLUP from their observed features, ``(X_O'X_O + lambda I)^-1 X_O'(y_O - X_O Theta a)``.
            Checked (shape, labels) whether or not ``random`` is on; its unit labels name the
            new units when ``A_new`` has none (labels on both must agree).

        Returns
        -------
        xarray.DataArray (feature, unit)
        """
        random = v.boolean(random, "random")
        if A_new is None:
            if Y_new is not None:
                raise ValueError("Y_new needs A_new (the new units' covariates)")
            return self.fitted(random).rename("prediction")
        if isinstance(A_new, list | tuple | np.ndarray) and np.ndim(A_new) == 1:
            A_new = np.asarray(A_new, dtype=float)[:, None]  # one new unit
        elif isinstance(A_new, pd.Series):  # one new unit, indexed by covariate
            A_new = A_new.to_frame()
        arr, cov, units = to_matrix(A_new, "A_new", DIMS_A)
        K = self.shape["K"]
        if arr.shape[0] != K:
            raise ValueError(f"A_new must have {K} rows (covariates), got shape {arr.shape}")
        if cov is not None and [str(c) for c in cov] != [str(c) for c in self._data.covariates]:
            raise ValueError(f"A_new covariates {list(cov)} do not match the fit's {list(self._data.covariates)}")
        B = self._solution.theta @ arr
        if Y_new is not None:  # checked (and its unit labels taken) whether or not random is on
            U_new, units = self._new_blup(Y_new, arr, units)
            if random:
                B = B + U_new
        units = np.arange(arr.shape[1]) if units is None else units
        mean = self._solution.X @ B
        return xr.DataArray(mean, dims=("feature", "unit"),
                            coords={"feature": self._data.features, "unit": units}, name="prediction")

    def _new_blup(self, Y_new, A_new: np.ndarray, units) -> tuple[np.ndarray, Any]:
        """The new units' BLUP and their unit labels (A_new's, else Y_new's, else None); labels
        given on both must agree."""
        Yv, feats, new_units = to_matrix(Y_new, "Y_new", DIMS_Y, missing=True)
        if Yv.shape != (self.shape["P"], A_new.shape[1]):
            raise ValueError(f"Y_new must be {self.shape['P']} features x {A_new.shape[1]} units, got {Yv.shape}")
        if feats is not None and [str(f) for f in feats] != [str(f) for f in self._data.features]:
            raise ValueError("Y_new feature labels do not match the fit's")
        if new_units is not None and units is not None and [str(u) for u in new_units] != [str(u) for u in units]:
            raise ValueError(f"Y_new unit labels {some_labels(new_units)} do not match A_new's {some_labels(units)}")
        if np.isnan(Yv).all(axis=0).any():
            raise ValueError("Y_new has a unit with no observed entry; leave it out of Y_new (its U is then 0)")
        s = self._solution
        return passes.blup(Yv, A_new, s.X, s.theta, s.lam), (units if units is not None else new_units)

    def impute(self, random: bool = True) -> xr.DataArray:
        """Y with its missing entries replaced by their conditional means.

        ``random=True``: ``E[y_m | y_o] = X_m (Theta a_n + u_n)`` with ``u_n`` the BLUP from
        the unit's observed entries (the conditional mean under the fitted model);
        ``random=False``: the marginal mean ``X_m Theta a_n``. Observed entries are kept.
        The result has ``attrs["n_imputed"]``.
        """
        random = v.boolean(random, "random")
        Y = self._data.Y
        if self._data.kind == "sparse":
            raise ValueError("a sparse Y has no missing entries to impute")
        F = self.fitted(random)
        Yd = self.Y
        out = Yd.where(~np.isnan(Yd), F).rename("Y_imputed")
        out.attrs.update(n_imputed=int(np.isnan(Y).sum()), random=int(random))
        return out

    # ------------------------------------------------------------------ inference
    def infer(self, n_boot: int = 1000, seed: Any = 123, multipliers: Any = None, dist: str = "exp",
              method: str = "onestep", level: float = 0.95, alternative: str | None = None,
              progress: bool = False, max_iter: int | None = None, chunk_size: int = CHUNK_UNITS, vcov: str = "CR1",
              df: str | int | None = None, ci: str = "percentile", keep_X: bool | None = None,
              workers: int | None = None, client=None, failed: str | None = None) -> Inference:
        """Inference on Theta conditional on the fitted basis; see :func:`nmfre.inference.infer`
        (sandwich ``vcov`` CR1 or CR2, ``df`` normal/Satterthwaite/fixed t, ``ci`` percentile or
        studentized bootstrap; ``method="refit"`` keeps the replicates of X (``keep_X``), runs
        on ``workers`` threads or a dask ``client``, and leaves out refits that did not
        converge unless ``failed="keep"``).

        Returns a new :class:`~nmfre.inference.Inference`; the fit is not changed (pass the
        result to :meth:`summary` to show it there).
        """
        from .inference import infer

        return infer(self, n_boot=n_boot, seed=seed, multipliers=multipliers, dist=dist, method=method,
                     level=level, alternative=alternative, progress=progress, max_iter=max_iter,
                     chunk_size=chunk_size, vcov=vcov, df=df, ci=ci, keep_X=keep_X, workers=workers, client=client,
                     failed=failed)

    def profile(self, params=None, *, level: float = 0.95, x: str = "free", tol: float = 1e-10) -> xr.Dataset:
        """Profile-likelihood intervals for Theta, sigma2, tau2 and the ICC; see
        :func:`nmfre.profile.profile` (``x="fixed"``: X held at the estimate)."""
        from .profile import profile

        return profile(self, params, level=level, x=x, tol=tol)

    # ------------------------------------------------------------------ summary
    def summary(self, inference: Inference | None = None) -> Summary:
        """R-style summary: dimensions, convergence, variance components, Theta.

        Parameters
        ----------
        inference : Inference, optional
            A result of :meth:`infer` on this fit: the Theta table then shows standard
            errors, bootstrap SE, p-values and intervals.
        """
        if inference is not None:
            self._check_inference(inference)
        s = self.shape
        conv = "yes" if self.converged else "NO"
        hdr = [
            ("Model", f"Y({s['P']} x {s['N']}) = X({s['P']} x {s['Q']}) "
                      f"[Theta({s['Q']} x {s['K']}) A + U({s['Q']} x {s['N']})] + E"),
            ("Method", f"{self.method} ({'maximum likelihood' if self.method == 'ml' else 'paper algorithm'}),"
                       f" Theta {self.theta_kind}"),
            ("Converged", f"{conv} ({self.n_iter} iteration{'' if self.n_iter == 1 else 's'}, "
                          f"{STOP_TEXT.get(self.stop_reason, self.stop_reason)}, tol {self._settings.tol:g}, "
                          f"{len(self.restarts)} start{'' if len(self.restarts) == 1 else 's'})"),
            *([("Missing", f"{s['P'] * s['N'] - self.n_obs} of the {s['P'] * s['N']} entries of Y (fitted on the "
                           f"{self.n_obs} observed)")] if self.n_obs < s["P"] * s["N"] else []),
            ("Log-likelihood", f"{self.loglik:.6f}"),
            ("R-squared", f"{self.r_squared:.4f} (with U), {self.r_squared_fixed:.4f} (fixed part only)"),
        ]
        bound = "bound at some iteration" if self.cap_hit else "never bound"
        chosen = " chosen by the scan, df_cap='auto'" if self._settings.df_cap == "auto" else ""
        cap = "off" if self.df_cap is None else f"{self.df_cap:.4g} (rate {self.df_cap_rate:g}{chosen}; {bound})"
        fixed = {True: ", fixed", False: ""}
        vc = pd.DataFrame({"variance": [self.sigma2, self.tau2], "sd": [np.sqrt(self.sigma2), np.sqrt(self.tau2)]},
                          index=pd.Index([f"residual (sigma2{fixed[self._settings.fix_sigma2]})",
                                          f"random effect (tau2{fixed[self._settings.fix_tau2]})"], name="component"))
        other = pd.DataFrame({"value": [self.lam, self.icc, self.df_u, self.df_u / (s["N"] * s["Q"])]},
                             index=["lambda = sigma2/tau2", "ICC", "df_U", "df_U / (N Q)"])
        hdr.append(("df cap", cap))
        tables = [("Variance components (variances in squared units of Y; sd in units of Y)", vc),
                  ("Shrinkage", other)]
        if inference is not None:
            tables.append((f"Covariate effects Theta ({inference.describe()})", inference.summary_table()))
            notes = [SIGNIF_LEGEND]
        else:
            tables.append(("Covariate effects Theta (component x covariate)", self.theta.to_pandas()))
            notes = [INFER_HINT]
        if self.method == "paper" and not self._settings.fix_sigma2 and self.n_iter < SIGMA2_FROM:
            notes.append(f"The paper algorithm updates sigma2 from iteration {SIGMA2_FROM} on (as nmfkc); this fit "
                         f"stopped after {self.n_iter}, so sigma2 is its starting value ({self._settings.sigma2:g}), "
                         "not an estimate. method='ml' estimates it.")
        return Summary(hdr, tables, notes)

    def _check_inference(self, inference) -> None:
        """Refuse an inference that is not of this fit: its estimates must be this fit's Theta
        (same components, covariates and values)."""
        from .inference import Inference

        if not isinstance(inference, Inference):
            raise ArgumentTypeError(f"inference must be an Inference (fit.infer()), got {type(inference).__name__}")
        est, mine = inference.estimate, self.theta

        def labels(a):
            return [str(c) for c in a["component"].values], [str(c) for c in a["covariate"].values]

        if labels(est) != labels(mine):
            raise ValueError(f"inference is not of this fit: its Theta has components and covariates {labels(est)}, "
                             f"this fit's {labels(mine)}")
        if not np.allclose(est.transpose("component", "covariate").values, mine.values, rtol=1e-12, atol=0.0):
            raise ValueError("inference is not of this fit: its estimates of Theta differ from this fit's (pass "
                             "the result of this fit's infer())")

    def __repr__(self) -> str:
        return self.summary().as_text()

    def _repr_html_(self) -> str:
        return self.summary().as_html()

    # ------------------------------------------------------------------ IO
    def to_dataset(self) -> xr.Dataset:
        """Everything needed to rebuild the fit, as one ``xarray.Dataset``."""
        sol = self._solution
        data_vars = {"A": self.A, "X": self.X, "theta": self.theta, "U": self.U,
                     "nll_trace": xr.DataArray(self.nll_trace, dims=("iteration",)), **self._y_variables()}
        if sol.objective_trace is not None:
            data_vars["objective_trace"] = xr.DataArray(np.asarray(sol.objective_trace, float), dims=("iteration",))
        attrs: dict[str, Any] = {
            "sigma2": float(sol.sigma2), "tau2": float(sol.tau2), "lam": float(sol.lam), "nll": float(sol.nll),
            "converged": int(sol.converged), "n_iter": int(sol.n_iter), "cap_hit": int(sol.cap_hit),
            "stop_reason": str(sol.stop_reason), "loglik": self.loglik, "df_u": self.df_u,
            "cap_hit_iters": json.dumps([int(i) for i in sol.cap_hit_iters]),
        }
        if np.isfinite(sol.rel_change):
            attrs["rel_change"] = float(sol.rel_change)
        if self.df_cap_rate is not None:
            attrs["df_cap_rate"] = float(self.df_cap_rate)
            attrs["df_cap"] = float(self.df_cap)
        attrs["settings"] = json.dumps(self._settings.to_dict())
        attrs["restarts"] = _frame_to_json(self.restarts)
        if self.scan is not None:
            attrs["scan"] = _frame_to_json(self.scan)
        if self._data.kind == "dask":  # Y is not written: what identifies it (checked by load)
            data_vars.update(_margins(self._data.Y, self._data.features, self._data.units))
        attrs["nmfre_version"] = __version__
        return xr.Dataset(data_vars, attrs=attrs)

    def _y_variables(self) -> dict:
        """Y as stored: dense as is, sparse as coordinate triplets, lazy (dask) not at all."""
        kind = self._data.kind
        if kind == "dense":
            return {"Y": self.Y}
        if kind == "sparse":
            coo = self._data.Y.tocoo()
            return {"Y_data": xr.DataArray(coo.data, dims="nonzero"),
                    "Y_row": xr.DataArray(coo.row.astype(np.int64), dims="nonzero"),
                    "Y_col": xr.DataArray(coo.col.astype(np.int64), dims="nonzero")}
        return {}

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, Y=None) -> NMFREFit:
        """Rebuild a fit from :meth:`to_dataset` output.

        ``Y`` (feature x unit, any accepted kind) is needed only for fits whose data were
        a dask array and so were not stored; it must have the fit's shape, and its sum, sum
        of squares and number of observed entries must be those recorded at saving (a
        different Y would give a fit whose likelihood and predictions disagree). A labelled
        Y is put in the saved order of features and units (its labels must be the saved
        ones); an unlabelled one takes the saved labels by position.
        """
        missing = {"A", "X", "theta", "U", "nll_trace"} - set(ds.data_vars)
        if missing:
            raise ValueError(f"not an nmfre fit dataset: missing variables {sorted(missing)}")
        stored = "Y" in ds or "Y_data" in ds
        if stored and Y is not None:
            raise ValueError("this fit's file holds its own Y: load it without Y= (Y is only for fits of dask data)")
        if "Y" in ds:
            Y = ds["Y"]
        elif "Y_data" in ds:
            import scipy.sparse as sp

            shape = (ds.sizes["feature"], ds.sizes["unit"])
            Ys = sp.csr_matrix((ds["Y_data"].values, (ds["Y_row"].values, ds["Y_col"].values)), shape=shape)
            Y = _sparse_labelled(Ys, ds)
        elif Y is None:
            raise ValueError("this fit was saved without Y (it was a dask array): load it with nmfre.load(path, Y=Y)")
        else:
            Y = _as_saved(Y, ds)
        data = coerce(Y, ds["A"])
        shape = (ds.sizes["feature"], ds.sizes["unit"])
        if data.Y.shape != shape:
            raise ValueError(f"Y has shape {data.Y.shape}; the fit was made on {shape[0]} features x {shape[1]} units")
        a = ds.attrs
        obj = ds["objective_trace"].values if "objective_trace" in ds else None
        sol = Solution(X=ds["X"].values, theta=ds["theta"].values, U=ds["U"].values, sigma2=a["sigma2"],
                       tau2=a["tau2"], lam=a["lam"], nll=a["nll"], nll_trace=ds["nll_trace"].values,
                       converged=bool(a["converged"]), n_iter=int(a["n_iter"]), cap_hit=bool(a["cap_hit"]),
                       stop_reason=a["stop_reason"], objective_trace=obj,
                       cap_hit_iters=tuple(json.loads(a.get("cap_hit_iters", "[]"))),
                       rel_change=float(a.get("rel_change", np.nan)))
        scan = _frame_from_json(a["scan"]) if "scan" in a else None
        fit = cls(data, sol, rate=a.get("df_cap_rate"), settings=FitSettings.from_dict(json.loads(a["settings"])),
                  restarts=_frame_from_json(a["restarts"]), scan=scan, components=ds["component"].values)
        if "Y_feature_sums" in ds:  # one pass over the given Y
            _check_margins(_margins(data.Y, data.features, data.units), ds)
        return fit

    def to_netcdf(self, path, **kwargs) -> Any:
        """Write :meth:`to_dataset` to netCDF; read back with :func:`nmfre.load`."""
        return self.to_dataset().to_netcdf(path, **kwargs)


def _as_saved(Y, ds: xr.Dataset):
    """A Y given to load a fit of dask data, in the saved fit's order and with its labels:
    labelled axes (a DataArray's coordinates, a DataFrame's index and columns unless they are
    a RangeIndex) must carry the saved labels and are put in their order; an unlabelled axis
    takes them by position. A Y of another shape is returned as it is (the shape's error)."""
    saved = {d: ds[d].values for d in DIMS_Y}
    shape = tuple(len(x) for x in saved.values())
    if isinstance(Y, pd.DataFrame):
        if Y.shape != shape:
            return Y
        given = {"feature": None if isinstance(Y.index, pd.RangeIndex) else Y.index.to_numpy(),
                 "unit": None if isinstance(Y.columns, pd.RangeIndex) else Y.columns.to_numpy()}
    elif isinstance(Y, xr.DataArray) and set(Y.dims) == set(DIMS_Y):
        if tuple(Y.sizes[d] for d in DIMS_Y) != shape:
            return Y
        given = {d: Y[d].values if d in Y.coords else None for d in DIMS_Y}
    elif isinstance(Y, xr.DataArray | pd.Series | xr.Dataset) or v.array_kind(Y) == "sparse":
        return Y  # coerce's errors, or a sparse Y (labelled by position below it)
    else:
        if np.ndim(Y) != 2 or tuple(np.shape(Y)) != shape:
            return Y  # coerce's or the shape's error
        return xr.DataArray(Y, dims=DIMS_Y, coords=saved)
    order = {d: label_order(labels, saved[d], f"Y's {d} labels", "the fit's")
             for d, labels in given.items() if labels is not None}
    if isinstance(Y, pd.DataFrame):
        Y = Y.iloc[order.get("feature", slice(None)), order.get("unit", slice(None))]
        return Y.set_axis(saved["feature"], axis=0).set_axis(saved["unit"], axis=1)
    return Y.isel(order).assign_coords(saved)


def _margins(Y, features, units) -> dict:
    """What identifies a Y that a saved fit does not hold: its sums and sums of squares over
    units (per feature) and over features (per unit), and each unit's observed entries
    (missing entries left out; one pass, lazy for dask)."""
    kind = v.array_kind(Y)
    if kind == "dask":
        import dask
        import dask.array as da

        sq = Y * Y
        parts = dask.compute(da.nansum(Y, axis=1), da.nansum(sq, axis=1), da.nansum(Y, axis=0),
                             da.nansum(sq, axis=0), (~da.isnan(Y)).sum(axis=0))
    elif kind == "sparse":
        sq = Y.multiply(Y)
        parts = [np.asarray(m.sum(axis=a)).ravel() for m, a in ((Y, 1), (sq, 1), (Y, 0), (sq, 0))]
        parts.append(np.full(Y.shape[1], Y.shape[0]))
    else:
        sq = Y * Y
        parts = (np.nansum(Y, axis=1), np.nansum(sq, axis=1), np.nansum(Y, axis=0), np.nansum(sq, axis=0),
                 np.sum(~np.isnan(Y), axis=0))
    names = ("Y_feature_sums", "Y_feature_sumsq", "Y_unit_sums", "Y_unit_sumsq", "Y_unit_counts")
    out = {}
    for name, values in zip(names, parts, strict=True):
        dim, labels = ("feature", features) if name.startswith("Y_feature") else ("unit", units)
        dtype = np.int64 if name == "Y_unit_counts" else float
        out[name] = xr.DataArray(np.asarray(values, dtype), dims=dim, coords={dim: labels})
    return out


def _check_margins(got: dict, ds: xr.Dataset) -> None:
    """``ValueError`` unless a Y's margins (:func:`_margins`) are those a fit recorded: counts
    exactly, sums of squares to 1e-10 relative, sums to 1e-10 of ``sqrt(n sum of squares)``
    (their scale: a sum near 0, as of a centred feature, is rounding)."""
    for margin, what in (("feature", "features"), ("unit", "units")):
        n = (ds["Y_unit_counts"].values if margin == "unit"
             else np.full(ds.sizes["feature"], int(ds["Y_unit_counts"].values.sum()) / max(ds.sizes["feature"], 1)))
        sq, s = ds[f"Y_{margin}_sumsq"].values, ds[f"Y_{margin}_sums"].values
        ok = (np.isclose(got[f"Y_{margin}_sumsq"].values, sq, rtol=1e-10, atol=0.0)
              & (np.abs(got[f"Y_{margin}_sums"].values - s) <= 1e-10 * np.sqrt(n * sq) + 1e-300))
        if margin == "unit":
            ok &= got["Y_unit_counts"].values == ds["Y_unit_counts"].values
        if not ok.all():
            raise ValueError(f"Y is not the data this fit was made on: the sums over {int((~ok).sum())} of its "
                             f"{what} differ from those recorded when the fit was saved")


def _sparse_labelled(Ys, ds: xr.Dataset):
    """A sparse Y in a form :func:`nmfre.labels.coerce` accepts, with the dataset's labels."""
    return pd.DataFrame.sparse.from_spmatrix(Ys, index=ds["feature"].values, columns=ds["unit"].values)


def load(path, Y=None) -> NMFREFit:
    """Load a fit written by :meth:`NMFREFit.to_netcdf`.

    ``Y`` is needed only for fits of dask data (their Y is not written to the file; its
    sums over features and units are, and the Y given must match them and the fit's shape; a
    labelled Y is aligned to the saved labels), and is refused for fits whose file holds their
    own Y.
    """
    with xr.open_dataset(path) as ds:
        return NMFREFit.from_dataset(ds.load(), Y=Y)


__all__ = ["NMFREFit", "Summary", "load"]
