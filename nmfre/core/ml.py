"""Maximum likelihood for NMF-RE on compressed statistics (plain numpy).

``Y (P x N) = X (Theta A + U) + E`` with ``X >= 0`` (columns on the simplex), ``U`` with
iid ``N(0, tau2)`` entries and ``E`` iid ``N(0, sigma2)``; with missing values each unit
contributes the likelihood of its observed entries. The data enter only through
:class:`~nmfre.core.stats.Stats` (blocks of units sharing their observed features, each
in dense, gram or sparse form), so one iteration costs ``O(P^2 Q)`` in gram form,
independent of N.

:func:`fit_ml` maximises the marginal likelihood. An iteration is a second-order step in
(X, Theta, sigma2, tau2) with Theta and the variances re-solved exactly along it (variable
projection), followed by an ECME sweep (E-step for U, exact per-column HALS block
minimisation for X on the simplex, exact GLS/NNLS for Theta, exact 1-D profile for the
variances). The step (:func:`second_order_step`) minimises the expected-information model
under the bounds (simplex columns, Theta >= 0: :func:`nmfre.core.trust.bound_qp`), then
refines it on that face with the observed Hessian by truncated CG in a trust region
(:func:`nmfre.core.trust.newton_step`; Hessian products matrix-free in closed form,
the expected information as preconditioner). A SQUAREM cycle of the ECME map is used where
no step decreases the nll. Every accepted iteration does not increase the nll.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import nnls

from . import dfcap, newton, trust
from .basis import project_simplex, project_vector, weighted_project_simplex
from .blas import blas_single_threaded, scipy_blas_single_threaded
from .likelihood import LAMBDA_MAX, LAMBDA_MIN, Sufficient, nll, optimize_lambda, variances_at
from .solution import Solution
from .stats import Moments, Stats

#: largest number of Newton coordinates (PQ + QK) whose information is assembled densely for
#: complete data (above: the structured Woodbury solve, cheaper from about this size on)
DENSE_MAX = 300
#: the same for several blocks (missing values), which have no structured solve
DENSE_MAX_BLOCKS = 1500
#: a sign-free fit is degenerate when a pair of components has ``cos(x_i, x_j) cos(theta_i,
#: theta_j) <= DEGENERATE_INDEX`` for ``DEGENERATE_PATIENCE`` iterations in a row while
#: ``max |Theta|`` grows by the factor ``DEGENERATE_GROWTH`` (see :func:`degeneracy`; the rows of
#: Theta and their size on orthonormal covariates, :mod:`nmfre.core.covariates`)
DEGENERATE_INDEX = -0.95
DEGENERATE_PATIENCE = 100
DEGENERATE_GROWTH = 1.5
#: a sign-free fit is also degenerating while its components' terms cancel:
#: ``||X Theta||^2 <= CANCEL_RATIO sum_q ||x_q||^2 ||theta_q||^2`` (see :func:`cancellation`;
#: the rule above then applies unchanged). This catches three or more components that cancel,
#: which no pair shows: the named fault, a 50 x 2000, Q = 3 fit (the iteration benchmark's
#: hetero generator, seed 2, c = 0.3) whose pairwise index stayed near -0.88 while
#: ``max |Theta|`` grew to 1.8e3 and the nll fell by 0.03 per 50 iterations, ran to max_iter =
#: 2000. Over the 576 sign-free fits of benchmarks/bench_sweep.py no converged fit fell below
#: 7.3e-3 anywhere on its path (benchmarks/results/scale.md, sixteenth round)
CANCEL_RATIO = 5e-3
#: a fit stops (``stop_reason="stalled"``, not converged) after this many iterations in a row
#: that leave X, Theta and the nll unchanged to the bit: the iteration is then at a fixed point
#: of its own map, and running on would only repeat it up to ``max_iter``
STALL_PATIENCE = 10
#: use :func:`second_order_step` in :func:`fit_ml` by default. Off: measured on the
#: benchmark ladder (benchmarks/bench_iterations.py) it cuts iterations on 500 x 5000 but
#: not below 100 on 2000 x 20000, each iteration costs more (face factorisations), and fits
#: of the same data in different forms (dense, gram, dask) then agree to ~5e-7 in Theta
#: instead of 1e-8 (the gram form's nll cannot resolve the last Newton steps)
SECOND_ORDER = False
#: the same for data with missing values (several blocks of observed rows), where it is on:
#: there the scoring iteration crawls along flat ridges (over-fitted ranks, held-out cells of
#: cross-validation: 300-1600 iterations) that the trust-region steps cross in tens; over 51
#: such fits (ecv folds of ranks 1-3 and MCAR / dropout data, 2026-12-02) the total time
#: fell from 923 s to 293 s with the same optimum wherever both converged
SECOND_ORDER_MISSING = True
#: for complete data, switch the scoring step to the Newton direction of the observed Hessian
#: on the scoring face (:func:`newton_direction`) once a Fisher step's actual decrease exceeds
#: :data:`MISMATCH` times its predicted one. The expected information is the model's
#: curvature; the data's differs wherever the model does not hold exactly (Y clipped at 0,
#: counts, outliers), and then the Fisher steps are too short: on the iteration ladder's
#: generator (1000 x 10000, Q = 10) 4-10x along the directions of the slow tail, where each
#: step achieved 1.8-2x its prediction and fits took 39-243 iterations
OBSERVED_HESSIAN = True
MISMATCH = 1.5
#: a scoring step is poor when it achieves less than ``POOR_STEP`` times its direction's
#: predicted decrease (``Direction.decrement``); after ``POOR_PATIENCE`` poor steps in a row
#: the next direction holds the entries of X the last one sent below 0 (:func:`crossing`), as
#: after a step that found no decrease. The named fault: a 100 x 2000, Q = 5 fit (the iteration
#: benchmark's hetero generator, seed 4, c = 1) whose Fisher directions predicted 0.05-0.08 and
#: achieved less than 1e-6 at most iterations from 50 to 690 (a few entries of X sent below
#: 0 bent the projected path), converging in 694 iterations; with the rule, 93 iterations at an
#: nll 0.0021 lower. Of 189 other benchmark fits (four generators, small to large rungs) it
#: changed 9, each within its convergence tolerance, and left 180 with the same iterations and
#: nll to the bit (benchmarks/results/scale.md, fourteenth round)
POOR_STEP = 1e-3
POOR_PATIENCE = 2
#: after a scoring step that found no decrease and sent no entry of X below 0 (so there is
#: nothing to hold), the next direction is the Fisher one even when the steps follow the
#: observed Hessian: near an optimum that Hessian can be nearly singular, its Newton direction
#: huge and its predicted decrease spurious, and recomputed at the same state it fails again.
#: The named fault: a 50 x 2000, Q = 5 fit (the iteration benchmark's overlap generator, seed
#: 0, c = 1) settled by iteration 23, where the Newton direction predicted 1.2e-4 against
#: ``kkt_decrement`` 2.4e-11 and tolerance 7e-7; it failed ten times and the fit stopped
#: "stalled", not converged; with this rule it converged at iteration 24, same nll
FISHER_AFTER_FAILURE = True
#: a complete-data fit crawls when its scoring steps have achieved less than ``CRAWL_STEP`` times
#: their predicted decrease (or found no decrease) ``CRAWL_PATIENCE`` times in all (not in a row);
#: it then continues with :func:`second_order_step` (the bound-constrained Fisher step, which
#: takes the entries that cross zero to their bound and re-solves on the new face, refined by
#: the observed Hessian in a trust region), as fits with missing values do from the start. The
#: named fault: a 50 x 500, Q = 8 fit (the iteration benchmark's counts generator, seed 0, c =
#: 0.3, Theta >= 0) whose directions each sent 28-42 entries of X below zero, achieved at most
#: 0.16% of their prediction, and ran to max_iter = 2000 unconverged (8 s); with the switch it
#: converged in 117 iterations (1.1 s) at an nll 5.9 lower. Over the 1152 fits of
#: benchmarks/bench_sweep.py 1095 are unchanged to the bit, the iterations fell from 40 468 to
#: 32 211 and the fits over 100 iterations from 29 to 18 (benchmarks/results/scale.md, fifteenth
#: round). Only with ``second_order=None`` (the default), and not while a sign-free fit is
#: degenerating (:func:`degenerating`); None here turns it off
CRAWL_STEP = 1e-2
CRAWL_PATIENCE: int | None = 20
#: a complete-data fit also switches to :func:`second_order_step` (as for :data:`CRAWL_PATIENCE`,
#: with the same conditions) after ``OBSERVED_POOR_PATIENCE`` Newton directions of the observed
#: Hessian in a row (:data:`MISMATCH`) whose steps each achieved less than
#: ``OBSERVED_POOR_STEP`` times their predicted decrease (or found none): that Hessian's model
#: then does not describe the nll over the steps it proposes, which the trust region of the
#: second-order steps adapts to and the line search does not. The named fault: a 100 x 2000,
#: Q = 5 fit of uncentred covariates (the iteration benchmark's uncentred generator, seed 0, c =
#: 0.3) whose 45 Newton directions from iteration 28 predicted 20-1430 and achieved 0.006-9.6
#: each, counting towards :data:`CRAWL_PATIENCE` only where below 1%; 87 iterations, 56 with the
#: rule (88 and 58 with the QP change below). "In a row" counts the observed-Hessian steps only: a
#: Fisher direction between them (after a failed step) neither counts nor breaks the run.
#: Sign-free fits switch too while not degenerating (:data:`OBSERVED_POOR_SIGN_FREE`). Only with
#: the crawl switch on (``second_order=None`` and
#: :data:`CRAWL_PATIENCE` not None). With the projected-path candidates of :func:`nmfre.core.trust.bound_qp`, over the
#: iteration ladder's eleven generators (non-negative Theta; benchmarks/results/scale.md, forty-second round): the
#: large rung (seeds 0-2, c = 0.3, 33 fits) 2625 -> 1776 iterations and fits over 100 9 -> 0 in
#: 6% more time in all (the largest fit 25.9 -> 17.8 s); the medium rung (110 fits) 4291 ->
#: 3774 and 7 -> 1; the small rung (110) 3816 -> 3441 and 2 -> 1. 0 turns it off
OBSERVED_POOR_STEP = 0.1
OBSERVED_POOR_PATIENCE = 3
#: :data:`OBSERVED_POOR_PATIENCE` switches sign-free fits too, except while they are
#: degenerating (:func:`degenerating`: the degeneracy rule must see their crawl). It was
#: non-negative Theta only: on sign-free fits the switch sent a 100 x 2000 counts fit (the
#: iteration benchmark's counts generator, seed 3, c = 0.3) to 637 iterations instead of 55, every
#: second-order step a halved Fisher step, because the observed Hessian's model rose at the Fisher
#: step and no Newton step was found (now :data:`nmfre.core.trust.SCALED_START`: 39). The named
#: fault: the overfit generator's 100 x 2000 fit (seed 0, c = 1), whose scoring steps crawled for
#: 131 iterations to an optimum 0.55 above the one the switched fit reaches in 63. Over the
#: iteration ladder's small rung (eleven generators, seeds 0-4, c = 0.3 and 1, 110 sign-free fits;
#: benchmarks/results/scale.md, forty-fifth round): 4577 -> 4308 iterations, 26 fits changed, 22
#: of them within 0.01 tolerances; the medium rung's 110: 6399 -> 4003, fits over 100 12 -> 9.
#: False: non-negative Theta only
OBSERVED_POOR_SIGN_FREE = True
#: In a fit that switched to the second-order steps, where the second-order step and the
#: scoring step after it both find no decrease at any length while the KKT decrement and the
#: decreases' tail are within the tolerance, the fit is settled (the polish then certifies it
#: by the KKT decrement, as everywhere) whatever the models predict. The named fault: a 2000 x
#: 20000 counts fit (the iteration benchmark's counts generator, seed 0, c = 0.3) at an nll of
#: 1.9e8, tolerance 0.019, whose QP predicted 0.16 and whose observed-Hessian direction 0.126
#: while neither step found anything and the KKT decrement was 7.8e-4: it stopped "stalled"
#: after 64 iterations (benchmarks/results/scale.md, forty-third round). False: the scoring
#: direction's prediction must also be within the tolerance
STUCK_SETTLES = True
#: relative residual and iteration limit of the conjugate gradients of :func:`newton_direction`
#: (a truncated Newton direction: the outer iteration corrects what CG leaves). On the iteration
#: ladder (2026-12-02, 27 data sets: small, medium, large, sparse) 0.1 and 10 took the same
#: number of iterations as 1e-4 and 30 (within 3 either way, 87 instead of 96 on the slowest)
#: with 30-70% of the Hessian products, the same nll within the tolerance. The limit was 10
#: until the products came in closed form (2026-12-06, 30% cheaper at 2000 x 20000): with 20,
#: the large rung's counts, hetero and tied generators (seeds 0-4) took 1639 iterations
#: against 1898 (tied 710 -> 522, every fit fewer) and 174 s against 184 s, the small rung the
#: same iterations on 29 of 30 fits and the medium rung 633 against 632 (benchmarks/results/
#: scale.md, twenty-ninth round)
NEWTON_RTOL = 0.1
NEWTON_CG_MAX = 20
#: after this many Newton directions in a row whose conjugate gradients stopped at their
#: iteration limit, :func:`fit_ml` doubles the limit (from :data:`NEWTON_CG_MAX`, at most
#: :data:`NEWTON_CG_LIMIT`): where the observed Hessian is ill-conditioned on the face (a
#: slowly degenerating sign-free fit, two components whose basis columns nearly coincide), ten
#: CG iterations give a direction whose step achieves what it predicts but predicts little,
#: and the fit creeps. The named fault: a 50 x 2000, Q = 5 sign-free fit (a generator with
#: pairs of true basis columns sharing 80% of their mass, seed 0, c = 1) took 1618 capped
#: directions in a row and 1655 iterations (7.7 s); with this rule it converges in 55 (0.27 s)
#: at an nll 0.39 lower (benchmarks/results/scale.md, sixteenth round)
NEWTON_CG_PATIENCE = 5
NEWTON_CG_LIMIT = 40
#: take the scoring directions to the bounds they cross (:func:`bound_direction`)
BOUND_DIRECTION = True
#: the largest ``eps`` of the epsilon-active set (:func:`_epsilon_active`)
EPSILON_MAX = 1e-3
#: the epsilon-active rule (:func:`_free_mask`) holds entries of X that are positive, within
#: ``eps`` of 0 and pushed down; of them, only those whose diagonal Newton step reaches 0 have a
#: step of their own (:func:`bound_step`), the others move with the ECME sweeps, at EM's linear
#: rate. Where a direction predicts less than ``RELEASE_FRACTION`` times the KKT decrement
#: (:func:`kkt_decrement`) and less than those others (``dev < F x``) gain in its separable model,
#: :func:`step_direction` recomputes it on the face that releases them and takes it where it is of
#: the same kind (Newton or Fisher) and predicts at least twice as much (a second direction costs
#: what the first did). Held from the start (the rules of the twenty-fifth and thirty-sixth rounds,
#: benchmarks/results/scale.md), these entries are what lead fits to their better optima; released
#: only where the face has little left against the KKT decrement (which can be early in a fit),
#: they are what the tail is made of.
#: The named fault: two 2000 x 20000, Q = 10 fits (the iteration benchmark's zinb generator, seeds
#: 0 and 1, c = 0.3) whose Newton steps each predicted about 2% of the gap left took 222 and 265
#: iterations; with the release 79 and 94, at optima lower by 0.012 and 0.015 tolerances. Of the
#: iteration ladder's 160 other fits (nine generators, three rungs) one changes (24 -> 30
#: iterations, within 2e-4 tolerances); of 40 fits at two other sizes three, within 3e-5
#: (benchmarks/results/scale.md, fortieth round). Non-negative Theta only: on 135 sign-free fits of
#: the small and medium rungs a first version changed three, one of them to an optimum 0.96
#: higher and none to fewer iterations. 0 turns it off
RELEASE_FRACTION = 0.1
#: a fit is converged only when :func:`geometric_tail`, the decrease still to come estimated
#: from its last decreases, is below the tolerance too (the largest estimate over windows of
#: ``TAIL_WINDOWS`` decreases against as many before them; the rate at most
#: ``TAIL_RATE_MAX``): the first-order tests (the iteration's decrease, the KKT decrement, the
#: models' predictions) use the expected information, which can be more curved than the
#: likelihood along weakly identified directions, and one iteration's decrease says nothing
#: where decreases alternate. Windows of 2 and 3, so that patterns of period 2 and of period 3
#: (trust-region radii that shrink and grow in turn, SQUAREM cycles) are each summed whole by
#: one of them (a window of 3 alone gives a period-2 pattern that ends on its small phase 0.06
#: of the sum still to come at a decay of 0.95 a period, less as the decay slows; one of 2
#: alone gives a period-3 pattern ending on its second small phase 2.5e-6 of it). The named
#: faults: a 150 x 400, Q = 4 fit with 5% of Y missing (one component's Theta row 1e-3 of the
#: others'), whose decreases shrank by a factor 0.92 an iteration for 40 iterations, stopped
#: "converged" at a decrease of 4.2e-6 against a tolerance of 3.9e-6 (the Fisher model predicting 1.4e-6 and the KKT
#: decrement 1.1e-8); an independent optimiser started there found 2.4e-5 lower. On complete
#: data, a non-negative 300 x 3000, Q = 4 fit (tau2 1e-2 of sigma2) stopped "converged" after
#: 262 iterations whose decreases alternated between about 1e-2 and 1e-4 (tolerance 3.2e-4),
#: the KKT decrement 3.7e-6 and the bound-constrained Fisher model 7.8e-5; the optimum is 13.5
#: lower (749 iterations: benchmarks/results/scale.md, thirty-sixth round)
TAIL_WINDOWS = (2, 3)
TAIL_RATE_MAX = 0.99
#: starting radius of the Newton steps' trust region, in the information norm (about
#: ``radius^2 / 2`` units of nll)
TRUST_RADIUS = 10.0
#: the trust region's radius stays within these bounds (information norm)
TRUST_RADIUS_BOUNDS = (1e-3, 1e6)
#: a Newton candidate of :func:`second_order_step` is taken when it achieves at least this fraction
#: of its predicted decrease (otherwise it is rejected, see :data:`NEWTON_REJECTED_OPEN`)
NEWTON_ACCEPT = 0.1
#: a fit on the second-order steps is not converged at an iteration whose step rejected a Newton
#: candidate (it achieved less than a tenth of its prediction) that the observed Hessian's model
#: said would gain more than the tolerance, while the trust region can still shrink: where the
#: expected information is much steeper than the observed Hessian, the Fisher models (the KKT
#: decrement, the bound-constrained QP) predict less than the tolerance although more is there.
#: The named fault: a 500 x 5000 fit of over-fitted rank (the iteration benchmark's overfit
#: generator, seed 2, c = 0.3) stopped "converged" after 60 iterations with the KKT decrement
#: 4e-7 and the QP 1.5e-4 against a tolerance of 9.2e-4, its last three Newton candidates (each
#: predicting 0.014) rejected; it goes on to 103 iterations and ends 0.162 (175 tolerances) lower
#: (benchmarks/results/scale.md, forty-fourth round)
NEWTON_REJECTED_OPEN = True


@dataclass
class Problem:
    """Data (as :class:`Stats`) and settings shared by the ML iterations.

    Attributes
    ----------
    stats : Stats
    rank : int
    nonneg : bool
        Theta constrained to ``>= 0``.
    mode : str
        ``"free"``, ``"sigma2"`` (sigma2 fixed), ``"tau2"`` (tau2 fixed) or ``"fixed"``.
    sigma2, tau2 : float
        Starting or fixed variances.
    cap : float or None
        The df cap value ``max(rate N Q, 1)`` (not the rate).
    """

    stats: Stats
    rank: int
    nonneg: bool
    mode: str
    sigma2: float
    tau2: float
    cap: float | None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.P, self.N, self.K = self.stats.P, self.stats.N, self.stats.K
        self.AAt = self.stats.AA
        self.AAt_inv = np.linalg.inv(self.AAt)
        self.data = trust.Data.of(self.stats) if self.stats.complete else None

    def lam_floor(self, suff: Sufficient) -> float:
        """Smallest admissible lambda (the cap's root in the per-block df)."""
        if self.cap is None:
            return LAMBDA_MIN
        return max(dfcap.lambda_for_df(suff.d, suff.w, self.cap), LAMBDA_MIN)

    def moments(self, X: np.ndarray, theta: np.ndarray) -> list[Moments]:
        """Every block's :class:`~nmfre.core.stats.Moments` at ``(X, Theta)`` (cached once)."""
        key = (X.tobytes(), theta.tobytes())
        if self._cache.get("key") != key:
            self._cache = {"key": key, "m": [b.moments(X, theta) for b in self.stats.blocks]}
        return self._cache["m"]


@dataclass
class State:
    """One iterate: basis, effects, variances and its nll."""

    X: np.ndarray
    theta: np.ndarray
    sigma2: float
    lam: float
    nll: float
    cap_active: bool = False


def _stack(arrays) -> np.ndarray:
    """The blocks' arrays stacked along a new first axis (one block: a view, no copy)."""
    arrays = list(arrays)
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def sufficient(prob: Problem, X: np.ndarray, theta: np.ndarray) -> Sufficient:
    """:class:`~nmfre.core.likelihood.Sufficient` summed over the blocks (the per-block ``Q x Q``
    algebra on stacked arrays: many blocks cost a few batched LAPACK calls, not a loop)."""
    ms = prob.moments(X, theta)
    db, V = np.linalg.eigh(_stack([m.XtX for m in ms]))
    s = np.einsum("bqa,bqr,bra->ba", V, _stack([m.WR for m in ms]), V)
    rss = scale = 0.0
    for m in ms:
        rss += m.rss
        scale += m.rss if m.rss_scale is None else m.rss_scale
    w = np.repeat(prob.stats.unit_weights, db.shape[1])
    return Sufficient(rss, s.ravel(), np.maximum(db, 0.0).ravel(), w, prob.stats.n_obs, scale)


def residual_sufficient(prob: Problem, parts: list[tuple[np.ndarray, np.ndarray, float]]) -> Sufficient:
    """:class:`~nmfre.core.likelihood.Sufficient` in the non-cancelling form (``perp``, ``t``)
    from each block's ``(d, t, perp)`` of :func:`nmfre.core.passes.residual_moments`."""
    d = np.concatenate([p[0] for p in parts])
    t = np.concatenate([p[1] for p in parts])
    perp = float(sum(p[2] for p in parts))
    w = np.repeat(prob.stats.unit_weights, prob.rank)
    return Sufficient(perp + float(t.sum()), d * t, d, w, prob.stats.n_obs, None, perp, t)


def rounding_size(prob: Problem, X: np.ndarray, theta: np.ndarray, lam: float) -> float:
    """The size, term by term, of what the quadratic form ``rss - sum s / (d + lambda)`` of
    :func:`sufficient` is computed from: its rounding error is about ``eps`` times this.

    Per block: the terms of ``||R||^2`` (dense form: ``||R||^2`` itself, formed from residuals;
    gram and sparse form: ``||Y||^2 + 2 sum |Theta o X'YA'| + sum (|Theta| |AA'| |Theta|') o
    |X'X|``, which the ``Q x Q`` products' own cancellation, where components cancel, makes far
    larger than ``rss_scale``, the three sums' sizes), plus ``sum_q |v_q|' S |v_q| / (d_q +
    lambda)`` for the terms ``S`` of ``X_O'R R'X_O`` (dense: ``a a'`` with ``a`` the square roots
    of its diagonal; gram and sparse: ``a a' + 2 |X'YA'| |Theta|' X'X + X'X (|Theta| |AA'|
    |Theta|') X'X`` with ``a = X' sqrt(diag YY')``, bounds by Cauchy-Schwarz), which ``1 / (d +
    lambda)`` amplifies where lambda and the smallest ``d`` are small. Measured: the nll's error
    0.36 to 2.4 times ``eps`` times the ``||R||^2`` part alone over ``2 sigma2`` on twelve
    sign-free fits whose components cancel, 0.02 to 0.12 times the whole on fits with strong
    random effects (benchmarks/results/scale.md, thirty-ninth round).
    """
    total = 0.0
    At = np.abs(theta)
    for b, m in zip(prob.stats.blocks, prob.moments(X, theta), strict=True):
        d, V = np.linalg.eigh(m.XtX)
        Va = np.abs(V)
        if b.form == "dense":
            size = m.rss
            a = np.sqrt(np.maximum(np.diag(m.WR), 0.0))
            S = np.outer(a, a)
        else:
            Xb = m.Xb
            C1a = At @ np.abs(b.AA) @ At.T
            size = b.trG + 2.0 * float(np.sum(np.abs(theta * m.XtYA))) + float(np.sum(C1a * np.abs(m.XtX)))
            a = np.abs(Xb).T @ np.sqrt(np.maximum(b.feature_squares(), 0.0))
            XtXa = np.abs(m.XtX)
            T = np.abs(m.XtYA) @ At.T @ XtXa
            S = np.outer(a, a) + T + T.T + XtXa @ C1a @ XtXa
        total += size + float(np.sum(np.einsum("qa,qr,ra->a", Va, S, Va) / (np.maximum(d, 0.0) + lam)))
    return total


# ----------------------------------------------------------------------------- exact blocks
def theta_step(prob: Problem, X: np.ndarray, lam: float) -> np.ndarray:
    """Exact minimiser of the marginal nll over Theta for fixed ``X`` and ``lambda``.

    Complete data, free Theta: GLS equals OLS, ``(X'X)^-1 X'Y A'(AA')^-1``. Otherwise the GLS
    normal equations ``sum_b (A_bA_b' (x) M_b^-1 X_b'X_b) vec Theta = sum_b vec(M_b^-1 X_b'Y_bA_b')``;
    non-negative Theta by NNLS in that metric.
    """
    Q, K = prob.rank, prob.K
    if prob.stats.complete and not prob.nonneg:
        b = prob.stats.blocks[0]
        XtX = X.T @ X
        XtYAt = X.T @ b.YA
        try:
            return np.linalg.solve(XtX, XtYAt) @ prob.AAt_inv
        except np.linalg.LinAlgError:
            return np.linalg.lstsq(XtX, XtYAt, rcond=None)[0] @ prob.AAt_inv
    blocks = prob.stats.blocks
    Xbs = [b.take(X) for b in blocks]
    XtX = _stack([Xb.T @ Xb for Xb in Xbs])
    M = XtX + lam * np.eye(Q)
    G = np.linalg.solve(M, XtX)
    G = 0.5 * (G + G.transpose(0, 2, 1))
    AA = _stack([b.AA for b in blocks])
    # sum_b kron(AA_b, G_b), as [k, q, l, r]
    H = (AA[:, :, None, :, None] * G[:, None, :, None, :]).sum(axis=0).reshape(Q * K, Q * K)
    XtYA = _stack([Xb.T @ b.YA for Xb, b in zip(Xbs, blocks, strict=True)])
    g = np.linalg.solve(M, XtYA).sum(axis=0).reshape(-1, order="F")
    free = np.linalg.lstsq(H, g, rcond=None)[0]
    if not prob.nonneg or np.all(free >= 0):
        return free.reshape(Q, K, order="F")
    ridge = 1e-12 * np.trace(H) / H.shape[0]
    L = np.linalg.cholesky(H + ridge * np.eye(H.shape[0]))
    sol = nnls(L.T, np.linalg.solve(L, g), maxiter=50 * H.shape[0])[0]
    return sol.reshape(Q, K, order="F")


def profile(prob: Problem, X: np.ndarray, theta: np.ndarray, lam_current: float | None,
            suff: Sufficient | None = None):
    """Exact variance step: returns ``(sigma2, lam, nll, suff, cap_active)`` (on ``suff`` where
    given, else on :func:`sufficient` at ``(X, Theta)``)."""
    suff = sufficient(prob, X, theta) if suff is None else suff
    lo = prob.lam_floor(suff)
    if prob.mode == "fixed":
        lam = max(prob.sigma2 / prob.tau2, lo)
        s2 = prob.sigma2
    else:
        lam = optimize_lambda(suff, prob.mode, lo, lam_current, prob.sigma2, prob.tau2)
        s2, _ = variances_at(suff, lam, prob.mode, prob.sigma2, prob.tau2)
    active = prob.cap is not None and lam <= lo * (1 + 1e-9)
    return s2, lam, nll(suff, s2, lam), suff, active


@dataclass(frozen=True)
class Expectations:
    """E-step quantities of one block: ``Minv = (X_O'X_O + lambda I)^-1``, ``BB = E[B]E[B]'``,
    ``BA = E[B] A'``, ``C = Y E[B]'`` with ``B = Theta A + U``."""

    Minv: np.ndarray
    BB: np.ndarray
    BA: np.ndarray
    C: np.ndarray


def expectations(prob: Problem, X: np.ndarray, theta: np.ndarray, lam: float) -> list[Expectations]:
    """:class:`Expectations` of every block (no pass over the data: moments only)."""
    Q = prob.rank
    blocks, ms = prob.stats.blocks, prob.moments(X, theta)
    XtX = _stack([m.XtX for m in ms])
    AA = _stack([b.AA for b in blocks])
    Minv = np.linalg.inv(XtX + lam * np.eye(Q))
    UA = Minv @ (_stack([m.XtYA for m in ms]) - XtX @ theta @ AA)
    UU = Minv @ _stack([m.WR for m in ms]) @ Minv
    BB = _stack([m.C1 for m in ms]) + theta @ UA.transpose(0, 2, 1) + UA @ theta.T + UU
    BB = 0.5 * (BB + BB.transpose(0, 2, 1))
    BA = theta @ AA + UA
    return [Expectations(Minv[i], BB[i], BA[i], b.YA @ theta.T + m.YRtX @ Minv[i])
            for i, (b, m) in enumerate(zip(blocks, ms, strict=True))]


def x_step(prob: Problem, st: State, sweeps: int = 10) -> np.ndarray:
    """Block minimisation of the expected complete-data loss over simplex columns.

    Minimises ``sum_n ||y_O - X_O b_n||^2 + tr(X_O S_n X_O')`` with ``b_n = E[Theta a_n + u_n]``
    and ``S_n = sigma2 M_O^-1`` by per-column HALS with exact (weighted, for missing data)
    Euclidean projections onto the simplex; each column update is an exact block minimiser.
    """
    X = st.X.copy()
    P, Q = X.shape
    ex = expectations(prob, st.X, st.theta, st.lam)
    if prob.stats.complete:
        e = ex[0]
        G = e.BB + prob.N * st.sigma2 * e.Minv
        C = e.C
        rowG = None
    else:
        rowG = np.zeros((P, Q, Q))
        C = np.zeros((P, Q))
        for b, e in zip(prob.stats.blocks, ex, strict=True):
            rowG[b.rows] += e.BB + b.N * st.sigma2 * e.Minv
            C[b.rows] += e.C
    if rowG is None:  # the columns the sweeps read, taken out once
        cols = [(q, G[:, q].copy(), C[:, q].copy(), G[q, q]) for q in range(Q) if G[q, q] > 0]
    for _ in range(sweeps):
        X_old = X.copy()
        if rowG is None:
            for q, g, c, gqq in cols:
                X[:, q] = project_vector(X[:, q] + (c - X @ g) / gqq)
        else:
            for q in range(Q):
                w = rowG[:, q, q]
                if np.any(w <= 0):
                    continue
                v = X[:, q] + (C[:, q] - np.einsum("pr,pr->p", X, rowG[:, :, q])) / w
                X[:, q] = weighted_project_simplex(v, w)
        if Q == 1 or np.max(np.abs(X - X_old)) <= 1e-12:
            break
    return X


def ecme(prob: Problem, st: State) -> State:
    """One ECME sweep (X, then Theta, then the variances), never increasing the nll.

    When the df cap moves with X and the full step would increase the nll, the step in
    X is halved until it does not (the current point is always feasible).
    """
    X_new = x_step(prob, st)
    step = X_new - st.X
    t = 1.0
    for _ in range(40):
        cand = _varpro(prob, st, st.X + t * step)
        if cand.nll <= st.nll:
            return cand
        t *= 0.5
    return st


def initial_state(prob: Problem, X0: np.ndarray, theta0: np.ndarray | None) -> State:
    """Profile the variances (and Theta when not given) at a starting basis."""
    lam0 = max(prob.sigma2 / prob.tau2, LAMBDA_MIN)
    theta = theta_step(prob, X0, lam0) if theta0 is None else np.array(theta0, dtype=float)
    if prob.nonneg:
        theta = np.maximum(theta, 0.0)
    s2, lam, val, _, active = profile(prob, X0, theta, lam0)
    if theta0 is None and prob.nonneg:
        theta = theta_step(prob, X0, lam)
        s2, lam, val, _, active = profile(prob, X0, theta, lam)
    return State(X0, theta, s2, lam, val, active)


# ----------------------------------------------------------------------------- scoring
def gradient(prob: Problem, st: State):
    """Gradient of the nll in X (``P x Q``) and Theta (``Q x K``), and the E-step quantities.

    When the df cap binds, lambda is the cap's root ``lambda(X)`` and the X gradient
    includes ``(d nll / d lambda) (d lambda / d X)`` (implicit function theorem on
    ``df_U(lambda, X) = cap``).
    """
    X, theta, s2 = st.X, st.theta, st.sigma2
    gX = np.zeros_like(X)
    gT = np.zeros_like(theta)
    ex = expectations(prob, X, theta, st.lam)
    ddf = np.zeros_like(X)  # d df_U / d X
    ddf_lam = 0.0  # d df_U / d lambda
    for b, m, e in zip(prob.stats.blocks, prob.moments(X, theta), ex, strict=True):
        g = b.N * m.Xb @ e.Minv - (e.C - m.Xb @ e.BB) / s2
        dd = 2.0 * st.lam * b.N * m.Xb @ e.Minv @ e.Minv
        if b.rows is None:
            gX += g
            ddf += dd
        else:
            gX[b.rows] += g
            ddf[b.rows] += dd
        ddf_lam -= b.N * float(np.trace(e.Minv @ e.Minv @ m.XtX))
        gT -= (m.XtYA - m.XtX @ e.BA) / s2
    if st.cap_active and ddf_lam < 0:
        gX += _dnll_dlam(prob, st) * (-ddf / ddf_lam)
    return gX, gT, ex


def _dnll_dlam(prob: Problem, st: State) -> float:
    """Derivative of the profile nll in lambda at fixed ``(X, Theta)`` (free variance profiled)."""
    suff = sufficient(prob, st.X, st.theta)
    lam, d = st.lam, suff.d
    q = float(suff.quad(lam))
    dq = float(np.sum(suff.s / (d + lam) ** 2))
    dL = -float(np.sum(suff.w * d / (lam * (lam + d))))
    n = suff.n_obs
    if prob.mode == "free":
        return 0.5 * (n * dq / max(q, 1e-300) + dL)
    if prob.mode == "tau2":
        t2 = prob.tau2
        return 0.5 * (n / lam + dL + dq / (lam * t2) - q / (lam**2 * t2))
    return 0.5 * (dL + dq / st.sigma2)


def variance_directions(prob: Problem, st: State) -> list[str]:
    """The variance coordinates that enter the Newton system (not when the cap binds)."""
    if st.cap_active:
        return []
    out = []
    if prob.mode in ("free", "tau2"):
        out.append("sigma2")
    if prob.mode in ("free", "sigma2"):
        out.append("tau2")
    return out


def fisher_system(prob: Problem, st: State):
    """Dense expected information ``F`` and gradient ``g`` of the nll in
    ``(vec_row X, vec_row Theta[, variances])``, summed over the blocks, and the number of
    variance coordinates.

    Per block: a mean part ``S (x) Theta A A' Theta'`` and a covariance part
    ``N tau2^2 (S (x) X'SX + T)`` with ``S = Sigma_O^-1``; the free variances enter through
    ``N/2 tr(S dSigma S dSigma)`` (:mod:`nmfre.core.newton` has the formulas).
    """
    gX, gT, ex = gradient(prob, st)
    parts = newton.block_parts(prob, st, ex)
    names = variance_directions(prob, st)
    F, gV = newton.dense_information(prob, st, parts, names)
    return F, np.concatenate([gX.ravel(), gT.ravel(), gV]), gT, len(names)


def _epsilon_active(X: np.ndarray, gX: np.ndarray, FX: np.ndarray):
    """``(dev, near, reach)``: the reduced gradient of X (the gradient minus each column's
    X-weighted mean); the positive entries within ``eps`` of 0 that it pushes down (``dev > 0``:
    Bertsekas' epsilon-active set, ``eps`` the size of a projected scaled-gradient step, at most
    :data:`EPSILON_MAX`); and those of them whose diagonal Newton step ``-dev / F`` reaches 0."""
    dev = gX - np.sum(X * gX, axis=0)
    F = np.maximum(FX, 1e-300)
    w = float(np.max(np.abs(X - project_simplex(X - dev / F))))
    near = (X > 0) & (X <= min(EPSILON_MAX, w)) & (dev > 0)
    return dev, near, near & (dev >= F * X)


def _free_mask(prob: Problem, st: State, gX: np.ndarray, gT: np.ndarray, nV: int, FX: np.ndarray,
               hold: np.ndarray | None = None, release: bool = False, active=None) -> np.ndarray:
    """Coordinates the Newton step moves: entries of X away from their bound, Theta off its
    bound (non-negative case), the variances.

    An entry of X is held when it is 0, or when it is within ``eps`` of 0 and the reduced
    gradient pushes it down (Bertsekas' epsilon-active set, :func:`_epsilon_active`): the
    quadratic model would otherwise send it far below 0, and the projection would undo the
    step. With ``release``, of the latter only those whose diagonal Newton step reaches 0 (see
    :data:`RELEASE_FRACTION`). ``hold``: further entries of X to hold (``P x Q`` booleans; see
    :func:`crossing`). ``active``: :func:`_epsilon_active`'s result at ``(X, gX, FX)`` where
    already computed.
    """
    X = st.X
    _, near, reach = _epsilon_active(X, gX, FX) if active is None else active
    held = (X <= 0) | (reach if release else near)
    if hold is not None:
        held = held | hold
    tfree = ~((st.theta <= 0) & (gT > 0)).ravel() if prob.nonneg else np.ones(prob.rank * prob.K, bool)
    return np.concatenate([~held.ravel(), tfree, np.ones(nV, bool)])


def _releasable(prob: Problem, st: State, active, gT: np.ndarray, FX: np.ndarray, FT: np.ndarray,
                hold: np.ndarray | None) -> tuple[float, float] | None:
    """``(kkt, gain)``: the KKT decrement at ``st`` (:func:`kkt_decrement`) and what the entries of
    X that the release of :data:`RELEASE_FRACTION` would free (held by the epsilon-active rule,
    not by ``hold``, their diagonal Newton step short of 0) gain in its separable model, both from
    the direction's own gradient and information diagonal (``active``: :func:`_epsilon_active`'s
    result there); None where there are no such entries, and for sign-free Theta."""
    if not prob.nonneg:
        return None
    dev, near, reach = active
    freed = near & ~reach
    if hold is not None:
        freed &= ~hold
    if not freed.any():
        return None
    return _kkt_gain(prob, st, dev, gT, FX, FT), _separable_gain(dev[freed], FX[freed], st.X[freed])


@dataclass(frozen=True)
class Direction:
    """A projected Newton direction and ``decrement = -g'd / 2``, the nll decrease its
    quadratic model predicts (the Fisher-metric size of the gradient on the free set; for a
    direction re-solved by :func:`bound_direction`, the model's decrease ``-m(d)``)."""

    dX: np.ndarray
    dT: np.ndarray
    decrement: float
    capped: bool = False  # its conjugate gradients stopped at their iteration limit
    observed: bool = False  # a Newton direction of the observed Hessian (newton_direction)
    # the face (free coordinates) a scoring direction was computed on (bound_direction reuses it)
    free: np.ndarray | None = field(default=None, repr=False)
    # the entries of X that bound_direction sent to their bound (they cross no more: crossing
    # counts them, so that a failed or poor step still has the next direction hold them)
    bounded: np.ndarray | None = field(default=None, repr=False)
    # (KKT decrement, what the entries the release of RELEASE_FRACTION would free gain in its
    # separable model) at the state (_releasable; None where there are none: see step_direction)
    release: tuple[float, float] | None = None


def scoring_direction(prob: Problem, st: State, hold: np.ndarray | None = None,
                      release: bool = False) -> Direction | None:
    """The projected Fisher-scoring direction, or None.

    Dense assembly while ``PQ + QK <= DENSE_MAX``; otherwise (complete data) the
    information is kept in its Kronecker and low-rank parts and the KKT system is solved
    by Woodbury's identity (:func:`nmfre.core.newton.structured_kkt`), never forming a
    ``PQ x PQ`` matrix. Several blocks of missing data: dense up to ``DENSE_MAX_BLOCKS``,
    above that None (ECME and SQUAREM steps only). ``hold`` and ``release``: the face
    (:func:`_free_mask`).
    """
    P, Q, K = prob.P, prob.rank, prob.K
    n = P * Q + Q * K
    dense = n <= DENSE_MAX or not prob.stats.complete
    if not prob.stats.complete and n > DENSE_MAX_BLOCKS:
        return None
    gX, gT, ex = gradient(prob, st)
    parts = newton.block_parts(prob, st, ex)
    names = variance_directions(prob, st)
    FX, FT = newton.information_diagonal(prob, st, parts)
    active = _epsilon_active(st.X, gX, FX)
    free = _free_mask(prob, st, gX, gT, len(names), FX, hold, release, active)
    release = None if release else _releasable(prob, st, active, gT, FX, FT, hold)
    if dense:
        F, gV = newton.dense_information(prob, st, parts, names)
        delta = newton.dense_kkt(F, np.concatenate([gX.ravel(), gT.ravel(), gV]), free, P, Q, len(names))
    else:
        delta = newton.structured_kkt(prob, st, parts[0], names, gX, gT, free)
    if delta is None or not np.all(np.isfinite(delta)):
        return None
    dX, dT = delta[: P * Q].reshape(P, Q), delta[P * Q:P * Q + Q * K].reshape(Q, K)
    return Direction(dX, dT, -0.5 * float(np.sum(gX * dX) + np.sum(gT * dT)), free=free, release=release)


def hessian(prob: Problem, model: trust.FisherModel, st: State) -> trust.Hessian:
    """Products with the observed Hessian at ``st`` (complete data), reusing the data products
    that the state's cached moments hold (gram form: ``G X``; sparse form: ``G X = Y R'X +
    YA' Theta' X'X`` from ``Y R'X``; dense form: ``Y R'X``), so that building it takes no pass
    over the data in gram and sparse form."""
    m = prob.moments(st.X, st.theta)[0]
    form = prob.data.form
    if form == "sparse":
        DX, yj = m.YRtX + prob.data.YA @ (st.theta.T @ m.XtX), None
    else:
        DX, yj = m.DX, (m.YRtX if form == "dense" else None)
    return trust.Hessian(prob.data, model, st.X, st.theta, st.sigma2, st.sigma2 / st.lam, DX=DX, YJ=yj)


def newton_direction(prob: Problem, st: State, hold: np.ndarray | None = None,
                     cg_max: int | None = None, release: bool = False) -> Direction | None:
    """The projected Newton direction with the observed Hessian (complete data), or None.

    The face is the scoring direction's (:func:`_free_mask`: X entries off their bound, free
    Theta, the variances; ``hold``, ``release``) under the unit-column-sum constraints; on it,
    conjugate gradients on ``g'd + d'H d / 2`` with the observed Hessian ``H`` (matrix-free,
    :func:`nmfre.core.trust.hessian_product`: one data product each in gram form, two in dense
    and sparse form), preconditioned by the
    face's expected information (an exact KKT solve: every iterate keeps the constraints, and
    the first is the Fisher direction scaled to the Hessian's minimum along it), to relative
    residual :data:`NEWTON_RTOL` or ``cg_max`` iterations (default :data:`NEWTON_CG_MAX`;
    :func:`nmfre.core.trust.face_cg`; ``Direction.capped`` says it stopped there). None when
    the first CG direction has non-positive curvature (away from a minimum) or there is no
    structured solve.
    """
    if prob.data is None:
        return None
    model = fisher_model(prob, st)
    if model is None:
        return None
    gX, gT, _ = model.split(model.g)
    FX, FT = newton.information_diagonal(prob, st, model.parts)
    active = _epsilon_active(st.X, gX, FX)
    free = _free_mask(prob, st, gX, gT, model.nV, FX, hold, release, active)
    release = None if release else _releasable(prob, st, active, gT, FX, FT, hold)
    n = model.g.size
    hess = hessian(prob, model, st)
    res = trust.face_cg(hess, model, free, np.zeros(n), np.zeros(n), rtol=NEWTON_RTOL,
                        max_iter=NEWTON_CG_MAX if cg_max is None else cg_max)
    if res is None or not np.all(np.isfinite(res[0])):
        return None
    dX, dT, _ = model.split(res[0])
    return Direction(dX.copy(), dT.copy(), -0.5 * float(np.sum(gX * dX) + np.sum(gT * dT)), res[3], observed=True,
                     release=release)


def step_direction(prob: Problem, st: State, observed: bool = False,
                   hold: np.ndarray | None = None, cg_max: int | None = None) -> Direction | None:
    """The direction of :func:`scoring_step`: with ``observed`` (complete data)
    :func:`newton_direction` (with ``cg_max``), else (or when it gives none)
    :func:`scoring_direction`; ``hold``: further entries of X held at their value
    (:func:`_free_mask`). The scoring direction is then taken to the bounds it crosses
    (:func:`bound_direction`, while :data:`BOUND_DIRECTION`). Where it predicts less than
    :data:`RELEASE_FRACTION` times the KKT decrement and less than the entries of X a release
    would free gain in its separable model (``Direction.release``; non-negative Theta), the
    direction of the same kind on the released face instead, if it predicts a decrease, and at
    least twice as much."""
    d = _direction(prob, st, observed, hold, cg_max, False)
    if d is None or d.release is None or RELEASE_FRACTION <= 0:
        return d
    kkt, gain = d.release
    if d.decrement < min(RELEASE_FRACTION * kkt, gain):
        freed = _direction(prob, st, observed, hold, cg_max, True)
        if (freed is not None and freed.observed == d.observed and freed.decrement > 0
                and freed.decrement >= 2.0 * d.decrement):
            return freed
    return d


def _direction(prob: Problem, st: State, observed: bool, hold: np.ndarray | None, cg_max: int | None,
               release: bool) -> Direction | None:
    """:func:`step_direction`'s direction on the face of ``hold`` and ``release``."""
    if observed and prob.data is not None:
        d = newton_direction(prob, st, hold, cg_max, release)
        if d is not None:
            return d
    d = scoring_direction(prob, st, hold, release)
    return bound_direction(prob, st, d) if BOUND_DIRECTION and d is not None else d


def bound_direction(prob: Problem, st: State, direction: Direction) -> Direction:
    """The scoring ``direction`` (of :func:`scoring_direction`, on its face ``free``) re-solved
    with the entries of X it sends below 0 within its first trial step (:func:`crossing`, the
    set ``C``) sent to their bound: ``d_C = -x_C``, the column sums kept by spreading
    ``sum x_C`` over the column's other free entries in proportion to X (the displacement
    ``v``), and the other free coordinates re-solved on the face without ``C`` (an active-set
    step): the minimum of the expected-information model
    ``g'd + d'F d / 2`` over that affine face, by one KKT solve with gradient ``g + F v``. The
    decrement is the model's decrease ``-m(d)``; ``Direction.bounded`` is ``C``. Returns
    ``direction`` itself when nothing crosses, for missing data, for a direction without its
    face, when a column would have no free entry left, or when the re-solve fails or predicts
    no decrease.

    Why: the directions move the free entries of X as if they had no bound; near the
    optimum's face many small entries still hold mass, the first trial sends some of them
    below 0, the projection bends the path and the halvings accept a step that achieves a
    small part of its prediction, so the face is found a few entries at a time. The named
    fault: issue 17's design (the iteration benchmark's blocks generator, 2000 x 20000, Q =
    10, seed 4, c = 0.3) took 139 iterations, with 3-4 trial points a step; with the
    re-solve it converges in 54 (benchmarks/results/scale.md, twenty-sixth round). The
    observed Hessian's directions (:func:`newton_direction`, taken where the data do not
    follow the model) are not re-solved: re-solving them too (by the face's conjugate
    gradients from ``v``) cost more than it saved there (the counts generator's large rung:
    506 -> 697 iterations on five data sets).
    """
    cross = crossing(st.X, direction)
    if cross is None or prob.data is None or direction.free is None:
        return direction
    model = fisher_model(prob, st)
    if model is None:
        return direction
    P, Q = prob.P, prob.rank
    # the variances are free in every face; the model may have fewer of them (at their bounds)
    free = np.concatenate([direction.free[: P * Q + Q * prob.K], np.ones(model.nV, bool)])
    X = st.X
    rest = free[: P * Q].reshape(P, Q) & ~cross
    need = np.where(cross, X, 0.0).sum(axis=0)
    mass = np.where(rest, X, 0.0).sum(axis=0)
    if np.any((need > 0) & ~(mass > 0)):
        return direction
    vX = np.where(cross, -X, np.where(rest, X * (need / np.where(mass > 0, mass, 1.0)), 0.0))
    v = np.concatenate([vX.ravel(), np.zeros(model.g.size - P * Q)])
    face = free.copy()
    face[: P * Q] &= ~cross.ravel()
    try:
        d = v + model.factor(face).solve(model.g + model.product(v))
    except np.linalg.LinAlgError:
        return direction
    decrement = -model.value(d)
    if not (np.all(np.isfinite(d)) and decrement > 0):
        return direction
    dX, dT, _ = model.split(d)
    return Direction(dX.copy(), dT.copy(), decrement, bounded=cross, release=direction.release)


def crossing(X: np.ndarray, direction: Direction | None) -> np.ndarray | None:
    """Entries of X that ``direction`` sends below 0 within the first trial step of
    :func:`scoring_step` (``X > 0``, ``X + t dX < 0``), and those a direction re-solved by
    :func:`bound_direction` sends to exactly 0 instead (``Direction.bounded``), or None when
    there are none.

    After a scoring step that found no decrease, the next direction holds them
    (:func:`fit_ml`): near a bound the observed-Hessian direction can drive a tiny entry
    (1e-9) down against its own reduced gradient, the projection then bends the path, and
    the same direction, recomputed at the same state, fails again at every iteration
    (measured: a 100 x 2000, Q = 5 fit of the iteration benchmark's counts generator ran
    to ``max_iter`` = 5000 this way; with the entry held the step achieved 93% of its
    predicted decrease).
    """
    if direction is None:
        return None
    cross = (X > 0) & (X + _first_trial(direction.dX) * direction.dX < 0)
    if direction.bounded is not None:  # what bound_direction sent to 0 (see Direction)
        cross |= direction.bounded
    return cross if cross.any() else None


def _first_trial(dX: np.ndarray) -> float:
    """The first step length :func:`scoring_step` tries along ``dX``: 1, or less so that no
    entry of X moves by more than 0.25 (a trust radius in simplex units)."""
    big = np.max(np.abs(dX))
    return min(1.0, 0.25 / big) if big > 0 else 1.0


def scoring_step(prob: Problem, st: State, direction: Direction | None = None) -> State | None:
    """One projected Fisher-scoring step in (X, Theta, sigma2, tau2).

    The Newton system (:func:`scoring_direction`) is solved on the positive entries of X
    (zeros stay, an ECME sweep can release them) and the free entries of Theta under the
    unit-column-sum constraints (KKT); the step in X, limited to 0.25 in any entry, is
    projected back onto the simplex and halved until the nll, with the variances re-profiled
    exactly, strictly decreases. Returns None when it does not.

    Theta at a trial basis: sign-free Theta is re-solved exactly there (GLS; variable
    projection, :func:`_varpro`). Non-negative Theta moves along the direction (clipped at 0);
    where that first trial point of a scoring (Fisher) direction fails to decrease the nll,
    Theta is re-solved at the same basis (NNLS in the GLS metric), and the halvings go on with
    whichever of the two was lower there. Why: the mean ``X Theta`` is bilinear, and moving
    both factors along a line leaves its curved valley. On issue 17's design at low noise (the
    iteration benchmark's blocks generator) the full steps raised the nll by thousands where
    the quadratic model predicted a decrease of hundreds, the accepted steps (t = 1/8 to 1/4)
    achieved 1-35% of their prediction, and a 100 x 2000, Q = 5 fit took 41 iterations; with
    Theta re-solved the steps accept t = 1 or 1/2 and it converges in 15. Re-solving at every
    trial instead cost more than it saved where Theta has many zeros (the counts fault of
    :data:`CRAWL_PATIENCE` took 381 scoring iterations instead of 67), and so did re-solving
    after the observed Hessian's Newton directions (the counts generator's large rung: 524 ->
    569 iterations on five data sets; benchmarks/results/scale.md, twenty-seventh round).
    """
    direction = scoring_direction(prob, st) if direction is None else direction
    if direction is None:
        return None
    dX, dT = direction.dX, direction.dT
    t = _first_trial(dX)
    resolve = not prob.nonneg
    for trial in range(40):
        Xn = project_simplex(st.X + t * dX)
        cand = _varpro(prob, st, Xn) if resolve else _at(prob, st, Xn, np.maximum(st.theta + t * dT, 0.0))
        if cand.nll < st.nll:
            return cand
        if trial == 0 and not resolve and not direction.observed:  # Theta re-solved there
            alt = _varpro(prob, st, Xn)
            if alt.nll < st.nll:
                return alt
            resolve = alt.nll < cand.nll
        t *= 0.5
    return None


def bound_step(prob: Problem, st: State) -> State | None:
    """The entries of X that the separable model of :func:`kkt_decrement` takes to their bound
    (``x > 0`` with ``dev >= F x``: the diagonal Newton step ``-dev / F`` reaches 0), set to 0,
    each column rescaled to sum 1 and Theta and the variances re-solved; None when there are
    none or the nll does not decrease.

    The scoring directions hold an entry of X within ``eps`` of 0 whose reduced gradient pushes
    it down (Bertsekas' epsilon-active set, :func:`_free_mask`), and the ECME sweeps move it only
    at EM's linear rate. :func:`fit_ml` takes this step once the scoring model has nothing left
    on its face (its predicted decrease within the tolerance) while the KKT decrement is not.
    The named fault: a 2000 x 20000, Q = 10 fit (zero-inflated negative-binomial counts,
    benchmarks/results/scale.md, twenty-fifth round) stopped "stalled" after 281 iterations with
    the KKT decrement at 1.85 times the tolerance, all but 4e-6 of it in one entry of 4.6e-5.
    """
    X = st.X
    dev, _, FX, _ = _separable_model(prob, st)
    zero = (X > 0) & (dev >= np.maximum(FX, 1e-300) * X)
    if not zero.any():
        return None
    cand = _varpro(prob, st, _moved(X, np.where(zero, -X, 0.0), 1.0))
    return cand if cand.nll < st.nll else None


def geometric_tail(trace) -> float:
    """The nll decrease still to come if the decreases go on shrinking at the rate they have
    shrunk lately: for each window ``m`` of :data:`TAIL_WINDOWS` (fewer while the trace is
    short), with ``S1`` the sum of the last ``m`` decreases and ``S0`` that of the ``m`` before,
    the rate per iteration is ``r = (S1 / S0)^(1/m)`` (at most :data:`TAIL_RATE_MAX`) and the
    tail ``(S1 / m) r / (1 - r)``; the largest over the windows. Sums over windows, not single
    ratios, so that decreases that alternate between large and small (SQUAREM cycles do) give
    their rate, not the rate of one of their phases; a pattern's period must divide a window
    for the sums to hold whole periods, hence several windows (patterns of period 4 or more
    that end on their small phases are still under-estimated). Where each of the last
    ``max(TAIL_WINDOWS)`` decreases is below the one before it and their single ratios are
    steady (within 4 times of each other), or each of the last four decreases is at most a tenth
    of the one before, the tail is at most ``d r' / (1 - r')``, with ``d`` the
    last decrease (not 0) and ``r'`` the largest of those ratios: exact for geometric
    decreases, and for superlinear convergence far below the windows' rate, which still holds
    the large decreases of a few iterations back and would ask a quadratically converging fit
    for further iterations of rounding's size. With fewer than two decreases, the last one."""
    big = max(TAIL_WINDOWS)
    d = np.maximum(-np.diff(np.asarray(trace[-(2 * big + 1):], dtype=float)), 0.0)
    if d.size == 0:
        return 0.0
    if d.size < 2:
        return float(d[-1])
    tail = 0.0
    for w in TAIL_WINDOWS:
        m = min(w, d.size // 2)
        recent, before = float(d[-m:].sum()), float(d[-2 * m:-m].sum())
        if recent > 0.0:
            r = TAIL_RATE_MAX if before <= 0.0 else min((recent / before) ** (1.0 / m), TAIL_RATE_MAX)
            tail = max(tail, recent / m * r / (1.0 - r))
    m = min(big, d.size // 2)
    last, prev = d[-m:], d[-m - 1:-1]
    if last[-1] > 0.0 and np.all(last < prev):  # every decrease below the one before it
        q = last / prev
        # a steady rate (these single ratios within 4 times of each other) or a fast one (each
        # of the last four decreases at most a tenth of the one before: quadratic convergence,
        # whose last ratios are not steady where a decrease meets the nll's rounding); not a
        # steady run ended by one anomalously small decrease (8, 4, 2, 1, 1e-3), whose cap
        # would be that decrease (with two ratios the two look alike)
        d4 = d[-4:]
        qa = d4[1:] / np.where(d4[:-1] > 0.0, d4[:-1], np.inf)
        fast = qa.size == 3 and bool(np.all((qa > 0.0) & (qa <= 0.1)))
        if np.max(q) <= 4.0 * np.min(q) or fast:
            rs = min(float(np.max(q)), TAIL_RATE_MAX)
            tail = min(tail, float(last[-1]) * rs / (1.0 - rs))
    return tail


def kkt_decrement(prob: Problem, st: State) -> float:
    """Predicted nll decrease still available at ``st`` (a stationarity measure).

    For each coordinate, the decrease of the separable quadratic model
    ``(g - mu) s + F_ii s^2 / 2`` at its minimiser ``s`` clipped to the feasible range
    (``x + s >= 0``), with ``g`` the gradient, ``mu`` the multiplier of its constraint (X:
    the column's X-weighted mean gradient, the simplex multiplier at a KKT point;
    Theta >= 0: 0) and ``F_ii`` the diagonal of the expected information. An entry at (or
    within rounding of) its bound can only contribute what moving it to the bound gains.
    Zero exactly at a KKT point of the profile nll.
    """
    return _kkt_gain(prob, st, *_separable_model(prob, st))


def _kkt_gain(prob: Problem, st: State, dev: np.ndarray, gT: np.ndarray, FX: np.ndarray, FT: np.ndarray) -> float:
    """:func:`kkt_decrement` from the separable model's pieces (:func:`_separable_model`)."""
    out = _separable_gain(dev, FX, st.X)
    if prob.nonneg:
        out += _separable_gain(gT, FT, st.theta)
    return out


def _separable_gain(dev: np.ndarray, F: np.ndarray, x: np.ndarray) -> float:
    """The decrease of ``dev s + F s^2 / 2`` summed over coordinates at each one's minimiser
    ``s`` clipped to ``x + s >= 0``."""
    F = np.maximum(F, 1e-300)
    step = np.maximum(-dev / F, -x)
    return float(np.sum(-(dev * step + 0.5 * F * step**2)))


def _separable_model(prob: Problem, st: State):
    """What the separable model of :func:`kkt_decrement` and :func:`bound_step` needs:
    ``(dev, gT, FX, FT)``, the reduced gradient of X (the gradient minus each column's
    X-weighted mean, the simplex multiplier at a KKT point), the gradient of Theta and the
    diagonals of the expected information in X and Theta."""
    gX, gT, ex = gradient(prob, st)
    FX, FT = newton.information_diagonal(prob, st, newton.block_parts(prob, st, ex))
    return gX - np.sum(st.X * gX, axis=0), gT, FX, FT


# ----------------------------------------------------------------------------- second order
def fisher_model(prob: Problem, st: State) -> trust.FisherModel | None:
    """The expected-information model of the nll at ``st`` (:class:`~nmfre.core.trust.FisherModel`):
    dense while ``PQ + QK <= DENSE_MAX`` (or for several blocks up to ``DENSE_MAX_BLOCKS``),
    matrix-free with the structured face solves above (complete data); None for several
    blocks above ``DENSE_MAX_BLOCKS``."""
    n = prob.P * prob.rank + prob.rank * prob.K
    if not prob.stats.complete and n > DENSE_MAX_BLOCKS:
        return None
    gX, gT, ex = gradient(prob, st)
    parts = newton.block_parts(prob, st, ex)
    # none at either end of lambda's range either, where the profile holds them on the bound
    bound = st.lam <= LAMBDA_MIN * (1 + 1e-6) or st.lam >= LAMBDA_MAX * (1 - 1e-6)
    names = [] if bound else variance_directions(prob, st)
    # the variances are profiled exactly at every state (zero gradient inside lambda's range;
    # at its ends the profile holds them on the bound): their gradient is left out, their
    # coupling with X and Theta kept
    gV = np.zeros(len(names))
    dense = n <= DENSE_MAX or not prob.stats.complete
    return trust.FisherModel(prob, st, parts, names, gX, gT, gV, dense)


def _flat_point(prob: Problem, st: State, nV: int) -> np.ndarray:
    return np.concatenate([st.X.ravel(), st.theta.ravel(), np.zeros(nV)])


def qp_direction(prob: Problem, st: State):
    """``(model, QP step)``: the bound-constrained Fisher-scoring step
    (:func:`nmfre.core.trust.bound_qp`) and its model, or ``(None, None)``."""
    model = fisher_model(prob, st)
    if model is None:
        return None, None
    qp = trust.bound_qp(model, _flat_point(prob, st, model.nV), prob.nonneg)
    if not np.all(np.isfinite(qp.d)):
        return model, None
    return model, qp


def _varpro(prob: Problem, st: State, X: np.ndarray) -> State:
    """The state at basis ``X`` with Theta and the variances re-solved exactly (variable
    projection: the step searches over X only)."""
    return _at(prob, st, X, theta_step(prob, X, st.lam))


def _at(prob: Problem, st: State, X: np.ndarray, theta: np.ndarray) -> State:
    """The state at ``(X, theta)`` with the variances profiled (from ``st``'s lambda)."""
    s2, lam, val, _, active = profile(prob, X, theta, st.lam)
    return State(X, theta, s2, lam, val, active)


def _moved(X: np.ndarray, dX: np.ndarray, t: float) -> np.ndarray:
    """``X + t dX`` clipped at 0 with unit column sums (exactly ``X + t dX`` for a feasible step)."""
    Xn = np.maximum(X + t * dX, 0.0)
    s = Xn.sum(axis=0)
    return Xn / np.where(s > 0, s, 1.0)


def second_order_step(prob: Problem, st: State, radius: float | None = None):
    """One second-order step in X with Theta and the variances re-solved exactly along it.

    The bound-constrained Fisher-scoring step (:func:`qp_direction`); with a trust
    ``radius`` (complete data) first the bound-constrained truncated Newton step from it with
    the observed Hessian within that radius (:func:`nmfre.core.trust.newton_step`),
    accepted at full length when it achieves at least :data:`NEWTON_ACCEPT` of its predicted decrease.
    Otherwise the Fisher step is halved until the nll decreases. Returns ``(state or None,
    info)`` with ``info``: ``kind`` (``"newton"``/``"fisher"``), ``t``, ``ratio`` (actual
    over predicted decrease), ``decrement`` (the Fisher model's predicted decrease) and, when
    a Newton step was tried, ``ratio_newton``, ``pred_newton`` (its model's predicted decrease)
    and ``boundary`` (it reached the radius).
    """
    model, qp = qp_direction(prob, st)
    if qp is None:
        return None, {"kind": None, "decrement": np.inf}
    info = {"decrement": qp.decrement}
    P, Q = prob.P, prob.rank
    if radius is not None and prob.data is not None and qp.decrement > 0:
        hess = hessian(prob, model, st)
        res = trust.newton_step(hess, model, _flat_point(prob, st, model.nV), prob.nonneg, qp, radius)
        if res is not None and res[1] > 0:
            dN, pred, boundary = res
            cand = _varpro(prob, st, _moved(st.X, dN[: P * Q].reshape(P, Q), 1.0))
            ratio = (st.nll - cand.nll) / pred
            info.update(ratio_newton=ratio, boundary=boundary, pred_newton=pred)
            if ratio >= NEWTON_ACCEPT:
                info.update(kind="newton", t=1.0, ratio=ratio)
                return cand, info
    dX = qp.d[: P * Q].reshape(P, Q)
    t = 1.0
    for _ in range(40):
        cand = _varpro(prob, st, _moved(st.X, dX, t))
        if cand.nll < st.nll:
            pred = t * qp.decrement if t == 1.0 else np.nan
            info.update(kind="fisher", t=t, ratio=(st.nll - cand.nll) / pred if pred > 0 else np.nan)
            return cand, info
        t *= 0.5
    info["kind"] = None
    return None, info


# ----------------------------------------------------------------------------- driver
def cancellation(X: np.ndarray, theta: np.ndarray) -> tuple[float, np.ndarray]:
    """How much of the components' terms survives in their sum, and the size of each term.

    Returns ``(ratio, sizes)``: ``ratio = ||X Theta||_F^2 / sum_q ||x_q theta_q||_F^2`` and
    ``sizes[q] = ||x_q theta_q||_F / ||X Theta||_F`` (``||x_q theta_q||_F = ||x_q|| ||theta_q||``).
    Invariant to rescaling a component (``x_q c``, ``theta_q / c``) and to relabelling; 1 for
    one component or orthogonal terms, at least 1 when the effects on the units are non-negative
    (``Theta A >= 0``; X is, so every cross term ``(x_i'x_j)(theta_i theta_j')`` is >= 0), near 0
    when terms much larger than the fit cancel in it. Two components give ``1 + c`` at equal sizes, ``c`` the index of
    :func:`degeneracy`; three or more can cancel while no pair's index is near -1. ``theta``
    as in :func:`degeneracy` (on orthonormal covariates).
    """
    n = np.linalg.norm(X, axis=0) * np.linalg.norm(theta, axis=1)
    fit = float(np.linalg.norm(X @ theta))
    total = float(n @ n)
    if total == 0.0:
        return 1.0, np.zeros_like(n)
    return fit * fit / total, n / max(fit, 1e-300 * np.sqrt(total))


def degenerating(X: np.ndarray, theta: np.ndarray) -> bool:
    """Whether a sign-free iterate is on a degenerate path: a pair of components at or below
    :data:`DEGENERATE_INDEX` (:func:`degeneracy`) or terms that cancel to
    :data:`CANCEL_RATIO` (:func:`cancellation`)."""
    return degeneracy(X, theta)[0] <= DEGENERATE_INDEX or cancellation(X, theta)[0] <= CANCEL_RATIO


def degeneracy(X: np.ndarray, theta: np.ndarray) -> tuple[float, int, int]:
    """The most negative ``cos(x_i, x_j) cos(theta_i, theta_j)`` over pairs of components,
    with the pair (``(1.0, -1, -1)`` for one component).

    ``theta`` holds the effects on orthonormal covariates
    (:func:`nmfre.core.covariates.orthonormal_effects`; a fit's iterates are on them), so that
    ``cos(theta_i, theta_j)`` is the cosine of the two components' effects on the units,
    whatever the coding of the covariates.

    Near -1: two basis columns almost coincide while their effects (rows of Theta) point in
    opposite directions, so ``x_i theta_i + x_j theta_j`` stays finite while both effects
    grow. This is the two-factor degeneracy of sign-free factor models (the congruence
    product of Krijnen & Kiers, 1993): the likelihood keeps rising toward a boundary
    where the two components merge, and no interior maximum is reached. Columns of X are
    non-negative, so the index is >= 0 whenever the effects on the units are (``Theta A >= 0``).
    """
    Q = X.shape[1]
    if Q < 2:
        return 1.0, -1, -1
    xn = X / np.maximum(np.linalg.norm(X, axis=0), 1e-300)
    tn = theta / np.maximum(np.linalg.norm(theta, axis=1, keepdims=True), 1e-300)
    C = (xn.T @ xn) * (tn @ tn.T)
    C[np.diag_indices(Q)] = np.inf
    i, j = np.unravel_index(int(np.argmin(C)), C.shape)
    return float(C[i, j]), int(min(i, j)), int(max(i, j))


def _threaded_sparse_blas(fit):
    """Run ``fit(prob, ...)`` with every BLAS pool at one thread where ``prob``'s sparse
    products run on threads of their own (:func:`nmfre.core.blas.blas_single_threaded`)."""

    @functools.wraps(fit)
    def wrapper(prob: Problem, *args, **kwargs):
        with blas_single_threaded(any(getattr(b.Y, "parallel", False) for b in prob.stats.blocks)):
            return fit(prob, *args, **kwargs)

    return wrapper


@_threaded_sparse_blas
@scipy_blas_single_threaded()
def fit_ml(prob: Problem, X0: np.ndarray, theta0: np.ndarray | None = None,
           max_iter: int = 5000, tol: float = 1e-10, second_order: bool | None = None) -> Solution:
    """Maximum-likelihood fit; every iteration does not increase the nll.

    An iteration is a projected Fisher-scoring step (:func:`scoring_step`) followed by one ECME
    sweep (for complete data, once a scoring step decreased the nll by more than
    :data:`MISMATCH` times its prediction, the steps follow :func:`newton_direction`, the
    observed Hessian's Newton direction on the same face, instead; for complete data the
    scoring direction is taken to the bounds of X it crosses and re-solved on the face
    without them, :func:`bound_direction`); where scoring finds no decrease, a SQUAREM cycle
    (Varadhan & Roland 2008) of the monotone ECME map is used instead:
    two ECME sweeps, an extrapolation of X along them (projected back onto the simplex) and a
    stabilising sweep, accepted only if not worse than the plain sweeps, and the next direction
    holds the entries of X that the failed one sent below 0 (:func:`crossing`); so does the
    direction after :data:`POOR_PATIENCE` scoring steps in a row that each achieved less than
    :data:`POOR_STEP` times their predicted decrease. A failed direction that sent nothing below
    0 is followed by the Fisher direction (:data:`FISHER_AFTER_FAILURE`). Converged when an
    iteration decreases the nll by less than ``tol * (1 + |nll|)``, moves X by less than
    ``sqrt(tol)`` and :func:`kkt_decrement` (the predicted decrease still available) is below
    ``tol * (1 + |nll|)``, and :func:`geometric_tail` of the trace is below it too (before the
    polish below, whose gain then replaces the trace's last entry; :data:`TAIL_WINDOWS`). Where only
    the last fails while the scoring direction predicts no
    more than that, what is left lies in entries of X that the directions hold near 0: they
    are sent to their bound by :func:`bound_step`, and the iterations go on. Where the last
    direction held entries of X (after a failed or poor step) and the same direction without
    them still predicts more than that tolerance, the fit is not converged: what is left lies
    along the held entries, and (with the default ``second_order=None``) the iterations go on
    with :func:`second_order_step`. The named fault: a 100 x 2000, Q = 5 fit of the iteration
    benchmark's hetero generator (seed 4, c = 1) stopped "converged" where its unheld
    direction predicted 6.2e-3 against a tolerance of 1.3e-5 (an independent optimiser found
    7.3e-5 lower in 500 iterations); it now goes on for 4 more and ends 7.8e-4 lower
    (benchmarks/results/scale.md, twenty-seventh round).

    ``second_order`` (default :data:`SECOND_ORDER` for complete data,
    :data:`SECOND_ORDER_MISSING` with missing values): the step is
    :func:`second_order_step` instead (the bound-constrained Fisher step, refined with the
    observed Hessian in a trust region whose radius follows the ratio of actual to predicted
    decrease; convergence also asks the bound-constrained Fisher model to predict less than
    ``tol * (1 + |nll|)``, and the converged fit is polished by up to three Newton steps
    that do not increase the nll; a polish that lowers the nll by more than that tolerance,
    to a point whose :func:`kkt_decrement` is above it, found descent that the first-order
    test missed: the iterations go on from there). Experimental: see :data:`SECOND_ORDER`. With the default
    (``None``) a complete-data fit that crawls switches to it: after :data:`CRAWL_PATIENCE`
    scoring steps in all that each achieved less than :data:`CRAWL_STEP` times their predicted
    decrease (or found none), or after :data:`OBSERVED_POOR_PATIENCE` observed-Hessian steps in a
    row that each achieved less than :data:`OBSERVED_POOR_STEP` times theirs
    (:data:`OBSERVED_POOR_SIGN_FREE`), every later
    iteration is a :func:`second_order_step` (not while
    a sign-free fit is degenerating: the degeneracy rule must see its crawl); an explicit
    ``False`` keeps the scoring steps throughout. In a fit that switched, a second-order step
    that finds no decrease is followed by the scoring step it switched from (before a SQUAREM
    cycle), and after such a step convergence is the scoring iteration's test (the KKT
    decrement, the scoring direction's prediction and the tail within the tolerance, then the
    polish), even if the bound-constrained Fisher model still predicts more: measured, a 2000 x
    20000 fit (the iteration benchmark's counts generator, seed 0, c = 0.3) whose QP predicted 7
    tolerances, where the nll's rounding is about 1.3 of them, stopped "stalled" without this
    and converges 0.36 lower with it (benchmarks/results/scale.md, forty-second round); where
    the scoring step finds no decrease either, the KKT decrement and the tail settle it
    (:data:`STUCK_SETTLES`); not at an iteration whose step rejected a Newton candidate that
    predicted more than the tolerance while the trust region can still shrink
    (:data:`NEWTON_REJECTED_OPEN`). The
    Newton directions' conjugate gradients stop at :data:`NEWTON_CG_MAX` iterations, a limit
    doubled (up to :data:`NEWTON_CG_LIMIT`) after :data:`NEWTON_CG_PATIENCE` directions in a row
    that reached it.

    A fit stops with ``stop_reason="stalled"`` (not converged) after :data:`STALL_PATIENCE`
    iterations in a row that leave the state unchanged to the bit (the remaining iterations
    would repeat them). A sign-free fit stops early with ``stop_reason="degenerate"`` (not converged) when
    it stays :func:`degenerating` (a pair of components at or below ``DEGENERATE_INDEX`` of
    :func:`degeneracy`, or terms that cancel to ``CANCEL_RATIO`` of :func:`cancellation`) for
    ``DEGENERATE_PATIENCE`` iterations while ``max |Theta|`` grows by ``DEGENERATE_GROWTH``: the
    iterations would only inflate the effects of components that cancel in ``X Theta``.

    The returned :class:`~nmfre.core.solution.Solution` has ``U = None``: random effects
    need a pass over the units (:func:`blup`). While it runs, scipy's own BLAS pool (where it
    is not numpy's) is limited to one thread (:mod:`nmfre.core.blas`), and where the sparse
    form's products run on several threads (:mod:`nmfre.core.sparse`) every BLAS pool is.
    """
    st = initial_state(prob, X0, theta0)
    trace: list[float] = []
    hits: list[int] = [0] if st.cap_active else []
    step_max, mstep = 1.0, 4.0
    converged = False
    reason = "max_iter"
    watch = not prob.nonneg and prob.rank >= 2
    since: tuple[int, float] | None = None  # (iteration, max |Theta|) when the fit began degenerating
    n_iter = 0
    # may go on with second_order_step (see CRAWL_PATIENCE)
    switch = second_order is None and CRAWL_PATIENCE is not None
    if second_order is None:
        second_order = SECOND_ORDER if prob.stats.complete else SECOND_ORDER_MISSING
    second = second_order
    radius = TRUST_RADIUS
    observed = False  # the Newton direction of the observed Hessian (see MISMATCH)
    hold = None  # entries of X the next direction holds (see crossing)
    still = 0  # iterations in a row that left the state unchanged
    poor = 0  # scoring steps in a row that achieved less than POOR_STEP of their prediction
    fisher_next = False  # the next direction is the Fisher one whatever `observed` says
    crawl = 0  # scoring steps that achieved less than CRAWL_STEP of their prediction
    poor_newton = 0  # observed-Hessian steps in a row below OBSERVED_POOR_STEP (OBSERVED_POOR_PATIENCE)
    found = True  # the last second-order step found a decrease
    # the last second-order step rejected a Newton candidate whose model predicted more than the
    # tolerance, while the radius can still shrink: that iteration neither converges nor counts
    # as unchanged (NEWTON_REJECTED_OPEN)
    rejected = False
    switched = False  # a complete-data fit that switched to the second-order steps
    stuck = False  # neither the second-order step nor the scoring step after it found a decrease
    cg_max = NEWTON_CG_MAX  # the Newton directions' CG limit (see NEWTON_CG_PATIENCE)
    capped = 0  # Newton directions in a row whose CG stopped at cg_max
    direction = None if second else step_direction(prob, st)

    def scoring_direction_now(held: np.ndarray | None = None) -> Direction | None:
        """The scoring iteration's next direction at the current state (holding ``held``)."""
        return step_direction(prob, st, observed and not fisher_next, held, cg_max)

    while n_iter < max_iter:
        n_iter += 1
        if second:
            stuck = False
            new, info = second_order_step(prob, st, radius)
            # found: a decrease, also by a Newton candidate the step rejected (ratio below 0.1)
            found = new is not None or (info.get("ratio_newton") or 0.0) > 0.0
            if new is None and switched:  # the step of the scoring iteration it switched from
                plain = scoring_direction_now()
                new = None if plain is None else scoring_step(prob, st, plain)
                stuck = new is None  # neither step found a decrease at any length
            rn = info.get("ratio_newton")
            rejected = (NEWTON_REJECTED_OPEN and rn is not None and rn < NEWTON_ACCEPT
                        and info.get("pred_newton", 0.0) > tol * (1.0 + abs(st.nll))
                        and radius > TRUST_RADIUS_BOUNDS[0])
            if rn is not None:  # the trust region of the Newton steps
                if rn < 0.25:
                    radius /= 4.0
                elif rn > 0.75 and info.get("boundary"):
                    radius *= 2.0
                radius = min(max(radius, TRUST_RADIUS_BOUNDS[0]), TRUST_RADIUS_BOUNDS[1])
        else:
            new = scoring_step(prob, st, direction)
            achieved = None if new is None or direction is None else st.nll - new.nll
            poor = poor + 1 if achieved is not None and achieved < POOR_STEP * direction.decrement else 0
            # no decrease along the direction, or too little too often: the next one holds the
            # entries it sent below 0
            hold = crossing(st.X, direction) if new is None or poor >= POOR_PATIENCE else None
            # no decrease and nothing sent below 0: the same direction would fail again, so the
            # next one is the Fisher direction (see FISHER_AFTER_FAILURE)
            fisher_next = FISHER_AFTER_FAILURE and new is None and hold is None
            if OBSERVED_HESSIAN and not observed and achieved is not None and achieved > MISMATCH * direction.decrement:
                observed = True
            if achieved is None or achieved < CRAWL_STEP * direction.decrement:
                crawl += 1
            # crawling: the bound-constrained steps from here on; not while a sign-free fit is
            # degenerating (see degenerating), where a crawl is how
            # the degeneracy shows (switching then let one such fit run on to a Theta of 3.5e3
            # and stop as "converged" after 3108 iterations, where the rule stops it at 144)
            if switch and crawl >= CRAWL_PATIENCE and since is None:
                second = switched = True
            if direction is not None and direction.observed:
                weak = achieved is None or achieved < OBSERVED_POOR_STEP * direction.decrement
                poor_newton = poor_newton + 1 if weak else 0
                allowed = prob.nonneg or (OBSERVED_POOR_SIGN_FREE and since is None)  # not while degenerating
                if switch and allowed and OBSERVED_POOR_PATIENCE and poor_newton >= OBSERVED_POOR_PATIENCE:
                    second = switched = True
        if new is None:
            new, step_max = _squarem_cycle(prob, st, step_max, mstep)
        else:
            new = ecme(prob, new)
        dec = st.nll - new.nll
        dx = float(np.max(np.abs(new.X - st.X)))
        same = dec == 0 and dx == 0 and np.array_equal(new.theta, st.theta) and new.lam == st.lam
        # (not counted where a Newton candidate was rejected: the radius shrank, so the next
        # step differs; see NEWTON_REJECTED_OPEN)
        still = still + 1 if same and not rejected else 0
        st = new
        trace.append(st.nll)
        if st.cap_active:
            hits.append(n_iter)
        thr = tol * (1.0 + abs(st.nll))
        if not second:
            direction = scoring_direction_now(hold)
            capped = capped + 1 if direction is not None and direction.capped else 0
            if capped >= NEWTON_CG_PATIENCE:  # CG keeps stopping at its limit: raise it
                cg_max, capped = min(2 * cg_max, NEWTON_CG_LIMIT), 0
        kkt = kkt_decrement(prob, st) if dec <= thr and dx <= np.sqrt(tol) else None
        if kkt is not None and kkt > thr and not second and (direction is None or direction.decrement <= thr):
            # the scoring model has nothing left on its face: what stops convergence is in
            # entries of X it holds near 0 (see bound_step)
            moved = bound_step(prob, st)
            if moved is not None:
                st, still = moved, 0
                trace[-1] = st.nll
                direction = scoring_direction_now()
        elif kkt is not None and kkt <= thr:
            # the expected information may predict less than is left, and one iteration's
            # decrease may be the small phase of alternating ones: the decreases' own rate
            # must agree (geometric_tail, TAIL_WINDOWS)
            tail_ok = geometric_tail(trace) <= thr
            if second and rejected:
                pass  # the observed Hessian's model predicted more than the Fisher models see
            elif second:
                _, qp = qp_direction(prob, st)
                settled = qp is None or qp.decrement <= thr
                if not settled and not found and switched and tail_ok:
                    # the QP predicts more than the tolerance, but its step found no decrease at
                    # any length (the scoring step was taken instead): the scoring iteration's
                    # test decides, as for a fit that never switched; where the scoring step
                    # found none either, the models' predictions are not there to be had at the
                    # nll's resolution, and the KKT decrement (within the tolerance here)
                    # decides, through the polish's certificate (see STUCK_SETTLES)
                    plain = None if stuck and STUCK_SETTLES else scoring_direction_now()
                    settled = plain is None or plain.decrement <= thr
                if settled and tail_ok:
                    polished = _polish(prob, st)
                    # a polish that gains more than the tolerance found descent (negative
                    # curvature at a first-order point): go on from there unless it is itself
                    # certified (a fit once returned "converged" 8.4 below its certified
                    # point, where the KKT decrement was 24.5: scale.md, twentieth round)
                    certified = st.nll - polished.nll <= thr or kkt_decrement(prob, polished) <= thr
                    st = polished
                    trace[-1] = st.nll
                    if certified:
                        converged, reason = True, "tol"
                        break
            elif (direction is None or direction.decrement <= thr) and tail_ok:
                # a direction that holds entries of X (after a failed or poor step) predicts
                # only what is left off them: where the unheld direction still predicts more,
                # what is left lies along those entries, and the bound-constrained steps take it
                unheld = None
                if switch and since is None and hold is not None:
                    unheld = scoring_direction_now()
                if unheld is not None and unheld.decrement > thr:
                    second = switched = True
                else:
                    converged, reason = True, "tol"
                    break
        if still >= STALL_PATIENCE:
            reason = "stalled"
            break
        if watch:  # the effects on orthonormal covariates, as the engine gives them (see degeneracy)
            size = float(np.max(np.abs(st.theta)))
            if not degenerating(st.X, st.theta):
                since = None
            elif since is None:
                since = (n_iter, size)
            elif n_iter - since[0] >= DEGENERATE_PATIENCE and size >= DEGENERATE_GROWTH * since[1]:
                reason = "degenerate"
                break
    return Solution(X=st.X, theta=st.theta, U=None, sigma2=st.sigma2, tau2=st.sigma2 / st.lam, lam=st.lam,
                    nll=st.nll, nll_trace=np.asarray(trace), converged=converged, n_iter=n_iter,
                    cap_hit=bool(hits), stop_reason=reason,
                    cap_hit_iters=tuple(hits))


def _polish(prob: Problem, st: State, steps: int = 3) -> State:
    """At convergence, up to ``steps`` further second-order steps (full Newton steps where the
    observed Hessian is available), kept while they do not increase the nll: near a regular
    optimum they converge quadratically, so the estimates are settled well below the
    tolerance of the nll (fits of the same data in different forms agree closely)."""
    P, Q = prob.P, prob.rank
    for _ in range(steps):
        model, qp = qp_direction(prob, st)
        if qp is None:
            break
        d = qp.d
        if prob.data is not None:
            hess = hessian(prob, model, st)
            res = trust.newton_step(hess, model, _flat_point(prob, st, model.nV), prob.nonneg, qp)
            d = d if res is None else res[0]
        new = _varpro(prob, st, _moved(st.X, d[: P * Q].reshape(P, Q), 1.0))
        if not new.nll <= st.nll:
            break
        st = new
    return st


def _squarem_cycle(prob: Problem, st: State, step_max: float, mstep: float):
    s1 = ecme(prob, st)
    s2 = ecme(prob, s1)
    r = s1.X - st.X
    v = s2.X - s1.X - r
    nr, nv = np.linalg.norm(r), np.linalg.norm(v)
    if nv == 0 or nr == 0:
        return s2, step_max
    alpha = min(-1.0, max(-nr / nv, -step_max))
    if alpha == -1.0:
        return s2, step_max * mstep if step_max == 1.0 else step_max
    Xe = project_simplex(st.X - 2 * alpha * r + alpha**2 * v)
    cand = ecme(prob, _varpro(prob, s2, Xe))
    if np.isfinite(cand.nll) and cand.nll <= s2.nll:
        return cand, step_max * mstep if alpha == -step_max else step_max
    return s2, max(1.0, step_max / mstep)
