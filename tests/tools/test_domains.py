import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

import storm_sc as st


@pytest.fixture
def embedded(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=6)
    st.tl.storm_embed(sdata, trained_model, verbose=False)
    return sdata


def test_exact_number_and_colours(embedded):
    st.tl.storm_domains(embedded, n_domains=3)
    table = embedded["table"]
    domains = table.obs["storm_domain"]
    assert domains.dtype.name == "category"
    assert list(domains.cat.categories) == ["0", "1", "2"]
    assert len(table.uns["storm_domain_colors"]) == 3
    assert table.uns["storm"]["storm_domain"]["method"] == "kmeans"


def test_deterministic_for_a_seed(embedded):
    st.tl.storm_domains(embedded, n_domains=4, key_added="a", random_state=3)
    st.tl.storm_domains(embedded, n_domains=4, key_added="b", random_state=3)
    obs = embedded["table"].obs
    assert (obs["a"] == obs["b"]).all()


def test_trained_domains_recover_planted_ones(embedded):
    st.tl.storm_domains(embedded, n_domains=3)
    st.tl.storm_domains(embedded, n_domains=3, expression_pcs=0, key_added="alone")
    obs = embedded["table"].obs
    assert adjusted_rand_score(obs["true_domain"], obs["storm_domain"]) > 0.5
    assert adjusted_rand_score(obs["true_domain"], obs["alone"]) > 0.5


def test_expression_components_beside_the_embedding(embedded):
    table = embedded["table"]
    truth = table.obs["true_domain"].cat.codes.to_numpy()
    # An embedding that knows nothing: the domains must then come from the slide's own expression components.
    table.obsm["blind"] = np.random.default_rng(0).normal(size=(table.n_obs, 8)).astype(np.float32)
    st.tl.storm_domains(embedded, n_domains=3, use_rep="blind", key_added="with")
    st.tl.storm_domains(embedded, n_domains=3, use_rep="blind", key_added="without", expression_pcs=0)
    assert adjusted_rand_score(truth, table.obs["with"]) > 0.5
    assert adjusted_rand_score(truth, table.obs["without"]) < 0.2
    params = table.uns["storm"]
    assert params["with"]["expression_pcs"] == 32 and params["without"]["expression_pcs"] == 0
    # The same as clustering the two blocks, weighted equally, with the components switched off.
    from storm_sc.tl._domains import side_by_side

    both = side_by_side([[table.obsm["blind"]], [st.pp.expression_components(table)]])[0]
    table.obsm["both"] = both
    st.tl.storm_domains(embedded, n_domains=3, use_rep="both", key_added="manual", expression_pcs=0)
    assert (table.obs["manual"] == table.obs["with"]).all()


def test_slides_without_expression_cluster_the_embedding_alone(embedded, caplog):
    import anndata as ad

    table = embedded["table"]
    positions = st.io.resolve(embedded).centers_um
    bare = ad.AnnData(
        obs=table.obs[["true_domain"]].copy(), obsm={"spatial": positions, "X_storm": table.obsm["X_storm"]}
    )
    st.tl.storm_domains(bare, n_domains=3, mpp=1.0)
    assert bare.uns["storm"]["storm_domain"]["expression_pcs"] == 0
    assert "no expression" in caplog.text


def test_smoothing_makes_domains_spatially_coherent(embedded):
    table = embedded["table"]
    # A noisy embedding: truth plus strong noise. Neighbour smoothing must make domains more coherent.
    rng = np.random.default_rng(0)
    truth = table.obs["true_domain"].cat.codes.to_numpy()
    table.obsm["noisy"] = np.eye(3)[truth] + rng.normal(scale=1.2, size=(table.n_obs, 3))
    alone = {"use_rep": "noisy", "expression_pcs": 0}
    st.tl.storm_domains(embedded, n_domains=3, key_added="raw", smooth_steps=0, **alone)
    st.tl.storm_domains(embedded, n_domains=3, key_added="smooth", **alone)
    raw = adjusted_rand_score(truth, table.obs["raw"])
    smooth = adjusted_rand_score(truth, table.obs["smooth"])
    assert smooth > raw + 0.1


