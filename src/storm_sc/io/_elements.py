"""Discovering and checking what a SpatialData holds: tables, the elements they annotate, images, coordinate systems.

Platform adapters build on these; nothing here knows about a particular platform.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from geopandas import GeoDataFrame
from shapely.geometry import Point
from spatialdata import SpatialData, get_centroids
from spatialdata.models import get_table_keys
from spatialdata.transformations import get_transformation
from xarray import DataArray, DataTree

from storm_sc._settings import logger


def full_res(element: DataArray | DataTree) -> DataArray:
    """Return the full-resolution level of a raster element (``scale0`` of a multiscale ``DataTree``)."""
    if isinstance(element, DataTree):
        return next(iter(element["scale0"].values()))
    return element


def image_size(element: DataArray | DataTree) -> tuple[int, int]:
    """``(width, height)`` in pixels of the full-resolution level."""
    arr = full_res(element)
    return int(arr.sizes["x"]), int(arr.sizes["y"])


def levels(element: DataArray | DataTree) -> list[DataArray]:
    """Every stored resolution level of a raster element (the element itself when it has one level)."""
    if isinstance(element, DataTree):
        return [next(iter(element[name].values())) for name in element.children]
    return [element]


def coarsest(element: DataArray | DataTree) -> DataArray:
    """Return the lowest-resolution level of a raster element (the element itself when it has one level)."""
    return min(levels(element), key=lambda level: level.sizes["x"])


# Side of the sample the pixel checks read: enough to see tissue, small enough to read from any level.
_CHECK_SIDE = 512
# Share of a fourth channel's sampled pixels at 0 or 255 for it to be taken as an alpha (opacity) mask.
_ALPHA_SHARE = 0.99


def _pixel_sample(element: DataArray | DataTree) -> np.ndarray:
    """``(c, y, x)`` strided sample of about ``_CHECK_SIDE`` pixels a side from the coarsest level (cheap always)."""
    arr = coarsest(element)
    step_y = max(1, arr.sizes["y"] // _CHECK_SIDE)
    step_x = max(1, arr.sizes["x"] // _CHECK_SIDE)
    return np.asarray(arr.isel(y=slice(None, None, step_y), x=slice(None, None, step_x)).transpose("c", "y", "x"))


def _blank(sample: np.ndarray) -> bool:
    if sample.shape[0] == 4 and not sample[3].any():
        return True
    colour = sample[:3]
    return bool(colour.min() == colour.max())


def is_blank(element: DataArray | DataTree) -> bool:
    """Whether a colour image shows nothing: its colour channels constant, or fully transparent (alpha all 0).

    Reads a strided sample of the coarsest level only, so it is cheap even for a whole-slide image.
    """
    return _blank(_pixel_sample(element))


def is_blank_array(image: np.ndarray) -> bool:
    """:func:`is_blank` for a ``(y, x, c)`` array, as scanpy keeps images in ``.uns["spatial"]``.

    Examples
    --------
    >>> is_blank_array(np.zeros((8, 8, 4), np.float32)), is_blank_array(np.eye(8)[..., None].repeat(3, axis=2))
    (True, False)
    """
    if image is None:
        return True
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.size == 0:
        return True  # not an image at all: nothing to show either
    step_y, step_x = max(1, arr.shape[0] // _CHECK_SIDE), max(1, arr.shape[1] // _CHECK_SIDE)
    return _blank(np.moveaxis(arr[::step_y, ::step_x], -1, 0))


def is_brightfield(element: DataArray | DataTree) -> bool:
    """Whether a raster element looks like a bright-field (H&E) image: 8-bit RGB, or RGBA that is not blank.

    RGBA is what PNG exports with an alpha channel give (alpha carries no stain information and is dropped when
    patches are read). A fourth channel counts as alpha only when it is (nearly) all 0 or 255, so that a stack of
    four 8-bit fluorescence channels is not taken for an H&E; a blank RGBA placeholder (e.g. the black ``hires``
    image of scanpy's Visium fixture) is not either. RGB images are taken as they are, without reading their pixels.
    """
    arr = full_res(element)
    if "c" not in arr.dims or arr.dtype != np.uint8 or arr.sizes["c"] not in (3, 4):
        return False
    if arr.sizes["c"] == 3:
        return True
    sample = _pixel_sample(element)
    return bool(np.isin(sample[3], (0, 255)).mean() >= _ALPHA_SHARE) and not _blank(sample)


def describe_image(key: str, element: DataArray | DataTree) -> str:
    """One line naming an image with its channels, dtype and size, for error messages."""
    arr = full_res(element)
    w, h = image_size(element)
    n_c = arr.sizes.get("c", 1)
    levels = f", {len(element.children)} levels" if isinstance(element, DataTree) else ""
    return f"{key!r} ({n_c} channel(s), {arr.dtype}, {w} x {h} px{levels})"


def describe_images(sdata: SpatialData) -> str:
    """All images of ``sdata`` as a readable list (or ``'none'``)."""
    if not sdata.images:
        return "none"
    return "; ".join(describe_image(k, v) for k, v in sdata.images.items())


def coordinate_systems(element: Any) -> set[str]:
    """Names of the coordinate systems an element is placed in."""
    return set(get_transformation(element, get_all=True))


def affine_xy(element: Any, coordinate_system: str) -> np.ndarray:
    """Return the ``3 x 3`` homogeneous matrix mapping an element's intrinsic ``(x, y)`` into ``coordinate_system``."""
    t = get_transformation(element, to_coordinate_system=coordinate_system)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64)


