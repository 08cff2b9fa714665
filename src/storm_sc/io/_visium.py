"""Adapter for 10x Visium SpatialData written by ``spatialdata_io.visium``.

The reader puts the spots (circles in full-resolution pixels) and the images (full, hires, lowres) in a coordinate
system named after the dataset id. The physical scale comes from the spot array: spots sit on a hexagonal lattice
with a 100 um centre-to-centre pitch, indexed by ``array_row`` / ``array_col``. The circles' radius is *not* a
55 um spot: Space Ranger's ``spot_diameter_fullres`` spans "a theoretical 65 um spot" (and about 70 um in some
versions), so it is only a fallback.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from storm_sc._constants import VISIUM_SPOT_DIAMETER_UM
from storm_sc._settings import logger

from ._adapter import PhysicalScale, PlatformAdapter, Slide
from ._elements import (
    affine_xy,
    is_brightfield,
    linear_scale,
    observation_size,
    pick_coordinate_system,
    shared_coordinate_systems,
)

#: Centre-to-centre distance of neighbouring Visium spots (10x slide specification).
VISIUM_SPOT_PITCH_UM = 100.0
#: What Space Ranger's ``spot_diameter_fullres`` spans according to its documentation.
VISIUM_FULLRES_SPOT_UM = 65.0
_ARRAY_ROW, _ARRAY_COL = "array_row", "array_col"
# Lattice fits worse than this (RMS, in microns) mean the array indices do not describe the positions.
_MAX_LATTICE_RMS_UM = 0.25 * VISIUM_SPOT_PITCH_UM
# The CytAssist image is a low-resolution capture of the slide, not the H&E used for the patches.
_NOT_HE = ("cytassist",)


def lattice_um_per_unit(array_row: np.ndarray, array_col: np.ndarray, xy: np.ndarray) -> tuple[float, float] | None:
    """Microns per unit of ``xy`` from the Visium spot lattice, with the fit's RMS residual in microns.

    Neighbouring spots in a row are 2 columns (100 um) apart; rows are ``100 * sqrt(3) / 2`` um apart. A
    similarity (rotation, flip, scale, shift) is fitted from array to positions; ``None`` when the spots are
    too few or all at one place.
    """
    lattice = np.column_stack(
        [
            np.asarray(array_col, float) * VISIUM_SPOT_PITCH_UM / 2,
            np.asarray(array_row, float) * VISIUM_SPOT_PITCH_UM * np.sqrt(3) / 2,
        ]
    )
    ok = np.isfinite(lattice).all(axis=1) & np.isfinite(xy).all(axis=1)
    if ok.sum() < 3:
        return None
    lat = lattice[ok] - lattice[ok].mean(axis=0)
    pos = xy[ok] - xy[ok].mean(axis=0)
    norm_pos = float((pos**2).sum())
    if norm_pos == 0 or float((lat**2).sum()) == 0:
        return None
    scale = float(np.sqrt((lat**2).sum() / norm_pos))
    u, _, vt = np.linalg.svd(pos.T @ lat)
    rms = float(np.sqrt(np.mean(np.sum((pos @ (u @ vt) * scale - lat) ** 2, axis=1))))
    return scale, rms


def lattice_scale(obs: pd.DataFrame, groups: np.ndarray, xy: np.ndarray) -> tuple[float, float] | None:
    """:func:`lattice_um_per_unit` per slide (``groups``), combined by the median; ``None`` without array indices."""
    if _ARRAY_ROW not in obs or _ARRAY_COL not in obs:
        return None
    fits = []
    for g in pd.unique(groups):
        m = groups == g
        fit = lattice_um_per_unit(obs[_ARRAY_ROW].to_numpy()[m], obs[_ARRAY_COL].to_numpy()[m], xy[m])
        if fit is not None:
            fits.append(fit)
    if not fits:
        return None
    scale = float(np.median([f[0] for f in fits]))
    rms = float(max(f[1] for f in fits))
    return (scale, rms) if rms <= _MAX_LATTICE_RMS_UM else None


def finest_rgb_image(adapter: PlatformAdapter, slide: Slide) -> str | None:
    """Return the RGB image with the smallest pixels (relative to the table's elements): full > hires > lowres."""
    regions = slide.region_elements
    sizes: dict[str, float] = {}
    for key in adapter.candidate_images(slide):
        img = slide.sdata.images[key]
        if not is_brightfield(img) or any(tag in key.lower() for tag in _NOT_HE):
            continue
        cs = pick_coordinate_system(shared_coordinate_systems([img, *regions]), regions, img)
        sizes[key] = linear_scale(affine_xy(img, cs)) / linear_scale(affine_xy(regions[0], cs))
    if not sizes:
        return None
    best = min(sizes, key=lambda k: (sizes[k], k))
    if len(sizes) > 1:
        logger.info("Using image %r, the highest resolution of %s.", best, sorted(sizes))
    return best


class VisiumAdapter(PlatformAdapter):
    """10x Visium (55 um spots on a 100 um pitch)."""

    platform = "visium"

    def choose_image(self, slide: Slide) -> str | None:
        best = finest_rgb_image(self, slide)
        if best is None and slide.sdata.images:
            # fall back to the generic rule, which lists what exists in its error
            return super().choose_image(slide)
        return best

    def scale(self, slide: Slide) -> PhysicalScale:
        groups = slide.table.obs[slide.region_key].astype(str).to_numpy()
        fit = lattice_scale(slide.table.obs, groups, slide.centers)
        extra = {"spot_diameter_um": VISIUM_SPOT_DIAMETER_UM, "spot_pitch_um": VISIUM_SPOT_PITCH_UM}
        if fit is not None:
            return PhysicalScale(
                fit[0],
                source=f"the {VISIUM_SPOT_PITCH_UM:g} um Visium spot pitch (array_row/array_col)",
                extra={**extra, "lattice_rms_um": fit[1]},
            )
        size = observation_size(slide.sdata, slide.element_keys, slide.coordinate_system)
        if size is None or size <= 0:
            return PhysicalScale(None)
        logger.warning(
            "No usable array_row/array_col in the table; taking the spot circles as Space Ranger's theoretical "
            "%g um spots, which may be off by about 10%% depending on the Space Ranger version.",
            VISIUM_FULLRES_SPOT_UM,
        )
        return PhysicalScale(
            VISIUM_FULLRES_SPOT_UM / size,
            source=f"the spot circles (spot_diameter_fullres = {VISIUM_FULLRES_SPOT_UM:g} um)",
            extra=extra,
        )

    def library_id(self, slide: Slide) -> str | None:
        # spatialdata_io names the spots element after the dataset id
        return super().library_id(slide) or (slide.element_keys[0] if len(slide.element_keys) == 1 else None)
