"""The plots on real Visium slides from the shared data folder (skipped when it is absent)."""

import numpy as np
import pytest
from matplotlib.collections import EllipseCollection
from matplotlib.colors import to_rgba
from matplotlib.image import AxesImage

import storm_sc as st
from tests._paths import real_data

from ._snapshot import assert_unchanged, snapshot

pytestmark = pytest.mark.realdata

FFPE_SECTION = "V19D02-088_B1"  # lung organoids, 444 spots, hires H&E at ~4 um/px


def _files(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def shared_data_dir():
    root = real_data()
    before = _files(root)
    st.settings.data_dir = root
    yield root
    st.settings.data_dir = None
    assert _files(root) == before, "the plots or loaders wrote into the shared data"


@pytest.fixture(scope="module")
def ffpe(shared_data_dir):
    """A real Visium FFPE section with STORM results from a seeded, untrained storm-tiny (the plots, not the
    model, are under test here)."""
    real_data("visium_ffpe_villacampa2021")
    sdata = st.datasets.visium_ffpe(FFPE_SECTION)
    table = sdata["table"]
    totals = np.asarray(table.X.sum(axis=0)).ravel()
    genes = [g for g in table.var_names[np.argsort(-totals)] if not g.startswith("MT-")][:20]
    model = st.models.StormModel("storm-tiny", genes, seed=0)
    st.tl.storm_embed(sdata, model, verbose=False)
    st.tl.storm_domains(sdata, n_domains=4)
    st.tl.predict_expression(sdata, model, genes=genes[:3], verbose=False)
    return sdata


def test_domains_on_real_visium(ffpe, tmp_path):
    before = snapshot(ffpe)
    table = ffpe["table"]
    fig = st.pl.domains(ffpe, save=tmp_path / "domains.png", show=False)
    (ax,) = fig.axes
    (spots,) = [c for c in ax.collections if isinstance(c, EllipseCollection)]
    slide = st.io.resolve(ffpe, table_key="table")
    np.testing.assert_allclose(spots.get_offsets(), slide.centers_um)
    np.testing.assert_allclose(spots.get_widths(), 55.0)  # Visium spots, in microns
    colors = table.uns["storm_domain_colors"]
    expected = [to_rgba(colors[c], 0.75) for c in table.obs["storm_domain"].cat.codes]
    np.testing.assert_allclose(spots.get_facecolor(), expected)
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    left, right, bottom, top = image.get_extent()
    assert left <= slide.centers_um[:, 0].min()
    assert right >= slide.centers_um[:, 0].max()
    assert top <= slide.centers_um[:, 1].min()
    assert bottom >= slide.centers_um[:, 1].max()
    # the low-resolution image lies at the same place
    lowres = [k for k in ffpe.images if k.endswith("lowres_image")][0]
    low = st.pl.domains(ffpe, image_key=lowres, show=False)
    (low_image,) = [a for a in low.axes[0].get_children() if isinstance(a, AxesImage)]
    np.testing.assert_allclose(low_image.get_extent(), image.get_extent(), atol=4 * slide.mpp * 4)
    # the published organoid annotation (NaN outside the selected organoids)
    fig = st.pl.domains(ffpe, key="organoid", show=False)
    assert "NA" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert (tmp_path / "domains.png").exists()
    assert_unchanged(before, ffpe)


def test_expression_and_correlation_on_real_visium(ffpe):
    before = snapshot(ffpe)
    pred = ffpe.tables["storm_predicted"]
    genes = list(pred.var_names)
    fig = st.pl.expression(ffpe, genes[:2], uncertainty=True, show=False)
    assert len([a for a in fig.axes if a.get_title()]) == 6
    table = st.pl.gene_correlations(ffpe)
    assert sorted(table.index) == sorted(genes)
    assert np.isfinite(table["pearson_r"]).all()
    fig = st.pl.gene_correlation(ffpe, show=False)
    assert len(fig.axes[0].get_yticklabels()) == 3
    fig = st.pl.embedding_umap(ffpe, color=["storm_domain", "organoid"], show=False)
    assert len([a for a in fig.axes if a.get_title()]) == 2
    assert_unchanged(before, ffpe)


def test_domains_on_dlpfc_layers(shared_data_dir):
    real_data("dlpfc_151675")
    sdata = st.datasets.dlpfc("151675")
    fig = st.pl.domains(sdata, key="layer", show=False)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["L1", "L2", "L3", "L4", "L5", "L6", "WM", "NA"]
    assert "layer_colors" not in sdata["table"].uns


def test_napari_on_real_visium(ffpe, napari_display):
    viewer = st.pl.napari(ffpe, show=False)
    try:
        slide = st.io.resolve(ffpe, table_key="table")
        image = viewer.layers[0]
        np.testing.assert_allclose(image.scale, [slide.mpp, slide.mpp])
        spots = viewer.layers["storm_domain"]
        np.testing.assert_allclose(spots.data, slide.centers_um[:, ::-1])
        data_rc = np.array([image.world_to_data(yx) for yx in spots.data])
        np.testing.assert_allclose(data_rc, slide.centers_px[:, ::-1] - 0.5, atol=1e-6)
        assert len(viewer.layers) == 2 + ffpe.tables["storm_predicted"].n_vars
    finally:
        viewer.close()
