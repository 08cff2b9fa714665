"""Adapter for SpatialData that no platform reader wrote: storm_sc's own builders, legacy ST, HEST, anything else.

The scale comes from ``sdata.attrs["storm_sc"]["mpp"]`` (written by :func:`storm_sc.io.from_arrays`) or from the
user's ``mpp=``; nothing else in such data states it.
"""

from __future__ import annotations

from storm_sc._constants import ATTRS_STORM

from ._adapter import PhysicalScale, PlatformAdapter, Slide
from ._elements import affine_xy, coordinate_systems, linear_scale


class GenericAdapter(PlatformAdapter):
    """Any image with circles or polygons; uses what storm_sc recorded in ``sdata.attrs`` when present."""

    platform = "generic"

    def choose_image(self, slide: Slide) -> str | None:
        recorded = slide.storm_attrs.get("image_key")
        if recorded and recorded in slide.sdata.images and recorded in self.candidate_images(slide):
            return recorded
        return super().choose_image(slide)

    def may_know_scale(self, slide: Slide) -> bool:
        return slide.storm_attrs.get("mpp") is not None

    def scale(self, slide: Slide) -> PhysicalScale:
        attrs = slide.storm_attrs
        mpp = attrs.get("mpp")
        if mpp is None:
            return PhysicalScale(None)
        spot = attrs.get("spot_diameter_um")
        cs = slide.coordinate_system
        recorded = attrs.get("image_key")
        # the recorded mpp is per pixel of the recorded image, which also is the unit of the spot coordinates
        if recorded and recorded in slide.sdata.images and cs in coordinate_systems(slide.sdata.images[recorded]):
            unit = linear_scale(affine_xy(slide.sdata.images[recorded], cs))
        else:
            unit = linear_scale(affine_xy(slide.region_elements[0], cs))
        return PhysicalScale(
            float(mpp) / unit,
            source=f"sdata.attrs[{ATTRS_STORM!r}]['mpp'] = {float(mpp):.4g}",
            expected_size_um=None if spot is None else float(spot),
        )


class LegacySTAdapter(GenericAdapter):
    """Legacy Spatial Transcriptomics slides built by :func:`storm_sc.io.read_st` (100 um spots)."""

    platform = "legacy_st"


class HESTAdapter(GenericAdapter):
    """HEST-1k samples built by :func:`storm_sc.io.read_hest`."""

    platform = "hest"
