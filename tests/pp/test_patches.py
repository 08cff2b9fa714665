from __future__ import annotations

import logging
import pickle

import dask.array as da
import numpy as np
import pytest
import torch
from spatialdata import read_zarr
from spatialdata.models import Image2DModel
from torch.utils.data import DataLoader

import storm_sc as st
from storm_sc._settings import logger
from tests.pp._synthetic import (
    coordinate_image,
    counts_table,
    decode_center,
    image_sdata,
    safe_positions,
    spatial_input,
)


@pytest.fixture
def storm_logs(caplog):
    """Capture storm_sc's log records (its logger does not propagate to the root logger)."""
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="storm_sc"):
            yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture(scope="module")
def coord_image() -> np.ndarray:
    return coordinate_image(1500, 1700)


@pytest.mark.parametrize(
    ("mpp", "scale_factors", "level", "max_err", "max_bias"),
    [
        (0.5, None, 0, 0.55, 0.2),  # the target resolution: read as is
        (0.25, [2, 2], 1, 1.0, 0.6),  # one level down is exactly 0.5 um/px
        (0.2, [2, 2], 1, 1.0, 0.6),  # 0.4 um/px is the coarsest level not coarser than 0.5
        (0.125, [2, 2], 2, 1.0, 0.6),
        (1.0, None, 0, 0.3, 0.2),  # coarser than the target: upsampled
    ],
)
def test_patch_centre_is_the_observation(coord_image, mpp, scale_factors, level, max_err, max_bias):
    centers = safe_positions(25, *coord_image.shape[1:], margin=24, seed=1)
    sdata = image_sdata(coord_image, centers, mpp=mpp, scale_factors=scale_factors)
    ds = st.pp.patch_dataset(sdata, mpp=mpp)
    assert ds.level == level
    assert len(ds) == 25
    patches = ds.read(np.arange(25))
    error = np.stack([decode_center(p) for p in patches]) - centers
    # In full-resolution pixels. Output values are uint8 (+-0.5); pyramid levels are block means stored as uint8,
    # which shifts their values by up to half a full-resolution pixel. A half-pixel convention error at the
    # full-resolution level shows as a bias, one at a coarser level as an error of a whole pixel or more.
    assert np.abs(error).max() <= max_err
    assert np.abs(error.mean(axis=0)).max() <= max_bias


def test_items_in_table_order_with_index(coord_image):
    centers = safe_positions(6, *coord_image.shape[1:], margin=24, seed=2)
    ds = st.pp.patch_dataset(spatial_input(coord_image, centers, mpp=0.5), patch_um=32.0, patch_px=32)
    for i in (0, 3, 5, -1):
        item = ds[i]
        assert item["index"] == i % 6
        assert item["image"].dtype == torch.uint8
        assert item["image"].shape == (3, 32, 32)
        np.testing.assert_allclose(decode_center(item["image"].numpy()), centers[i], atol=0.75)
    with pytest.raises(IndexError, match="out of range"):
        ds[6]


@pytest.mark.parametrize(
    ("mpp", "scale_factors", "level", "level_mpp", "window_px"),
    [
        (0.5, None, 0, 0.5, 224.0),  # 112 um at 0.5 um/px is 224 px
        (0.25, None, 0, 0.25, 448.0),
        (0.25, [2, 2], 1, 0.5, 224.0),
        (0.2, [2, 2], 1, 0.4, 280.0),
        (0.1, [2, 2, 2], 2, 0.4, 280.0),
        (2.0, [2], 0, 2.0, 56.0),
    ],
)
def test_level_choice_and_window_size(mpp, scale_factors, level, level_mpp, window_px):
    img = np.full((3, 512, 512), 128, dtype=np.uint8)
    ds = st.pp.patch_dataset(spatial_input(img, [[256.0, 256.0]], mpp=mpp, scale_factors=scale_factors))
    assert ds.level == level
    assert ds.level_mpp == pytest.approx(level_mpp)
    assert ds.window_px == pytest.approx(window_px)


def test_coarse_image_warns_about_upsampling(storm_logs):
    img = np.full((3, 256, 256), 128, dtype=np.uint8)
    st.pp.patch_dataset(spatial_input(img, [[128.0, 128.0]], mpp=3.5))
    assert any("upsampled" in r.getMessage() for r in storm_logs.records)
    # once per session: every tool call on the slide (a re-run cell) would repeat what is true of the slide
    storm_logs.clear()
    st.pp.patch_dataset(spatial_input(img, [[128.0, 128.0]], mpp=3.5))
    assert not [r for r in storm_logs.records if r.levelname == "WARNING"]
    st.pp.patch_dataset(spatial_input(img, [[128.0, 128.0]], mpp=7.0))  # another scale: new
    assert any("upsampled" in r.getMessage() for r in storm_logs.records)


@pytest.mark.parametrize(("mpp", "scale_factors"), [(0.5, None), (0.25, [2, 2]), (0.2, [2, 2]), (2.0, None)])
def test_patch_has_the_physical_size(mpp, scale_factors):
    # a dark square of 56 um centred on the observation must fill exactly half of a 112 um patch
    side_px = int(round(600 / mpp * 0.5))
    img = np.full((3, side_px, side_px), 255, dtype=np.uint8)
    center = side_px / 2
    half = 28.0 / mpp
    lo, hi = int(round(center - half)), int(round(center + half))
    img[:, lo:hi, lo:hi] = 0
    ds = st.pp.patch_dataset(spatial_input(img, [[center, center]], mpp=mpp, scale_factors=scale_factors))
    patch = ds.read([0])[0]
    dark_cols = int((patch[0, 112] < 128).sum())
    dark_rows = int((patch[0, :, 112] < 128).sum())
    assert abs(dark_cols - 112) <= 2
    assert abs(dark_rows - 112) <= 2


