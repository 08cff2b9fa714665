"""A grid of tissue tiles of a fixed physical size, and reading them in batches without holding the slide."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from storm_sc._settings import settings

from ._reader import WholeSlide
from ._tissue import DEFAULT_MIN_SATURATION, detect_tissue

# The tissue mask is computed with about this many thumbnail pixels along a tile's side.
MASK_PX_PER_TILE = 8
# ...and never on a thumbnail longer than this (a 100k-tile slide is ~316 tiles across: 2,528 px).
MAX_MASK_SIDE = 8192
# Consecutive tiles of a row read as one window, at most this many (bounds the window at high resolution).
MAX_RUN = 64


@dataclass(frozen=True, eq=False)
class TileGrid:
    """Square tiles of ``patch_um`` on a regular grid anchored at the slide's top-left corner, tissue tiles only.

    Tile ``i`` covers level-0 pixels ``[x0, x0 + tile_px) x [y0, y0 + tile_px)`` with
    ``x0 = cols[i] * tile_px`` and ``y0 = rows[i] * tile_px``; microns are level-0 pixels times ``mpp``, measured
    from the same corner. Tiles are in raster order (row by row).

    Attributes
    ----------
    mpp
        Microns per level-0 pixel.
    patch_um
        Tile side in microns.
    rows, cols
        ``(n,)`` grid row and column of each tile.
    tissue_fraction
        ``(n,)`` fraction of each tile covered by tissue.
    mask
        The tissue mask of the thumbnail the grid was chosen on.
    mask_downsample
        Level-0 pixels per mask pixel.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> import storm_sc as st
    >>> tmp = tempfile.TemporaryDirectory()
    >>> rgb = np.full((256, 256, 3), 240, np.uint8)  # glass ...
    >>> rgb[64:192, 64:192] = (180, 90, 160)  # ... with a square of tissue
    >>> Image.fromarray(rgb).save(f"{tmp.name}/slide.png")
    >>> with st.wsi.open_slide(f"{tmp.name}/slide.png", mpp=1.75) as slide:
    ...     grid = st.wsi.tile_grid(slide, patch_um=112.0)
    >>> grid
    TileGrid(4 tiles of 112 um = 64.0 px)
    >>> grid.rows.tolist(), grid.cols.tolist(), grid.centers_um[0].tolist()
    ([1, 1, 2, 2], [1, 2, 1, 2], [168.0, 168.0])
    >>> tmp.cleanup()
    """

    mpp: float
    patch_um: float
    rows: np.ndarray
    cols: np.ndarray
    tissue_fraction: np.ndarray
    mask: np.ndarray
    mask_downsample: float

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return len(self.rows)

    @property
    def tile_px(self) -> float:
        """Tile side in level-0 pixels."""
        return self.patch_um / self.mpp

    @property
    def boxes_px(self) -> np.ndarray:
        """``(n, 4)`` float64 level-0 boxes ``(x0, y0, x1, y1)``."""
        s = self.tile_px
        x0, y0 = self.cols * s, self.rows * s
        return np.stack([x0, y0, x0 + s, y0 + s], axis=1).astype(np.float64)

    @property
    def centers_px(self) -> np.ndarray:
        """``(n, 2)`` float64 tile centres ``(x, y)`` in level-0 pixels."""
        s = self.tile_px
        return np.stack([(self.cols + 0.5) * s, (self.rows + 0.5) * s], axis=1).astype(np.float64)

    @property
    def centers_um(self) -> np.ndarray:
        """``(n, 2)`` float64 tile centres ``(x, y)`` in microns from the slide's top-left corner."""
        return self.centers_px * self.mpp

    def __repr__(self) -> str:
        return f"TileGrid({self.n_tiles} tiles of {self.patch_um:g} um = {self.tile_px:.1f} px)"