def test_leiden_resolution(embedded):
    st.tl.storm_domains(embedded, resolution=0.3, key_added="low")
    st.tl.storm_domains(embedded, resolution=3.0, key_added="high")
    obs = embedded["table"].obs
    assert obs["high"].nunique() > obs["low"].nunique() >= 1


def test_consistent_across_slides(embedded):
    import spatialdata as sd

    twin = sd.deepcopy(embedded)
    st.tl.storm_domains([embedded, twin], n_domains=3)
    a, b = embedded["table"].obs["storm_domain"], twin["table"].obs["storm_domain"]
    assert (a.to_numpy() == b.to_numpy()).all()
    assert embedded["table"].uns["storm_domain_colors"] == twin["table"].uns["storm_domain_colors"]


def test_a_slide_wide_offset_does_not_split_slides(embedded):
    """Two copies of one slide, one embedding shifted as a whole (a batch effect, a missing modality): centred per
    slide they get the same domains; centred over both, the shift decides the domains."""
    import anndata as ad
    import spatialdata as sd

    twin = sd.deepcopy(embedded)
    rep = embedded["table"].obsm["X_storm"]
    twin["table"].obsm["X_storm"] = rep + 3.0 * np.abs(rep).max()
    alone = {"n_domains": 3, "expression_pcs": 0}
    st.tl.storm_domains([embedded, twin], **alone)
    a, b = embedded["table"].obs["storm_domain"].to_numpy(), twin["table"].obs["storm_domain"].to_numpy()
    assert (a == b).all()
    assert embedded["table"].uns["storm"]["storm_domain"]["center"] == "slide"
    st.tl.storm_domains([embedded, twin], center="all", key_added="all", **alone)
    a, b = embedded["table"].obs["all"].to_numpy(), twin["table"].obs["all"].to_numpy()
    assert not set(a) & set(b)  # no domain shared by the two copies
    # one slide: the two centres are the same
    st.tl.storm_domains(embedded, center="all", key_added="one_all", n_domains=3)
    st.tl.storm_domains(embedded, key_added="one_slide", n_domains=3)
    obs = embedded["table"].obs
    assert (obs["one_all"] == obs["one_slide"]).all()
    # two libraries in one table are centred one by one, like two slides
    table, shifted = embedded["table"], twin["table"]
    joined = ad.concat([table, shifted], label="library", keys=["a", "b"], index_unique="-")
    joined.obsm["spatial"] = np.vstack([st.io.resolve(embedded).centers_um] * 2)
    st.tl.storm_domains(joined, library_key="library", mpp=1.0, key_added="lib", **alone)
    lib = joined.obs["lib"].to_numpy()
    assert (lib[: table.n_obs] == lib[table.n_obs :]).all()
    with pytest.raises(ValueError, match="center"):
        st.tl.storm_domains(embedded, n_domains=3, center="none", key_added="bad")
    joined.obs.loc[joined.obs_names[0], "library"] = np.nan
    with pytest.raises(ValueError, match="missing values"):
        st.tl.storm_domains(joined, library_key="library", mpp=1.0, key_added="nan", **alone)
    assert "nan" not in joined.obs


def test_errors_before_work(embedded, toy_sdata_factory):
    fresh = toy_sdata_factory(seed=7)
    with pytest.raises(KeyError, match="storm_embed"):
        st.tl.storm_domains(fresh, n_domains=3)
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="n_domains"):
            st.tl.storm_domains(embedded, n_domains=bad)
    with pytest.raises(ValueError, match="expression_pcs"):
        st.tl.storm_domains(embedded, n_domains=3, expression_pcs=-1)
    with pytest.raises(KeyError, match="layer 'counts' not found"):
        st.tl.storm_domains(embedded, n_domains=3, layer="counts")
    table = embedded["table"]
    table.layers["scaled"] = np.asarray(table.X.todense() if hasattr(table.X, "todense") else table.X) - 1.0
    with pytest.raises(ValueError, match=r"negative values.*`layer=`.*`expression_pcs=0`"):
        st.tl.storm_domains(embedded, n_domains=3, layer="scaled")  # as after sc.pp.scale
    del table.layers["scaled"]
    assert "storm_domain" not in embedded["table"].obs
    st.tl.storm_domains(embedded, n_domains=2)
    with pytest.raises(ValueError, match="already exists"):
        st.tl.storm_domains(embedded, n_domains=3)
    assert embedded["table"].obs["storm_domain"].nunique() == 2
    copy = st.tl.storm_domains(embedded, n_domains=3, key_added="d3", copy=True)
    assert "d3" not in embedded["table"].obs and "d3" in copy["table"].obs


