"""Large and lazy data (nmfre.core.passes through fit and infer): scipy.sparse, pandas
sparse frames, dask arrays, netCDF and zarr files opened with dask, a 2-worker
LocalCluster; each equals the in-memory computation."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import xarray as xr

import nmfre
from nmfre.core import passes, stats
from nmfre.simulate import block_sparse

da = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def data():
    """A well-determined problem, so that fits of the same data held differently agree to
    1e-8: rank 2 and non-negative Theta. (For rank >= 3 the likelihood is invariant under
    rotations X O, O'Theta with O fixing the vector of ones, pinned only where X >= 0 or
    Theta >= 0 bind; there, and for sign-free Theta, estimates agree to the ~1e-7..1e-6 that
    the likelihood's rounding determines.)"""
    rng = np.random.default_rng(3)
    P, N, Q = 12, 3000, 2
    X = rng.dirichlet(np.full(P, 2.0), Q).T
    A = np.vstack([np.ones(N), rng.uniform(size=N), rng.uniform(size=N)])
    theta = np.array([[6.0, 2.0, 1.0], [3.0, 5.0, 2.0]])
    Y = X @ (theta @ A + rng.normal(0, 0.5, (Q, N))) + rng.normal(0, 0.05, (P, N))
    units = [f"u{n + 1}" for n in range(N)]
    return (xr.DataArray(Y, dims=("feature", "unit"), coords={"feature": [f"f{p}" for p in range(P)], "unit": units}),
            xr.DataArray(A, dims=("covariate", "unit"), coords={"covariate": ["intercept", "a1", "a2"], "unit": units}))


@pytest.fixture(scope="module")
def dense_fit(data):
    Y, A = data
    return nmfre.fit(Y, A, rank=2, theta="nonneg", tol=TOL)


#: the default tolerance (fits of the same data in another form agree to about 1e-8 in X and
#: the nll, and to the likelihood's resolution in Theta: THETA_RTOL)
TOL = 1e-10
#: Theta's agreement between two fits of these data held differently: the nll is flat enough
#: along Theta that it does not resolve 1e-8. Measured (the netCDF fit against the in-memory
#: one; the largest absolute difference, Theta's entries being 1 to 6): 3.8e-10 with
#: OpenBLAS's default kernels at TOL, 5.3e-8 with its Sandybridge kernels (where an rtol of
#: 1e-8 failed), and 7.3e-7 and 7.5e-7 with both at tol = 1e-12, the nlls within 1.2e-10 of
#: each other. The named fault (the first chunk of 700 units left out): 0.072, 1e5 times
#: this bound
THETA_RTOL = 1e-6


def _assert_same_fit(f, g, rtol=1e-8):
    assert f.converged and g.converged
    assert f.loglik == pytest.approx(g.loglik, rel=1e-10)
    np.testing.assert_allclose(f.theta, g.theta, rtol=max(rtol, THETA_RTOL), atol=1e-8)
    np.testing.assert_allclose(f.X, g.X, rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(np.asarray(f.U), np.asarray(g.U), rtol=1e-6, atol=1e-7)
    assert f.sigma2 == pytest.approx(g.sigma2, rel=1e-7)


def test_gram_sparse_and_dense_statistics_agree(data):
    """The compressed statistics reproduce the exact residual-based moments."""
    Y, A = (d.values for d in data)
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(12), 2).T
    theta = rng.uniform(0, 5, (2, 3))
    ref = stats.from_arrays(Y, A, "dense").blocks[0].moments(X, theta)
    for blk in (stats.from_arrays(Y, A, "gram").blocks[0], stats.from_arrays(sp.csr_matrix(Y), A, "sparse").blocks[0]):
        m = blk.moments(X, theta)
        assert m.rss == pytest.approx(ref.rss, rel=1e-10)
        np.testing.assert_allclose(m.WR, ref.WR, rtol=1e-8, atol=1e-8 * np.abs(ref.WR).max())
        np.testing.assert_allclose(m.YRtX, ref.YRtX, rtol=1e-8, atol=1e-8 * np.abs(ref.YRtX).max())


def test_sparse_y_is_never_densified(data, monkeypatch):
    Y, A = data
    Ys = sp.csr_matrix(np.where(Y.values < 0.05, 0.0, Y.values))
    dense = nmfre.fit(Ys.toarray(), A.values, rank=2, theta="nonneg", tol=TOL)
    big = Ys.shape[0] * Ys.shape[1] // 4

    def guard(original):
        def call(self, *a, **k):  # small results (a column of row minima) may be made dense
            if self.shape[0] * self.shape[1] >= big:
                pytest.fail(f"a {self.shape} sparse matrix was densified")
            return original(self, *a, **k)
        return call

    for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix):
        for name in ("toarray", "todense"):
            monkeypatch.setattr(cls, name, guard(getattr(cls, name)))
    f = nmfre.fit(Ys, A.values, rank=2, theta="nonneg", tol=TOL)
    inf = f.infer(n_boot=50, seed=1)
    monkeypatch.undo()
    # the sparse and dense forms take different paths to optima that agree to the convergence
    # criterion (loglik 2e-8 apart; two entries of X at 0 in one, 1e-7 in the other)
    assert f.loglik >= dense.loglik - 1e-7
    np.testing.assert_allclose(f.theta, dense.theta, rtol=1e-5)
    ref = dense.infer(n_boot=50, seed=1)
    np.testing.assert_allclose(inf.se, ref.se, rtol=1e-4)
    np.testing.assert_allclose(inf.draws, ref.draws, rtol=1e-4, atol=1e-6)


