"""The fit object: labelled results, summary tables, prediction and netCDF round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import xarray as xr

from .dfcap import cap_value, df_u
from .labels import DIMS_A, Data, _to_matrix, coerce, component_labels
from .likelihood import icc as icc_of

_SCALARS = ("sigma2", "tau2", "lam", "nll", "converged", "n_iter", "cap_hit", "stop_reason")


def _jsonable(obj):
    if isinstance(obj, pd.DataFrame):
        return {"__frame__": obj.to_dict(orient="list"), "attrs": dict(obj.attrs)}
    return obj


def _unjson(obj):
    if isinstance(obj, dict) and "__frame__" in obj:
        df = pd.DataFrame(obj["__frame__"])
        df.attrs.update(obj.get("attrs", {}))
        return df
    return obj


class Summary:
    """Text/HTML summary of a fit; prints like R's and renders as tables in notebooks."""

    def __init__(self, header: list[tuple[str, str]], tables: list[tuple[str, pd.DataFrame]],
                 notes: list[str]):
        self.header, self.tables, self.notes = header, tables, notes

    def as_text(self) -> str:
        w = max(len(k) for k, _ in self.header)
        lines = [f"{k:<{w}}  {v}" for k, v in self.header]
        for title, df in self.tables:
            lines += ["", title, df.to_string()]
        lines += [""] + self.notes if self.notes else []
        return "\n".join(lines)

    def as_html(self) -> str:
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