def test_slides_sharing_a_name_are_numbered_in_messages():
    first, second = (st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0) for _ in range(2))
    first["table"].obsm["X_storm"] = first["table"].X.toarray()
    name = st.io.resolve(second).library_id
    with pytest.raises(KeyError, match=rf"{name} \(2\): \.obsm\['X_storm'\] not found"):
        st.tl.storm_domains([first, second], n_domains=3)


def test_smoothing_operator_is_the_neighbour_mean_rule():
    from scipy import sparse

    from storm_sc.tl._domains import smooth_embedding

    rng = np.random.default_rng(0)
    n, weight = 50, 0.5
    x = rng.normal(size=(n, 4))
    rows, cols = rng.integers(0, n - 5, 200), rng.integers(0, n - 5, 200)  # the last 5 have no neighbours
    keep = rows != cols
    graph = sparse.csr_matrix((rng.uniform(10, 100, keep.sum()), (rows[keep], cols[keep])), shape=(n, n))
    expected = x.copy()
    adjacency = (graph > 0).toarray().astype(float)
    degree = adjacency.sum(1)
    for _ in range(2):
        mean = np.divide(adjacency @ expected, degree[:, None], out=expected.copy(), where=degree[:, None] > 0)
        expected = np.where(degree[:, None] > 0, (1 - weight) * expected + weight * mean, expected)
    got = smooth_embedding(x, graph, steps=2, weight=weight)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got[-5:], x[-5:])  # isolated observations are left as they are


def test_each_library_of_one_table_is_standardised_on_its_own():
    import anndata as ad

    from storm_sc.tl._domains import _slide_components

    parts = [st.datasets.toy(n_obs=120, n_genes=30, n_domains=3, seed=s)["table"] for s in (1, 2)]
    joined = ad.concat(parts, label="library", keys=["a", "b"], index_unique="-")
    got = _slide_components([joined], 4, layer=None, library_key="library")[0]
    expected = st.pp.expression_components(parts, n_components=4)
    np.testing.assert_allclose(got, np.vstack(expected), rtol=1e-5, atol=1e-5)


