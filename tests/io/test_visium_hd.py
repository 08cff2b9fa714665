"""Visium HD: a generated SpatialData laid out as spatialdata_io.visium_hd writes it (no real fixture exists)."""

from __future__ import annotations

import numpy as np
import pytest
from spatialdata.transformations import Identity, set_transformation

import storm_sc as st
from storm_sc.io._elements import full_res
from storm_sc.io._visium_hd import bin_size_um
from tests.io._synthetic import HD_MPP, decode_pixels, fingerprint, visium_hd_sdata


@pytest.fixture(scope="module")
def hd():
    return visium_hd_sdata()


def test_detected_as_visium_hd(hd):
    assert st.io.detect_platform(hd) == "visium_hd"
    assert st.io.detect_platform(visium_hd_sdata(reader_attr="spatialdata_io.visium_hd", cells=False)) == "visium_hd"


def test_several_tables_need_a_choice_listing_bins_and_cells(hd):
    before = fingerprint(hd)
    with pytest.raises(
        ValueError, match=r"table_key=.*\['square_002um', 'square_008um', 'square_016um'\].*\['cell_segmentations'\]"
    ):
        st.io.resolve(hd)
    assert fingerprint(hd) == before


def test_prediction_tables_are_not_offered_as_measured_tables():
    from storm_sc._constants import LAYER_PREDICTED_STD

    sdata = visium_hd_sdata()
    pred = sdata.tables["square_008um"].copy()
    pred.layers[LAYER_PREDICTED_STD] = pred.X  # what marks a table of predict_expression's
    sdata.tables["storm_predicted"] = pred
    with pytest.raises(ValueError, match=r"table_key=.*\['square_002um', 'square_008um', 'square_016um'\]") as err:
        st.io.resolve(sdata)
    assert "storm_predicted" not in str(err.value)


@pytest.mark.parametrize("bin_um", [2, 8, 16])
def test_bin_size_sets_the_scale(hd, bin_um):
    key = f"square_{bin_um:03}um"
    si = st.io.resolve(hd, table_key=key)
    assert si.platform == "visium_hd"
    assert si.library_id == "hd"
    assert si.regions == (f"hd_{key}",)
    assert si.extra["bin_size_um"] == bin_um
    # the full-resolution image wins over hires, lowres and the CytAssist capture
    assert si.image_key == "hd_full_image"
    assert si.mpp == pytest.approx(HD_MPP)
    # neighbouring bins are one bin size apart in microns
    table = si.table
    rows, cols = table.obs["array_row"].to_numpy(), table.obs["array_col"].to_numpy()
    right = {(r, c): i for i, (r, c) in enumerate(zip(rows, cols, strict=True))}
    pairs = [(i, right[(r, c + 1)]) for i, (r, c) in enumerate(zip(rows, cols, strict=True)) if (r, c + 1) in right]
    d = np.array([np.linalg.norm(si.centers_um[j] - si.centers_um[i]) for i, j in pairs])
    np.testing.assert_allclose(d, bin_um, rtol=1e-9)
    # pixel positions are those written in obsm["spatial"] (full-res pixels), and the image agrees
    np.testing.assert_allclose(si.centers_px, table.obsm["spatial"], atol=1e-9)
    decoded = decode_pixels(full_res(si.image).values, si.centers_px)
    np.testing.assert_array_equal(decoded, np.floor(table.obsm["spatial"]).astype(int))


def test_segmented_cells_take_the_scale_of_the_bins(hd):
    si = st.io.resolve(hd, table_key="cell_segmentations")
    assert si.regions == ("hd_cell_segmentations",)
    assert si.mpp == pytest.approx(HD_MPP)
    assert "bin_size_um" not in si.extra
    assert si.extra["scale_from_bins"].startswith("hd_square_")
    polys = hd.shapes["hd_cell_segmentations"]
    cen = np.column_stack([polys.centroid.x, polys.centroid.y])
    np.testing.assert_allclose(si.centers_px, cen[polys.index.get_indexer(si.table.obs["cell_id"])], atol=1e-9)
    np.testing.assert_allclose(si.centers_um, si.centers_px * HD_MPP, atol=1e-9)


def test_without_full_image_hires_is_used():
    sdata = visium_hd_sdata(full_image=False, cells=False, bin_sizes=(8,))
    si = st.io.resolve(sdata)  # one table: no choice needed
    assert si.image_key == "hd_hires_image"
    assert si.mpp == pytest.approx(HD_MPP / 0.25)
    np.testing.assert_allclose(si.centers_px, si.table.obsm["spatial"] * 0.25, atol=1e-9)


def test_wrong_mpp_is_refused_by_the_bin_size(hd):
    before = fingerprint(hd)
    with pytest.raises(
        ValueError, match=r"`mpp=5` is 10x larger than the scale of this visium_hd slide found from the 8 um bins"
    ):
        st.io.resolve(hd, table_key="square_008um", mpp=HD_MPP * 10)
    assert fingerprint(hd) == before
    # a close value is taken as given
    assert st.io.resolve(hd, table_key="square_008um", mpp=HD_MPP * 1.1).mpp == pytest.approx(HD_MPP * 1.1)


def test_scale_unknown_without_bins_asks_for_mpp():
    sdata = visium_hd_sdata(bin_sizes=(), cells=True)
    with pytest.raises(ValueError, match=r"pass `mpp=`"):
        st.io.resolve(sdata)
    assert st.io.resolve(sdata, mpp=HD_MPP).mpp == pytest.approx(HD_MPP)


def test_bins_moved_into_another_system_are_not_used_for_cells():
    sdata = visium_hd_sdata(bin_sizes=(8,), cells=True)
    set_transformation(sdata.shapes["hd_square_008um"], {"elsewhere": Identity()}, set_all=True)
    with pytest.raises(ValueError, match=r"pass `mpp=`"):
        st.io.resolve(sdata, table_key="cell_segmentations")


@pytest.mark.parametrize(
    ("name", "table", "expected"),
    [
        ("square_002um", True, 2.0),
        ("square_016um", True, 16.0),
        ("hd_square_008um", False, 8.0),
        ("hd_square_008um", True, None),
        ("cell_segmentations", True, None),
    ],
)
def test_bin_size_from_names(name, table, expected):
    assert bin_size_um(name, table=table) == expected


def test_rasterised_bins_use_the_exact_bin_squares():
    """visium_hd(..., annotate_table_by_labels=True) relinks the tables to rasterised bins; centres stay exact."""
    from spatialdata import rasterize_bins, rasterize_bins_link_table_to_labels

    sdata = visium_hd_sdata(bin_sizes=(8,), cells=False)
    labels = rasterize_bins(
        sdata,
        bins="hd_square_008um",
        table_name="square_008um",
        row_key="array_row",
        col_key="array_col",
        value_key=None,
        return_region_as_labels=True,
    )
    sdata["hd_square_008um_labels"] = labels
    rasterize_bins_link_table_to_labels(
        sdata=sdata, table_name="square_008um", rasterized_labels_name="hd_square_008um_labels"
    )
    assert sdata.tables["square_008um"].uns["spatialdata_attrs"]["region"] == "hd_square_008um_labels"
    si = st.io.resolve(sdata)
    assert si.regions == ("hd_square_008um",)
    assert si.extra["bin_size_um"] == 8
    np.testing.assert_allclose(si.centers_px, si.table.obsm["spatial"], atol=1e-9)
