from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from storm_sc.wsi import open_slide
from tests._paths import real_data
from tests.wsi._slides import blob_slide, write_pyramid


@pytest.fixture
def pyramid(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (300, 420, 3)).astype(np.uint8)
    return write_pyramid(tmp_path / "s.tif", rgb, 0.5, levels=3, tile=64), rgb


def test_pyramidal_tiff_levels_mpp_and_exact_reads(pyramid):
    path, rgb = pyramid
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.5)
        assert slide.mpp_source == "metadata"
        assert slide.level_dimensions == ((420, 300), (210, 150), (105, 75))
        assert slide.level_mpp(2) == pytest.approx(2.0)
        np.testing.assert_array_equal(slide.read_level(0, 13, 27, 50, 40), rgb[27:67, 13:63])
        # Beyond the image edge reads white glass, not black.
        out = slide.read_level(0, 400, -5, 40, 10)
        np.testing.assert_array_equal(out[5:, :20], rgb[:5, 400:420])
        assert (out[:5] == 255).all()
        assert (out[:, 20:] == 255).all()
        # Level choice: the coarsest level still at least as fine as the target.
        assert slide.best_level(0.5) == 0
        assert slide.best_level(1.2) == 1
        assert slide.best_level(2.0) == 2
        assert slide.best_level(50.0) == 2
        assert slide.best_level(0.1) == 0


def test_read_box_is_exact_at_integer_scale_and_consistent_across_levels(pyramid):
    path, rgb = pyramid
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.read_box((40, 60, 104, 124), level=0, size=(64, 64)), rgb[60:124, 40:104])
        # The same physical box read from level 1 (its own pixels, 2x2 means of level 0) lands on the same tissue.
        coarse = slide.read_box((40, 60, 104, 124), level=1, size=(32, 32)).astype(float)
        block = rgb[60:124, 40:104].reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
        assert np.abs(coarse - block).max() <= 1.0


def test_thumbnail_covers_the_slide_at_the_requested_scale(pyramid):
    path, rgb = pyramid
    with open_slide(path) as slide:
        thumb, down = slide.thumbnail(4.0)  # 8 level-0 pixels per thumbnail pixel
        assert down == pytest.approx(8.0)
        assert thumb.shape == (38, 53, 3)  # ceil(300 / 8), ceil(420 / 8)
        ref = rgb[:296, :416].reshape(37, 8, 52, 8, 3).mean(axis=(1, 3))
        assert np.abs(thumb[:37, :52].astype(float) - ref).mean() < 6.0


def test_aperio_svs_metadata_gives_the_pixel_size(tmp_path):
    rgb = blob_slide((256, 256), np.random.default_rng(1))
    path = tmp_path / "scan.svs"
    desc = "Aperio Image Library v12.0.5\r\n256x256 [0,0 256x256] (128x128) RAW|AppMag = 40|MPP = 0.2520"
    tifffile.imwrite(path, rgb, tile=(128, 128), photometric="rgb", description=desc)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.252)


def test_unknown_or_implausible_pixel_size_is_an_error_unless_given(tmp_path):
    rgb = blob_slide((128, 128), np.random.default_rng(2))
    bare = write_pyramid(tmp_path / "bare.tif", rgb, None, levels=1)
    with pytest.raises(ValueError, match="microns per pixel are unknown.*Pass `mpp=`"):
        open_slide(bare)
    # 72 dpi is what image writers put in files without a physical size: 353 um/px, not a microscope scan.
    png = tmp_path / "screen.png"
    Image.fromarray(rgb).save(png, dpi=(72, 72))
    with pytest.raises(ValueError, match="not a microscope scan"):
        open_slide(png)
    slide = open_slide(png, mpp=0.5)
    assert slide.mpp == 0.5
    assert slide.mpp_source == "given"
    with pytest.raises(ValueError, match="positive number"):
        open_slide(png, mpp=-1.0)


def test_plain_image_has_virtual_levels_and_exact_full_resolution(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (600, 1100, 3)).astype(np.uint8)
    png = tmp_path / "img.png"
    Image.fromarray(rgb).save(png)
    with open_slide(png, mpp=1.0) as slide:
        assert slide.level_dimensions[:2] == ((1100, 600), (550, 300))
        assert slide.best_level(2.0) == 1
        np.testing.assert_array_equal(slide.read_level(0, 5, 7, 30, 20), rgb[7:27, 5:35])


def test_bad_paths_and_formats(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_slide(tmp_path / "missing.svs")
    other = tmp_path / "slide.mrxs"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported slide format"):
        open_slide(other)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="Cannot read"):
        open_slide(broken)


@pytest.mark.realdata
def test_real_her2st_jpeg_thumbnail_without_full_decode():
    jpg = real_data("her2st", "data", "ST-imgs", "C", "C2", "5714_HE_BT_C2.jpg")
    # The JPEG records 72 dpi: the pixel size must be given (legacy ST: ~0.78 um/px).
    with pytest.raises(ValueError, match="not a microscope scan"):
        open_slide(jpg)
    with open_slide(jpg, mpp=0.78) as slide:
        thumb, down = slide.thumbnail(25.0)
        w, h = slide.dimensions
        assert thumb.shape[:2] == (int(np.ceil(h / down)), int(np.ceil(w / down)))
        assert 0 not in slide._backend._levels  # served from a reduced JPEG decode
