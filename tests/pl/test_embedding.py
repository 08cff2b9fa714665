import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from spatialdata import SpatialData

import storm_sc as st

from ._snapshot import assert_unchanged, snapshot


def _points(ax) -> PathCollection:
    # scanpy adds an empty scatter per category for the legend; the data are the largest collection
    return max((c for c in ax.collections if isinstance(c, PathCollection)), key=lambda c: len(c.get_offsets()))


def test_umap_of_one_slide_coloured_by_domain(sdata, tmp_path):
    before = snapshot(sdata)
    table = sdata["table"]
    fig = st.pl.embedding_umap(sdata, save=tmp_path / "umap.png", show=False)
    assert (tmp_path / "umap.png").stat().st_size > 5_000
    (ax,) = fig.axes
    assert ax.get_title() == "storm_domain"
    points = _points(ax)
    assert len(points.get_offsets()) == table.n_obs
    colors = {to_rgba(c)[:3] for c in table.uns["storm_domain_colors"]}
    assert {tuple(c[:3]) for c in points.get_facecolor()} <= colors
    assert_unchanged(before, sdata)  # no X_umap, no neighbours written
    # reproducible for a seed
    again = st.pl.embedding_umap(sdata, random_state=0, show=False)
    coords = np.sort(_points(again.axes[0]).get_offsets().data, axis=0)
    np.testing.assert_allclose(coords, np.sort(points.get_offsets().data, axis=0))


def test_umap_of_several_slides(slides):
    fig = st.pl.embedding_umap(slides, n_neighbors=10, show=False)
    axes = [a for a in fig.axes if a.get_visible() and a.get_title()]
    assert [a.get_title() for a in axes] == ["storm_domain", "slide"]
    assert len(_points(axes[0]).get_offsets()) == sum(s["table"].n_obs for s in slides)
    labels = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert labels == ["toy (1)", "toy (2)"]
    # slides are not coloured like domains: side by side, the same colours would read as a correspondence
    slide_colors = {tuple(c[:3]) for c in _points(axes[1]).get_facecolor()}
    domain_colors = {tuple(c[:3]) for c in _points(axes[0]).get_facecolor()}
    assert len(slide_colors) == 2 and not slide_colors & domain_colors


def test_umap_centred_per_slide_mixes_shifted_slides(slides):
    tables = [s["table"].copy() for s in slides]
    tables[1].obsm["X_storm"] = tables[1].obsm["X_storm"] + 100.0  # the whole slide shifted

    def slide_of_neighbours(fig) -> float:
        from scipy.spatial import cKDTree

        xy = _points(fig.axes[0]).get_offsets().data
        slide = np.repeat([0, 1], [t.n_obs for t in tables])
        _, nearest = cKDTree(xy).query(xy, k=6)
        return float((slide[nearest[:, 1:]] == slide[:, None]).mean())

    apart = slide_of_neighbours(st.pl.embedding_umap(tables, color="true_domain", show=False))
    mixed = slide_of_neighbours(st.pl.embedding_umap(tables, color="true_domain", center="slide", show=False))
    assert apart > 0.99 and mixed < 0.8
    with pytest.raises(ValueError, match="center"):
        st.pl.embedding_umap(tables, color="true_domain", center="each")


def test_umap_of_tables_with_numeric_colour(slides):
    # bare AnnData tables need no positions for a UMAP
    tables = [s["table"].copy() for s in slides]
    for i, t in enumerate(tables):
        t.obs["depth"] = np.linspace(0, 1, t.n_obs) + i
    fig = st.pl.embedding_umap(tables, color=["true_domain", "depth", "slide"], show=False)
    axes = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in axes] == ["true_domain", "depth", "slide"]
    np.testing.assert_allclose(
        np.sort(_points(axes[1]).get_array()), np.sort(np.concatenate([t.obs["depth"] for t in tables]))
    )
    assert [t.get_text() for t in axes[2].get_legend().get_texts()] == ["slide (1)", "slide (2)"]


def test_umap_coloured_by_a_gene_as_scanpy_does(slides):
    tables = [s["table"] for s in slides]
    gene = tables[0].var_names[3]
    fig = st.pl.embedding_umap(tables, color=[gene, "true_domain"], show=False)
    panel = next(a for a in fig.axes if a.get_title() == gene)
    expected = np.concatenate([np.asarray(t[:, gene].X.toarray()).ravel() for t in tables])
    np.testing.assert_allclose(np.sort(_points(panel).get_array()), np.sort(expected))


def test_umap_of_slides_whose_scale_is_unknown(slides):
    # spatialdata.concatenate drops the recorded mpp: a UMAP needs no scale and must not ask for one
    unscaled = [SpatialData(images=dict(s.images), shapes=dict(s.shapes), tables=dict(s.tables)) for s in slides]
    with pytest.raises(ValueError, match="pass `mpp=`"):
        st.io.resolve(unscaled[0])
    fig = st.pl.embedding_umap(unscaled, n_neighbors=10, show=False)
    assert len(_points(fig.axes[0]).get_offsets()) == sum(s["table"].n_obs for s in slides)


def test_umap_errors(sdata, slides):
    bare = st.datasets.toy(n_obs=60, n_genes=10, n_domains=2, seed=0)
    with pytest.raises(KeyError, match="storm_embed"):
        st.pl.embedding_umap(bare, color="true_domain")
    bare["table"].obsm["X_storm"] = np.ones((60, 4))  # a throwaway slide, not a fixture
    with pytest.raises(ValueError, match="Nothing to colour by"):
        st.pl.embedding_umap(bare)
    with pytest.raises(KeyError, match="nope"):  # the missing embedding is named before the missing domains
        st.pl.embedding_umap(bare, use_rep="nope")
    with pytest.raises(KeyError, match="no_such_column"):
        st.pl.embedding_umap(sdata, color="no_such_column")
    narrow = sdata["table"].copy()
    narrow.obsm["X_storm"] = narrow.obsm["X_storm"][:, :3]
    other = SpatialData(shapes=dict(sdata.shapes), tables={"table": narrow})
    other.attrs.update(sdata.attrs)
    with pytest.raises(ValueError, match="different widths"):
        st.pl.embedding_umap([slides[1], other])
    with pytest.raises(ValueError, match="n_neighbors"):
        st.pl.embedding_umap(sdata, n_neighbors=1)