def test_white_padding_beyond_the_image():
    img = np.full((3, 400, 400), 90, dtype=np.uint8)
    # 3 px from the top-left corner at 0.5 um/px: the patch reaches 109 px beyond the image
    ds = st.pp.patch_dataset(spatial_input(img, [[3.0, 3.0], [900.0, 900.0]], mpp=0.5))
    corner, outside = ds.read([0, 1])
    assert (corner[:, :105, :] == 255).all()
    assert (corner[:, :, :105] == 255).all()
    assert (corner[:, 115:, 115:] == 90).all()
    assert (outside == 255).all()


def test_dataloader_workers_and_pickling(tmp_path, coord_image):
    centers = safe_positions(20, *coord_image.shape[1:], margin=24, seed=3)
    path = tmp_path / "slide.zarr"
    image_sdata(coord_image, centers, mpp=0.25, scale_factors=[2, 2]).write(path)
    sdata = read_zarr(path)  # a disk-backed pyramid, as users have it
    ds = st.pp.patch_dataset(sdata, mpp=0.25, patch_um=56.0, patch_px=64)
    direct = ds.read(np.arange(len(ds)))

    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone.read(np.arange(len(ds))), direct)

    def collect(num_workers: int) -> tuple[np.ndarray, np.ndarray]:
        loader = DataLoader(ds, batch_size=6, num_workers=num_workers, shuffle=False)
        batches = list(loader)
        return (
            torch.cat([b["image"] for b in batches]).numpy(),
            torch.cat([b["index"] for b in batches]).numpy(),
        )

    images0, index0 = collect(0)
    images2, index2 = collect(2)
    np.testing.assert_array_equal(index0, np.arange(20))
    np.testing.assert_array_equal(index2, index0)
    np.testing.assert_array_equal(images0, direct)
    np.testing.assert_array_equal(images2, direct)
    np.testing.assert_array_equal(ds.to_numpy(batch_size=7, verbose=False), direct)
    np.testing.assert_array_equal(ds.to_numpy(batch_size=7, num_workers=2, verbose=False), direct)


class _CountingArray:
    """A numpy array that counts how many elements are read from it (to observe dask's reads)."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.elements_read = 0

    def __getitem__(self, key):
        out = self._array[key]
        self.elements_read += out.size
        return out


def test_only_windows_around_observations_are_read():
    side, chunk = 4096, 256
    source = _CountingArray(np.full((3, side, side), 200, dtype=np.uint8))
    lazy = da.from_array(source, chunks=(3, chunk, chunk), asarray=False)
    image = Image2DModel.parse(lazy, dims=("c", "y", "x"))
    centers = np.random.default_rng(0).uniform(300, side - 300, size=(12, 2))
    si = spatial_input(image, centers, mpp=0.5)
    source.elements_read = 0
    ds = st.pp.patch_dataset(si)
    assert source.elements_read == 0  # nothing is read when the dataset is created
    ds.read(np.arange(12))
    # each 224 px window (+ filter margin) touches at most 2 x 2 chunks of 256 px
    assert 0 < source.elements_read <= 12 * 4 * 3 * chunk * chunk
    assert source.elements_read < 0.2 * 3 * side * side


def test_no_image_is_a_clear_error():
    sdata = st.io.from_arrays(counts_table(3), np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), mpp=1.0)
    with pytest.raises(ValueError, match="no H&E image.*Expression-only use is possible"):
        st.pp.patch_dataset(sdata)


def test_bad_arguments_fail_before_any_work():
    img = np.full((3, 64, 64), 100, dtype=np.uint8)
    si = spatial_input(img, [[32.0, 32.0]], mpp=0.5)
    with pytest.raises(ValueError, match="patch_um"):
        st.pp.patch_dataset(si, patch_um=0)
    with pytest.raises(ValueError, match="patch_px"):
        st.pp.patch_dataset(si, patch_px=2.5)
    with pytest.raises(ValueError, match="already|resolv"):
        st.pp.patch_dataset(si, mpp=0.5)
    with pytest.raises(TypeError, match="SpatialData, an AnnData or a SpatialInput"):
        st.pp.patch_dataset(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="uint8"):
        st.pp.patch_dataset(spatial_input(img.astype(np.uint16), [[32.0, 32.0]], mpp=0.5))
    with pytest.raises(ValueError, match="5 channels"):
        st.pp.patch_dataset(spatial_input(np.zeros((5, 64, 64), np.uint8), [[32.0, 32.0]], mpp=0.5))


def test_grey_image_gives_three_equal_channels():
    img = np.tile(np.arange(64, dtype=np.uint8), (1, 64, 1))
    patch = st.pp.patch_dataset(spatial_input(img, [[32.0, 32.0]], mpp=0.5), patch_um=16.0, patch_px=32).read([0])[0]
    assert patch.shape == (3, 32, 32)
    np.testing.assert_array_equal(patch[0], patch[1])
    np.testing.assert_array_equal(patch[0], patch[2])
    assert patch[0, 16, 0] < patch[0, 16, 31]  # the ramp survives
