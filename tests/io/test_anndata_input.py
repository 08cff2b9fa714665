"""resolve() on a scanpy-style Visium AnnData (.obsm["spatial"] + .uns["spatial"][library_id])."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import storm_sc as st
from storm_sc.io._elements import full_res
from storm_sc.io._visium import VISIUM_SPOT_PITCH_UM
from tests._paths import real_data
from tests.io._synthetic import coordinate_image, decode_pixels, expression

PX_PER_UM_FULL = 2.0  # generated scan: 0.5 um per full-resolution pixel
HIRES_SCALEF = 0.2


def _visium_adata(*, n_rows: int = 6, n_cols: int = 8, float_image: bool = False):
    """Spots on the Visium lattice, positions in full-res pixels, a coordinate-encoding hires image."""
    rows, cols = np.mgrid[0:n_rows, 0:n_cols]
    rows, cols = rows.ravel(), cols.ravel() * 2 + (rows.ravel() % 2)  # hexagonal: odd rows shifted by one column
    x_um = 200 + cols * VISIUM_SPOT_PITCH_UM / 2
    y_um = 150 + rows * VISIUM_SPOT_PITCH_UM * np.sqrt(3) / 2
    adata = expression(len(rows))
    adata.obs["in_tissue"] = 1
    adata.obs["array_row"] = rows
    adata.obs["array_col"] = cols
    adata.obsm["spatial"] = np.column_stack([x_um, y_um]) * PX_PER_UM_FULL
    side = int((max(x_um.max(), y_um.max()) + 200) * PX_PER_UM_FULL * HIRES_SCALEF)
    img = coordinate_image(side, side).transpose(1, 2, 0)
    lowres = img[::4, ::4]
    if float_image:  # scanpy reads PNGs as floats in [0, 1]
        img = img.astype(np.float32) / 255.0
    adata.uns["spatial"] = {
        "lib1": {
            "images": {"hires": img, "lowres": lowres},
            "scalefactors": {
                "tissue_hires_scalef": HIRES_SCALEF,
                "tissue_lowres_scalef": HIRES_SCALEF / 4,
                "spot_diameter_fullres": 65.0 * PX_PER_UM_FULL,
            },
        }
    }
    return adata


@pytest.mark.parametrize("float_image", [False, True], ids=["uint8", "float"])
def test_hires_by_default_with_pitch_scale(float_image):
    adata = _visium_adata(float_image=float_image)
    si = st.io.resolve(adata)
    assert si.platform == "visium"
    assert si.library_id == "lib1"
    assert si.image_key == "hires"
    assert si.table is adata
    assert si.table_key is None
    assert si.mpp == pytest.approx(1 / PX_PER_UM_FULL / HIRES_SCALEF, rel=1e-6)
    np.testing.assert_allclose(si.centers_px, adata.obsm["spatial"] * HIRES_SCALEF)
    np.testing.assert_allclose(si.centers_um, adata.obsm["spatial"] / PX_PER_UM_FULL, atol=1e-6)
    img = full_res(si.image).values
    assert img.dtype == np.uint8
    assert img.shape[0] == 3
    np.testing.assert_array_equal(decode_pixels(img, si.centers_px), np.floor(si.centers_px).astype(int))


def test_lowres_on_request_and_spot_diameter_fallback(storm_log):
    adata = _visium_adata()
    del adata.obs["array_row"]
    si = st.io.resolve(adata, image_key="lowres")
    assert si.image_key == "lowres"
    # without the array, spot_diameter_fullres is taken as Space Ranger's 65 um spot
    assert si.mpp == pytest.approx(4 / PX_PER_UM_FULL / HIRES_SCALEF, rel=1e-6)
    assert "spot_diameter_fullres" in storm_log.text


def test_user_mpp_is_per_pixel_of_the_chosen_image():
    adata = _visium_adata()
    native = 1 / PX_PER_UM_FULL / HIRES_SCALEF
    si = st.io.resolve(adata, mpp=native * 1.2)
    assert si.mpp == pytest.approx(native * 1.2)
    with pytest.raises(ValueError, match=r"`mpp=0.5` is 5x smaller than the scale of the 'hires' image") as err:
        st.io.resolve(adata, mpp=0.5)  # the full-resolution mpp, given for the hires image
    assert "microns per pixel of image 'hires'" in str(err.value)
    assert f"pass mpp={native:.4g} (that value divided by the image's scale factor" in str(err.value)
    with pytest.raises(ValueError, match="Check its units") as err:
        st.io.resolve(adata, mpp=native * 10)  # not the full-resolution scale either: nothing to suggest
    assert "pass mpp=" not in str(err.value)


def _snapshot(adata):
    return (
        tuple(adata.obs_names),
        tuple(adata.obs.columns),
        adata.obsm["spatial"].copy(),
        copy.deepcopy(
            {
                k: (v.get("scalefactors"), {i: im.copy() for i, im in v.get("images", {}).items()})
                for k, v in adata.uns["spatial"].items()
            }
        ),
    )


def _drop_uns(a):
    del a.uns["spatial"]


def _two_libs(a):
    a.uns["spatial"]["lib2"] = a.uns["spatial"]["lib1"]


def _nan_position(a):
    a.obsm["spatial"][0, 0] = np.nan


def _dup_names(a):
    a.obs_names = ["x"] * a.n_obs


def _no_scale(a):
    del a.obs["array_col"]
    del a.uns["spatial"]["lib1"]["scalefactors"]["spot_diameter_fullres"]


def _table_of_a_spatialdata(a):
    # What `sdata["table"]` of spatialdata_io.visium carries: a scanpy-like entry without scale factors.
    del a.uns["spatial"]["lib1"]["scalefactors"]
    a.uns["spatialdata_attrs"] = {"region": "lib1", "region_key": "region", "instance_key": "spot_id"}


def _no_obsm(a):
    del a.obsm["spatial"]


def _cell_table_of_a_spatialdata(a):
    # `sdata["table"]` of a Xenium or CosMx SpatialData: positions in the shapes, not in .obsm
    del a.obsm["spatial"], a.uns["spatial"]
    a.uns["spatialdata_attrs"] = {"region": "cells", "region_key": "region", "instance_key": "cell_id"}


def _no_scalef(a):
    sf = a.uns["spatial"]["lib1"]["scalefactors"]
    del sf["tissue_hires_scalef"], sf["tissue_lowres_scalef"]


BAD = {
    "no_uns_spatial": (
        _drop_uns,
        {},
        r"no image in `.uns\['spatial'\]`, so the unit of its positions is unknown; pass `mpp=`",
    ),
    "two_libraries": (_two_libs, {}, r"several libraries \['lib1', 'lib2'\].*split_slides"),
    "unknown_library": (lambda a: None, {"library_id": "nope"}, r"No library 'nope'.*\['lib1'\]"),
    "unknown_image": (lambda a: None, {"image_key": "fullres"}, r"No usable image 'fullres'.*\['hires', 'lowres'\]"),
    "nan_position": (_nan_position, {}, "NaN or infinite"),
    "duplicated_names": (_dup_names, {}, r"obs_names_make_unique"),
    "no_scale": (_no_scale, {}, r"pass `mpp=`"),
    "no_obsm": (_no_obsm, {}, r"no `.obsm\['spatial'\]`"),
    "table_of_a_spatialdata": (_table_of_a_spatialdata, {}, r"pass the SpatialData itself"),
    "cell_table_of_a_spatialdata": (_cell_table_of_a_spatialdata, {}, r"no `.obsm.*pass the SpatialData itself"),
    "no_scalefactor": (_no_scalef, {}, r"no image with a scalefactor"),
    "table_key_given": (lambda a: None, {"table_key": "table"}, r"`table_key` applies to a SpatialData"),
    "bad_mpp": (lambda a: None, {"mpp": -1.0}, "must be a positive number"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_anndata_refused_unchanged(name):
    breaker, kwargs, match = BAD[name]
    adata = _visium_adata()
    breaker(adata)
    before = _snapshot(adata) if "spatial" in adata.uns and "spatial" in adata.obsm else None
    with pytest.raises(ValueError, match=match):
        st.io.resolve(adata, **kwargs)
    if before is not None:
        after = _snapshot(adata)
        assert before[:2] == after[:2]
        np.testing.assert_array_equal(before[2], after[2])
        for lib, (sf, imgs) in before[3].items():
            assert after[3][lib][0] == sf
            for k, im in imgs.items():
                np.testing.assert_array_equal(after[3][lib][1][k], im)


@pytest.mark.realdata
def test_matches_the_spatialdata_route_on_real_visium():
    import spatialdata_io
    import squidpy as sq

    path = real_data("visium_ffpe_villacampa2021", "mousebrain", "V10F24-078_A1")
    adata = sq.read.visium(path)
    si_a = st.io.resolve(adata)
    si_s = st.io.resolve(spatialdata_io.visium(path, dataset_id="A1"))
    assert si_a.image_key == "hires"
    assert si_s.image_key == "A1_hires_image"
    order = si_s.table.obs_names.get_indexer(adata.obs_names)
    np.testing.assert_allclose(si_a.centers_px, si_s.centers_px[order], atol=1e-6)
    assert si_a.mpp == pytest.approx(si_s.mpp, rel=1e-6)


def test_positions_only_anndata_needs_mpp_and_has_no_image():
    import anndata as ad

    import storm_sc as st

    adata = ad.AnnData(np.ones((3, 2), dtype=np.float32), obsm={"spatial": np.array([[0.0, 0], [10, 0], [0, 20]])})
    with pytest.raises(ValueError, match="mpp="):
        st.io.resolve(adata)
    si = st.io.resolve(adata, mpp=0.5)
    assert not si.has_image
    np.testing.assert_allclose(si.centers_um, [[0, 0], [5, 0], [0, 10]])


def test_a_blank_image_is_not_taken_for_the_h_and_e(storm_log):
    # scanpy's Visium fixture keeps a black RGBA float hires image beside its real lowres one
    adata = _visium_adata()
    adata.uns["spatial"]["lib1"]["images"]["hires"] = np.zeros((400, 400, 4), np.float32)
    assert st.io.resolve(adata).image_key == "lowres"
    with pytest.raises(ValueError, match="'hires' of .* shows nothing.*image_key="):
        st.io.resolve(adata, image_key="hires")
    # with blank images only, no H&E is read: the spots are still placed by the scale the data record
    placed = st.io.resolve(adata).centers_um
    adata.uns["spatial"]["lib1"]["images"]["lowres"] = np.full((100, 100, 3), 200, np.uint8)
    adata.uns["spatial"]["lib1"]["images"]["broken"] = None
    si = st.io.resolve(adata)
    assert "show nothing (one colour, or fully transparent): no H&E is read" in storm_log.text
    assert not si.has_image and si.platform == "visium"
    np.testing.assert_allclose(si.centers_um, placed)
    storm_log.clear()
    assert not st.io.resolve(adata, use_image=False).has_image  # a step that needs no pixels: no warning either
    assert "show nothing" not in storm_log.text


def test_scanpy_visium_fixture_uses_its_real_image():
    import scanpy as sc

    path = real_data("visium_heart_fixture")  # skips without the data folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy's deprecation of read_visium
        adata = sc.read_visium(path)
    assert st.io.resolve(adata).image_key == "lowres"  # its hires is a black placeholder