class NMFREFit:
    """Result of :func:`nmfre.fit`. Arrays are ``xarray.DataArray`` with named dims.

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
    """

    def __init__(self, data: Data, res: dict, *, rate, settings: dict, restarts: pd.DataFrame,
                 scan: pd.DataFrame | None = None, components=None):
        self._data = data
        self._res = {k: res[k] for k in ("X", "theta", "U", "nll_trace") + _SCALARS}
        self._res["X"], self._res["theta"], self._res["U"] = (
            np.asarray(res["X"], float), np.asarray(res["theta"], float), np.asarray(res["U"], float))
        self.df_cap_rate = rate
        self.settings = dict(settings)
        self.restarts = restarts
        self.scan = scan
        Q = self._res["X"].shape[1]
        self._components = component_labels(Q) if components is None else np.asarray(components)
        self.inference = None

    # ------------------------------------------------------------------ arrays
    @property
    def coords(self) -> dict:
        d = self._data
        return {"feature": d.features, "unit": d.units, "component": self._components,
                "covariate": d.covariates}

    def _da(self, values, dims, name):
        return xr.DataArray(values, dims=dims, coords={k: self.coords[k] for k in dims}, name=name)

    @property
    def X(self) -> xr.DataArray:
        return self._da(self._res["X"], ("feature", "component"), "X")

    @property
    def theta(self) -> xr.DataArray:
        return self._da(self._res["theta"], ("component", "covariate"), "theta")

    @property
    def U(self) -> xr.DataArray:
        return self._da(self._res["U"], ("component", "unit"), "U")

    @property
    def Y(self) -> xr.DataArray:
        return self._da(self._data.Y, ("feature", "unit"), "Y")

    @property
    def A(self) -> xr.DataArray:
        return self._da(self._data.A, ("covariate", "unit"), "A")

    # ------------------------------------------------------------------ scalars
    method = property(lambda self: self.settings["method"])
    theta_kind = property(lambda self: self.settings["theta"])
    sigma2 = property(lambda self: float(self._res["sigma2"]))
    tau2 = property(lambda self: float(self._res["tau2"]))
    lam = property(lambda self: float(self._res["lam"]))
    converged = property(lambda self: bool(self._res["converged"]))
    n_iter = property(lambda self: int(self._res["n_iter"]))
    stop_reason = property(lambda self: str(self._res["stop_reason"]))
    cap_hit = property(lambda self: bool(self._res["cap_hit"]))
    nll_trace = property(lambda self: np.asarray(self._res["nll_trace"], float))
    loglik = property(lambda self: -float(self._res["nll"]))
    shape = property(lambda self: dict(P=self._data.Y.shape[0], N=self._data.Y.shape[1],
                                       Q=self._res["X"].shape[1], K=self._data.A.shape[0]))

    @property
    def _d(self) -> np.ndarray:
        X = self._res["X"]
        return np.maximum(np.linalg.eigvalsh(X.T @ X), 0.0)

    @property
    def df_u(self) -> float:
        """``N sum_q d_q / (d_q + lambda)`` at the final X and lambda."""
        return float(df_u(self._d, self.shape["N"], self.lam))

    @property
    def df_cap(self) -> float | None:
        if self.df_cap_rate is None:
            return None
        return cap_value(self.df_cap_rate, self.shape["N"], self.shape["Q"])

    @property
    def icc(self) -> float:
        return icc_of(self._res["X"], self.sigma2, self.tau2)

    # ------------------------------------------------------------------ fitted values
    def fitted(self, random: bool = True) -> xr.DataArray:
        """Fitted values ``X (Theta A + U)`` (``random=True``) or ``X Theta A``."""
        B = self._res["theta"] @ self._data.A + (self._res["U"] if random else 0.0)
        return self._da(self._res["X"] @ B, ("feature", "unit"), "fitted")

    def _r2(self, random: bool, centred: bool) -> float:
        Y = self._data.Y
        rss = float(np.sum((Y - self.fitted(random).values) ** 2))
        tss = float(np.sum((Y - Y.mean()) ** 2)) if centred else float(np.sum(Y**2))
        return 1.0 - rss / tss if tss > 0 else float("nan")

    r_squared = property(lambda self: self._r2(True, True),
                         doc="1 - ||Y - X(Theta A + U)||^2 / ||Y - mean(Y)||^2")
    r_squared_fixed = property(lambda self: self._r2(False, True),
                               doc="1 - ||Y - X Theta A||^2 / ||Y - mean(Y)||^2")
    r_squared_uncentered = property(lambda self: self._r2(True, False),
                                    doc="1 - ||Y - X(Theta A + U)||^2 / ||Y||^2")
    r_squared_fixed_uncentered = property(lambda self: self._r2(False, False),
                                          doc="1 - ||Y - X Theta A||^2 / ||Y||^2")

    def predict(self, A_new=None, random: bool = True) -> xr.DataArray:
        """Predicted means.

        Parameters
        ----------
        A_new : array-like, DataFrame or DataArray, optional
            ``covariate x unit`` design of new units. Default: the fitted units.
        random : bool
            Include the random effects. For the fitted units this adds ``X U``; new
            units have no data, so their U is 0 (its prior mean) and ``random`` has no
            effect for them.
        """
        if A_new is None:
            return self.fitted(random).rename("prediction")
        if isinstance(A_new, (list, tuple, np.ndarray)) and np.ndim(A_new) == 1:
            A_new = np.asarray(A_new, dtype=float)[:, None]  # one new unit
        arr, cov, units = _to_matrix(A_new, "A_new", DIMS_A)
        K = self.shape["K"]
        if arr.shape[0] != K:
            raise ValueError(f"A_new must have {K} rows (covariates), got shape {arr.shape}")
        if cov is not None and [str(c) for c in cov] != [str(c) for c in self._data.covariates]:
            raise ValueError(f"A_new covariates {list(cov)} do not match the fit's {list(self._data.covariates)}")
        units = np.arange(arr.shape[1]) if units is None else units
        mean = self._res["X"] @ (self._res["theta"] @ arr)
        return xr.DataArray(mean, dims=("feature", "unit"),
                            coords={"feature": self._data.features, "unit": units}, name="prediction")

    # ------------------------------------------------------------------ inference
    def infer(self, n_boot: int = 1000, seed=123, multipliers=None, dist: str = "exp",
              method: str = "onestep", level: float = 0.95, alternative: str | None = None,
              progress: bool = False, max_iter: int | None = None):
        """Inference on Theta conditional on the fitted basis (see :mod:`nmfre.inference`).

        The result is also kept as ``fit.inference`` so that :meth:`summary` shows it.
        """
        from .inference import infer

        self.inference = infer(self, n_boot=n_boot, seed=seed, multipliers=multipliers, dist=dist,
                               method=method, level=level, alternative=alternative,
                               progress=progress, max_iter=max_iter)
        return self.inference

    # ------------------------------------------------------------------ summary
    def summary(self) -> Summary:
        """R-style summary: dimensions, convergence, variance components, Theta."""
        s = self.shape
        conv = "yes" if self.converged else "NO"
        hdr = [
            ("Model", f"Y({s['P']} x {s['N']}) = X({s['P']} x {s['Q']}) "
                      f"[Theta({s['Q']} x {s['K']}) A + U({s['Q']} x {s['N']})] + E"),
            ("Method", f"{self.method} ({'maximum likelihood' if self.method == 'ml' else 'paper algorithm'}),"
                       f" Theta {self.theta_kind}"),
            ("Converged", f"{conv} ({self.n_iter} iterations, {self.stop_reason}, "
                          f"tol {self.settings['tol']:g}, {len(self.restarts)} start(s))"),
            ("Log-likelihood", f"{self.loglik:.6f}"),
            ("R-squared", f"{self.r_squared:.4f} (with U), {self.r_squared_fixed:.4f} (fixed part only)"),
        ]
        bound = "bound at some iteration" if self.cap_hit else "never bound"
        cap = "off" if self.df_cap is None else f"{self.df_cap:.4g} (rate {self.df_cap_rate:g}; {bound})"
        vc = pd.DataFrame({
            "variance": [self.sigma2, self.tau2],
            "sd": [np.sqrt(self.sigma2), np.sqrt(self.tau2)],
        }, index=pd.Index(["residual (sigma2)", "random effect (tau2)"], name="component"))
        other = pd.DataFrame({"value": [self.lam, self.icc, self.df_u, self.df_u / (s["N"] * s["Q"])]},
                             index=["lambda = sigma2/tau2", "ICC", "df_U", "df_U / (N Q)"])
        hdr.append(("df cap", cap))
        tables = [("Variance components (variances in squared units of Y; sd in units of Y)", vc),
                  ("Shrinkage", other)]
        notes = []
        if self.inference is not None:
            tables.append((f"Covariate effects Theta ({self.inference.describe()})",
                           self.inference.summary_table()))
            notes.append("Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
        else:
            tables.append(("Covariate effects Theta (component x covariate)",
                           self.theta.to_pandas()))
            notes.append("Call fit.infer() for standard errors, bootstrap intervals and p-values.")
        return Summary(hdr, tables, notes)

    def __repr__(self) -> str:
        return self.summary().as_text()

    def _repr_html_(self) -> str:
        return self.summary().as_html()

    # ------------------------------------------------------------------ IO
    def to_dataset(self) -> xr.Dataset:
        """Everything needed to rebuild the fit, as one ``xarray.Dataset``."""
        ds = xr.Dataset(
            {"Y": self.Y, "A": self.A, "X": self.X, "theta": self.theta, "U": self.U,
             "nll_trace": xr.DataArray(self.nll_trace, dims=("iteration",))},
        )
        attrs = {k: self._res[k] for k in _SCALARS}
        attrs["converged"] = int(attrs["converged"])
        attrs["cap_hit"] = int(attrs["cap_hit"])
        attrs["n_iter"] = int(attrs["n_iter"])
        for k in ("sigma2", "tau2", "lam", "nll"):
            attrs[k] = float(attrs[k])
        attrs["stop_reason"] = str(attrs["stop_reason"])
        attrs["loglik"] = self.loglik
        attrs["df_u"] = self.df_u
        if self.df_cap_rate is not None:
            attrs["df_cap_rate"] = float(self.df_cap_rate)
            attrs["df_cap"] = float(self.df_cap)
        attrs["settings"] = json.dumps(self.settings)
        attrs["restarts"] = json.dumps(_jsonable(self.restarts))
        if self.scan is not None:
            attrs["scan"] = json.dumps(_jsonable(self.scan))
        from . import __version__

        attrs["nmfre_version"] = __version__
        ds.attrs = attrs
        return ds

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> NMFREFit:
        """Rebuild a fit from :meth:`to_dataset` output."""
        missing = {"Y", "A", "X", "theta", "U", "nll_trace"} - set(ds.data_vars)
        if missing:
            raise ValueError(f"not an nmfre fit dataset: missing variables {sorted(missing)}")
        data = coerce(ds["Y"], ds["A"])
        a = ds.attrs
        res = {"X": ds["X"].values, "theta": ds["theta"].values, "U": ds["U"].values,
               "nll_trace": ds["nll_trace"].values, "sigma2": a["sigma2"], "tau2": a["tau2"],
               "lam": a["lam"], "nll": a["nll"], "converged": bool(a["converged"]),
               "n_iter": int(a["n_iter"]), "cap_hit": bool(a["cap_hit"]), "stop_reason": a["stop_reason"]}
        scan = _unjson(json.loads(a["scan"])) if "scan" in a else None
        return cls(data, res, rate=a.get("df_cap_rate"), settings=json.loads(a["settings"]),
                   restarts=_unjson(json.loads(a["restarts"])), scan=scan,
                   components=ds["component"].values)

    def to_netcdf(self, path, **kwargs):
        """Write :meth:`to_dataset` to netCDF; read back with :func:`nmfre.load`."""
        return self.to_dataset().to_netcdf(path, **kwargs)


def load(path) -> NMFREFit:
    """Load a fit written by :meth:`NMFREFit.to_netcdf`."""
    with xr.open_dataset(path) as ds:
        return NMFREFit.from_dataset(ds.load())
