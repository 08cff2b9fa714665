"""Adapter for NanoString CosMx SpatialData written by ``spatialdata_io.cosmx``.

The reader writes one labels element per field of view (FOV), each placed in ``global`` (pixels of the
instrument's global frame) by an affine, and the table annotates all of them. The composite images are
immunofluorescence, not H&E, so none is used unless named.
"""

from __future__ import annotations

import re

from spatialdata import SpatialData

from storm_sc._settings import logger

from ._adapter import PhysicalScale, PlatformAdapter, Slide
from ._elements import affine_xy, linear_scale

#: Microns per pixel of CosMx SMI images (NanoString: 0.12028 um/px at the 20x imaging of the instrument).
COSMX_MPP = 0.12028
# spatialdata_io.cosmx names each FOV's composite "<fov>_image" (spatialdata.concatenate of a dict adds "-<key>")
_FOV_COMPOSITE = re.compile(r"\d+_image(?:-.+)?")


class CosMxAdapter(PlatformAdapter):
    """NanoString CosMx SMI (single cells segmented per FOV)."""

    platform = "cosmx"

    def he_images(self, sdata: SpatialData) -> list[str]:
        # the reader's per-FOV composites are 8-bit RGB, but immunofluorescence; an H&E added under another key counts
        return [k for k in super().he_images(sdata) if not _FOV_COMPOSITE.fullmatch(k)]

    def choose_image(self, slide: Slide) -> str | None:
        if slide.sdata.images:
            logger.info(
                "CosMx images %s are immunofluorescence composites, not H&E; none is used. "
                "Pass `image_key=` to use one anyway.",
                list(slide.sdata.images),
            )
        return None

    def scale(self, slide: Slide) -> PhysicalScale:
        # labels are in instrument pixels; the affine to `global` carries the FOV offset and, at most, a flip
        unit = linear_scale(affine_xy(slide.region_elements[0], slide.coordinate_system))
        return PhysicalScale(
            COSMX_MPP / unit,
            source=f"the CosMx pixel size ({COSMX_MPP} um/px)",
            extra={"pixel_size_um": COSMX_MPP},
        )
