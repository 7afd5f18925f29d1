"""Profile likelihood: constrained re-maximisation of the marginal likelihood, profile
intervals for Theta, sigma2, tau2 and the ICC, and the fits behind the likelihood-ratio
tests (:mod:`nmfre.likelihood_tests`).

The profile log-likelihood of a scalar ``psi`` is ``l_p(psi) = max l`` over every other
parameter with ``psi`` held fixed; the profile interval at level ``1 - alpha`` is
``{psi : 2 (l_max - l_p(psi)) <= chi2_1(1 - alpha)}`` (DESIGN, third version).

The constrained maximisation is self-contained (it does not use the ML solver of
:mod:`nmfre.core.ml`, which cannot hold one entry of Theta fixed): a block ascent on the
complete-data marginal likelihood through ``G = Y Y'``, ``Y A'`` and ``A A'``, each block
exact, with SQUAREM acceleration on X:

* Theta given ``(X, lambda)``: the GLS quadratic ``tr((Y - X Theta A)' W (Y - X Theta A))``,
  ``W = sigma2 Sigma^-1 = I - X (X'X + lambda I)^-1 X'``, minimised with the profiled entry
  fixed (linear solve; non-negative least squares for ``theta="nonneg"``);
* the variances given ``(X, Theta)``: the exact 1-D profile in ``lambda``
  (:func:`nmfre.core.likelihood.optimize_lambda`) under the constraint (sigma2 or tau2 fixed,
  tau2 = 0, or the ICC fixed, which fixes lambda given X) and the fit's df cap;
* X given ``(Theta, sigma2, lambda)``: the ECM step, exact per-column minimisation of the
  expected complete-data loss ``||Y - X B||^2 + tr(X S X')`` on the simplex (HALS).

Each accepted cycle does not increase the nll (a cycle that would, because the ICC or the
cap ties lambda to X, is backtracked toward the previous X). With ``x="fixed"`` the model is
a linear mixed model and only the Theta and variance blocks run.

Complete dense data only (no missing values, no sparse or lazy Y). Sign-free Theta is
maximised on orthonormal covariates (:mod:`nmfre.core.covariates`, as the ML solver does):
fixed entries of Theta on the given covariates are linear constraints there, and the returned
maxima and covariances are on the given covariates again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from scipy.optimize import brentq, nnls
from scipy.stats import chi2

from . import validation as v
from .core import dfcap
from .core.basis import project_simplex
from .core.covariates import Frame
from .core.likelihood import LOG_2PI, Sufficient, optimize_lambda
from .core.likelihood import nll as nll_of
from .core.stats import gram_product, gram_rss
from .labels import percent

if TYPE_CHECKING:
    from .results import NMFREFit

#: the quantities :func:`profile` can profile besides the entries of Theta
VARIANCES = ("sigma2", "tau2", "icc")
XMODES = ("free", "fixed")


@dataclass(frozen=True)
class Point:
    """One (constrained) maximum: basis, effects, variances (``lam = inf``: tau2 = 0), nll."""

    X: np.ndarray
    theta: np.ndarray
    sigma2: float
    lam: float
    nll: float
    n_iter: int = 0
    converged: bool = True

    @property
    def tau2(self) -> float:
        return 0.0 if np.isinf(self.lam) else self.sigma2 / self.lam

    @property
    def icc(self) -> float:
        tr = float(np.sum(self.X * self.X))
        return self.tau2 * tr / (self.tau2 * tr + self.sigma2 * self.X.shape[0])


@dataclass(frozen=True)
class Constraint:
    """What is held fixed: ``theta`` maps vec(Theta) indices (column-major) to values;
    ``kind`` is None, ``"sigma2"``, ``"tau2"`` (``value`` 0: the model without random
    effects), ``"icc"`` or ``"lambda"`` (the ratio sigma2 / tau2, what statsmodels'
    ``profile_re`` holds)."""

    theta: tuple[tuple[int, float], ...] = ()
    kind: str | None = None
    value: float = 0.0


class Likelihood:
    """Marginal likelihood of complete data ``Y (P x N)``, ``A (K x N)`` through ``G = YY'``,
    ``YA'``, ``AA'``, with the fit's constraints (Theta's sign, fixed variances, df cap).

    For sign-free Theta the statistics are on orthonormal covariates (``frame``,
    :mod:`nmfre.core.covariates`), and so is the Theta of :meth:`sufficient`, :meth:`x_step`,
    :meth:`variance_step`, :meth:`point` and :meth:`theta_step`'s result (``frame.inward`` maps
    a fit's Theta there); :meth:`maximise` and :meth:`model_cov` answer on the given covariates,
    and held entries (:class:`Constraint`) are on them.

    Parameters
    ----------
    Y, A : ndarray
    nonneg : bool
        Theta >= 0.
    mode : {"free", "sigma2", "tau2", "fixed"}
        The fit's variance mode (which variance, if any, is held at ``sigma2``/``tau2``).
    sigma2, tau2 : float
        The fit's fixed variances (used only by ``mode``).
    cap : float or None
        The df cap value ``max(rate N Q, 1)``.
    """

    def __init__(self, Y: np.ndarray, A: np.ndarray, *, nonneg: bool = False, mode: str = "free",
                 sigma2: float = 1.0, tau2: float = 1.0, cap: float | None = None):
        Y = np.asarray(Y, float)
        A = np.asarray(A, float)
        self.P, self.N = Y.shape
        self.K = A.shape[0]
        #: sign-free Theta lives on orthonormal covariates inside (``Point.theta`` of the methods
        #: below is on them; :meth:`maximise` and :meth:`model_cov` answer on the given ones)
        self.frame = None if nonneg else Frame.of(A)
        if self.frame is not None:
            A = self.frame.A
        self.G = Y @ Y.T
        self.trG = float(np.trace(self.G))
        self.YA = Y @ A.T
        self.AA = A @ A.T
        self.n_obs = Y.size
        self.nonneg, self.mode, self.fixed_sigma2, self.fixed_tau2, self.cap = nonneg, mode, sigma2, tau2, cap

    # -- pieces
    def sufficient(self, X: np.ndarray, theta: np.ndarray) -> Sufficient:
        """:class:`~nmfre.core.likelihood.Sufficient` at ``(X, Theta)`` from the gram statistics."""
        XtX = X.T @ X
        XtYA = X.T @ self.YA
        C = XtYA @ theta.T
        TAT = theta @ self.AA @ theta.T
        rss, scale = gram_rss(self.trG, theta, XtYA, TAT, XtX)
        XRRX = X.T @ self.G @ X - C @ XtX - XtX @ C.T + XtX @ TAT @ XtX
        d, V = np.linalg.eigh(XtX)
        s = np.einsum("qa,qr,ra->a", V, XRRX, V)
        return Sufficient(max(rss, 0.0), np.maximum(s, 0.0), np.maximum(d, 0.0), np.full(d.size, float(self.N)),
                          self.n_obs, scale)

    def nll(self, suff: Sufficient, sigma2: float, lam: float) -> float:
        """Marginal nll (``lam = inf``: no random effects)."""
        if np.isinf(lam):
            return 0.5 * (self.n_obs * (LOG_2PI + np.log(sigma2)) + suff.rss / sigma2)
        return float(nll_of(suff, sigma2, lam))

    def lam_floor(self, suff: Sufficient) -> float:
        if self.cap is None:
            return 0.0
        return dfcap.lambda_for_df(suff.d, self.N, self.cap)

    # -- exact blocks
    def theta_step(self, X: np.ndarray, lam: float, fixed: tuple = (), start: np.ndarray | None = None):
        """GLS Theta given ``(X, lambda)`` with the entries ``fixed`` ((index, value) pairs of
        the column-major vec of Theta on the given covariates) held; on the frame's covariates
        where there is one (then each held entry is a linear constraint, :meth:`_constrained`)."""
        Q = X.shape[1]
        XtX = X.T @ X
        Ml = np.eye(Q) + (0.0 if np.isinf(lam) else 1.0 / lam) * XtX  # (X'X/lambda + I); W-weighted / lambda
        Minv = np.linalg.inv(Ml)
        XWX = XtX @ Minv
        XWX = 0.5 * (XWX + XWX.T)
        H = np.kron(self.AA, XWX)
        b = (Minv @ (X.T @ self.YA)).reshape(-1, order="F")
        n = H.shape[0]
        if self.frame is not None and fixed:
            return self._constrained(H, b, fixed, Q)
        idx = np.array([i for i, _ in fixed], int)
        val = np.array([x for _, x in fixed], float)
        free = np.setdiff1d(np.arange(n), idx)
        out = np.empty(n)
        out[idx] = val
        r = b[free] - H[np.ix_(free, idx)] @ val
        Hff = H[np.ix_(free, free)] + 1e-12 * np.trace(H) / n * np.eye(free.size)
        if free.size:
            if self.nonneg:
                L = np.linalg.cholesky(Hff)
                out[free] = nnls(L.T, solve_triangular(L, r, lower=True), maxiter=50 * free.size)[0]
            else:
                out[free] = cho_solve(cho_factor(Hff), r)
        return out.reshape(Q, self.K, order="F")

    def _constrained(self, H: np.ndarray, b: np.ndarray, fixed: tuple, Q: int) -> np.ndarray:
        """``argmin z'Hz / 2 - b'z`` subject to the held entries of ``Theta = Theta_o T^-1``
        (``z = vec(Theta_o)``): with ``C z = v``, ``z = H^-1 (b - C'mu)`` and
        ``(C H^-1 C') mu = C H^-1 b - v``. Exact to rounding for the single entry that
        :func:`profile` holds, a column or entries of different components (1.4e-11 at
        ``c = 1e5`` on ``[1; c + x; z]``); several entries of one component on strongly uncentred
        covariates lose digits (``C H^-1 C'``'s condition grows as ``c^4``: a whole row held at
        ``c = 1e4`` came back 9e-5 off, a review helper's measurement). Nothing in nmfre holds
        those."""
        n = H.shape[0]
        C = self.frame.vec_outward(Q)[[i for i, _ in fixed]]
        v = np.array([x for _, x in fixed], float)
        cf = cho_factor(H + 1e-12 * np.trace(H) / n * np.eye(n))
        HC = cho_solve(cf, C.T)
        Hb = cho_solve(cf, b)
        mu = np.linalg.solve(C @ HC, C @ Hb - v)
        return (Hb - HC @ mu).reshape(Q, self.K, order="F")

    def given(self, pt: Point) -> Point:
        """``pt`` with Theta on the given covariates."""
        return pt if self.frame is None else replace(pt, theta=self.frame.outward(pt.theta))

    def variance_step(self, X: np.ndarray, theta: np.ndarray, con: Constraint, lam_current: float | None = None):
        """``(sigma2, lambda, nll)`` maximising over the variances given ``(X, Theta)`` under ``con``
        (``nll = inf`` when the constraint is infeasible under the df cap)."""
        suff = self.sufficient(X, theta)
        lo = self.lam_floor(suff)
        n = self.n_obs
        kind = con.kind
        if kind in ("tau2", "icc") and con.value == 0.0:
            s2 = self.fixed_sigma2 if self.mode in ("sigma2", "fixed") else max(suff.rss / n, 1e-300)
            return s2, np.inf, self.nll(suff, s2, np.inf)
        if kind in ("icc", "lambda"):
            lam = con.value if kind == "lambda" else float(np.sum(X * X)) * (1.0 - con.value) / (con.value * self.P)
            if lam < lo * (1 - 1e-12):
                return np.nan, lam, np.inf
            s2 = self._sigma2_at(suff, lam)
            return s2, lam, self.nll(suff, s2, lam)
        mode, s2f, t2f = self.mode, self.fixed_sigma2, self.fixed_tau2
        if kind == "sigma2":
            mode, s2f = ("fixed" if mode == "tau2" else "sigma2"), con.value
        elif kind == "tau2":
            mode, t2f = ("fixed" if mode == "sigma2" else "tau2"), con.value
        if mode == "fixed":
            lam = s2f / t2f
            return (s2f, lam, self.nll(suff, s2f, lam)) if lam >= lo * (1 - 1e-12) else (np.nan, lam, np.inf)
        lam = optimize_lambda(suff, mode, lo, lam_current, s2f, t2f)
        s2 = {"free": max(float(suff.quad(lam)) / n, 1e-300), "sigma2": s2f, "tau2": lam * t2f}[mode]
        return s2, lam, self.nll(suff, s2, lam)

    def _sigma2_at(self, suff: Sufficient, lam: float) -> float:
        if self.mode in ("sigma2", "fixed"):
            return self.fixed_sigma2
        if self.mode == "tau2":
            return lam * self.fixed_tau2
        return max(float(suff.quad(lam)) / self.n_obs, 1e-300)

    def x_step(self, X: np.ndarray, theta: np.ndarray, sigma2: float, lam: float, sweeps: int = 5) -> np.ndarray:
        """ECM step for X on the simplex given ``(Theta, sigma2, lambda)`` (HALS sweeps, each exact)."""
        Q = X.shape[1]
        XtX = X.T @ X
        YAT = self.YA @ theta.T
        TAT = theta @ self.AA @ theta.T
        if np.isinf(lam):
            D, C = YAT, TAT
        else:
            Minv = np.linalg.inv(XtX + lam * np.eye(Q))
            GX = gram_product(self.G, X)
            XtYA = X.T @ self.YA
            Cq = XtYA @ theta.T
            XRRX = X.T @ GX - Cq @ XtX - XtX @ Cq.T + XtX @ TAT @ XtX
            TARX = theta @ (XtYA.T - self.AA @ theta.T @ XtX)
            D = YAT + (GX - YAT @ XtX) @ Minv
            TU = TARX @ Minv
            C = TAT + TU + TU.T + Minv @ XRRX @ Minv + self.N * sigma2 * Minv
        C = 0.5 * (C + C.T)
        X = X.copy()
        for _ in range(sweeps):
            for q in range(Q):
                if C[q, q] <= 0:
                    continue
                r = D[:, q] - X @ C[:, q] + X[:, q] * C[q, q]
                X[:, q] = project_simplex((r / C[q, q])[:, None])[:, 0]
        return X

    # -- the maximisation
    def point(self, X, theta, con: Constraint, lam_current=None) -> Point:
        """Theta and the variances maximised given X (alternating until stable)."""
        lam = lam_current
        prev = np.inf
        th, n_iter = theta, 0
        for _ in range(50):
            n_iter += 1
            th = self.theta_step(X, np.inf if lam is None else lam, con.theta)
            s2, lam, val = self.variance_step(X, th, con, None if lam is None or np.isinf(lam) else lam)
            if not np.isfinite(val) or prev - val <= 1e-13 * (1 + abs(val)):
                break
            prev = val
        return Point(X, th, s2, lam, val, n_iter)

    def maximise(self, start: Point, con: Constraint, x_free: bool = True, tol: float = 1e-10,
                 max_iter: int = 5000) -> Point:
        """The constrained maximum from ``start`` (monotone block ascent, SQUAREM on X; Theta is
        re-solved from ``start``'s X and variances). Its Theta is on the given covariates."""
        st = self.point(start.X, start.theta, con, start.lam if np.isfinite(start.lam) else None)
        if not x_free or not np.isfinite(st.nll):
            return self.given(st)
        step_max = 1.0
        for it in range(1, max_iter + 1):
            new, step_max = self._squarem(st, con, step_max)
            dec = st.nll - new.nll
            dx = float(np.max(np.abs(new.X - st.X)))
            if new.nll <= st.nll:
                st = new
            if dec <= tol * (1 + abs(st.nll)) and dx <= np.sqrt(tol):
                return self.given(replace(st, n_iter=it, converged=True))
        return self.given(replace(st, n_iter=max_iter, converged=False))

    def _cycle(self, st: Point, con: Constraint) -> Point:
        Xn = self.x_step(st.X, st.theta, st.sigma2, st.lam)
        new = self.point(Xn, st.theta, con, st.lam if np.isfinite(st.lam) else None)
        t = 1.0
        while not new.nll <= st.nll and t > 1e-4:  # lambda tied to X (ICC, cap): backtrack
            t *= 0.5
            new = self.point(project_simplex(st.X + t * (Xn - st.X)), st.theta, con,
                             st.lam if np.isfinite(st.lam) else None)
        return new if new.nll <= st.nll else st

    def _squarem(self, st: Point, con: Constraint, step_max: float):
        s1 = self._cycle(st, con)
        s2 = self._cycle(s1, con)
        r = s1.X - st.X
        w = s2.X - s1.X - r
        nr, nw = np.linalg.norm(r), np.linalg.norm(w)
        if nr == 0 or nw == 0:
            return s2, step_max
        alpha = min(-1.0, max(-nr / nw, -step_max))
        if alpha == -1.0:
            return s2, step_max * 4 if step_max == 1.0 else step_max
        Xe = project_simplex(st.X - 2 * alpha * r + alpha**2 * w)
        ext = self._cycle(self.point(Xe, s2.theta, con, s2.lam if np.isfinite(s2.lam) else None), con)
        if np.isfinite(ext.nll) and ext.nll <= s2.nll:
            return ext, step_max * 4 if alpha == -step_max else step_max
        return s2, max(1.0, step_max / 4)

    def model_cov(self, pt: Point) -> np.ndarray:
        """Model-based covariance of vec(Theta) (on the given covariates) given X and the
        variances, ``sigma2 H^-1``."""
        Q = pt.X.shape[1]
        XtX = pt.X.T @ pt.X
        Ml = np.eye(Q) + (0.0 if np.isinf(pt.lam) else 1.0 / pt.lam) * XtX
        XWX = XtX @ np.linalg.inv(Ml)
        cov = pt.sigma2 * np.linalg.pinv(np.kron(self.AA, 0.5 * (XWX + XWX.T)))
        if self.frame is None:
            return cov
        return self.frame.cov_outward(cov, Q)


def likelihood_of(fit: NMFREFit) -> Likelihood:
    """The :class:`Likelihood` of a fit's data under its settings (ValueError for data it cannot hold)."""
    d = fit.data
    if d.kind != "dense" or np.isnan(d.Y).any():
        raise ValueError("fit: profile likelihoods and likelihood-ratio tests need complete dense data (no missing "
                         f"values, no sparse or lazy Y); this fit's Y is {d.kind}"
                         + (" with missing values" if d.kind == "dense" else ""))
    s = fit.settings
    cap = None if fit.df_cap is None else float(fit.df_cap)
    return Likelihood(d.Y, d.A, nonneg=fit.theta_kind == "nonneg", mode=s.variance_mode, sigma2=s.sigma2,
                      tau2=s.tau2, cap=cap)


def start_of(fit: NMFREFit) -> Point:
    sol = fit.solution
    return Point(np.array(sol.X, float), np.array(sol.theta, float), float(sol.sigma2), float(sol.lam),
                 float(sol.nll))


# ----------------------------------------------------------------------------- intervals
class _Profiler:
    """Evaluations of one scalar's profile, warm-started from the nearest evaluated point."""

    def __init__(self, lik: Likelihood, best: Point, make_con, x_free: bool, tol: float):
        self.lik, self.best, self.make_con, self.x_free, self.tol = lik, best, make_con, x_free, tol
        self.cache: dict[float, Point] = {}

    def nll(self, psi: float) -> float:
        if psi in self.cache:
            return self.cache[psi].nll
        near = min(self.cache, key=lambda p: abs(p - psi)) if self.cache else None
        start = self.best if near is None else self.cache[near]
        pt = self.lik.maximise(start, self.make_con(psi), self.x_free, self.tol)
        self.cache[psi] = pt
        return pt.nll


#: how an end of a profile interval was found (``ci_end``, ``variance_ci_end``)
END_KINDS = ("cut-off", "limit", "df cap", "not found", "not profiled")


def _search(prof: _Profiler, est: float, nll_max: float, q: float, step: float, scale: str,
            lower_limit: float | None, capped: bool = False) -> tuple[float, float, str, str]:
    """Both ends of ``{psi : 2 (nll(psi) - nll_max) <= q}`` and how each was found (one of
    :data:`END_KINDS`): step out from ``est`` on the ``scale`` ("linear", or "log"/"logit"
    for positive / unit-interval quantities) by growing steps until the deviance passes
    ``q``, then Brent's root between the last two points ("cut-off"; when the point past it
    was infeasible, so the root is a boundary where the deviance is below ``q``: "df cap"
    for a fit with a cap (``capped``), else "limit", as the ICC's 1 where lambda reaches
    0). A lower end whose ``lower_limit`` (0 for a non-negative entry of Theta, tau2, the
    ICC) has deviance at most ``q`` is that limit ("limit"); an end never bracketed is NaN
    ("not found")."""
    fwd = {"linear": (lambda x: x), "log": np.log, "logit": lambda x: np.log(x / (1 - x))}[scale]
    inv = {"linear": (lambda t: t), "log": np.exp, "logit": lambda t: 1 / (1 + np.exp(-t))}[scale]

    def dev_psi(psi):
        return 2.0 * (prof.nll(float(psi)) - nll_max) - q

    def dev(t):
        return dev_psi(inv(t))

    t0 = float(fwd(est))
    xtol = 1e-7 * max(1.0, abs(t0)) if scale == "linear" else 1e-7
    ends, kinds = [], []
    for sign in (-1, 1):
        limit = lower_limit if sign < 0 else None
        if limit is not None and dev_psi(limit) <= 0:
            ends.append(float(limit))
            kinds.append("limit")
            continue
        prev, end, kind = t0, np.nan, "not found"
        for k in range(40):
            t = t0 + sign * step * 1.5 * 1.6**k
            if limit is not None and scale == "linear" and t <= limit:
                end, kind = brentq(dev, limit, prev, xtol=xtol), "cut-off"
                break
            if not np.isfinite(inv(t)):
                break
            d = dev(t)
            if d > 0:
                a, b = sorted((prev, t))
                end = float(inv(brentq(dev, a, b, xtol=xtol)))
                at_edge = np.isinf(d) and not abs(dev(fwd(end))) < 1e-3
                kind = ("df cap" if capped else "limit") if at_edge else "cut-off"
                break
            prev = t
        ends.append(float(end))
        kinds.append(kind)
    return ends[0], ends[1], kinds[0], kinds[1]


def _param_label(comp, cov) -> str:
    return f"theta[{comp}, {cov}]"


def profile(fit: NMFREFit, params=None, *, level: float = 0.95, x: str = "free", tol: float = 1e-10) -> xr.Dataset:
    """Profile-likelihood intervals for the entries of Theta, sigma2, tau2 and the ICC.

    Parameters
    ----------
    fit : NMFREFit
        Any fit of complete dense data; the likelihood is the fit's (same Theta sign,
        fixed variances and df cap). For a ``method="paper"`` fit the maximum is re-found
        from the paper estimate, so the intervals are centred at the ML estimate.
    params : None, "theta", "variances" or list
        What to profile: every entry of Theta and ``sigma2``, ``tau2``, ``icc`` (None; Theta
        only for a fit with a fixed variance), Theta only, the three variance quantities
        only, or a list of distinct names among ``"sigma2"``, ``"tau2"``, ``"icc"`` and
        ``(component, covariate)`` pairs (one name or one pair alone is accepted too).
    level : float
        Interval level; the cut-off is ``chi2_1(level) / 2`` in log-likelihood.
    x : {"free", "fixed"}
        Re-estimate X at every profile point (the model's profile), or hold it at the
        estimate (the linear mixed model given X: what statsmodels' MixedLM profiles).
    tol : float
        Relative tolerance of each constrained maximisation.

    Returns
    -------
    xarray.Dataset
        ``estimate`` and ``ci`` (``ci_bound`` x component x covariate; NaN where not
        profiled), ``variance_estimate`` and ``variance_ci`` over ``parameter`` (sigma2,
        tau2, icc), how each end was found, ``ci_end`` and ``variance_ci_end`` (``"cut-off"``:
        the deviance reaches the cut-off there; ``"limit"``: a lower limit within it;
        ``"df cap"``: the edge of what the fit's df cap allows, where the deviance is below the
        cut-off; ``"not found"``, ``"not profiled"``), the profile traces ``trace_value``,
        ``trace_zeta`` (signed root deviance ``sign(psi - psi_hat) sqrt(2 (l_max -
        l_p(psi)))``) and ``trace_of`` over ``point``;
        attrs ``level``, ``x``, ``cutoff`` (the chi-square quantile), ``loglik`` (the maximum),
        ``n_evaluations``, ``seconds``, ``description``.

    Raises
    ------
    ValueError
        Data with missing values or not dense; a variance profiled that the fit holds fixed;
        unknown parameters.

    Notes
    -----
    An end at which the deviance never reaches the cut-off before a limit (0 for a
    non-negative entry of Theta, tau2 and the ICC) is that limit; one where the df cap makes
    the values beyond infeasible is the cap's edge (``"df cap"``: a statement about the cap,
    not the likelihood); an end that could not be
    bracketed is NaN. For tau2 the boundary makes ``chi2_1`` conservative at 0 (the
    deviance there is the tau2 = 0 likelihood-ratio statistic, :func:`nmfre.likelihood_tests.lrt_tau2`).
    """
    t_start = time.perf_counter()
    level = v.open_unit(level, "level")
    x = v.choice(x, "x", XMODES)
    tol = v.positive_float(tol, "tol")
    lik = likelihood_of(fit)
    comps, covs = fit.coords["component"], fit.coords["covariate"]
    Q, K = len(comps), len(covs)
    thetas, variances = _targets(params, comps, covs, lik.mode)
    best = lik.maximise(start_of(fit), Constraint(), x == "free", tol)
    capped = fit.df_cap is not None
    q = float(chi2.ppf(level, 1))
    ci = np.full((2, Q, K), np.nan)
    vci = np.full((2, len(VARIANCES)), np.nan)
    ends = np.full((2, Q, K), "not profiled", dtype=object)  # how each end was found (END_KINDS)
    vends = np.full((2, len(VARIANCES)), "not profiled", dtype=object)
    traces: list[tuple[str, float, float]] = []
    n_eval = 0
    se = np.sqrt(np.maximum(np.diag(lik.model_cov(best)), 0.0))
    for j in thetas:
        qi, ki = j % Q, j // Q
        est = float(best.theta[qi, ki])
        prof = _Profiler(lik, best, lambda psi, j=j: Constraint(theta=((j, psi),)), x == "free", tol)
        prof.cache[est] = best
        lo, hi, *how = _search(prof, est, best.nll, q, max(se[j], 1e-8 * max(abs(est), 1.0)), "linear",
                               0.0 if lik.nonneg else None, capped)
        ci[:, qi, ki] = lo, hi
        ends[:, qi, ki] = how
        traces += _trace(prof, est, best.nll, _param_label(comps[qi], covs[ki]))
        n_eval += len(prof.cache) - 1
    for name in variances:
        i = VARIANCES.index(name)
        est = {"sigma2": best.sigma2, "tau2": best.tau2, "icc": best.icc}[name]
        prof = _Profiler(lik, best, lambda psi, name=name: Constraint(kind=name, value=psi), x == "free", tol)
        prof.cache[est] = best
        scale = "logit" if name == "icc" else "log"
        if est <= 0:  # tau2 / ICC estimated at 0 (singular fit): step out from a tiny value
            est = 1e-8 * best.sigma2 if name == "tau2" else 1e-8
            prof.cache.pop(0.0, None)
        lo, hi, *how = _search(prof, est, best.nll, q, 0.25, scale, None if name == "sigma2" else 0.0, capped)
        vci[:, i] = lo, hi
        vends[:, i] = how
        traces += _trace(prof, est, best.nll, name)
        n_eval += len(prof.cache) - 1
    return _dataset(fit, best, ci, vci, ends, vends, traces, level, q, x, n_eval, time.perf_counter() - t_start,
                    thetas, variances)


def _targets(params, comps, covs, mode: str) -> tuple[list[int], list[str]]:
    Q, K = len(comps), len(covs)
    every = list(range(Q * K))
    if params is None:  # everything the fit can profile (a fixed variance leaves Theta only)
        thetas, variances = every, (list(VARIANCES) if mode == "free" else [])
    elif isinstance(params, str) and params == "theta":
        thetas, variances = every, []
    elif isinstance(params, str) and params == "variances":
        thetas, variances = [], list(VARIANCES)
    else:
        pair = isinstance(params, tuple) and len(params) == 2 and all(isinstance(p, str) for p in params) \
            and str(params[0]) in [str(c) for c in comps]
        if isinstance(params, str) or pair:  # one name, or one (component, covariate) pair
            items = [params]
        elif isinstance(params, list | tuple):
            items = list(params)
        else:
            raise ValueError(f"params must be None, 'theta', 'variances' or a list of names, got "
                             f"{type(params).__name__} {params!r}")
        if not items:
            raise ValueError("params is empty: give None (everything), 'theta', 'variances' or some names")
        thetas, variances = [], []
        cl, kl = [str(c) for c in comps], [str(k) for k in covs]
        for it in items:
            if isinstance(it, str) and it in VARIANCES:
                variances.append(it)
            elif isinstance(it, tuple) and len(it) == 2 and str(it[0]) in cl and str(it[1]) in kl:
                thetas.append(cl.index(str(it[0])) + Q * kl.index(str(it[1])))
            else:
                raise ValueError(f"params: unknown parameter {it!r}; give 'theta', 'variances', {list(VARIANCES)} or "
                                 f"(component, covariate) pairs with components {cl} and covariates {kl}")
    if len(set(thetas)) != len(thetas) or len(set(variances)) != len(variances):
        raise ValueError(f"params names a parameter twice: {params!r}")
    if variances and mode != "free":
        raise ValueError(f"params: this fit holds a variance fixed (mode {mode!r}), so sigma2, tau2 and the ICC have "
                         "no profile; profile Theta only (params='theta')")
    return thetas, variances


def _trace(prof: _Profiler, est: float, nll_max: float, label: str) -> list:
    out = []
    for psi in sorted(prof.cache):
        d = max(2.0 * (prof.cache[psi].nll - nll_max), 0.0)
        if np.isfinite(d):
            out.append((label, psi, float(np.sign(psi - est) * np.sqrt(d))))
    return out


def describe(level: float, x: str) -> str:
    """The one-line provenance of a profile interval."""
    how = "X re-estimated at every point" if x == "free" else "X held at the estimate (the LMM given X)"
    return (f"{percent(level)} profile-likelihood interval ({{psi: 2 (l_max - l_p(psi)) <= chi2_1({level:.10g})}}, "
            f"every other parameter re-maximised; {how})")


def _dataset(fit, best: Point, ci, vci, ends, vends, traces, level, q, x, n_eval, seconds, thetas,
             variances) -> xr.Dataset:
    comps, covs = fit.coords["component"], fit.coords["covariate"]
    labels = [t[0] for t in traces]
    ds = xr.Dataset(
        {"estimate": (("component", "covariate"), best.theta),
         "ci": (("ci_bound", "component", "covariate"), ci),
         "variance_estimate": (("parameter",), np.array([best.sigma2, best.tau2, best.icc])),
         "variance_ci": (("ci_bound", "parameter"), vci),
         "ci_end": (("ci_bound", "component", "covariate"), ends.astype(str)),
         "variance_ci_end": (("ci_bound", "parameter"), vends.astype(str)),
         "trace_value": (("point",), np.array([t[1] for t in traces], float)),
         "trace_zeta": (("point",), np.array([t[2] for t in traces], float)),
         "trace_of": (("point",), np.array(labels, dtype=str) if labels else np.array([], dtype=str))},
        coords={"component": comps, "covariate": covs, "ci_bound": ["lower", "upper"],
                "parameter": list(VARIANCES), "point": np.arange(len(traces))},
        attrs={"level": float(level), "x": x, "cutoff": q, "loglik": -best.nll, "n_evaluations": int(n_eval),
               "seconds": float(seconds), "converged": int(best.converged),
               "profiled": ", ".join([_param_label(comps[j % len(comps)], covs[j // len(comps)]) for j in thetas]
                                     + list(variances)),
               "description": describe(level, x)},
    )
    for name in ("ci", "variance_ci"):
        ds[name].attrs.update(ci_kind="profile", ci_prob=float(level), description=describe(level, x))
    return ds


def deviance_at(fit: NMFREFit, constraint: Constraint, x: str = "free", tol: float = 1e-10) -> tuple[float, Point]:
    """``2 (l_max - l_p)`` at one constraint, with the constrained maximum (for checks and tests)."""
    lik = likelihood_of(fit)
    best = lik.maximise(start_of(fit), Constraint(), x == "free", tol)
    pt = lik.maximise(best, constraint, x == "free", tol)
    return 2.0 * (pt.nll - best.nll), pt


__all__ = ["Constraint", "Likelihood", "Point", "VARIANCES", "deviance_at", "describe", "likelihood_of", "profile"]