def test_pandas_sparse_frame(data):
    Y, A = data
    frame = pd.DataFrame(Y.values, index=Y.feature.values, columns=Y.unit.values).astype(pd.SparseDtype(float, 0.0))
    f = nmfre.fit(frame, A.to_pandas(), rank=2, theta="nonneg")
    assert passes.kind(f.data.Y) == "sparse"
    assert list(f.U.unit.values[:2]) == ["u1", "u2"]


def test_dask_array_equals_in_memory(data, dense_fit):
    Y, A = data
    f = nmfre.fit(da.from_array(Y.values, chunks=(12, 500)), A.values, rank=2, theta="nonneg", tol=TOL)
    assert passes.kind(f.solution.U) == "dask"  # U comes back lazily
    _assert_same_fit(f, dense_fit)
    a, b = f.infer(n_boot=100, seed=3), dense_fit.infer(n_boot=100, seed=3)
    np.testing.assert_allclose(a.se, b.se, rtol=1e-7)
    np.testing.assert_allclose(a.draws, b.draws, rtol=1e-6, atol=1e-8)
    assert f.r_squared == pytest.approx(dense_fit.r_squared, rel=1e-8)


def test_netcdf_and_zarr_on_disk(tmp_path, data, dense_fit):
    Y, _ = data
    A = data[1]
    Y.to_netcdf(tmp_path / "Y.nc")
    with xr.open_dataarray(tmp_path / "Y.nc", chunks={"unit": 700}) as Yd:
        assert passes.kind(Yd.data) == "dask"
        f = nmfre.fit(Yd, A, rank=2, theta="nonneg", tol=TOL)
        _assert_same_fit(f, dense_fit)
        assert list(f.U.unit.values) == list(Y.unit.values)
        f.to_netcdf(tmp_path / "fit.nc")  # the lazy Y is not copied into the fit's file
        back = nmfre.load(tmp_path / "fit.nc", Y=Yd)
        np.testing.assert_allclose(back.theta, f.theta)
        with pytest.raises(ValueError, match="saved without Y"):
            nmfre.load(tmp_path / "fit.nc")
        # another Y: a permutation of its units (same totals), another shape, or the dense Y of
        # a fit that stored its own
        with pytest.raises(ValueError, match=r"not the data this fit was made on: the sums over \d+ of its units"):
            nmfre.load(tmp_path / "fit.nc", Y=Y.values[:, ::-1])
        with pytest.raises(ValueError, match="Y has shape"):
            nmfre.load(tmp_path / "fit.nc", Y=Y.values[:-1])
        np.testing.assert_allclose(nmfre.load(tmp_path / "fit.nc", Y=Y.values).theta, f.theta)
        # labelled Y: aligned to the saved labels (units in another order were refused as other
        # data, and the fit's U then in the wrong order), other labels refused (they were taken,
        # relabelling X); an unlabelled Y takes the saved labels (X's features were 0..P-1)
        shuffled = Yd.isel(unit=np.random.default_rng(0).permutation(Yd.sizes["unit"]), feature=slice(None, None, -1))
        back = nmfre.load(tmp_path / "fit.nc", Y=shuffled)
        xr.testing.assert_identical(back.U, f.U)
        xr.testing.assert_allclose(back.fitted(), f.fitted())
        assert list(nmfre.load(tmp_path / "fit.nc", Y=Yd.data).X.feature.values) == list(f.X.feature.values)
        with pytest.raises(ValueError, match=r"Y's feature labels \['g0', 'g1', .* are not the fit's"):
            nmfre.load(tmp_path / "fit.nc", Y=Yd.assign_coords(feature=[f"g{i}" for i in range(Yd.sizes["feature"])]))
    dense_fit.to_netcdf(tmp_path / "dense.nc")
    with pytest.raises(ValueError, match="holds its own Y"):
        nmfre.load(tmp_path / "dense.nc", Y=Y.values)
    # centred features: their sums are rounding, and differ with the summation order (other
    # chunks), which must not refuse the same data; a sign flip is refused
    Yc = Y.values - Y.values.mean(axis=1, keepdims=True)
    da = pytest.importorskip("dask.array")
    fc = nmfre.fit(da.from_array(Yc, chunks=(Yc.shape[0], 700)), A, rank=2, theta="free", tol=TOL)
    fc.to_netcdf(tmp_path / "centred.nc")
    for again in (Yc, da.from_array(Yc, chunks=(Yc.shape[0], 333))):
        np.testing.assert_array_equal(nmfre.load(tmp_path / "centred.nc", Y=again).theta, fc.theta)
    with pytest.raises(ValueError, match="not the data this fit was made on"):
        nmfre.load(tmp_path / "centred.nc", Y=-Yc)
    zarr = pytest.importorskip("zarr")
    assert zarr
    Y.to_dataset(name="Y").chunk({"unit": 1000}).to_zarr(tmp_path / "Y.zarr")
    Yz = xr.open_zarr(tmp_path / "Y.zarr")["Y"]
    _assert_same_fit(nmfre.fit(Yz, A, rank=2, theta="nonneg", tol=TOL), dense_fit)


