"""resolve() on real public data read by spatialdata-io: Visium (14 sections), Xenium, CosMx."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import storm_sc as st
from storm_sc._constants import DEFAULT_PATCH_UM
from storm_sc.io._elements import full_res
from tests._paths import real_data

pytestmark = pytest.mark.realdata

FFPE = "visium_ffpe_villacampa2021"
# (path parts, image expected): the FFPE sections only have hires (+ a derived lowres); the heart fixture's hires
# image is blank RGBA, and DLPFC 151675 ships only the lowres image.
VISIUM = {
    "heart": (("visium_heart_fixture",), "lowres"),
    "dlpfc_151675": (("dlpfc_151675",), "lowres"),
    **{
        section: ((FFPE, group, section), "hires")
        for group, sections in {
            "kidneyorganoid": ["V19D02-085_B1", "V19D02-085_C1", "V19D02-085_D1"],
            "lung_SARS-CoV-2": ["V10F24-110_C1", "V10F24-110_D1"],
            "lungorganoid": ["V19D02-088_A1", "V19D02-088_B1", "V19D02-088_C1", "V19D02-088_D1"],
            # V10F24-078_C1 has counts only (its spatial folder is missing upstream)
            "mousebrain": ["V10F24-078_A1", "V10F24-078_B1", "V10F24-078_D1"],
        }.items()
        for section in sections
    },
}
_CACHE: dict[str, tuple] = {}


def _visium(name: str):
    if name not in _CACHE:
        import spatialdata_io

        parts, _ = VISIUM[name]
        path = real_data(*parts)
        sdata = spatialdata_io.visium(path, dataset_id=name)
        positions = pd.read_csv(next((path / "spatial").glob("tissue_positions*")), header=None, index_col=0)
        if positions.iloc[0].astype(str).str.contains("in_tissue").any():  # Space Ranger 2 has a header
            positions = pd.read_csv(next((path / "spatial").glob("tissue_positions*")), header=0, index_col=0)
        positions.columns = ["in_tissue", "array_row", "array_col", "pxl_row", "pxl_col"]
        scalefactors = json.loads((path / "spatial" / "scalefactors_json.json").read_text())
        _CACHE[name] = (sdata, st.io.resolve(sdata), positions, scalefactors)
    return _CACHE[name]


def _grey_crops(img: np.ndarray, xy: np.ndarray, half: int) -> np.ndarray:
    out = []
    for x, y in np.floor(xy).astype(int):
        crop = img[max(0, y - half) : y + half + 1, max(0, x - half) : x + half + 1]
        if crop.size:
            out.append(crop.mean())
    return np.asarray(out)


@pytest.mark.parametrize("name", list(VISIUM))
def test_visium_positions_image_and_scale(name):
    sdata, si, positions, sf = _visium(name)
    _, which = VISIUM[name]
    assert si.platform == "visium"
    assert si.library_id == name
    assert si.regions == (name,)
    assert si.image_key == f"{name}_{which}_image"
    assert si.table is sdata.tables["table"]

    # centres are Space Ranger's full-resolution positions times the image's scalefactor, read here directly
    scalef = sf[f"tissue_{which}_scalef"]
    expected = positions.loc[si.table.obs_names, ["pxl_col", "pxl_row"]].to_numpy(float) * scalef
    np.testing.assert_allclose(si.centers_px, expected, atol=1e-6)

    # scale: the 100 um pitch between array neighbours, and Space Ranger's "theoretical 65 um spot" within 10%
    mpp_full = si.mpp * scalef
    assert 65.0 / sf["spot_diameter_fullres"] == pytest.approx(mpp_full, rel=0.10)
    obs = si.table.obs
    key = {(r, c): i for i, (r, c) in enumerate(zip(obs["array_row"], obs["array_col"], strict=True))}
    pairs = [(i, key[(r, c + 2)]) for (r, c), i in key.items() if (r, c + 2) in key]
    if pairs:
        d = np.linalg.norm(si.centers_um[[j for _, j in pairs]] - si.centers_um[[i for i, _ in pairs]], axis=1)
        assert np.median(d) == pytest.approx(100.0, rel=0.01)
    if which == "hires" and name != "heart":
        # ~2000 px hires images of a ~6.5 mm capture area plus margins (55 um spots are ~13-14 px)
        assert 3.8 < si.mpp < 4.5


def test_space_rangers_full_resolution_mpp_is_turned_into_the_hires_images():
    name = "V10F24-078_A1"
    sdata, si, _, sf = _visium(name)
    full = 0.1721  # microns per full-resolution pixel of this scan (the spot pitch gives 4.18 per hires pixel)
    with pytest.raises(ValueError, match=f"microns per pixel of image '{name}_hires_image'") as err:
        st.io.resolve(sdata, mpp=full)
    assert f"pass mpp={full / sf['tissue_hires_scalef']:.4g}" in str(err.value)


@pytest.mark.parametrize("name", list(VISIUM))
def test_visium_patches_at_spots_hold_tissue(name):
    """A patch around an in-tissue spot is darker (stained tissue) than one around an off-tissue spot."""
    _, si, positions, sf = _visium(name)
    _, which = VISIUM[name]
    img = full_res(si.image).values[:3].astype(np.float64).mean(axis=0)
    half = max(1, int(round(DEFAULT_PATCH_UM / si.mpp / 2)))
    on = _grey_crops(img, si.centers_px, half)
    off_xy = (
        positions.loc[positions["in_tissue"] == 0, ["pxl_col", "pxl_row"]].to_numpy(float)
        * sf[f"tissue_{which}_scalef"]
    )
    off = _grey_crops(img, off_xy, half)
    assert on.mean() < off.mean() - 15, (on.mean(), off.mean())


def test_visium_section_without_image_cannot_be_read():
    path = real_data(FFPE, "mousebrain", "V10F24-078_C1")
    assert not (path / "spatial").exists()  # counts only: nothing to resolve, nothing to test


def test_xenium_toy_is_expression_only(storm_log):
    import spatialdata_io

    sdata = spatialdata_io.xenium(real_data("xenium_toy"), cells_labels=False, nucleus_labels=False)
    assert st.io.detect_platform(sdata) == "xenium"
    si = st.io.resolve(sdata)
    assert si.platform == "xenium"
    assert not si.has_image
    assert si.image_key is None
    assert "no aligned H&E image" in storm_log.text
    assert "expression-only" in storm_log.text
    # the table annotates cell_labels, not read here: the cell boundaries stand in, matched by cell_id
    assert si.regions == ("cell_boundaries",)
    assert si.extra["pixel_size_um"] == pytest.approx(0.2125)
    # polygon centroids in microns agree with Xenium's own cell centroids (obsm["spatial"], microns)
    dist = np.linalg.norm(si.centers_um - si.table.obsm["spatial"], axis=1)
    assert np.median(dist) < 0.5
    assert dist.max() < 3.0


def test_cosmx_labels_per_fov(storm_log):
    import spatialdata_io

    sdata = spatialdata_io.cosmx(real_data("cosmx_lung12"), dataset_id="Lung12")
    si = st.io.resolve(sdata)
    assert si.platform == "cosmx"
    assert not si.has_image
    assert "immunofluorescence" in storm_log.text
    assert sorted(si.regions) == ["2_labels", "3_labels"]
    assert si.coordinate_system == "global"
    # label centroids (pixel-area convention) vs CosMx's own global cell centres (pixel-index convention)
    expected_um = si.table.obsm["global"] * 0.12028
    dist = np.linalg.norm(si.centers_um - expected_um, axis=1)
    assert dist.max() < 0.12028 * 1.5
    # an explicit composite image of one FOV works for that FOV's cells, and refuses the other FOV's
    with pytest.raises(ValueError, match=r"lie outside image '2_image'"):
        st.io.resolve(sdata, image_key="2_image")
    fov2 = sdata.subset(["2_image", "2_labels"], filter_tables=True)
    si2 = st.io.resolve(fov2, image_key="2_image")
    assert si2.regions == ("2_labels",)
    assert si2.mpp == pytest.approx(0.12028)
    w, h = fov2.images["2_image"].sizes["x"], fov2.images["2_image"].sizes["y"]
    assert ((si2.centers_px >= 0) & (si2.centers_px < [w, h])).all()


def test_cosmx_prediction_asks_for_an_he_not_for_its_composites():
    # the composites are 8-bit RGB, yet immunofluorescence: image_key= naming one would predict from no H&E
    import spatialdata_io

    sdata = spatialdata_io.cosmx(real_data("cosmx_lung12"), dataset_id="Lung12")
    with pytest.raises(ValueError, match="no H&E image") as err:
        st.tl.predict_expression(sdata, genes=["EPCAM"], verbose=False)
    message = str(err.value)
    assert "None of its images is H&E" in message and "'2_image'" in message
    assert "add the slide's H&E" in message and "image_key=" not in message
