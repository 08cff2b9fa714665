import sys

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from spatialdata import SpatialData
from spatialdata.models import Image2DModel
from spatialdata.transformations import get_transformation

import storm_sc as st
from storm_sc.pl._napari import _napari_levels

from ._snapshot import assert_unchanged, snapshot
from .conftest import PREDICTED_GENES
from .test_spatial import _gradient_slide


def test_missing_napari_says_how_to_install(sdata, monkeypatch):
    monkeypatch.setitem(sys.modules, "napari", None)  # makes `import napari` fail as if it were not installed
    with pytest.raises(ImportError, match=r'pip install "storm-sc\[napari\]"'):
        st.pl.napari(sdata, show=False)


def test_large_single_level_image_gets_lazy_levels():
    big = _gradient_slide(side=9000)
    (key,) = big.images
    level0 = big.images[key]["scale0"]["image"]
    placed = get_transformation(big.images[key], get_all=True)  # in the slide's own coordinate system
    flat = SpatialData(
        images={key: Image2DModel.parse(level0.data, dims=("c", "y", "x"), transformations=placed)},
        shapes=dict(big.shapes),
        tables={"table": big["table"].copy()},
    )
    flat.attrs.update(big.attrs)
    levels = _napari_levels(st.io.resolve(flat))
    assert [lvl.shape for lvl in levels] == [(9000, 9000, 3), (4500, 4500, 3), (2250, 2250, 3)]
    assert all(lvl.dtype == np.uint8 for lvl in levels)


def test_napari_errors_before_opening_a_viewer(sdata):
    pytest.importorskip("napari", reason='napari is not installed (pip install "storm-sc[napari]")')
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        st.pl.napari(sdata, genes=["NOT_A_GENE"], show=False)
    with pytest.raises(KeyError, match="storm_domain_x"):
        st.pl.napari(sdata, key="storm_domain_x", show=False)
    with pytest.raises(TypeError, match="SpatialData"):
        st.pl.napari([sdata], show=False)


@pytest.fixture
def viewer_of(napari_display):
    opened = []

    def build(*args, **kwargs):
        viewer = st.pl.napari(*args, show=False, **kwargs)
        opened.append(viewer)
        return viewer

    yield build
    for viewer in opened:
        viewer.close()


def _screenshot(viewer) -> np.ndarray:
    # the first screenshot of the hidden viewer, as a user takes it (st.pl.napari renders its window once)
    return viewer.screenshot(canvas_only=True, flash=False)


def test_viewer_in_microns_with_domain_colours(sdata, viewer_of, tmp_path):
    from PIL import Image

    before = snapshot(sdata)
    table = sdata["table"]
    pred = sdata.tables["storm_predicted"]
    slide = st.io.resolve(sdata, table_key="table")
    viewer = viewer_of(sdata)
    names = [layer.name for layer in viewer.layers]
    assert names == ["toy H&E", "storm_domain", *[f"predicted {g}" for g in PREDICTED_GENES]]

    image = viewer.layers["toy H&E"]
    assert image.rgb
    assert not image.multiscale
    np.testing.assert_allclose(image.scale, [2.0, 2.0])  # microns per pixel
    assert [str(u) for u in image.units] == ["micrometer", "micrometer"]

    spots = viewer.layers["storm_domain"]
    np.testing.assert_allclose(spots.data, slide.centers_um[:, ::-1])  # (y, x) in microns
    np.testing.assert_allclose(spots.size, 55.0)
    colors = table.uns["storm_domain_colors"]
    expected = np.array([to_rgba(colors[c]) for c in table.obs["storm_domain"].cat.codes])
    np.testing.assert_allclose(spots.face_color, expected, atol=1e-6)
    assert list(spots.features["storm_domain"]) == list(table.obs["storm_domain"].astype(str))

    # the image pixel under each spot in the viewer is the pixel at the spot's centre in the image
    data_rc = np.array([image.world_to_data(yx) for yx in spots.data])
    np.testing.assert_array_equal(np.floor(data_rc + 0.5), np.floor(slide.centers_px[:, ::-1]))

    for gene in PREDICTED_GENES:
        layer = viewer.layers[f"predicted {gene}"]
        assert not layer.visible
        np.testing.assert_allclose(layer.data, spots.data)
        np.testing.assert_allclose(layer.features[gene], np.asarray(pred[:, gene].X).ravel())
        np.testing.assert_allclose(
            layer.features[f"{gene} s.d."], np.asarray(pred[:, gene].layers["predicted_std"]).ravel()
        )
        assert len(np.unique(layer.face_color, axis=0)) > 10  # coloured by the prediction

    shot = _screenshot(viewer)
    Image.fromarray(shot).save(tmp_path / "napari.png")
    rgb = shot[..., :3].reshape(-1, 3).astype(float)
    assert rgb.std(axis=0).min() > 10
    assert len(np.unique(rgb, axis=0)) > 100
    # each domain present on this slide shows its colour on the canvas (spots at 80% opacity over the tissue);
    # domains are joint across the two slides, so one may be absent here
    present = table.obs["storm_domain"].cat.codes.unique()
    for color in [colors[c] for c in present]:
        target = 255 * np.array(to_rgba(color)[:3])
        assert (np.linalg.norm(rgb - target, axis=1) < 60).mean() > 0.002, color
    assert_unchanged(before, sdata)


def test_viewer_of_a_pyramid_and_without_domains(viewer_of):
    sdata = _gradient_slide(side=4400)
    viewer = viewer_of(sdata, key=None, genes=None)
    image, points = viewer.layers
    assert image.multiscale
    (key,) = sdata.images
    assert len(image.data) == len(sdata.images[key].children)
    np.testing.assert_allclose(image.scale, [0.5, 0.5])
    np.testing.assert_allclose(points.size, 20.0)
    assert points.name == "observations"
    shot = _screenshot(viewer)
    assert shot[..., :3].std() > 10


def test_a_large_prediction_adds_no_gene_layers_unless_named(sdata, viewer_of, monkeypatch, caplog):
    # a whole-vocabulary prediction would add thousands of layers (minutes to build): none by default, with a word
    monkeypatch.setattr("storm_sc.pl._napari.MAX_DEFAULT_GENE_LAYERS", len(PREDICTED_GENES) - 1)
    with caplog.at_level("WARNING", logger="storm_sc"):
        viewer = viewer_of(sdata)
    assert not [layer.name for layer in viewer.layers if layer.name.startswith("predicted ")]
    assert "genes=[...]" in caplog.text
    named = viewer_of(sdata, genes=PREDICTED_GENES[:2])
    assert [layer.name for layer in named.layers if layer.name.startswith("predicted ")] == [
        f"predicted {gene}" for gene in PREDICTED_GENES[:2]
    ]