def test_local_cluster(data, dense_fit):
    distributed = pytest.importorskip("dask.distributed")
    Y, A = data
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        Yd = da.from_array(Y.values, chunks=(12, 600)).persist()
        f = nmfre.fit(Yd, A.values, rank=2, theta="nonneg", tol=TOL)
        inf = f.infer(n_boot=100, seed=3)
        _assert_same_fit(f, dense_fit)  # (U is lazy: computed on the cluster, while it runs)
    np.testing.assert_allclose(inf.se, dense_fit.infer(n_boot=100, seed=3).se, rtol=1e-7)


def test_bad_large_inputs(data):
    Y, A = data
    with pytest.raises(ValueError, match="chunked along features"):
        nmfre.fit(da.from_array(Y.values, chunks=(6, 3000)), A.values, rank=2)
    bad = Y.values.copy()
    bad[3, 1700] = np.inf
    with pytest.raises(ValueError, match="Y contains Inf"):
        nmfre.fit(da.from_array(bad, chunks=(12, 500)), A.values, rank=2)
    bad[3, 1700] = np.nan  # a missing entry: fine for ML (tests/test_missing.py), not for the paper method
    with pytest.raises(ValueError, match="method='paper' needs Y as a dense|no missing-data path"):
        nmfre.fit(da.from_array(bad, chunks=(12, 500)), A.values, rank=2, method="paper")
    neg = sp.csr_matrix(Y.values - 0.3)
    with pytest.raises(ValueError, match="negative entries"):
        nmfre.fit(neg, A.values, rank=2, method="paper")
    with pytest.raises(ValueError, match="dense in-memory"):
        nmfre.fit(sp.csr_matrix(Y.values), A.values, rank=2, method="paper")
    with pytest.raises(ValueError, match="Inf"):
        nmfre.fit(sp.csr_matrix(np.where(Y.values > 0.9, np.inf, Y.values)), A.values, rank=2)


