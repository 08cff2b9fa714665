from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from storm_sc.wsi import iter_tile_batches, open_slide, read_tiles, tile_grid
from tests.wsi._slides import PINK, PURPLE, blob_slide, glass, texture, write_pyramid


def _coded_slide(rng, cells=(5, 7), cell=64, margin=(37, 21)):
    """Glass with a block of tissue cells, each tinted with a unique code, offset from the tile grid."""
    h, w = cells[0] * cell + 2 * margin[0], cells[1] * cell + 2 * margin[1]
    rgb = glass((h, w), rng)
    y0, x0 = margin
    rgb[y0 : y0 + cells[0] * cell, x0 : x0 + cells[1] * cell] = texture((cells[0] * cell, cells[1] * cell), PURPLE, rng)
    return rgb


def test_grid_keeps_tissue_tiles_and_microns_map_back_to_pixels(tmp_path):
    rng = np.random.default_rng(0)
    rgb = blob_slide((640, 896), rng, box=(128, 512, 192, 704))
    mpp = 0.5
    path = write_pyramid(tmp_path / "s.tif", rgb, mpp)
    with open_slide(path) as slide:
        grid = tile_grid(slide, patch_um=32.0)  # 64 px tiles, aligned with the tissue box
        assert grid.tile_px == pytest.approx(64.0)
        # Tissue spans rows 2..7 and columns 3..10 of the 64 px grid.
        assert sorted(set(grid.rows.tolist())) == list(range(2, 8))
        assert sorted(set(grid.cols.tolist())) == list(range(3, 11))
        assert grid.n_tiles == 6 * 8
        assert np.all(grid.tissue_fraction > 0.9)
        # Raster order, and microns are level-0 pixels times mpp from the top-left corner.
        assert np.all(np.diff(grid.rows * 1000 + grid.cols) > 0)
        np.testing.assert_allclose(grid.centers_um, grid.centers_px * mpp)
        tiles = read_tiles(slide, grid, np.arange(grid.n_tiles), out_px=64, level=0)
        for i in (0, 13, grid.n_tiles - 1):
            cx, cy = grid.centers_um[i] / mpp
            ref = rgb[int(cy - 32) : int(cy + 32), int(cx - 32) : int(cx + 32)]
            np.testing.assert_array_equal(tiles[i].transpose(1, 2, 0), ref)


def test_subpixel_tile_size_and_coarser_level_land_on_the_right_pixels(tmp_path):
    rng = np.random.default_rng(1)
    rgb = texture((1000, 1200), PINK, rng)  # 370 x 444 um
    # A marker at a known physical position, (x, y) = (331.3 um, 167.9 um): inside tile column 6, row 3 of 50 um.
    mpp = 0.37
    mx, my = 331.3 / mpp, 167.9 / mpp
    rgb[int(my) - 6 : int(my) + 6, int(mx) - 6 : int(mx) + 6] = (20, 200, 220)
    path = write_pyramid(tmp_path / "m.tif", rgb, mpp, levels=3)
    with open_slide(path) as slide:
        grid = tile_grid(slide, patch_um=50.0, tissue_threshold=0.0)  # 135.1 px tiles
        assert grid.n_tiles == int(np.ceil(1200 / grid.tile_px) * np.ceil(1000 / grid.tile_px))
        for level in (0, 1, 2):
            tiles = read_tiles(slide, grid, np.arange(grid.n_tiles), out_px=32, level=level)
            cyan = (tiles[:, 2].astype(int) - tiles[:, 0].astype(int)).reshape(grid.n_tiles, -1).max(axis=1)
            hit = int(np.argmax(cyan))
            x0, y0, x1, y1 = grid.boxes_px[hit] * mpp
            assert x0 <= 331.3 < x1, level
            assert y0 <= 167.9 < y1, level
            assert (grid.rows[hit], grid.cols[hit]) == (3, 6)
            assert np.sort(cyan)[-2] < cyan[hit] / 2  # no neighbouring tile shows it


def test_threshold_and_edges(tmp_path):
    rng = np.random.default_rng(2)
    rgb = blob_slide((300, 300), rng, box=(0, 300, 0, 150))  # left half tissue, up to the image edge
    path = write_pyramid(tmp_path / "e.tif", rgb, 1.0, levels=1)
    with open_slide(path) as slide:
        everything = tile_grid(slide, patch_um=64.0, tissue_threshold=0.0)
        assert everything.n_tiles == 25  # ceil(300 / 64)^2, edge tiles included
        half = tile_grid(slide, patch_um=64.0, tissue_threshold=0.5)
        # Column 2 (128-192 px) is 22/64 tissue; only columns 0 and 1 are kept.
        assert set(half.cols.tolist()) == {0, 1}
        strict = tile_grid(slide, patch_um=64.0, tissue_threshold=1.0)
        assert strict.n_tiles <= half.n_tiles
        # Edge tiles beyond the image read white.
        last = read_tiles(slide, everything, np.array([everything.n_tiles - 1]), out_px=64, level=0)[0]
        assert (last[:, -10:, -10:] == 255).all()
    with pytest.raises(ValueError, match="tissue_threshold"):
        tile_grid(open_slide(path), patch_um=64.0, tissue_threshold=1.5)
    with pytest.raises(ValueError, match="patch_um"):
        tile_grid(open_slide(path), patch_um=0)


def test_streaming_batches_cover_every_tile_once_in_order(tmp_path):
    rng = np.random.default_rng(3)
    rgb = _coded_slide(rng)
    path = tmp_path / "c.png"
    Image.fromarray(rgb).save(path)
    with open_slide(path, mpp=1.0) as slide:
        grid = tile_grid(slide, patch_um=48.0)
        assert grid.n_tiles > 20
        whole = read_tiles(slide, grid, np.arange(grid.n_tiles), out_px=16, level=slide.best_level(3.0))
        seen, sizes = [], []
        for idx, tiles in iter_tile_batches(slide, grid, out_px=16, batch_size=7, verbose=False):
            sizes.append(len(idx))
            seen.extend(idx.tolist())
            np.testing.assert_array_equal(tiles, whole[idx])
        assert seen == list(range(grid.n_tiles))
        assert max(sizes) == 7
        assert len(sizes) == int(np.ceil(grid.n_tiles / 7))
        resumed = [i for idx, _ in iter_tile_batches(slide, grid, out_px=16, batch_size=7, start=14, verbose=False)
                   for i in idx]  # fmt: skip
        assert resumed == list(range(14, grid.n_tiles))
        with pytest.raises(ValueError, match="batch_size"):
            next(iter_tile_batches(slide, grid, out_px=16, batch_size=0))