def linear_scale(matrix: np.ndarray) -> float:
    """Isotropic scale of an affine ``3 x 3`` matrix (square root of the area factor)."""
    return float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))


def anisotropy(matrix: np.ndarray) -> float:
    """Ratio of the larger to the smaller singular value of the linear part (1 for a similarity)."""
    s = np.linalg.svd(matrix[:2, :2], compute_uv=False)
    return float(s[0] / s[1]) if s[1] > 0 else float("inf")


def apply_affine(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a ``3 x 3`` homogeneous matrix to ``(n, 2)`` points."""
    return xy @ matrix[:2, :2].T + matrix[:2, 2]


def table_regions(table: AnnData, table_key: str | None) -> tuple[tuple[str, ...], str, str]:
    """Return the elements a table annotates, with its region and instance columns.

    Raises a clear error when the table was never linked to elements (``TableModel.parse`` with ``region=``).
    """
    try:
        region, region_key, instance_key = get_table_keys(table)
    except ValueError:
        raise ValueError(
            f"Table {table_key!r} does not say which elements it annotates (no `uns['spatialdata_attrs']`). "
            "Link it with `spatialdata.models.TableModel.parse(table, region=..., region_key=..., instance_key=...)`."
        ) from None
    regions = (region,) if isinstance(region, str) else tuple(region)
    for col in (region_key, instance_key):
        if col not in table.obs:
            raise ValueError(
                f"Table {table_key!r} names `.obs[{col!r}]` in its spatialdata_attrs but has no such column."
            )
    return regions, region_key, instance_key


def find_element(sdata: SpatialData, key: str) -> Any | None:
    """A shapes, labels or points element by key (the kinds a table can annotate), or ``None``."""
    for group in (sdata.shapes, sdata.labels, sdata.points):
        if key in group:
            return group[key]
    return None


def element_of(sdata: SpatialData, key: str) -> Any:
    """Return a shapes, labels or points element by key, with a clear error when missing."""
    element = find_element(sdata, key)
    if element is not None:
        return element
    raise ValueError(
        f"The table annotates element {key!r}, which is not in this SpatialData "
        f"(shapes: {list(sdata.shapes)}, labels: {list(sdata.labels)}, points: {list(sdata.points)})."
    )


def shared_coordinate_systems(elements: Iterable[Any]) -> set[str]:
    """Coordinate systems in which every given element is placed."""
    sets = [coordinate_systems(e) for e in elements]
    return set.intersection(*sets) if sets else set()


def pick_coordinate_system(candidates: set[str], regions: Sequence[Any], image: Any | None) -> str:
    """Choose one of several equivalent coordinate systems, preferring the least arithmetic.

    Any shared system gives the same pixel and micron positions; preferring one where the image (else the
    regions) sits with an identity transform only avoids round-off.
    """

    def n_identity(cs: str) -> int:
        els = ([image] if image is not None else []) + list(regions)
        return sum(np.allclose(affine_xy(e, cs), np.eye(3)) for e in els)

    return sorted(candidates, key=lambda cs: (-n_identity(cs), cs != "global", cs))[0]


def _match(index: pd.Index, ids: pd.Series) -> np.ndarray:
    pos = index.get_indexer(ids)
    if (pos < 0).any() and index.dtype != ids.dtype:
        # instance ids are often ints on one side and strings on the other (e.g. after a round trip to disk)
        pos = index.astype(str).get_indexer(ids.astype(str))
    return pos


def _centroids(element: Any, coordinate_system: str) -> pd.DataFrame:
    """``x``, ``y`` of each instance of an element in ``coordinate_system``, indexed by instance id.

    Shapes whose geometry is missing, empty or NaN get NaN, so that the rows annotating them can be named:
    spatialdata's ``get_centroids`` drops the empty ones, and the rest no longer line up with the index.
    """
    if not isinstance(element, GeoDataFrame):
        with warnings.catch_warnings():
            # spatialdata warns about dask divisions of an unsorted index; the centroids are computed at once
            warnings.filterwarnings("ignore", message="The index of the dataframe is not monotonic")
            return get_centroids(element, coordinate_system=coordinate_system).compute()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)
        centroid = element.geometry.centroid  # a circle's is its centre point
        xy = np.column_stack([centroid.x.to_numpy(dtype=np.float64), centroid.y.to_numpy(dtype=np.float64)])
    placed = apply_affine(affine_xy(element, coordinate_system), xy)
    return pd.DataFrame(placed, columns=["x", "y"], index=element.index.copy())


def region_centroids(
    sdata: SpatialData,
    table: AnnData,
    region_key: str,
    links: Sequence[Any],
    coordinate_system: str,
) -> np.ndarray:
    """Centroid of each table row's element instance in ``coordinate_system``, in table order, ``(n, 2)`` xy.

    ``links`` are :class:`~storm_sc.io._adapter.RegionLink` s: for each region value, the element holding the
    geometry and the columns that carry the instance ids.
    """
    out = np.full((table.n_obs, 2), np.nan)
    region_col = table.obs[region_key].astype(str).to_numpy()
    cache: dict[str, pd.DataFrame] = {}
    for link in links:
        mask = region_col == link.region
        if not mask.any():
            continue
        if link.element_key not in cache:
            cache[link.element_key] = _centroids(element_of(sdata, link.element_key), coordinate_system)
        cen = cache[link.element_key]
        index = pd.Index(cen.index)
        if link.element_column is not None:
            index = pd.Index(element_of(sdata, link.element_key)[link.element_column].reindex(cen.index))
        if not index.is_unique:
            raise ValueError(f"Element {link.element_key!r} has duplicated instance ids; table rows cannot be matched.")
        pos = _match(index, table.obs[link.table_column][mask])
        missing = int((pos < 0).sum())
        if missing:
            raise ValueError(
                f"{missing} of {int(mask.sum())} table rows of region {link.region!r} have an "
                f"`.obs[{link.table_column!r}]` id that is not an instance of {link.element_key!r}; "
                "the table and the element do not match."
            )
        xy = cen[["x", "y"]].to_numpy(dtype=np.float64)[pos]
        lost = np.isnan(xy).any(axis=1)
        if lost.any():
            ids = table.obs[link.table_column][mask][lost].astype(str).tolist()
            raise ValueError(
                f"{len(ids)} table rows of region {link.region!r} have no position: the geometry of their instances "
                f"in {link.element_key!r} is empty or NaN (`.obs[{link.table_column!r}]`: {ids[:10]}"
                f"{' ...' if len(ids) > 10 else ''}). Drop these rows from the table, or fix their geometry."
            )
        out[mask] = xy
    unassigned = int(np.isnan(out).any(axis=1).sum())
    if unassigned:
        regions = [link.region for link in links]
        raise ValueError(
            f"{unassigned} table rows have an `.obs[{region_key!r}]` that is not one of the annotated regions "
            f"{regions}; drop them first."
        )
    return out


def observation_size(sdata: SpatialData, regions: Sequence[str], coordinate_system: str) -> float | None:
    """Median observation size in coordinate-system units: circle diameter or square-root polygon area.

    ``None`` for labels or points, whose size is not a single number worth checking.
    """
    sizes = []
    for key in regions:
        el = element_of(sdata, key)
        if not isinstance(el, GeoDataFrame) or len(el) == 0:
            return None
        s = linear_scale(affine_xy(el, coordinate_system))
        if isinstance(el.geometry.iloc[0], Point):
            if "radius" not in el:
                return None
            sizes.append(2.0 * np.median(el["radius"].to_numpy(dtype=np.float64)) * s)
        else:
            sizes.append(float(np.median(np.sqrt(el.geometry.area.to_numpy()))) * s)
    return float(np.median(sizes)) if sizes else None


# More than this share of observations outside the image means image and table do not belong together.
MAX_OUTSIDE_FRACTION = 0.2


def check_table(table: AnnData, table_key: str | None) -> None:
    """Refuse an empty table or one whose rows cannot be told apart."""
    name = "The table" if table_key is None else f"Table {table_key!r}"
    if table.n_obs == 0:
        raise ValueError(f"{name} has no observations (0 rows); nothing to resolve.")
    if not table.obs_names.is_unique:
        dup = table.obs_names[table.obs_names.duplicated()].unique()
        raise ValueError(
            f"{name} has {len(dup)} duplicated obs names (e.g. {list(dup[:3])}); rows must be told apart. "
            "Make them unique first with `.obs_names_make_unique()` on the table."
        )


def check_inside(centers_px: np.ndarray, image: DataArray | DataTree, image_key: str, table_key: str | None) -> None:
    """Refuse observations that mostly miss the image; warn about a few at the borders (their patches are padded)."""
    w, h = image_size(image)
    x, y = centers_px[:, 0], centers_px[:, 1]
    outside = (x < 0) | (x >= w) | (y < 0) | (y >= h)
    n_out = int(outside.sum())
    if not n_out:
        return
    frac = n_out / len(centers_px)
    msg = (
        f"{n_out} of {len(centers_px)} observations of table {table_key!r} ({frac:.0%}) lie outside image "
        f"{image_key!r} ({w} x {h} px)"
    )
    if frac > MAX_OUTSIDE_FRACTION:
        raise ValueError(
            f"{msg}: the image and the table do not line up (wrong image, or a wrong transformation). "
            "Choose another `image_key=`, or fix the elements' transformations."
        )
    logger.warning("%s; their patches will be padded.", msg)


def check_rgb_pixels(pixels: Any, image_key: str | None) -> None:
    """Refuse an image H&E cannot be read from: not 1, 3 or 4 channels first, or not uint8.

    ``pixels`` is any ``(c, y, x)`` array (numpy, dask) of the image's full resolution.
    """
    n_channels = pixels.shape[0]
    if n_channels not in (1, 3, 4):
        raise ValueError(
            f"Image {image_key!r} has {n_channels} channels; H&E patches need an RGB image (3 channels). This looks "
            "like an immunofluorescence or morphology image: pass the H&E image with `image_key=`, or use the slide "
            "expression-only."
        )
    if pixels.dtype != np.uint8:
        raise ValueError(
            f"Image {image_key!r} is {pixels.dtype}; H&E patches are read from uint8 RGB images. Convert it first, "
            "e.g. rescale to 0-255 and cast with `.astype('uint8')`."
        )