def test_large_dense_uses_the_gram_form(monkeypatch):
    """Above the size threshold the solver iterates on Y Y' only (no pass over Y)."""
    d = block_sparse(P=10, N=4000, rank=2, K=2, seed=4)
    Y, A = d["Y"].values, d["A"].values
    f_dense = nmfre.fit(Y, A, rank=2, theta="nonneg", tol=TOL)
    monkeypatch.setattr(stats, "choose_form", lambda *a, **k: "gram")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f_gram = nmfre.fit(Y, A, rank=2, theta="nonneg", tol=TOL)
    _assert_same_fit(f_gram, f_dense)


@pytest.mark.parametrize("held", ["dense", "masked", "sparse", "dask", "dask-masked"])
def test_residual_moments_are_each_blocks_residual_sums(held, monkeypatch):
    """``passes.residual_moments``: for each block of the fit's statistics (one per pattern of
    observed features), ``(d, t, perp)`` of the explicit residuals in chunks of units (3 chunks
    and more here), for every kind of Y: ``d`` the squared singular values of ``X_O``, ``perp +
    sum t = ||R||^2`` and ``d t`` the diagonal of ``X_O'R R'X_O`` in its eigenvectors, equal to
    the direct computation on the block's cells to 1e-12 relative; ``Q`` of each, also for a
    block that observes fewer features than the rank (zeros there, as ``X_O'X_O``'s)."""
    rng = np.random.default_rng(5)
    P, N, Q = 9, 120, 2
    X = rng.dirichlet(np.ones(P), Q).T
    A = np.vstack([np.ones(N), rng.normal(size=N)])
    theta = np.array([[3.0, 1.0], [2.0, -1.0]])
    Y = X @ theta @ A + 0.1 * rng.normal(size=(P, N))
    if "masked" in held:
        Y[rng.random((P, N)) < 0.05] = np.nan
        Y[1:, :3] = np.nan  # a pattern observing fewer features (1) than the rank (2)
    if held == "sparse":
        Y[Y < np.quantile(Y, 0.5)] = 0.0
    monkeypatch.setattr(passes, "CHUNK_ENTRIES", 40 * P)
    given = {"sparse": lambda y: sp.csr_matrix(y), "dask": lambda y: da.from_array(y, chunks=(P, 25)),
             "dask-masked": lambda y: da.from_array(y, chunks=(P, 25))}.get(held, lambda y: y)(Y)
    st = passes.stats_of(given, A)  # (the blocks as the fit builds them for this kind)
    out = passes.residual_moments(given, A, X, theta, st)
    assert len(out) == len(st.blocks) and (len(out) > 1) == ("masked" in held)
    for b, (d, t, perp) in zip(st.blocks, out, strict=True):
        Xo = X if b.rows is None else X[b.rows]
        cell = Y[:, b.units] if b.rows is None else Y[np.ix_(b.rows, b.units)]
        R = cell - Xo @ (theta @ A[:, b.units])
        assert perp + t.sum() == pytest.approx(float(np.sum(R * R)), rel=1e-12)
        ev, V = np.linalg.eigh(Xo.T @ Xo)
        assert d.size == t.size == Q
        np.testing.assert_allclose(np.sort(d), ev, rtol=1e-12, atol=1e-14 * ev.max())
        s = np.einsum("qa,qr,ra->a", V, Xo.T @ R @ R.T @ Xo, V)
        np.testing.assert_allclose(np.sort(d * t), np.sort(s), rtol=1e-10, atol=1e-12 * s.max())


def test_one_grouping_of_units_by_pattern():
    rng = np.random.default_rng(0)
    obs = rng.random((7, 60)) < 0.7
    masks, inverse = stats.patterns(obs)  # first appearance
    assert (masks[inverse].T == obs).all()
    assert (np.diff(np.unique(inverse, return_index=True)[1]) > 0).all()
    srt, inv_s = stats.patterns(obs, order="sorted")  # numpy.unique's order (what bayes uses)
    ref, inv_ref = np.unique(obs.T, axis=0, return_inverse=True)
    np.testing.assert_array_equal(srt, ref)
    np.testing.assert_array_equal(inv_s, inv_ref.ravel())
    with pytest.raises(ValueError, match="order"):
        stats.patterns(obs, order="random")



