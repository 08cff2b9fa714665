"""Whole-slide images: reading pyramidal TIFF/SVS and plain images in microns, tissue detection, streamed tiling."""

from ._reader import WholeSlide, open_slide
from ._tiling import TileGrid, iter_tile_batches, read_tiles, tile_grid
from ._tissue import detect_tissue

__all__ = ["TileGrid", "WholeSlide", "detect_tissue", "iter_tile_batches", "open_slide", "read_tiles", "tile_grid"]
