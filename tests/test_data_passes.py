"""How often the ML solver multiplies a sparse Y (issue 17, item 4).

The data are wrapped in an operator that records every product with ``Y`` and with ``Y'``
(the solver uses only ``@`` and ``.T``), so the tests count passes over the non-zeros: the
nll at a trial point takes one (``Y'X``); ``Y R'X`` (for the gradient and the E-step) one more,
on first use only; a Hessian built at a state whose moments are cached takes none; each
Hessian product two (``Y'V``, then ``Y``).
"""

import numpy as np
import pytest
import scipy.sparse as sp

from nmfre.core import basis, ml, stats, trust
from nmfre.simulate import block_sparse


class _Counted:
    """``Y`` (or ``Y'``) that logs each product: ``"Y"`` or ``"Yt"``."""

    def __init__(self, M, log: list, name: str = "Y"):
        self.M, self.log, self.name = M, log, name
        self.shape = M.shape

    @property
    def T(self):
        return _Counted(self.M.T, self.log, "Yt" if self.name == "Y" else "Y")

    def __matmul__(self, Z):
        self.log.append(self.name)
        return self.M @ Z


def _sparse_problem():
    d = block_sparse(P=14, N=300, rank=3, K=2, seed=4, clip=True)
    Y, A = d["Y"].values, d["A"].values
    Ys = sp.csr_matrix(np.where(Y > np.quantile(Y, 0.3), Y, 0.0))
    plain = stats.from_arrays(Ys, A, "sparse")
    b = plain.blocks[0]
    log: list[str] = []
    counted = stats.Block(b.rows, b.units, b.N, b.AA, b.YA, b.trG, "sparse", b.A, Y=_Counted(b.Y, log))
    prob = ml.Problem(stats.Stats(plain.P, plain.N, plain.K, [counted]), 3, True, "free", 1.0, 1.0, None)
    st = ml.initial_state(prob, basis.nndsvd(Ys, 3), None)
    st = ml.ecme(prob, st)
    return prob, st, Ys, log


def test_the_nll_at_a_trial_point_multiplies_the_data_once():
    prob, st, Ys, log = _sparse_problem()
    rng = np.random.default_rng(0)
    X = basis.project_simplex(st.X + 0.01 * rng.normal(size=st.X.shape))
    log.clear()
    m = prob.stats.blocks[0].moments(X, st.theta)
    assert log == ["Yt"]
    ml.profile(prob, X, st.theta, st.lam)  # a fresh trial point through the solver's cache
    assert log == ["Yt", "Yt"]
    R = Ys.toarray() - X @ st.theta @ prob.stats.blocks[0].A
    expected = Ys.toarray() @ R.T @ X
    np.testing.assert_allclose(m.YRtX, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    assert log == ["Yt", "Yt", "Y"]  # formed on first use
    assert m.YRtX is m.YRtX
    assert log == ["Yt", "Yt", "Y"]  # and kept
    np.testing.assert_allclose(m.WR, X.T @ R @ R.T @ X, rtol=1e-10)
    assert m.rss == pytest.approx(float(np.sum(R * R)), rel=1e-12)


def test_hessian_at_a_state_takes_no_pass_and_each_product_two():
    prob, st, _, log = _sparse_problem()
    model = ml.fisher_model(prob, st)  # the gradient: the state's moments, with Y R'X
    log.clear()
    hess = ml.hessian(prob, model, st)
    assert log == []
    rng = np.random.default_rng(1)
    v = rng.normal(size=model.g.size)
    hv = hess(v)
    assert sorted(log) == ["Y", "Yt"]
    fresh = trust.Hessian(prob.data, model, st.X, st.theta, st.sigma2, st.sigma2 / st.lam)(v)
    np.testing.assert_allclose(hv, fresh, rtol=1e-9, atol=1e-9 * np.abs(fresh).max())


def test_gram_products_equal_g_times_x():
    """The gram form's ``G X`` is computed as ``(X'G)'`` (``stats.gram_product``, faster in
    OpenBLAS); it must equal ``G X``, for the complex directions of the Hessian products too
    (real and imaginary parts multiplied separately). Exact up to the order of the sums
    (rtol 1e-13; the named fault, a missing transpose or a dropped imaginary part, fails at
    once)."""
    rng = np.random.default_rng(3)
    B = rng.random((60, 90))
    G = B @ B.T
    X = rng.random((60, 4))
    GX = stats.gram_product(G, X)
    assert GX.shape == (60, 4)
    np.testing.assert_allclose(GX, G @ X, rtol=1e-13)
    Z = X + 1j * rng.normal(size=X.shape)
    data = trust.Data("gram", B @ rng.random((90, 2)), np.eye(2), float(np.trace(G)), rng.random((2, 90)), 90, G=G)
    GZ = trust.data_product(data, Z)
    assert np.iscomplexobj(GZ)
    np.testing.assert_allclose(GZ, G @ Z, rtol=1e-13)