def tile_grid(
    slide: WholeSlide,
    *,
    patch_um: float,
    tissue_threshold: float = 0.5,
    min_saturation: float = DEFAULT_MIN_SATURATION,
) -> TileGrid:
    """Tiles of ``patch_um`` microns covering the tissue of a slide.

    Tissue is detected on a thumbnail with about 8 pixels per tile side (:func:`detect_tissue`); a tile is kept
    when at least ``tissue_threshold`` of it is tissue. Tiles on the right and bottom edges may extend beyond the
    image; that part reads white and counts as background.

    Parameters
    ----------
    slide
        From :func:`open_slide`.
    patch_um
        Tile side in microns.
    tissue_threshold
        Minimum tissue fraction of a kept tile, in ``[0, 1]`` (0 keeps every tile of the grid).
    min_saturation
        Floor of the tissue detector's saturation threshold.

    Returns
    -------
    The :class:`TileGrid`.

    Examples
    --------
    >>> from storm_sc.wsi import open_slide, tile_grid
    >>> grid = tile_grid(open_slide("slide.svs"), patch_um=112.0)  # doctest: +SKIP
    >>> grid.centers_um[:2]  # doctest: +SKIP
    array([[ 1512.,   56.], [ 1624.,   56.]])
    """
    check_tiling_args(patch_um, tissue_threshold)
    w0, h0 = slide.dimensions
    tile_px = patch_um / slide.mpp
    n_cols, n_rows = math.ceil(w0 / tile_px), math.ceil(h0 / tile_px)
    longest_um = max(w0, h0) * slide.mpp
    mask_mpp = max(patch_um / MASK_PX_PER_TILE, longest_um / MAX_MASK_SIDE)
    thumb, downsample = slide.thumbnail(mask_mpp)
    mask = detect_tissue(thumb, mpp=slide.mpp * downsample, min_saturation=min_saturation)
    fraction = _box_fractions(mask, downsample, tile_px, n_rows, n_cols, (w0, h0))
    keep = fraction >= tissue_threshold if tissue_threshold > 0 else np.ones_like(fraction, dtype=bool)
    rows, cols = np.nonzero(keep)  # raster order
    return TileGrid(
        mpp=slide.mpp, patch_um=float(patch_um), rows=rows.astype(np.int64), cols=cols.astype(np.int64),
        tissue_fraction=fraction[rows, cols].astype(np.float32), mask=mask, mask_downsample=float(downsample),
    )  # fmt: skip


def check_tiling_args(patch_um: float, tissue_threshold: float) -> None:
    """Validate the tiling options (before any slide is read)."""
    if (
        isinstance(patch_um, bool)
        or not isinstance(patch_um, int | float)
        or not (math.isfinite(patch_um) and patch_um > 0)
    ):
        raise ValueError(f"`patch_um` must be a positive number of microns; got {patch_um!r}.")
    if (
        isinstance(tissue_threshold, bool)
        or not isinstance(tissue_threshold, int | float)
        or not (0.0 <= tissue_threshold <= 1.0)
    ):
        raise ValueError(f"`tissue_threshold` must be a fraction in [0, 1]; got {tissue_threshold!r}.")


