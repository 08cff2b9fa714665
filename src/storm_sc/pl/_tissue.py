"""The tissue in true physical scale: the H&E image read at a display resolution and spots drawn in microns.

Plots place everything in microns of the slide's coordinate system (``SpatialInput.centers_um``). The image is
placed there by its own transformation, so that an image that is offset, scaled or rotated relative to the spots
still lines up with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dask.array as da
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import Collection, EllipseCollection, PolyCollection
from matplotlib.transforms import Affine2D
from scipy.spatial import cKDTree

from storm_sc.io import SpatialInput
from storm_sc.io._elements import affine_xy, linear_scale
from storm_sc.pp._pyramid import choose_level, image_levels

#: Longest side, in pixels, of the image drawn under a matplotlib panel: sharp at 300 dpi on a 6-inch panel,
#: small enough that a whole-slide image is never read at full resolution.
DISPLAY_MAX_SIDE = 1800
# Where the platform adapters of storm_sc.io record the size of an observation (SpatialInput.extra), best first.
_SIZE_KEYS = ("spot_diameter_um", "bin_size_um", "observation_size_um")
# A spot's default drawn diameter when the platform states no size: this share of the median neighbour distance.
_NEIGHBOUR_SHARE = 0.9


def image_to_um(slide: SpatialInput) -> np.ndarray:
    """``3 x 3`` affine from full-resolution image pixels ``(x, y)`` to microns of the slide's coordinate system.

    Pixel ``i`` covers ``[i, i + 1)``, spatialdata's convention, in which ``slide.centers_px`` are given.
    """
    if slide.image is None or slide.mpp is None:
        raise ValueError(f"Slide {slide.library_id!r} has no image.")
    if slide.table_key is None:
        # A bare AnnData: positions and image share the image's pixel frame (centers_um = centers_px * mpp).
        return np.diag([slide.mpp, slide.mpp, 1.0])
    a = affine_xy(slide.image, slide.coordinate_system)
    um_per_unit = slide.mpp / linear_scale(a)
    return np.diag([um_per_unit, um_per_unit, 1.0]) @ a


def spot_diameter_um(slide: SpatialInput) -> float:
    """Return the drawn diameter of an observation: the platform's spot size, else from the observations' spacing."""
    for key in _SIZE_KEYS:
        size = slide.extra.get(key)
        if isinstance(size, int | float) and math.isfinite(size) and size > 0:
            return float(size)
    if slide.n_obs < 2:
        return 10.0
    dist, _ = cKDTree(slide.centers_um).query(slide.centers_um, k=2)
    spacing = float(np.median(dist[:, 1]))
    return _NEIGHBOUR_SHARE * spacing if spacing > 0 else 10.0


def square_observations(slide: SpatialInput) -> bool:
    """Whether the observations are square bins (Visium HD), drawn as squares rather than circles."""
    return slide.extra.get("bin_size_um") is not None


def spot_bounds(centers_um: np.ndarray, diameter_um: float) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)`` around all observations with a margin of one spot diameter."""
    lo = centers_um.min(axis=0) - diameter_um
    hi = centers_um.max(axis=0) + diameter_um
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


