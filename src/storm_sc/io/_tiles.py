"""An H&E image without a table, as observations: the tissue cut into a grid of tiles."""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pandas as pd
from anndata import AnnData
from shapely.geometry import Point
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import get_transformation
from xarray import DataArray, DataTree

from storm_sc._constants import ATTRS_STORM, SHAPES_TILES, TABLE_TILES

from ._elements import check_rgb_pixels, describe_images, image_size, is_brightfield, levels

# Side of the thumbnail the tissue is detected on: fine enough for tiles of ~100 um on any slide here.
_THUMBNAIL_SIDE = 2048


def tile_observations(sdata: SpatialData, *, image_key: str | None, mpp: float | None, tile_um: float) -> SpatialData:
    """The tissue of an H&E-only SpatialData as a grid of ``tile_um`` tiles, ready for the tools.

    The tissue is found on a thumbnail (:func:`storm_sc.wsi.detect_tissue`); every grid tile whose centre lies
    on it becomes an observation. Returns a new SpatialData holding the image element itself (not a copy), the tiles
    as circles (``shapes["storm_tile_circles"]``, with the image's transformations, so they overlay it in every
    coordinate system) and an empty table annotating them (``tables["storm_tiles"]``); ``sdata`` is not modified.

    Parameters
    ----------
    sdata
        Holds the H&E image and no table.
    image_key
        The H&E image; may be omitted when ``sdata`` holds exactly one RGB image.
    mpp
        Microns per pixel of the image's full resolution; default ``sdata.attrs["storm_sc"]["mpp"]``.
    tile_um
        Tile side (and grid pitch) in microns.

    Returns
    -------
    The SpatialData of the tiles.

    Raises
    ------
    ValueError
        When the image or its scale is unknown, or no tissue is found.
    """
    from storm_sc.wsi import detect_tissue

    rgb = [key for key, element in sdata.images.items() if is_brightfield(element)]
    if image_key is None:
        if len(rgb) != 1:
            found = "several images could be the H&E" if rgb else "no image looks like an RGB H&E image"
            raise ValueError(
                f"This SpatialData has no table, so the tools work on tiles of its H&E image, and {found}: pass "
                f"`image_key=` naming it (images: {describe_images(sdata)})."
            )
        image_key = rgb[0]
    elif image_key not in sdata.images:
        raise ValueError(f"No image {image_key!r}; images found: {describe_images(sdata)}.")
    if mpp is None:
        mpp = sdata.attrs.get(ATTRS_STORM, {}).get("mpp")
    if mpp is None or not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(
            f"Image {image_key!r} has no known scale and this SpatialData has no table to infer it from: pass "
            "`mpp=` (microns per pixel of its full resolution, from the scanner metadata)."
        )
    element = sdata.images[image_key]
    pixels = levels(element)[0].data
    check_rgb_pixels(pixels, image_key)  # before its thumbnail is cast to uint8 and searched
    if pixels.shape[0] < 3:
        raise ValueError(
            f"Image {image_key!r} has one channel; the tissue is found by its colour, so tiles need an RGB H&E image."
        )
    width, height = image_size(element)
    step = tile_um / mpp
    overview, factor = thumbnail(element)
    tissue = detect_tissue(overview, mpp=mpp * factor)

    xs = np.arange(step / 2, width - step / 2 + 1e-9, step)
    ys = np.arange(step / 2, height - step / 2 + 1e-9, step)
    gx, gy = np.meshgrid(xs, ys)
    centres = np.column_stack([gx.ravel(), gy.ravel()])
    rows = np.minimum((centres[:, 1] / factor).astype(int), tissue.shape[0] - 1)
    cols = np.minimum((centres[:, 0] / factor).astype(int), tissue.shape[1] - 1)
    centres = centres[tissue[rows, cols]]
    if len(centres) == 0:
        raise ValueError(
            f"No tissue found on image {image_key!r} (tiles of {tile_um:g} um at {mpp:g} um/px): check the image "
            "and `mpp=`, or add a table of the spots to predict."
        )

    names = pd.Index([f"tile_{i}" for i in range(len(centres))])
    circles = gpd.GeoDataFrame(
        {"radius": np.full(len(centres), step / 2)}, geometry=[Point(x, y) for x, y in centres], index=names
    )
    shapes = ShapesModel.parse(circles, transformations=get_transformation(element, get_all=True))
    table = AnnData(
        np.zeros((len(centres), 0), dtype=np.float32),
        obs=pd.DataFrame(
            {"region": pd.Categorical([SHAPES_TILES] * len(centres)), "instance_id": names.to_numpy()}, index=names
        ),
    )
    table = TableModel.parse(table, region=SHAPES_TILES, region_key="region", instance_key="instance_id")
    tiles = SpatialData(images={image_key: element}, shapes={SHAPES_TILES: shapes}, tables={TABLE_TILES: table})
    # The slide is named after its image (the tools' messages and plot titles), not after the tiles' table.
    tiles.attrs[ATTRS_STORM] = {
        "platform": "generic",
        "mpp": float(mpp),
        "image_key": image_key,
        "library_id": image_key,
    }
    return tiles


def thumbnail(element: DataArray | DataTree, side: int = _THUMBNAIL_SIDE) -> tuple[np.ndarray, float]:
    """``(h, w, 3)`` uint8 overview of about ``side`` pixels, and its full-resolution pixels per pixel.

    Read from the coarsest stored pyramid level that is still at least that large: striding through the full
    resolution of a whole-slide image would read all of it.
    """
    stored = levels(element)
    full_width = max(int(level.sizes["x"]) for level in stored)
    big_enough = [lv for lv in stored if max(lv.sizes["x"], lv.sizes["y"]) >= side]
    level = min(big_enough, key=lambda lv: lv.sizes["x"]) if big_enough else max(stored, key=lambda lv: lv.sizes["x"])
    stride = max(1, math.ceil(max(level.sizes["x"], level.sizes["y"]) / side))
    pixels = np.asarray(level.data[:3, ::stride, ::stride]).transpose(1, 2, 0)
    return np.ascontiguousarray(pixels, dtype=np.uint8), full_width / int(level.sizes["x"]) * stride