def _box_fractions(mask: np.ndarray, downsample: float, tile_px: float, n_rows: int, n_cols: int,
                   size: tuple[int, int]) -> np.ndarray:  # fmt: skip
    """Fraction of each grid cell covered by mask pixels whose centres fall inside it (summed-area table)."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)

    # Mask pixel j has its centre at level-0 (j + 0.5) * downsample: the first pixel of an edge e is
    # ceil(e / downsample - 0.5).
    def edges(n: int) -> np.ndarray:
        e = np.arange(n + 1, dtype=np.float64) * tile_px / downsample - 0.5
        return np.clip(np.ceil(e), 0, None).astype(np.int64)

    ey, ex = edges(n_rows), edges(n_cols)
    ey_c, ex_c = np.minimum(ey, mask.shape[0]), np.minimum(ex, mask.shape[1])
    total = (
        integral[ey_c[1:, None], ex_c[None, 1:]] - integral[ey_c[:-1, None], ex_c[None, 1:]]
        - integral[ey_c[1:, None], ex_c[None, :-1]] + integral[ey_c[:-1, None], ex_c[None, :-1]]
    )  # fmt: skip
    # The denominator is the whole cell, including any part beyond the image: padding is background.
    area = np.outer(np.maximum(ey[1:] - ey[:-1], 1), np.maximum(ex[1:] - ex[:-1], 1))
    return np.clip(total / area, 0.0, 1.0)


def read_tiles(slide: WholeSlide, grid: TileGrid, indices: np.ndarray, *, out_px: int, level: int) -> np.ndarray:
    """Tiles ``indices`` of ``grid`` as ``(b, 3, out_px, out_px)`` uint8, read from ``level``.

    Consecutive tiles of one grid row are read as one window (a TIFF tile shared by neighbours is decoded once).

    Parameters
    ----------
    slide
        The slide.
    grid
        Its tile grid.
    indices
        Tile indices.
    out_px
        Output side in pixels.
    level
        Pyramid level to read.

    Returns
    -------
    The tiles, in the order of ``indices``.

    Examples
    --------
    >>> grid = tile_grid(slide, patch_um=112.0)  # doctest: +SKIP
    >>> read_tiles(slide, grid, [0, 1], out_px=64, level=slide.best_level(112.0 / 64)).shape  # doctest: +SKIP
    (2, 3, 64, 64)
    """
    indices = np.asarray(indices, dtype=np.int64)
    out = np.empty((len(indices), 3, out_px, out_px), dtype=np.uint8)
    s = grid.tile_px
    start = 0
    while start < len(indices):
        stop = start + 1
        while (stop < len(indices) and stop - start < MAX_RUN and grid.rows[indices[stop]] == grid.rows[indices[start]]
               and grid.cols[indices[stop]] == grid.cols[indices[stop - 1]] + 1):  # fmt: skip
            stop += 1
        first, n_run = indices[start], stop - start
        x0, y0 = grid.cols[first] * s, grid.rows[first] * s
        strip = slide.read_box((x0, y0, x0 + n_run * s, y0 + s), level=level, size=(n_run * out_px, out_px))
        out[start:stop] = strip.reshape(out_px, n_run, out_px, 3).transpose(1, 3, 0, 2)
        start = stop
    return out


def iter_tile_batches(
    slide: WholeSlide,
    grid: TileGrid,
    *,
    out_px: int,
    batch_size: int,
    start: int = 0,
    verbose: bool | None = None,
    desc: str | None = None,
    leave: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream the tiles of a grid in batches: only one batch of pixels is in memory at a time.

    Tiles are read from the coarsest pyramid level that is at least as fine as ``patch_um / out_px`` and resampled
    to ``out_px``.

    Parameters
    ----------
    slide
        The slide.
    grid
        Its tile grid.
    out_px
        Output side of a tile in pixels.
    batch_size
        Tiles per batch.
    start
        First tile (to resume).
    verbose
        Progress bar (default: ``st.settings``).
    desc
        Progress bar label.
    leave
        Keep the progress bar once done (``False``: cleared, e.g. under a bar over many slides).

    Yields
    ------
    ``(indices, tiles)``: ``(b,)`` tile indices and ``(b, 3, out_px, out_px)`` uint8 tiles.

    Examples
    --------
    >>> for idx, tiles in iter_tile_batches(slide, grid, out_px=64, batch_size=256):  # doctest: +SKIP
    ...     features[idx] = encode(tiles)
    """
    from tqdm.auto import tqdm

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
    level = slide.best_level(grid.patch_um / out_px)
    n = grid.n_tiles
    with tqdm(total=n, initial=start, unit="tile", desc=desc or slide.path.name, leave=leave,
              disable=not settings.show_progress(verbose)) as bar:  # fmt: skip
        for lo in range(start, n, batch_size):
            idx = np.arange(lo, min(lo + batch_size, n))
            yield idx, read_tiles(slide, grid, idx, out_px=out_px, level=level)
            bar.update(len(idx))
