"""st.io.read_st (legacy Spatial Transcriptomics) and st.io.read_hest (HEST-1k samples)."""

from __future__ import annotations

import gzip
import json
import logging

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import storm_sc as st
from storm_sc._constants import ATTRS_STORM
from storm_sc.io._image_file import open_image
from storm_sc.io._legacy_st import estimate_mpp_from_array
from tests._paths import real_data

PX_PER_STEP = 250.0  # pixels between array neighbours in the generated slides: 200 um / 250 px = 0.8 um/px


@pytest.fixture
def storm_log(caplog):
    """Capture the storm_sc logger (it does not propagate to the root logger)."""
    logger = logging.getLogger("storm_sc")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="storm_sc")
    yield caplog
    logger.removeHandler(caplog.handler)


def _st_slide(tmp_path, *, n_x=6, n_y=5, drop_counts=(), extra_counts=(), unselected=()):
    """Write an ST-pipeline-style counts TSV.gz, spot file and H&E-like PNG; return their paths and the truth."""
    rng = np.random.default_rng(0)
    grid = [(x, y) for y in range(1, n_y + 1) for x in range(1, n_x + 1)]
    # a slight rotation so that the fit must use both axes
    angle = np.deg2rad(2.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pixel = np.array(grid, dtype=float) @ rot.T * PX_PER_STEP + 40.0
    spots = pd.DataFrame(
        {
            "x": [g[0] for g in grid],
            "y": [g[1] for g in grid],
            "new_x": [g[0] for g in grid],
            "new_y": [g[1] for g in grid],
            "pixel_x": pixel[:, 0],
            "pixel_y": pixel[:, 1],
            "selected": [0 if g in unselected else 1 for g in grid],
        }
    )
    spot_path = tmp_path / "S1_selection.tsv"
    spots.to_csv(spot_path, sep="\t", index=False)
    names = [f"{x}x{y}" for x, y in grid if (x, y) not in drop_counts] + [f"{x}x{y}" for x, y in extra_counts]
    counts = pd.DataFrame(rng.poisson(3, size=(len(names), 7)), index=names, columns=[f"G{i}" for i in range(7)])
    counts_path = tmp_path / "S1.tsv.gz"
    with gzip.open(counts_path, "wt") as fh:
        counts.to_csv(fh, sep="\t")
    h = int(pixel[:, 1].max() + 200)
    w = int(pixel[:, 0].max() + 200)
    image = np.full((h, w, 3), 235, dtype=np.uint8)
    for px, py in pixel:
        image[int(py) - 30 : int(py) + 30, int(px) - 30 : int(px) + 30] = (120, 60, 140)
    image_path = tmp_path / "S1.png"
    Image.fromarray(image).save(image_path)
    return counts_path, spot_path, image_path, counts, spots


# ---------------------------------------------------------------------------------------------------------------------
# read_st
# ---------------------------------------------------------------------------------------------------------------------
def test_read_st_aligns_counts_to_spots_and_estimates_scale(tmp_path, storm_log):
    counts_path, spot_path, image_path, counts, spots = _st_slide(
        tmp_path, drop_counts=[(2, 2), (3, 3)], extra_counts=[(40, 40)], unselected=[(6, 5)]
    )
    sdata = st.io.read_st(counts_path, spot_path, image_path)
    table = sdata.tables["table"]
    # 30 spots - 2 without counts - 1 unselected; the counts row at 40x40 has no position
    assert table.n_obs == 27
    assert "40x40" not in table.obs_names
    assert "2x2" not in table.obs_names
    assert "6x5" not in table.obs_names
    np.testing.assert_array_equal(table["3x1"].X.toarray().ravel(), counts.loc["3x1"].to_numpy())
    row = spots.set_index(spots["x"].astype(str) + "x" + spots["y"].astype(str)).loc["4x2"]
    assert table.obs.loc["4x2", "pixel_x"] == pytest.approx(row["pixel_x"])
    attrs = sdata.attrs[ATTRS_STORM]
    assert attrs["mpp"] == pytest.approx(200 / PX_PER_STEP, rel=1e-6)
    assert attrs["mpp_source"] == "estimated from the array pitch"
    assert attrs["library_id"] == "S1"
    assert attrs["platform"] == "legacy_st"
    assert attrs["spot_diameter_um"] == 100.0
    assert sdata.shapes["S1_spots"]["radius"].iloc[0] == pytest.approx(50 / attrs["mpp"])
    text = storm_log.text
    assert "1 counts rows have no position" in text
    assert "40x40" in text
    assert "2 spots have no counts" in text
    assert "not selected" in text
    assert "um/px from the 200 um array pitch" in text

    # spots land on the drawn tissue squares
    image = np.asarray(sdata.images["S1_image"].values, dtype=float).mean(axis=0)
    xy = np.rint(table.obs[["pixel_x", "pixel_y"]].to_numpy()).astype(int)
    assert image[xy[:, 1], xy[:, 0]].mean() < image.mean() - 50


def test_read_st_given_mpp_and_transposed_counts(tmp_path):
    counts_path, spot_path, _, counts, _ = _st_slide(tmp_path)
    sdata = st.io.read_st(counts.T, spot_path, mpp=0.5, library_id="mine")
    attrs = sdata.attrs[ATTRS_STORM]
    assert attrs["mpp"] == 0.5
    assert attrs["mpp_source"] == "given"
    assert attrs["library_id"] == "mine"
    assert attrs["image_key"] is None
    assert not sdata.images
    assert sdata.tables["table"].shape == (30, 7)


def test_read_st_errors_are_clear(tmp_path):
    counts_path, spot_path, _, counts, spots = _st_slide(tmp_path)
    with pytest.raises(FileNotFoundError, match="Counts file not found"):
        st.io.read_st(tmp_path / "missing.tsv.gz", spot_path)
    with pytest.raises(ValueError, match=r"lacks columns \['pixel_x', 'pixel_y'\]"):
        st.io.read_st(counts_path, spots.drop(columns=["pixel_x", "pixel_y"]))
    with pytest.raises(ValueError, match="array positions 'XxY'"):
        st.io.read_st(counts.set_axis([f"spot{i}" for i in range(len(counts))]), spot_path)
    with pytest.raises(ValueError, match="several rows for array positions"):
        st.io.read_st(counts_path, pd.concat([spots, spots.iloc[:1]]))
    with pytest.raises(ValueError, match="No counts row matches"):
        st.io.read_st(counts.set_axis([f"{i + 100}x1" for i in range(len(counts))]), spot_path)
    with pytest.raises(ValueError, match="`mpp` must be a positive number"):
        st.io.read_st(counts_path, spot_path, mpp=0)
    with pytest.raises(ValueError, match="not on one line"):
        st.io.read_st(counts_path, spots[spots["y"] == 1])


def test_estimate_mpp_reports_anisotropy():
    grid = np.array([[x, y] for x in range(4) for y in range(4)], dtype=float)
    mpp, fit = estimate_mpp_from_array(grid, grid * [300.0, 200.0])
    assert mpp == pytest.approx(200 / 250)
    assert fit["anisotropy"] == pytest.approx(0.4)


def test_open_image_is_lazy_and_decodes_once(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, size=(300, 200, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "he.png")
    arr = open_image(tmp_path / "he.png")
    assert isinstance(arr, da.Array)
    assert arr.shape == (300, 200, 3)
    np.testing.assert_array_equal(arr[10:20, 5:9].compute(), pixels[10:20, 5:9])
    (tmp_path / "he.gif").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match="Unsupported image format"):
        open_image(tmp_path / "he.gif")
    with pytest.raises(FileNotFoundError, match="Image file not found"):
        open_image(tmp_path / "nope.jpg")


def test_an_h_and_e_larger_than_pils_bomb_limit_is_read(tmp_path, monkeypatch):
    # PIL refuses files above twice MAX_IMAGE_PIXELS (~179 Mpx; a Visium full-resolution JPEG is ~600 Mpx): the
    # limit is lowered here so that a small file stands for such a scan
    pixels = np.random.default_rng(0).integers(0, 255, size=(60, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "he.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "he.png")
    arr = open_image(tmp_path / "he.png")
    assert arr.shape == (60, 40, 3)
    np.testing.assert_array_equal(arr.compute(), pixels)
    assert Image.MAX_IMAGE_PIXELS == 100  # the caller's limit is left as it was


def test_decoded_images_are_kept_within_a_budget_and_decoded_again_when_needed(tmp_path, monkeypatch):
    from storm_sc.io import _image_file

    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 255, size=(64, 48, 3), dtype=np.uint8) for _ in range(3)]
    arrays = []
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / f"he{i}.png")
        arrays.append(open_image(tmp_path / f"he{i}.png"))
    monkeypatch.setattr(_image_file, "DECODED_CACHE_BYTES", 2 * pixels[0].nbytes)  # room for two images
    monkeypatch.setattr(_image_file, "DECODED", _image_file._DecodedCache())
    decodes = []
    monkeypatch.setattr(
        _image_file._DecodeOnce,
        "_read_file",
        lambda self, f=_image_file._DecodeOnce._read_file: decodes.append(self.path.name) or f(self),
    )
    for arr, p in zip(arrays, pixels, strict=True):
        np.testing.assert_array_equal(arr.compute(), p)  # every chunk of one image: a single decode
    assert decodes == ["he0.png", "he1.png", "he2.png"]
    assert len(_image_file.DECODED.tokens()) == 2  # the oldest was released
    np.testing.assert_array_equal(arrays[0][5:9, 1:3].compute(), pixels[0][5:9, 1:3])  # read again: decoded again
    np.testing.assert_array_equal(arrays[2][0:2].compute(), pixels[2][0:2])  # still held: no decode
    assert decodes == ["he0.png", "he1.png", "he2.png", "he0.png"]


