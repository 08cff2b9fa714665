from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import storm_sc as st
from tests.pp._synthetic import counts_table, hex_grid, spatial_input


def _grid_sdata(*, mpp: float, pitch_um: float = 100.0, n_rows: int = 12, n_cols: int = 14):
    centers_um = hex_grid(n_rows, n_cols, pitch=pitch_um, origin=(150.0, 150.0))
    table = counts_table(len(centers_um))
    return st.io.from_arrays(table, centers_um / mpp, mpp=mpp, spot_diameter_um=55.0), centers_um


def _interior(centers: np.ndarray, pitch: float) -> np.ndarray:
    lo, hi = centers.min(0) + 1.5 * pitch, centers.max(0) - 1.5 * pitch
    return np.flatnonzero(((centers >= lo) & (centers <= hi)).all(1))


@pytest.mark.parametrize("mpp", [0.5, 3.6])
def test_visium_hex_grid_in_microns(mpp):
    sdata, centers = _grid_sdata(mpp=mpp)
    g = st.pp.spatial_graph(sdata)
    assert sparse.isspmatrix_csr(g)
    assert g.shape == (len(centers), len(centers))
    np.testing.assert_array_equal(g.getnnz(axis=1), 6)
    assert g.diagonal().sum() == 0
    assert g.nnz == 6 * len(centers)
    inner = _interior(centers, 100.0)
    # inside the grid the 6 nearest neighbours are the hexagonal ring, 100 um away whatever the pixel size
    np.testing.assert_allclose(g[inner].data, 100.0, atol=1e-6)
    rows, cols = g.nonzero()
    np.testing.assert_allclose(np.asarray(g[rows, cols]).ravel(), np.linalg.norm(centers[rows] - centers[cols], axis=1))


def test_radius_and_delaunay():
    centers = hex_grid(10, 10, pitch=100.0)
    si = spatial_input(None, centers, mpp=1.0)
    g = st.pp.spatial_graph(si, radius_um=101.0)
    assert g.data.max() <= 101.0
    assert (g != g.T).nnz == 0  # a radius graph is symmetric
    degree = g.getnnz(axis=1)
    np.testing.assert_array_equal(degree[_interior(centers, 100.0)], 6)
    d = st.pp.spatial_graph(si, delaunay=True, radius_um=150.0)
    assert d.data.max() <= 150.0
    np.testing.assert_array_equal(d.getnnz(axis=1)[_interior(centers, 100.0)], 6)


def test_slides_are_kept_apart():
    grid = hex_grid(8, 8, pitch=100.0)
    # two slides with identical coordinates: a graph across slides would link them at distance 0
    centers = np.concatenate([grid, grid])
    table = counts_table(len(centers))
    table.obs["slide"] = pd.Categorical(["a"] * len(grid) + ["b"] * len(grid))
    si = spatial_input(None, centers, mpp=1.0, table=table)
    g = st.pp.spatial_graph(si, n_neighs=4, library_key="slide")
    n = len(grid)
    assert g[:n, n:].nnz == 0
    assert g[n:, :n].nnz == 0
    single = st.pp.spatial_graph(spatial_input(None, grid, mpp=1.0), n_neighs=4)
    # each slide's block is that slide's own graph (ties in kNN broken the same way)
    np.testing.assert_allclose(g[:n, :n].toarray(), single.toarray())
    np.testing.assert_allclose(g[n:, n:].toarray(), single.toarray())
    assert g.data.min() > 0


def test_symmetrize():
    rng = np.random.default_rng(0)
    si = spatial_input(None, rng.uniform(0, 1000, size=(200, 2)), mpp=1.0)
    directed = st.pp.spatial_graph(si, n_neighs=3)
    undirected = st.pp.spatial_graph(si, n_neighs=3, symmetrize=True)
    assert (directed != directed.T).nnz > 0
    assert (undirected != undirected.T).nnz == 0
    assert (directed > 0).multiply(undirected > 0).nnz == directed.nnz  # every directed edge kept


def test_key_added_writes_once():
    centers = hex_grid(6, 6)
    table = counts_table(len(centers))
    si = spatial_input(None, centers, mpp=1.0, table=table)
    st.pp.spatial_graph(si)
    assert len(table.obsp) == 0
    assert "storm_spatial_neighbors" not in table.uns
    g = st.pp.spatial_graph(si, key_added="storm_spatial")
    conn = table.obsp["storm_spatial_connectivities"]
    assert set(np.unique(conn.data)) == {1.0}
    assert (conn != (g > 0)).nnz == 0
    np.testing.assert_array_equal(table.obsp["storm_spatial_distances"].toarray(), g.toarray())
    params = table.uns["storm_spatial_neighbors"]["params"]
    assert params["units"] == "um"
    assert params["n_neighbors"] == 6
    with pytest.raises(ValueError, match="already exist"):
        st.pp.spatial_graph(si, key_added="storm_spatial")
    np.testing.assert_array_equal(table.obsp["storm_spatial_distances"].toarray(), g.toarray())


def test_bad_arguments():
    centers = hex_grid(3, 3)
    si = spatial_input(None, centers, mpp=1.0)
    with pytest.raises(ValueError, match="either `n_neighs`"):
        st.pp.spatial_graph(si, n_neighs=4, radius_um=50.0)
    with pytest.raises(ValueError, match="n_neighs"):
        st.pp.spatial_graph(si, n_neighs=0)
    with pytest.raises(ValueError, match="radius_um"):
        st.pp.spatial_graph(si, radius_um=-1.0)
    with pytest.raises(ValueError, match="smallest slide has 9"):
        st.pp.spatial_graph(si, n_neighs=9)
    with pytest.raises(KeyError, match="library_key='slide'"):
        st.pp.spatial_graph(si, library_key="slide")
    with pytest.raises(TypeError, match="SpatialData, an AnnData or a SpatialInput"):
        st.pp.spatial_graph(ad.AnnData(np.zeros((2, 2))).X)


def test_squidpy_announcements_are_quiet():
    """squidpy logs every graph it builds through spatialdata's logger; spatial_graph logs its own line instead."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    noisy = logging.getLogger("spatialdata._logging")
    level = noisy.level
    noisy.addHandler(handler)
    try:
        si = spatial_input(None, hex_grid(6, 6, pitch=100.0), mpp=1.0)
        for kwargs in ({}, {"radius_um": 101.0}, {"delaunay": True}):
            st.pp.spatial_graph(si, **kwargs)
    finally:
        noisy.removeHandler(handler)
    assert [r.getMessage() for r in records if r.levelno < logging.WARNING] == []
    assert noisy.level == level  # restored


def test_quiet_loggers_restores_levels_after_an_error():
    from storm_sc._settings import quiet_loggers

    lg = logging.getLogger("storm_sc.tests.quiet")
    lg.setLevel(logging.INFO)
    seen = []

    def fail_inside() -> None:
        with quiet_loggers("storm_sc.tests.quiet"):
            seen.append((lg.isEnabledFor(logging.INFO), lg.isEnabledFor(logging.WARNING)))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail_inside()
    assert seen == [(False, True)]
    assert lg.level == logging.INFO
