"""Levels of a (possibly multiscale) lazy image, and reading small windows from one of them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

# White, like bare glass: what a patch shows beyond the edge of the scanned image.
PAD_VALUE = 255
# A level within this factor of the target resolution counts as "not coarser" (float noise in mpp).
_LEVEL_TOLERANCE = 1.01
# A block read for several windows may cover at most this multiple of their summed area (see group_windows).
GROUP_OVERREAD = 2.0


@dataclass(frozen=True)
class ImageLevel:
    """One pyramid level as a ``(c, y, x)`` dask array and its size relative to the full-resolution level."""

    data: da.Array
    scale_yx: tuple[float, float]
    """Full-resolution pixels per pixel of this level, along y and x (1.0 for the full-resolution level)."""

    @property
    def scale(self) -> float:
        return 0.5 * (self.scale_yx[0] + self.scale_yx[1])


def _as_cyx(element: Any, name: str) -> da.Array:
    from spatialdata.models import get_axes_names

    axes = tuple(get_axes_names(element))
    if "z" in axes:
        raise ValueError(
            f"Image {name!r} is 3-D (axes {axes}); H&E patches need a 2-D image with axes ('c', 'y', 'x')."
        )
    arr = element.data if isinstance(element.data, da.Array) else da.from_array(np.asarray(element.data))
    return arr.transpose(*[axes.index(a) for a in ("c", "y", "x")])


def image_levels(image: Any, name: str = "image") -> list[ImageLevel]:
    """All levels of a ``DataArray`` or multiscale ``DataTree`` image, finest first.

    A level's scale is the ratio of full-resolution to level shape, the same convention spatialdata uses for
    the transformations of multiscale images (level pixel ``j`` covers full-resolution ``[j s, (j + 1) s)``).
    """
    from spatialdata import get_pyramid_levels
    from xarray import DataArray, DataTree

    if isinstance(image, DataTree):
        arrays = [_as_cyx(level, name) for level in get_pyramid_levels(image)]
    elif isinstance(image, DataArray):
        arrays = [_as_cyx(image, name)]
    else:
        raise TypeError(f"Image {name!r} must be an xarray DataArray or a multiscale DataTree; got {type(image)}.")
    arrays.sort(key=lambda a: -int(a.shape[1]) * int(a.shape[2]))
    full_y, full_x = arrays[0].shape[1:]
    return [ImageLevel(a, (full_y / a.shape[1], full_x / a.shape[2])) for a in arrays]


def choose_level(levels: Sequence[ImageLevel], mpp: float, target_mpp: float) -> int:
    """Index of the coarsest level that is still at least as fine as ``target_mpp`` (microns per pixel).

    Reading the coarsest sufficient level keeps windows small; never going coarser than the target keeps
    detail, so the final resize only ever downsamples (when the full-resolution level allows it).
    """
    best = 0
    for i, level in enumerate(levels):
        if mpp * level.scale <= target_mpp * _LEVEL_TOLERANCE:
            best = i
    return best


def window_bounds(center: float, half: float, margin: int) -> tuple[int, int]:
    """Integer pixel range ``[lo, hi)`` covering ``center +- half`` plus ``margin`` pixels for the resampling filter."""
    return math.floor(center - half) - margin, math.ceil(center + half) + margin


def read_windows(data: da.Array, boxes: Sequence[tuple[int, int, int, int]]) -> list[np.ndarray]:
    """Read ``(c, y0:y1, x0:x1)`` windows ``(y0, y1, x0, x1)`` from a lazy image, padding beyond its edges.

    Windows are gathered into a few rectangular blocks (see :func:`group_windows`) and all blocks are computed in
    one dask call, so neighbouring windows (which overlap when observations are closer than a patch) cost one read
    of their common area instead of one dask task per window, and no block is much larger than the windows it
    serves. The synchronous scheduler is used on purpose: these reads run inside DataLoader worker processes, where
    a thread pool per worker would oversubscribe the CPUs.
    """
    _, height, width = data.shape
    inside = [_clip(box, height, width) for box in boxes]
    present = [i for i, box in enumerate(inside) if box is not None]
    groups = group_windows([inside[i] for i in present])
    lazy, origins = [], []
    for group in groups:
        members = [inside[present[j]] for j in group]
        y0, y1 = min(b[0] for b in members), max(b[1] for b in members)
        x0, x1 = min(b[2] for b in members), max(b[3] for b in members)
        lazy.append(data[:, y0:y1, x0:x1])
        origins.append((y0, x0))
    blocks = dask.compute(*lazy, scheduler="synchronous") if lazy else ()
    source: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}
    for group, block, origin in zip(groups, blocks, origins, strict=True):
        for j in group:
            source[present[j]] = (np.asarray(block), origin)
    out = []
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        buf = np.full((data.shape[0], y1 - y0, x1 - x0), PAD_VALUE, dtype=data.dtype)
        if i in source:
            block, (by, bx) = source[i]
            cy0, cy1, cx0, cx1 = inside[i]
            buf[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = block[:, cy0 - by : cy1 - by, cx0 - bx : cx1 - bx]
        out.append(buf)
    return out


def _clip(box: tuple[int, int, int, int], height: int, width: int) -> tuple[int, int, int, int] | None:
    y0, y1, x0, x1 = box
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)
    return None if cy0 >= cy1 or cx0 >= cx1 else (cy0, cy1, cx0, cx1)


def group_windows(boxes: Sequence[tuple[int, int, int, int]], *, overread: float = GROUP_OVERREAD) -> list[list[int]]:
    """Partition windows ``(y0, y1, x0, x1)`` into groups each read as one block (their bounding box).

    A group is kept when its bounding box covers at most ``overread`` times the summed area of its windows;
    otherwise it is split at the median window centre along the longer side of the box, recursively. Windows of
    nearby observations (which overlap) end up in one block; scattered windows are read alone. The pixels read
    therefore never exceed ``overread`` times those of the windows themselves. Splits halve the box in space
    (a k-d tree), so the groups follow the tissue rather than the order of the windows.

    Parameters
    ----------
    boxes
        Windows in pixels of one image level, already clipped to the image.
    overread
        Largest ratio of a block's area to the summed areas of its windows.

    Returns
    -------
    Groups of indices into ``boxes``; every index appears in exactly one group.

    Examples
    --------
    >>> group_windows([(0, 10, 0, 10), (2, 12, 2, 12), (500, 510, 500, 510)])
    [[0, 1], [2]]
    """
    if not len(boxes):
        return []
    arr = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    areas = (arr[:, 1] - arr[:, 0]) * (arr[:, 3] - arr[:, 2])
    out: list[list[int]] = []
    stack = [np.arange(len(arr))]
    while stack:
        idx = stack.pop()
        sub = arr[idx]
        h = sub[:, 1].max() - sub[:, 0].min()
        w = sub[:, 3].max() - sub[:, 2].min()
        if len(idx) == 1 or h * w <= overread * areas[idx].sum():
            out.append(sorted(idx.tolist()))
            continue
        lo, hi = (0, 1) if h >= w else (2, 3)
        centre = sub[:, lo] + sub[:, hi]  # twice the centres: integers
        low = centre <= (centre.min() + centre.max()) // 2
        if low.all():  # identical centres cannot be told apart by space: halve by count
            low = np.arange(len(idx)) < len(idx) // 2
        stack.append(idx[~low])
        stack.append(idx[low])
    return sorted(out)
