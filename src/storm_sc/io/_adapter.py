"""The interface each platform adapter fills in, with the rules shared by most platforms as defaults.

:func:`storm_sc.io.resolve` runs the same steps for every platform (table, regions, image, coordinate system,
scale, checks); an adapter only answers the platform-specific questions, so that a change in one reader's
output breaks one small module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from anndata import AnnData
from spatialdata import SpatialData

from storm_sc._constants import ATTRS_STORM

from ._elements import describe_image, describe_images, element_of, is_brightfield, shared_coordinate_systems

#: A user's ``mpp=`` may differ this much (either way) from the scale the data state before it is refused.
MAX_SCALE_RATIO = 2.0


def full_resolution_hint(user_mpp: float, um_per_position_px: float, position_px_per_px: float, image_key: str) -> str:
    """What to pass when a refused ``mpp=`` is the scale of the pixels the positions are in, not of the image's.

    Space Ranger (and spatialdata_io's Visium readers) state ``microns_per_pixel`` for the full-resolution scan the
    positions refer to; the image used may be a downsample (hires), whose pixels span ``position_px_per_px`` of
    them. ``um_per_position_px`` is the scale the data give those pixels. Empty when that is not what happened.
    """
    if math.isclose(position_px_per_px, 1.0, rel_tol=1e-3):
        return ""
    if not (1 / MAX_SCALE_RATIO <= user_mpp / um_per_position_px <= MAX_SCALE_RATIO):
        return ""
    return (
        f" `mpp={user_mpp:g}` matches the microns per pixel of the positions (Space Ranger's full-resolution "
        f"pixels, its microns_per_pixel), but a pixel of image {image_key!r} spans {position_px_per_px:.4g} of "
        f"those: pass mpp={user_mpp * position_px_per_px:.4g} (that value divided by the image's scale factor, "
        "e.g. tissue_hires_scalef),"
    )


@dataclass(frozen=True)
class RegionLink:
    """Where the rows of one region of a table find their geometry.

    Attributes
    ----------
    region
        Value of the table's region column for these rows.
    element_key
        The shapes, labels or points element holding their geometry (normally ``region`` itself).
    table_column
        Column of ``table.obs`` holding each row's instance id.
    element_column
        Column of the element holding the same ids; ``None`` for the element's index (or label values).
    """

    region: str
    element_key: str
    table_column: str
    element_column: str | None = None


@dataclass
class Slide:
    """What has been resolved so far; handed to the adapter's hooks."""

    sdata: SpatialData
    table_key: str
    table: AnnData
    regions: tuple[str, ...]
    region_key: str
    instance_key: str
    links: tuple[RegionLink, ...] = ()
    coordinate_system: str | None = None
    image_key: str | None = None
    #: ``(n_obs, 2)`` observation centres in ``coordinate_system``, table order (set before :meth:`scale`)
    centers: np.ndarray | None = None

    @property
    def element_keys(self) -> tuple[str, ...]:
        """Keys of the elements that hold the observations' geometry."""
        if not self.links:
            return self.regions
        return tuple(dict.fromkeys(link.element_key for link in self.links))

    @property
    def region_elements(self) -> list[Any]:
        """The elements holding the observations' geometry."""
        return [element_of(self.sdata, k) for k in self.element_keys]

    @property
    def storm_attrs(self) -> dict[str, Any]:
        """``sdata.attrs["storm_sc"]`` written by storm_sc's own builders, or an empty dict."""
        attrs = self.sdata.attrs.get(ATTRS_STORM)
        return dict(attrs) if isinstance(attrs, dict) else {}


@dataclass
class PhysicalScale:
    """Physical scale found by an adapter.

    Attributes
    ----------
    um_per_unit
        Microns per unit of the slide's coordinate system, or ``None`` when the data do not say.
    source
        Where it came from, for log lines and error messages.
    expected_size_um
        The physical size an observation should have (spot diameter, bin side), to sanity-check a
        user's ``mpp=``; ``None`` when it varies (cells).
    extra
        Details to keep in :attr:`SpatialInput.extra`.
    """

    um_per_unit: float | None
    source: str = ""
    expected_size_um: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PlatformAdapter:
    """Platform-specific answers for :func:`storm_sc.io.resolve`. Subclass and override what differs."""

    platform: ClassVar[str] = "generic"

    def link_regions(self, slide: Slide) -> tuple[RegionLink, ...]:
        """Where each annotated region's geometry lives; by default the annotated elements themselves."""
        for key in slide.regions:
            element_of(slide.sdata, key)  # a clear error when the element is missing
        return tuple(RegionLink(r, r, slide.instance_key) for r in slide.regions)

    def choose_table(self, sdata: SpatialData) -> str:
        """Key of the table to use when the user did not name one."""
        if len(sdata.tables) == 1:
            return next(iter(sdata.tables))
        raise ValueError(
            f"This SpatialData holds {len(sdata.tables)} tables {list(sdata.tables)}; pass `table_key=` to choose one."
        )

    def candidate_images(self, slide: Slide) -> list[str]:
        """Images placed in a coordinate system shared with the table's elements."""
        regions = slide.region_elements
        return [k for k, img in slide.sdata.images.items() if shared_coordinate_systems([img, *regions])]

    def he_images(self, sdata: SpatialData) -> list[str]:
        """Keys of the images of ``sdata`` that may be the slide's H&E (bright-field), placed or not."""
        return [k for k, image in sdata.images.items() if is_brightfield(image)]

    def choose_image(self, slide: Slide) -> str | None:
        """Key of the H&E image when the user did not name one; ``None`` for expression-only data."""
        candidates = self.candidate_images(slide)
        rgb = [k for k in self.he_images(slide.sdata) if k in candidates]
        if len(rgb) == 1:
            return rgb[0]
        if not slide.sdata.images:
            return None
        if not rgb:
            raise ValueError(
                "No H&E image (uint8 RGB, or RGBA that is not blank) shares a coordinate system with the table's elements "
                f"{list(slide.regions)}. Images found: {describe_images(slide.sdata)}. "
                "Pass `image_key=` to use one of them anyway."
            )
        listing = "; ".join(describe_image(k, slide.sdata.images[k]) for k in rgb)
        raise ValueError(f"Several H&E images could be used: {listing}. Pass `image_key=` to choose one.")

    def may_know_scale(self, slide: Slide) -> bool:
        """Whether :meth:`scale` can possibly find a scale; ``False`` lets resolve refuse before any work."""
        return True

    def scale(self, slide: Slide) -> PhysicalScale:
        """Microns per coordinate-system unit, from the platform's metadata or geometry."""
        return PhysicalScale(None)

    def scale_hint(self, slide: Slide, units_per_px: float | None) -> str:
        """Where to find the ``mpp=`` to pass when :meth:`scale` finds none (one sentence, for the error).

        ``units_per_px``: coordinate-system units per pixel of the chosen image (``None`` without image).
        """
        return "E.g. for spots on a 100 um pitch that lie d pixels apart, mpp = 100 / d."

    def library_id(self, slide: Slide) -> str | None:
        """Name of the slide when the user did not give one."""
        lib = slide.storm_attrs.get("library_id")
        return str(lib) if lib else None