@pytest.mark.parametrize("scale", [1.0, 1e200, 1e-200])
def test_describe_of_dense_y_equals_the_direct_reductions(scale):
    """:func:`passes.describe`'s one pass over blocks of rows gives numpy's own reductions
    (exact for the extremes and counts; the rms to rounding), also where the sum of squares
    over- or underflows (a second, scaled pass) and for a Fortran-ordered Y."""
    rng = np.random.default_rng(5)
    for Y in (rng.normal(size=(37, 9001)) * scale, np.asfortranarray(rng.gamma(2.0, size=(23, 501)) * scale)):
        d = passes.describe(Y)
        m = np.abs(Y).max()
        rms = m * np.sqrt(np.mean((Y / m) ** 2))
        assert (d["min"], d["max"]) == (Y.min(), Y.max())
        assert d["unit_spread"] == np.max(Y.max(axis=1) - Y.min(axis=1))
        assert d["n_negative"] == np.count_nonzero(Y < 0) and d["n_missing"] == 0
        assert d["rms"] == pytest.approx(rms, rel=1e-13)
    big = np.full((5, 40), 2**33, dtype=np.int64)  # squares beyond int64: summed as floats
    big[0, 0] = 3
    assert passes.describe(big)["rms"] == pytest.approx(np.sqrt(np.mean(big.astype(float) ** 2)), rel=1e-13)
    masked = rng.gamma(2.0, size=(20, 300))
    masked[3, 5] = np.nan
    d = passes.describe(masked)
    assert d["n_missing"] == 1 and d["max"] == np.nanmax(masked)
    assert d["rms"] == pytest.approx(np.sqrt(np.nanmean(masked**2)), rel=1e-13)


def test_blup_of_large_dense_y_is_the_residual_formula(monkeypatch):
    """Above the chunk size the BLUP comes from one product ``X'Y`` (no ``P x N``
    temporary); it equals the residual formula ``M^-1 X'(Y - X Theta A)`` to rounding."""
    rng = np.random.default_rng(6)
    P, N, Q = 40, 500, 3
    X = rng.dirichlet(np.ones(P), Q).T
    theta, A = rng.uniform(1, 5, (Q, 2)), np.vstack([np.ones(N), rng.normal(size=N)])
    Y = X @ (theta @ A + rng.normal(size=(Q, N))) + 0.01 * rng.normal(size=(P, N))
    exact = np.linalg.solve(X.T @ X + 0.7 * np.eye(Q), X.T @ (Y - X @ theta @ A))
    monkeypatch.setattr(passes, "CHUNK_ENTRIES", 1000)
    assert not passes.small(Y)
    np.testing.assert_allclose(passes.blup(Y, A, X, theta, 0.7), exact, rtol=1e-11, atol=1e-12)


def test_leading_eigenpairs_by_lanczos_equal_lapack(monkeypatch):
    """From ``LANCZOS_FROM`` rows the NNDSVD start's eigenpairs come from ARPACK (fixed start
    vector: the same result twice); they equal LAPACK's to 1e-10, and where ARPACK does not
    converge, or breaks down (``G = 0``), LAPACK's are returned."""
    import scipy.linalg
    import scipy.sparse.linalg

    rng = np.random.default_rng(7)
    P = passes.LANCZOS_FROM
    Z = rng.gamma(2.0, size=(P, 40)) @ rng.gamma(1.0, size=(40, 3 * P))
    G = Z @ Z.T
    w, V = passes.leading_eigenpairs(G, 6)
    w2, V2 = passes.leading_eigenpairs(G, 6)
    np.testing.assert_array_equal(V, V2)
    ref_w, ref_V = scipy.linalg.eigh(G, subset_by_index=[P - 6, P - 1])
    o, r = np.argsort(w), np.argsort(ref_w)
    np.testing.assert_allclose(w[o], ref_w[r], rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(V[:, o] * ref_V[:, r], axis=0)), 1.0, atol=1e-10)

    def fail(*args, **kwargs):
        raise scipy.sparse.linalg.ArpackNoConvergence("no", np.empty(0), np.empty((P, 0)))

    # a breakdown (G v0 = 0: ARPACK raises its error -9) falls back to LAPACK too
    w0, V0 = passes.leading_eigenpairs(np.zeros((P, P)), 3)
    assert np.all(w0 == 0) and V0.shape == (P, 3) and np.all(np.isfinite(V0))
    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", fail)
    w3, V3 = passes.leading_eigenpairs(G, 6)
    np.testing.assert_allclose(w3, ref_w, rtol=1e-12)