@dataclass(frozen=True)
class TissueImage:
    """An image window read for display.

    Attributes
    ----------
    pixels
        ``(h, w, 3)`` uint8 RGB, or ``(h, w)`` for a one-channel image.
    to_um
        ``3 x 3`` affine from ``(col, row)`` pixel-edge coordinates of ``pixels`` to microns ``(x, y)``.
    """

    pixels: np.ndarray
    to_um: np.ndarray

    @property
    def axis_aligned(self) -> bool:
        """Whether the image maps to microns without rotation or shear (then ``extent`` places it exactly)."""
        return bool(abs(self.to_um[0, 1]) < 1e-12 and abs(self.to_um[1, 0]) < 1e-12)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(left, right, bottom, top)`` in microns, for ``imshow(origin="upper")`` of an axis-aligned image."""
        h, w = self.pixels.shape[:2]
        (x0, y0), (x1, y1) = _apply(self.to_um, np.array([[0.0, 0.0], [w, h]]))
        return x0, x1, y1, y0


def _apply(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ matrix[:2, :2].T + matrix[:2, 2]


def _display_values(window: da.Array) -> np.ndarray:
    """``(c, y, x)`` window -> uint8 ``(y, x, 3)`` (or ``(y, x)``) for display, whatever the stored dtype."""
    arr = np.asarray(window.compute())
    arr = arr[:3] if arr.shape[0] >= 3 else arr[:1]
    if arr.dtype != np.uint8:
        # Stretch other dtypes (16-bit scans, floats) between robust percentiles for display only.
        lo, hi = np.nanpercentile(arr, [0.5, 99.5]) if arr.size else (0.0, 1.0)
        arr = np.clip((arr.astype(np.float32) - lo) / max(hi - lo, 1e-12), 0, 1) * 255
        arr = np.nan_to_num(arr)
    arr = np.moveaxis(arr.astype(np.uint8), 0, -1)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def read_tissue_image(
    slide: SpatialInput,
    bounds_um: tuple[float, float, float, float],
    *,
    max_side: int = DISPLAY_MAX_SIDE,
) -> TissueImage | None:
    """Read the part of the slide's image under ``bounds_um`` with at most ``max_side`` pixels a side.

    Reads from the coarsest pyramid level that is still fine enough, then block-averages lazily, so that memory
    stays bounded by the display size and the image's chunks, never by the full-resolution image. ``None`` when
    the window misses the image.
    """
    to_um = image_to_um(slide)
    x0, x1, y0, y1 = bounds_um
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]])
    px = _apply(np.linalg.inv(to_um), corners)
    levels = image_levels(slide.image, slide.image_key or "image")
    full_h, full_w = levels[0].data.shape[1:]
    fx0, fy0 = np.clip(np.floor(px.min(axis=0)), 0, [full_w, full_h])
    fx1, fy1 = np.clip(np.ceil(px.max(axis=0)), 0, [full_w, full_h])
    if fx1 <= fx0 or fy1 <= fy0:
        return None
    wanted = max(fx1 - fx0, fy1 - fy0) / max_side  # full-resolution pixels per displayed pixel
    level = levels[choose_level(levels, 1.0, max(wanted, 1.0))]
    sy, sx = level.scale_yx
    _, lh, lw = level.data.shape
    lx0, ly0 = int(fx0 // sx), int(fy0 // sy)
    lx1, ly1 = min(math.ceil(fx1 / sx), lw), min(math.ceil(fy1 / sy), lh)
    factor = max(1, math.ceil(max(lx1 - lx0, ly1 - ly0) / max_side))
    window = level.data[:, ly0:ly1, lx0:lx1]
    if factor > 1 and min(window.shape[1:]) >= factor:
        # block means over whole blocks (chunk by chunk); the remainder under one block at the far edges is dropped
        window = da.coarsen(np.mean, window.astype(np.float32), {1: factor, 2: factor}, trim_excess=True)
        if level.data.dtype == np.uint8:
            window = window.round().astype(np.uint8)
    else:
        factor = 1
    step_x, step_y = sx * factor, sy * factor
    pixels = _display_values(window)
    to_full = np.array([[step_x, 0.0, lx0 * sx], [0.0, step_y, ly0 * sy], [0.0, 0.0, 1.0]])
    return TissueImage(pixels=pixels, to_um=to_um @ to_full)


def draw_tissue_image(ax: Axes, tissue: TissueImage) -> None:
    """Draw the image under everything else on ``ax``, in microns."""
    cmap = "gray" if tissue.pixels.ndim == 2 else None
    if tissue.axis_aligned:
        ax.imshow(tissue.pixels, extent=tissue.extent, origin="upper", cmap=cmap, interpolation="antialiased", zorder=0)
        return
    h, w = tissue.pixels.shape[:2]
    im = ax.imshow(tissue.pixels, extent=(0, w, h, 0), origin="upper", cmap=cmap, zorder=0)
    im.set_transform(Affine2D(tissue.to_um) + ax.transData)


def draw_spots(
    ax: Axes,
    slide: SpatialInput,
    diameter_um: float,
    *,
    facecolors: np.ndarray | None = None,
    values: np.ndarray | None = None,
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float | None = None,
) -> Collection:
    """Draw the slide's observations at their true size in microns, coloured by RGBA or by values through ``cmap``.

    Circles, or squares for Visium HD bins (which tile the tissue).
    """
    centers_um = slide.centers_um
    if square_observations(slide):
        half = diameter_um / 2
        corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
        spots = PolyCollection(np.asarray(centers_um)[:, None, :] + corners, linewidths=0, zorder=2)
    else:
        spots = EllipseCollection(
            widths=diameter_um,
            heights=diameter_um,
            angles=0.0,
            units="xy",
            offsets=centers_um,
            offset_transform=ax.transData,
            linewidths=0,
            zorder=2,
        )
    if values is not None:
        spots.set_array(np.asarray(values, dtype=np.float64))
        spots.set_cmap(cmap)
        spots.set_clim(vmin, vmax)
        if alpha is not None:
            spots.set_alpha(alpha)
    elif facecolors is not None:
        spots.set_facecolor(facecolors)
    ax.add_collection(spots, autolim=False)
    return spots


def frame_axes(ax: Axes, bounds_um: tuple[float, float, float, float], *, scalebar: bool = True) -> None:
    """Square microns, y pointing down as in the image, limits on the tissue, and a scale bar."""
    x0, x1, y0, y1 = bounds_um
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_aspect("equal")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    if scalebar:
        from matplotlib_scalebar.scalebar import ScaleBar

        ax.add_artist(
            ScaleBar(
                1.0, "um", location="lower right", box_alpha=0.7, length_fraction=0.25, font_properties={"size": 8}
            )
        )


def tissue_background(
    slide: SpatialInput, bounds_um: tuple[float, float, float, float], *, image: bool
) -> TissueImage | None:
    """The H&E under a panel when asked and present: read once, drawn on every panel of the slide."""
    if not image or not slide.has_image:
        return None
    return read_tissue_image(slide, bounds_um)


def draw_background(ax: Axes, tissue: TissueImage | None) -> bool:
    """Draw the H&E of :func:`tissue_background` under the panel, if any; whether it was drawn."""
    if tissue is None:
        return False
    draw_tissue_image(ax, tissue)
    return True
