"""Each real-data loader on the shared data folder (read-only; see the `shared_data` fixture)."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata as sd
from scipy import sparse

import storm_sc as st
from storm_sc._constants import ATTRS_STORM
from tests._paths import real_data


def _grey(image_cyx: np.ndarray) -> np.ndarray:
    return np.asarray(image_cyx, dtype=np.float64)[:3].mean(axis=0)


def _grey_at(grey: np.ndarray, xy: np.ndarray, radius: int = 1) -> np.ndarray:
    """Mean grey in a small square around each (x, y) pixel position."""
    h, w = grey.shape
    out = []
    for x, y in np.rint(xy).astype(int):
        x0, x1 = max(x - radius, 0), min(x + radius + 1, w)
        y0, y1 = max(y - radius, 0), min(y + radius + 1, h)
        out.append(grey[y0:y1, x0:x1].mean())
    return np.asarray(out)


def _spot_xy(sdata: sd.SpatialData, shapes_key: str, coordinate_system: str) -> np.ndarray:
    shapes = sd.transform(sdata.shapes[shapes_key], to_coordinate_system=coordinate_system)
    return np.column_stack([shapes.geometry.x, shapes.geometry.y])


def _array_step_um(xy_um: np.ndarray, array_xy: np.ndarray) -> float:
    """Median distance (um) between spots that are horizontal neighbours on the array (x differs by one)."""
    keys = {(int(a), int(b)): i for i, (a, b) in enumerate(np.rint(array_xy))}
    pairs = [(i, keys[(a + 1, b)]) for (a, b), i in keys.items() if (a + 1, b) in keys]
    return float(np.median([np.linalg.norm(xy_um[i] - xy_um[j]) for i, j in pairs]))


def _is_integer_counts(x) -> bool:
    values = x.data if sparse.issparse(x) else np.asarray(x)
    return bool(np.all(values >= 0) and np.all(np.mod(values, 1) == 0))


# ---------------------------------------------------------------------------------------------------------------------
# her2st
# ---------------------------------------------------------------------------------------------------------------------
def test_her2st_c2_image_scale_and_tissue(shared_data):
    real_data("her2st", "data", "ST-imgs", "C", "C2")
    sdata = st.datasets.her2st("C2")
    table = sdata.tables["table"]
    assert table.shape == (187, 15706)
    assert _is_integer_counts(table.X)
    attrs = sdata.attrs[ATTRS_STORM]
    # 200 um pitch over ~290 px per array step
    assert attrs["mpp"] == pytest.approx(0.688, abs=0.005)
    assert attrs["image_key"] == "C2_image"
    assert attrs["platform"] == "legacy_st"
    assert table.var["histogene_panel"].sum() > 700
    clusters = table.obs["expression_cluster"]
    assert clusters.notna().mean() > 0.9
    assert set(clusters.cat.categories) <= {str(i) for i in range(20)}

    # spots land on tissue: darker than the image on average (every 8th pixel of the full-resolution level; the
    # JPEG is decoded once, on first access)
    tree = sdata.images["C2_image"]
    full = tree[sorted(tree.keys())[0]]["image"]
    assert full.sizes == {"c": 3, "y": 9911, "x": 9274}
    grey = _grey(full.data[:, ::8, ::8].compute())
    at_spots = _grey_at(grey, _spot_xy(sdata, "C2_spots", "C2") / 8)
    assert at_spots.mean() < grey.mean() - 15


def test_her2st_expression_only_section_with_pathologist_labels(shared_data):
    real_data("her2st", "data", "ST-pat", "lbl")
    sdata = st.datasets.her2st("C1")
    assert not sdata.images
    table = sdata.tables["table"]
    assert table.n_obs == 176
    labels = table.obs["pathologist_label"]
    assert labels.notna().all()
    assert {"invasive cancer", "connective tissue"} <= set(labels.cat.categories)
    # positions are still in physical scale: array neighbours are ~200 um apart
    xy_um = sdata.attrs[ATTRS_STORM]["mpp"] * _spot_xy(sdata, "C1_spots", "C1")
    step = _array_step_um(xy_um, table.obs[["array_x", "array_y"]].to_numpy())
    assert step == pytest.approx(200, rel=0.05)


def test_her2st_refuses_missing_image_and_unknown_section(shared_data):
    real_data("her2st")
    with pytest.raises(ValueError, match="no registered H&E image"):
        st.datasets.her2st("A1", image=True)
    with pytest.raises(ValueError, match="Unknown her2st section"):
        st.datasets.her2st("Z9")
    sdata = st.datasets.her2st("C3", image=False)
    assert not sdata.images


def test_her2st_uses_an_unregistered_image_placed_in_the_upstream_layout(tmp_path, monkeypatch):
    """A user who cloned the whole her2st repository has every patient's images: they are used as they are."""
    from PIL import Image

    source = real_data("her2st")
    local = tmp_path / "data"
    for path in source.rglob("*"):  # the real files, linked (the shared folder stays read-only)
        if path.is_file() and "ST-imgs" not in path.parts:
            (local / "her2st" / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (local / "her2st" / path.relative_to(source)).symlink_to(path)
    folder = local / "her2st" / "data" / "ST-imgs" / "A" / "A1"
    folder.mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(150, 256, (6200, 5800, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "HE_BT_A1.jpg", quality=50)
    monkeypatch.setenv("STORM_SC_DATA_DIR", str(local))

    sdata = st.datasets.her2st("A1")  # no image is registered for A1
    assert list(sdata.images) == ["A1_image"]
    assert sdata.tables["table"].obs["pathologist_label"].notna().any()
    assert st.datasets.her2st("A1", image=True).images
    assert not st.datasets.her2st("A1", image=False).images
    (folder / "HE_BT_A1_copy.png").symlink_to(folder / "HE_BT_A1.jpg")
    with pytest.raises(ValueError, match="2 images in"):
        st.datasets.her2st("A1")


# ---------------------------------------------------------------------------------------------------------------------
# Visium
# ---------------------------------------------------------------------------------------------------------------------
def test_dlpfc_shape_and_layers(shared_data):
    real_data("dlpfc_151675")
    sdata = st.datasets.dlpfc("151675")
    table = sdata.tables["table"]
    assert table.shape == (3592, 7319)
    assert _is_integer_counts(table.X)
    layer = table.obs["layer"]
    assert list(layer.cat.categories) == ["L1", "L2", "L3", "L4", "L5", "L6", "WM"]
    assert int(layer.isna().sum()) == 26
    assert layer.value_counts()["L3"] == 771


def test_dlpfc_spots_on_tissue(shared_data):
    real_data("dlpfc_151675")
    sdata = st.datasets.dlpfc()
    (image_key,) = sdata.images
    # the image's own pixel frame is the coordinate system in which its transformation is the identity
    systems = sd.transformations.get_transformation(sdata.images[image_key], get_all=True)
    (own,) = [k for k, t in systems.items() if isinstance(t, sd.transformations.Identity)]
    grey = _grey(sdata.images[image_key].values)
    xy = _spot_xy(sdata, next(iter(sdata.shapes)), own)
    in_tissue = sdata.tables["table"].obs["in_tissue"].to_numpy() == 1
    assert _grey_at(grey, xy[in_tissue]).mean() < grey.mean() - 20
    with pytest.raises(ValueError, match="not registered"):
        st.datasets.dlpfc("999999")


def test_visium_ffpe_organoids_and_refusals(shared_data):
    real_data("visium_ffpe_villacampa2021", "lungorganoid")
    sdata = st.datasets.visium_ffpe("lungorganoid/V19D02-088_B1")
    table = sdata.tables["table"]
    assert table.shape == (444, 33538)
    organoid = table.obs["organoid"]
    assert organoid.notna().sum() == 443
    assert any(name.startswith("Org") for name in organoid.cat.categories)
    assert any(k.endswith("_hires_image") for k in sdata.images)
    with pytest.raises(ValueError, match="counts only"):
        st.datasets.visium_ffpe("V10F24-078_C1")
    with pytest.raises(ValueError, match="Unknown Visium FFPE section"):
        st.datasets.visium_ffpe("V00X00-000_A1")
    with pytest.raises(ValueError, match="belongs to group"):
        st.datasets.visium_ffpe("mousebrain/V19D02-088_B1")


def test_visium_ffpe_mouse_brain_has_no_organoids(shared_data):
    real_data("visium_ffpe_villacampa2021", "mousebrain", "V10F24-078_A1")
    table = st.datasets.visium_ffpe("V10F24-078_A1").tables["table"]
    assert table.shape == (2399, 31053)
    assert "organoid" not in table.obs


def test_visium_heart_drops_blank_hires(shared_data):
    real_data("visium_heart_fixture")
    sdata = st.datasets.visium_heart()
    assert sdata.tables["table"].shape == (100, 100)
    assert list(sdata.images) == ["V1_Human_Heart_lowres_image"]


# ---------------------------------------------------------------------------------------------------------------------
# Olfactory bulb
# ---------------------------------------------------------------------------------------------------------------------
def test_mob_layers_in_microns(shared_data):
    real_data("mob")
    sdata = st.datasets.mob()
    table = sdata.tables["table"]
    assert table.shape == (262, 15928)
    assert _is_integer_counts(table.X)
    assert len(table.obs["layer"].cat.categories) == 5
    assert table.obs["layer"].cat.categories[0].startswith("1:")
    xy_um = _spot_xy(sdata, "MOB_spots", "MOB") * sdata.attrs[ATTRS_STORM]["mpp"]
    step = _array_step_um(xy_um, table.obs[["array_x", "array_y"]].to_numpy())
    assert step == pytest.approx(200, rel=0.05)


def test_mob_he_scale_and_tissue(shared_data):
    real_data("mob_he_stahl2016")
    sdata = st.datasets.mob_he(1)
    assert sdata.tables["table"].n_obs == 267
    assert sdata.attrs[ATTRS_STORM]["mpp"] == pytest.approx(3.44, abs=0.05)
    grey = _grey(sdata.images["MOB1_image"].values)
    at_spots = _grey_at(grey, _spot_xy(sdata, "MOB1_spots", "MOB1"), radius=3)
    assert at_spots.mean() < grey.mean() - 20
    with pytest.raises(ValueError, match="replicate"):
        st.datasets.mob_he(3)


# ---------------------------------------------------------------------------------------------------------------------
# Single-cell platforms
# ---------------------------------------------------------------------------------------------------------------------
def test_xenium_lung_he_swap_and_scale(shared_data):
    real_data("xenium_lung_he_ncbi858")
    sdata = st.datasets.xenium_lung_he()
    table = sdata.tables["table"]
    assert table.shape == (200, 338)
    attrs = sdata.attrs[ATTRS_STORM]
    assert attrs["platform"] == "hest"
    assert "estimate" in attrs["mpp_source"]
    grey = _grey(sdata.images["NCBI858_image"].values)
    xy = _spot_xy(sdata, "NCBI858_spots", "NCBI858")
    np.testing.assert_allclose(xy[:, 0], table.obs["y_pixel"].to_numpy())  # column of the image
    on_tissue = (_grey_at(grey, xy, radius=2) < 215).mean()
    assert on_tissue > 0.9
    given = st.datasets.xenium_lung_he(mpp=2.0).attrs[ATTRS_STORM]
    assert given["mpp"] == 2.0
    assert given["mpp_source"] == "given"


def test_xenium_mouse_brain_in_microns(shared_data):
    real_data("xenium_mouse_brain")
    sdata = st.datasets.xenium_mouse_brain()
    table = sdata.tables["table"]
    assert table.shape == (36602, 248)
    assert not sdata.images
    xy = _spot_xy(sdata, "xenium_mouse_brain_spots", "xenium_mouse_brain")
    np.testing.assert_allclose(xy, table.obs[["x_centroid", "y_centroid"]].to_numpy())
    assert 5 < sdata.attrs[ATTRS_STORM]["spot_diameter_um"] < 40


def test_xenium_toy_and_cosmx_read_with_spatialdata_io(shared_data):
    real_data("xenium_toy")
    real_data("cosmx_lung12")
    xenium = st.datasets.xenium_toy()
    assert xenium.tables["table"].shape == (526, 27)
    assert xenium.attrs.get("spatialdata_io_reader") == "xenium"
    cosmx = st.datasets.cosmx_lung12()
    assert cosmx.tables["table"].shape == (120, 980)
    assert cosmx.attrs.get("spatialdata_io_reader") == "cosmx"


# ---------------------------------------------------------------------------------------------------------------------
# Catalogue and resolve
# ---------------------------------------------------------------------------------------------------------------------
def test_available_reports_local_and_downloadable(shared_data):
    table = st.datasets.available()
    assert table.loc['her2st("C2")', "image"]
    assert not table.loc['her2st("A1")', "image"]
    assert table.loc['dlpfc("151675")', "local"]
    assert table.loc['dlpfc("151675")', "downloadable"]
    assert not table.loc["mob()", "downloadable"]  # converted from an .rda upstream
    assert 'visium_ffpe("V10F24-078_C1")' not in table.index


def test_available_in_an_empty_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STORM_SC_DATA_DIR", str(tmp_path))
    table = st.datasets.available()
    assert not table["local"].any()
    assert table["downloadable"].any()


@pytest.mark.parametrize(
    ("loader", "folder", "mpp"),
    [
        (lambda: st.datasets.her2st("C1"), "her2st", 0.688),
        (st.datasets.mob, "mob", 1.0),
        (lambda: st.datasets.mob_he(2), "mob_he_stahl2016", 3.44),
    ],
)
def test_resolve_finds_loader_elements_and_scale(shared_data, loader, folder, mpp):
    if not hasattr(st.io, "resolve"):
        pytest.skip("storm_sc.io.resolve is not available")
    real_data(folder)
    sdata = loader()
    resolved = st.io.resolve(sdata)
    assert resolved.n_obs == sdata.tables["table"].n_obs
    assert resolved.regions == tuple(sdata.shapes)
    if resolved.has_image:
        assert resolved.mpp == pytest.approx(mpp, abs=0.05)
    array_xy = resolved.table.obs[["array_x", "array_y"]].to_numpy()
    assert _array_step_um(resolved.centers_um, array_xy) == pytest.approx(200, rel=0.05)


def test_a_shifted_xenium_he_is_warned_about_by_the_tools(shared_data, storm_log):
    from spatialdata.transformations import Translation, get_transformation, set_transformation

    real_data("xenium_lung_he_ncbi858")
    sdata = st.datasets.xenium_lung_he()
    (image_key,) = sdata.images
    cs = st.io.resolve(sdata).coordinate_system
    with storm_log.at_level("WARNING", logger="storm_sc"):
        st.tl.storm_embed(sdata, verbose=False)
    assert "lie on tissue" not in storm_log.text
    # 1.2 mm off: most cells still fall inside the image (no error), over glass or other tissue
    moved = Translation([400, 0], axes=("x", "y"))
    set_transformation(sdata.images[image_key], moved, to_coordinate_system=cs)
    assert get_transformation(sdata.images[image_key], to_coordinate_system=cs) == moved
    with storm_log.at_level("WARNING", logger="storm_sc"):
        st.tl.storm_embed(sdata, key_added="moved", verbose=False)
    assert "the H&E may not line up with the table" in storm_log.text
