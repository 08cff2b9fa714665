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

    All windows are computed in one dask call so that chunks shared by neighbouring windows are read once.
    The synchronous scheduler is used on purpose: these reads run inside DataLoader worker processes, where
    a thread pool per worker would oversubscribe the CPUs.
    """
    _, height, width = data.shape
    lazy, placements = [], []
    for y0, y1, x0, x1 in boxes:
        cy0, cy1 = max(y0, 0), min(y1, height)
        cx0, cx1 = max(x0, 0), min(x1, width)
        if cy0 >= cy1 or cx0 >= cx1:
            lazy.append(None)
        else:
            lazy.append(data[:, cy0:cy1, cx0:cx1])
        placements.append((cy0 - y0, cy1 - y0, cx0 - x0, cx1 - x0))
    present = [w for w in lazy if w is not None]
    computed = iter(dask.compute(*present, scheduler="synchronous")) if present else iter(())
    out = []
    for (y0, y1, x0, x1), window, (py0, py1, px0, px1) in zip(boxes, lazy, placements, strict=True):
        buf = np.full((data.shape[0], y1 - y0, x1 - x0), PAD_VALUE, dtype=data.dtype)
        if window is not None:
            buf[:, py0:py1, px0:px1] = next(computed)
        out.append(buf)
    return out
