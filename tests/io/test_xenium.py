"""Xenium laid out as spatialdata_io.xenium writes it, with an aligned H&E image as xenium_aligned_image adds it."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Point
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, Labels2DModel, ShapesModel, TableModel
from spatialdata.transformations import Affine, Identity, Scale

import storm_sc as st
from storm_sc.io._elements import full_res
from tests.io._synthetic import affine, coordinate_image, decode_pixels, expression, fingerprint

PIXEL_SIZE = 0.2125  # um per morphology-image pixel, as in Xenium's experiment.xenium
# H&E pixel -> morphology pixel, as in an alignment csv: rotated, 0.5 um H&E pixels = 2.35 morphology pixels
HE_TO_MORPHOLOGY = affine(4.0, 0.5 / PIXEL_SIZE, -30.0, 12.0)


def xenium_sdata(*, he: int = 1, labels: bool = False, n_cells: int = 40, seed: int = 0):
    """Cells (circles in microns), morphology image (global = its pixels), table, ``he`` aligned H&E images."""
    rng = np.random.default_rng(seed)
    he_shape = (320, 400)  # (y, x) of the H&E image
    true_he_px = np.column_stack(
        [rng.uniform(20, he_shape[1] - 20, n_cells), rng.uniform(20, he_shape[0] - 20, n_cells)]
    )
    morph_px = true_he_px @ HE_TO_MORPHOLOGY[:2, :2].T + HE_TO_MORPHOLOGY[:2, 2]
    cells_um = morph_px * PIXEL_SIZE
    ids = [f"cell{i:04d}-1" for i in range(n_cells)]
    to_global = Scale([1 / PIXEL_SIZE, 1 / PIXEL_SIZE], axes=("x", "y"))
    shapes = {
        "cell_circles": ShapesModel.parse(
            gpd.GeoDataFrame({"radius": np.full(n_cells, 5.0)}, geometry=[Point(*p) for p in cells_um], index=ids),
            transformations={"global": to_global},
        )
    }
    side = int(morph_px.max() + 50)
    images = {
        "morphology_focus": Image2DModel.parse(
            np.zeros((1, side, side), np.uint16), dims=("c", "y", "x"), transformations={"global": Identity()}
        )
    }
    for i in range(he):
        images[f"he_image{'' if i == 0 else i}"] = Image2DModel.parse(
            coordinate_image(*he_shape),
            dims=("c", "y", "x"),
            c_coords=["r", "g", "b"],
            transformations={"global": Affine(HE_TO_MORPHOLOGY, input_axes=("x", "y"), output_axes=("x", "y"))},
        )
    region = "cell_circles"
    label_ids = np.arange(1, n_cells + 1)
    labels_el = {}
    if labels:
        # one 5 x 5 px square of label i around each cell, in morphology pixels (global, identity)
        mask = np.zeros((side, side), np.int32)
        for lid, (x, y) in zip(label_ids, morph_px, strict=True):
            mask[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3] = lid
        labels_el["cell_labels"] = Labels2DModel.parse(mask, dims=("y", "x"), transformations={"global": Identity()})
        region = "cell_labels"
    table = expression(n_cells, seed=seed)
    table.obs_names = ids
    table.obs["cell_id"] = ids
    table.obs["cell_labels"] = label_ids
    table.obs["region"] = pd.Categorical([region] * n_cells)
    table.obsm["spatial"] = cells_um
    table = TableModel.parse(
        table, region=region, region_key="region", instance_key="cell_labels" if labels else "cell_id"
    )
    sdata = SpatialData(images=images, shapes=shapes, labels=labels_el, tables={"table": table})
    sdata.attrs["spatialdata_io_reader"] = "xenium"
    return sdata, true_he_px


def test_aligned_he_image_is_used_with_its_own_scale():
    sdata, true_he_px = xenium_sdata()
    si = st.io.resolve(sdata)
    assert si.platform == "xenium"
    assert si.image_key == "he_image"  # the fluorescence morphology image is never taken as H&E
    assert si.mpp == pytest.approx(0.5, rel=1e-9)
    np.testing.assert_allclose(si.centers_px, true_he_px, atol=1e-6)
    decoded = decode_pixels(full_res(si.image).values, si.centers_px)
    np.testing.assert_array_equal(decoded, np.floor(true_he_px).astype(int))
    np.testing.assert_allclose(si.centers_um, si.table.obsm["spatial"], atol=1e-9)


def test_without_he_image_expression_only(storm_log):
    sdata, _ = xenium_sdata(he=0)
    si = st.io.resolve(sdata)
    assert si.image is None
    assert si.mpp is None
    assert si.extra["pixel_size_um"] == pytest.approx(PIXEL_SIZE)
    assert "expression-only use stays possible" in storm_log.text
    np.testing.assert_allclose(si.centers_um, si.table.obsm["spatial"], atol=1e-9)
    # the fluorescence image can still be named explicitly
    assert st.io.resolve(sdata, image_key="morphology_focus").mpp == pytest.approx(PIXEL_SIZE)


def test_two_he_images_need_a_choice():
    sdata, _ = xenium_sdata(he=2)
    before = fingerprint(sdata)
    with pytest.raises(ValueError, match=r"Several H&E images .*\['he_image', 'he_image1'\]; pass `image_key=`"):
        st.io.resolve(sdata)
    assert fingerprint(sdata) == before
    assert st.io.resolve(sdata, image_key="he_image1").image_key == "he_image1"


def test_cell_labels_are_replaced_by_the_cell_shapes():
    sdata, true_he_px = xenium_sdata(labels=True)
    si = st.io.resolve(sdata)
    assert si.regions == ("cell_circles",)
    np.testing.assert_allclose(si.centers_px, true_he_px, atol=1e-6)


def test_cells_as_labels_take_the_micron_scale_from_other_elements():
    sdata, true_he_px = xenium_sdata(labels=True)
    # the circles no longer carry the table's ids: the labels themselves must be used
    circles = sdata.shapes["cell_circles"]
    sdata.shapes["cell_circles"] = circles.set_index(circles.index + "_other")
    si = st.io.resolve(sdata)
    assert si.regions == ("cell_labels",)
    assert si.extra["pixel_size_um"] == pytest.approx(PIXEL_SIZE)
    # label squares are centred on the pixel holding each cell: within a pixel of the truth
    morph_err = np.linalg.norm(si.centers_um - si.table.obsm["spatial"], axis=1) / PIXEL_SIZE
    assert morph_err.max() < 1.0


def test_wrong_mpp_for_xenium_is_refused():
    sdata, _ = xenium_sdata()
    with pytest.raises(ValueError, match=r"`mpp=0.05` is 10x smaller than the scale of this xenium slide"):
        st.io.resolve(sdata, mpp=0.05)


def test_slide_read_from_zarr_is_named_after_its_file(tmp_path):
    # The Xenium and CosMx readers record no dataset name: in memory the slide is named after its reader, once saved
    # and read back after its file (logs, plot titles, several slides in one call).
    import spatialdata as sd

    sdata, _ = xenium_sdata(he=0)
    assert st.io.resolve(sdata).library_id == "xenium"
    sdata.write(tmp_path / "lung_run3.zarr")
    assert st.io.resolve(sd.read_zarr(tmp_path / "lung_run3.zarr")).library_id == "lung_run3"
    assert st.io.resolve(sd.read_zarr(tmp_path / "lung_run3.zarr"), library_id="mine").library_id == "mine"
