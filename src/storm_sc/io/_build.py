"""Build a SpatialData from plain arrays: legacy ST, HEST samples and generated data all pass through here."""

from __future__ import annotations

from typing import Any

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
from anndata import AnnData
from shapely.geometry import Point
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity

from storm_sc._constants import ATTRS_STORM

# Images larger than this (in pixels, on either side) get a pyramid so that patch reading can pick a level.
_PYRAMID_MIN_SIDE = 4096
_CHUNK = 1024


def _as_cyx(image: Any) -> da.Array:
    arr = image if isinstance(image, da.Array) else np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise ValueError(f"`image` must be 2-D (grey) or 3-D (y, x, c) / (c, y, x); got shape {arr.shape}.")
    elif arr.shape[-1] in (3, 4) and arr.shape[0] not in (3, 4):
        arr = arr.transpose(2, 0, 1)
    if arr.shape[0] == 4:  # RGBA: alpha carries no stain information
        arr = arr[:3]
    return da.asarray(arr).rechunk((arr.shape[0], _CHUNK, _CHUNK))


def from_arrays(
    table: AnnData,
    centers_px: np.ndarray,
    image: Any | None = None,
    *,
    mpp: float | None,
    spot_diameter_um: float | None = None,
    platform: str = "generic",
    library_id: str = "slide",
    image_key: str | None = None,
    shapes_key: str | None = None,
    table_key: str = "table",
    coordinate_system: str | None = None,
) -> SpatialData:
    """Assemble a SpatialData (image, spot circles, linked table) from arrays, in true physical scale.

    Used for platforms that ``spatialdata-io`` does not read (legacy Spatial Transcriptomics, HEST-1k samples,
    any H&E image with spot coordinates) and for generated data. The physical scale is stored in
    ``sdata.attrs["storm_sc"]`` so that :func:`storm_sc.io.resolve` needs no ``mpp=`` later.

    Parameters
    ----------
    table
        Observations x genes. Not modified; a copy is linked to the new shapes element.
    centers_px
        ``(n_obs, 2)`` observation centres ``(x, y)`` in pixels of ``image`` (or of a virtual image when
        ``image`` is ``None``).
    image
        H&E image as ``(y, x, 3)`` or ``(3, y, x)`` uint8 (numpy or dask), or ``None`` for expression-only data.
    mpp
        Microns per pixel of ``image`` (and of ``centers_px``). Required: without it nothing can be put in
        physical scale.
    spot_diameter_um
        Spot (or cell) diameter in microns, for the circles; defaults to 10 pixels when unknown.
    platform
        Platform name recorded for :func:`storm_sc.io.resolve` (e.g. ``"legacy_st"``, ``"hest"``, ``"generic"``).
    library_id
        Slide name; also the default stem of the element keys.
    image_key, shapes_key, table_key
        Element names; default to ``f"{library_id}_image"``, ``f"{library_id}_spots"`` and ``"table"``.
    coordinate_system
        Name of the coordinate system the elements are placed in (pixels of ``image``); default ``library_id``,
        as ``spatialdata_io.visium`` names it after the dataset: slides joined with ``spatialdata.concatenate``
        then stay apart (in one shared system they would lie on top of each other, each spot a neighbour of the
        other slide's).

    Returns
    -------
    A new SpatialData with ``images[image_key]`` (multiscale above 4096 px), ``shapes[shapes_key]`` and
    ``tables[table_key]`` annotating the shapes.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> import storm_sc as st
    >>> adata = ad.AnnData(np.ones((2, 3), dtype=np.float32))
    >>> img = np.zeros((100, 100, 3), dtype=np.uint8)
    >>> sdata = st.io.from_arrays(adata, np.array([[20.0, 30.0], [60.0, 70.0]]), img, mpp=0.5)
    >>> sorted(sdata.images)
    ['slide_image']
    """
    centers_px = np.asarray(centers_px, dtype=np.float64)
    if centers_px.shape != (table.n_obs, 2):
        raise ValueError(
            f"`centers_px` must have shape (n_obs, 2) = ({table.n_obs}, 2) for the table given; got {centers_px.shape}."
        )
    if not np.isfinite(centers_px).all():
        raise ValueError("`centers_px` holds NaN or infinite coordinates; drop those observations first.")
    if mpp is None or not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(
            f"`mpp` (microns per pixel) must be a positive number, got {mpp!r}. "
            "Measure it from the scanner metadata or from a known distance (e.g. the spot pitch)."
        )
    image_key = image_key or f"{library_id}_image"
    shapes_key = shapes_key or f"{library_id}_spots"
    transformations = {coordinate_system or library_id: Identity()}

    images = {}
    if image is not None:
        cyx = _as_cyx(image)
        scale_factors: list[int] = []
        side = max(cyx.shape[1:])
        if side > _PYRAMID_MIN_SIDE:
            while side / 2 ** len(scale_factors) > _PYRAMID_MIN_SIDE / 2:
                scale_factors.append(2)
        images[image_key] = Image2DModel.parse(
            cyx,
            dims=("c", "y", "x"),
            c_coords=["r", "g", "b"] if cyx.shape[0] == 3 else None,
            scale_factors=scale_factors or None,
            chunks=(cyx.shape[0], _CHUNK, _CHUNK),
            transformations=transformations,
        )

    radius_px = (spot_diameter_um / 2.0 / mpp) if spot_diameter_um else 5.0
    obs_names = pd.Index(table.obs_names.astype(str))
    circles = gpd.GeoDataFrame(
        {"radius": np.full(table.n_obs, radius_px)},
        geometry=[Point(x, y) for x, y in centers_px],
        index=obs_names,
    )
    shapes = {shapes_key: ShapesModel.parse(circles, transformations=transformations)}

    linked = table.copy()
    linked.obs["region"] = pd.Categorical([shapes_key] * linked.n_obs)
    linked.obs["instance_id"] = obs_names.to_numpy()
    linked = TableModel.parse(linked, region=shapes_key, region_key="region", instance_key="instance_id")

    sdata = SpatialData(images=images, shapes=shapes, tables={table_key: linked})
    sdata.attrs[ATTRS_STORM] = {
        "platform": platform,
        "mpp": float(mpp),
        "image_key": image_key if image is not None else None,
        "spot_diameter_um": None if spot_diameter_um is None else float(spot_diameter_um),
        "library_id": library_id,
    }
    return sdata