def test_open_image_reads_tiff_by_tile(tmp_path):
    import tifffile

    pixels = np.random.default_rng(1).integers(0, 255, size=(256, 320, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "he.tif", pixels, tile=(128, 128))
    arr = open_image(tmp_path / "he.tif")
    assert isinstance(arr, da.Array)
    np.testing.assert_array_equal(arr.compute(), pixels)


def test_read_st_on_her2st(data_dir):
    real_data("her2st", "data", "ST-cnts")
    base = data_dir / "her2st" / "data"
    sdata = st.io.read_st(base / "ST-cnts" / "C2.tsv.gz", base / "ST-spotfiles" / "C2_selection.tsv")
    table = sdata.tables["table"]
    assert table.shape == (187, 15706)
    assert sdata.attrs[ATTRS_STORM]["mpp"] == pytest.approx(0.688, abs=0.005)
    assert sdata.attrs[ATTRS_STORM]["library_id"] == "C2"


# ---------------------------------------------------------------------------------------------------------------------
# read_hest
# ---------------------------------------------------------------------------------------------------------------------
def _hest_sample(n=40, size=(300, 400), seed=0):
    rng = np.random.default_rng(seed)
    h, w = size
    xy = np.column_stack([rng.uniform(20, w - 20, n), rng.uniform(20, h - 20, n)])
    adata = ad.AnnData(rng.poisson(2, size=(n, 5)).astype(np.float32))
    adata.obs_names = [f"cell{i}" for i in range(n)]
    image = np.full((h, w, 3), 230, dtype=np.uint8)
    for x, y in xy.astype(int):
        image[y - 3 : y + 4, x - 3 : x + 4] = (90, 40, 120)
    return adata, xy, image


def test_read_hest_uses_metadata_pixel_size_and_diameter():
    adata, xy, image = _hest_sample()
    adata.obsm["spatial"] = xy
    meta = {"pixel_size_um_estimated": 0.5, "pixel_size_um_embedded": 0.6, "spot_diameter": 55.0, "id": "S9"}
    sdata = st.io.read_hest(adata, image, meta)
    attrs = sdata.attrs[ATTRS_STORM]
    assert attrs["mpp"] == 0.5
    assert attrs["mpp_source"].startswith("metadata")
    assert attrs["spot_diameter_um"] == 55.0
    assert attrs["library_id"] == "S9"
    assert attrs["platform"] == "hest"
    shapes = sdata.shapes["S9_spots"]
    np.testing.assert_allclose(np.column_stack([shapes.geometry.x, shapes.geometry.y]), xy)
    assert "spatial" in adata.obsm
    assert "region" not in adata.obs


def test_read_hest_obs_columns_swap_and_cell_diameter(tmp_path, storm_log):
    adata, xy, image = _hest_sample()
    adata.obs["x_pixel"] = xy[:, 1]  # stored swapped, as in DeepSpot's NCBI858
    adata.obs["y_pixel"] = xy[:, 0]
    adata.write_h5ad(tmp_path / "S2.h5ad")
    Image.fromarray(image).save(tmp_path / "S2.jpg", quality=95)
    (tmp_path / "S2.json").write_text(json.dumps({"cell_diameter": 20}))

    sdata = st.io.read_hest(tmp_path / "S2.h5ad", tmp_path / "S2.jpg", tmp_path / "S2.json", mpp=0.25, swap_xy=True)
    shapes = sdata.shapes["S2_spots"]
    np.testing.assert_allclose(np.column_stack([shapes.geometry.x, shapes.geometry.y]), xy)
    assert sdata.attrs[ATTRS_STORM]["spot_diameter_um"] == pytest.approx(20 * 0.25)
    grey = np.asarray(sdata.images["S2_image"].values, dtype=float).mean(axis=0)
    assert grey[np.rint(xy[:, 1]).astype(int), np.rint(xy[:, 0]).astype(int)].mean() < 150

    # unswapped, the coordinates run off the (wider than tall) image: the reader says so and suggests the swap
    storm_log.clear()
    st.io.read_hest(tmp_path / "S2.h5ad", tmp_path / "S2.jpg", mpp=0.25)
    assert "Try swap_xy=True" in storm_log.text


def test_read_hest_rescales_a_downsampled_export(storm_log):
    adata, xy, image = _hest_sample()
    adata.obsm["spatial"] = xy * 4  # full-resolution pixels
    meta = {"pixel_size_um_estimated": 0.25, "fullres_px_width": 1600, "fullres_px_height": 1200}
    sdata = st.io.read_hest(adata, image, meta)
    attrs = sdata.attrs[ATTRS_STORM]
    assert attrs["mpp"] == pytest.approx(1.0)
    assert "scaled by 4" in attrs["mpp_source"]
    shapes = sdata.shapes["slide_spots"]
    np.testing.assert_allclose(np.column_stack([shapes.geometry.x, shapes.geometry.y]), xy)


def test_read_hest_given_mpp_overrides_metadata_with_warning(storm_log):
    adata, xy, image = _hest_sample()
    adata.obsm["spatial"] = xy
    sdata = st.io.read_hest(adata, image, {"pixel_size_um_estimated": 0.5}, mpp=0.3)
    assert sdata.attrs[ATTRS_STORM]["mpp"] == 0.3
    assert "the metadata says 0.5" in storm_log.text


def test_read_hest_errors_are_clear(tmp_path):
    adata, xy, image = _hest_sample()
    with pytest.raises(ValueError, match="pixel size is unknown.*Pass `mpp=`"):
        st.io.read_hest(adata, image, {"cell_diameter": 20})
    with pytest.raises(ValueError, match="No pixel coordinates found"):
        st.io.read_hest(adata, image, mpp=1.0)
    with pytest.raises(FileNotFoundError, match="AnnData file not found"):
        st.io.read_hest(tmp_path / "none.h5ad", image, mpp=1.0)
    with pytest.raises(FileNotFoundError, match="Metadata file not found"):
        st.io.read_hest(adata, image, tmp_path / "none.json", mpp=1.0)
    with pytest.raises(ValueError, match="`mpp` must be a positive number"):
        st.io.read_hest(adata, image, mpp=-2)


def test_read_hest_ncbi858_needs_the_swap(data_dir):
    folder = real_data("xenium_lung_he_ncbi858")
    files = (folder / "NCBI858.h5ad", folder / "NCBI858.jpg", folder / "NCBI858.json")
    with pytest.raises(ValueError, match="pixel size is unknown"):
        st.io.read_hest(*files)

    def on_tissue(sdata):
        grey = np.asarray(sdata.images["NCBI858_image"].values, dtype=float).mean(axis=0)
        shapes = sdata.shapes["NCBI858_spots"]
        x = np.clip(np.rint(shapes.geometry.x).astype(int), 0, grey.shape[1] - 1)
        y = np.clip(np.rint(shapes.geometry.y).astype(int), 0, grey.shape[0] - 1)
        return (grey[y, x] < 215).mean()

    swapped = st.io.read_hest(*files, mpp=3.0, swap_xy=True)
    as_stored = st.io.read_hest(*files, mpp=3.0)
    assert swapped.tables["table"].shape == (200, 338)
    assert on_tissue(swapped) > 0.9
    assert on_tissue(swapped) > on_tissue(as_stored) + 0.2
    # DeepSpot's cell_diameter is in image pixels
    assert swapped.attrs[ATTRS_STORM]["spot_diameter_um"] == pytest.approx(20 * 3.0)


def test_resolve_reads_the_recorded_scale(tmp_path):
    if not hasattr(st.io, "resolve"):
        pytest.skip("storm_sc.io.resolve is not available")
    counts_path, spot_path, image_path, _, _ = _st_slide(tmp_path)
    resolved = st.io.resolve(st.io.read_st(counts_path, spot_path, image_path))
    assert resolved.platform == "legacy_st"
    assert resolved.image_key == "S1_image"
    assert resolved.mpp == pytest.approx(0.8)
    step = np.linalg.norm(resolved.centers_um[1] - resolved.centers_um[0])
    assert step == pytest.approx(200.0, rel=1e-6)
    adata, xy, image = _hest_sample()
    adata.obsm["spatial"] = xy
    hest = st.io.resolve(st.io.read_hest(adata, image, {"pixel_size_um_estimated": 0.5}))
    assert hest.platform == "hest"
    assert hest.mpp == pytest.approx(0.5)
    np.testing.assert_allclose(hest.centers_um, xy * 0.5)