def test_leiden_domains_of_a_large_slide():
    """From 8,192 observations scanpy searches neighbours with pynndescent, whose sparse array scanpy 1.11 cannot
    read: storm_domains (and the UMAP view) must still work there, and find the planted domains."""
    import anndata as ad

    rng = np.random.default_rng(0)
    n = 9_000
    xy = rng.uniform(0, 3_000, size=(n, 2))
    planted = (xy[:, 0] // 1_000).astype(int)  # three vertical bands
    centres = rng.normal(size=(3, 16)) * 3
    table = ad.AnnData(
        np.zeros((n, 0), dtype=np.float32),
        obsm={"spatial": xy, "X_storm": (centres[planted] + rng.normal(size=(n, 16))).astype(np.float32)},
    )
    st.tl.storm_domains(table, resolution=0.1, expression_pcs=0, mpp=1.0)
    found = table.obs["storm_domain"]
    assert adjusted_rand_score(planted, found) > 0.9


@pytest.mark.parametrize("n_domains", [6, None])
def test_domains_do_not_depend_on_the_row_order(n_domains):
    import anndata as ad

    rng = np.random.default_rng(1)
    n = 600
    # no structure to find: k-means' seeding (by row) decided these domains before they were clustered in an order
    # of the observations' own
    table = ad.AnnData(
        np.zeros((n, 0), dtype=np.float32),
        obsm={"spatial": rng.uniform(0, 2_000, (n, 2)), "X_storm": rng.normal(size=(n, 8)).astype(np.float32)},
    )
    table.obs_names = [f"c{i}" for i in range(n)]
    shuffled = table[rng.permutation(n)].copy()
    for t in (table, shuffled):
        st.tl.storm_domains(t, n_domains=n_domains, expression_pcs=0, mpp=1.0)
    same = table.obs.loc[shuffled.obs_names, "storm_domain"].astype(str).to_numpy()
    np.testing.assert_array_equal(shuffled.obs["storm_domain"].astype(str).to_numpy(), same)


def _positions_only(xy, libraries=None):
    import anndata as ad
    import pandas as pd

    adata = ad.AnnData(np.ones((len(xy), 3), dtype=np.float32), obsm={"spatial": np.asarray(xy, dtype=float)})
    if libraries is not None:
        adata.obs["slide"] = pd.Categorical(libraries)
    return adata


def test_smoothing_graph_takes_a_grids_first_ring():
    from storm_sc.io import resolve
    from storm_sc.tl._domains import smoothing_graph

    rng = np.random.default_rng(0)
    square = np.array([[x, y] for x in range(8) for y in range(8)], dtype=float) * 200.0  # legacy ST, 200 um pitch
    square += rng.normal(0, 8, square.shape)  # measured spot positions are a little off the grid
    graph, rule = smoothing_graph(resolve(_positions_only(square), mpp=1.0))
    assert rule.startswith("first ring of a 19")  # the nearest of jittered neighbours: a little under 200 um
    degree = graph.getnnz(axis=1)
    interior = [i for i, (x, y) in enumerate(np.round(square / 200.0)) if 0 < x < 7 and 0 < y < 7]
    assert set(degree[interior]) == {4}  # the sides; 6 nearest would add 2 of the 4 diagonals, picked by the noise
    hexagonal = np.array([[x + 0.5 * (y % 2), y * np.sqrt(3) / 2] for x in range(8) for y in range(8)]) * 100.0
    degree = smoothing_graph(resolve(_positions_only(hexagonal), mpp=1.0))[0].getnnz(axis=1)
    assert degree.max() == 6 and np.median(degree) == 6
    cells = rng.uniform(0, 500, (200, 2))
    graph, rule = smoothing_graph(resolve(_positions_only(cells), mpp=1.0))
    assert set(graph.getnnz(axis=1)) == {6} and rule == "6 nearest neighbours"
    # Two slides of one table: each its own grid, no edge between them.
    both = np.vstack([square, square + 1.0])  # overlapping: only the libraries keep them apart
    table = _positions_only(both, ["a"] * 64 + ["b"] * 64)
    graph = smoothing_graph(resolve(table, mpp=1.0), library_key="slide")[0].tocoo()
    assert ((graph.row < 64) == (graph.col < 64)).all() and graph.getnnz(axis=1).max() == 4


def test_results_never_replace_what_the_table_depends_on(toy_sdata_factory, trained_model):
    # overwrite=True replaces results; a domain column over the region key would unlink the table from its shapes
    sdata = toy_sdata_factory(seed=3)
    table = sdata["table"]
    attrs = table.uns["spatialdata_attrs"]
    table.obsm["X_storm"] = np.random.default_rng(0).normal(size=(table.n_obs, 8))
    table.obs["section"] = "s1"
    before = table.obs.copy()
    for key, role in ((attrs["region_key"], "region key"), (attrs["instance_key"], "instance key")):
        with pytest.raises(ValueError, match=f"holds the table's {role}.*not even with `overwrite=True`"):
            st.tl.storm_domains(sdata, n_domains=3, key_added=key, overwrite=True)
    with pytest.raises(ValueError, match="section names"):
        st.tl.storm_domains(sdata, n_domains=3, key_added="section", library_key="section", overwrite=True)
    pd.testing.assert_frame_equal(table.obs, before)
    with pytest.raises(ValueError, match=r"\.obsm\['spatial'\] holds the table's positions"):
        st.tl.storm_embed(sdata, trained_model, key_added="spatial", overwrite=True, verbose=False)
