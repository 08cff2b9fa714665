"""Adapter for 10x Xenium SpatialData written by ``spatialdata_io.xenium``.

The reader's ``global`` system is in morphology-image pixels; cells, boundaries and transcripts are stored in
microns with a ``Scale(1 / pixel_size)`` transformation to it, which gives the physical scale. The morphology images are
fluorescence (DAPI, ...): only an aligned H&E image (``spatialdata_io.xenium_aligned_image``) is used.
"""

from __future__ import annotations

from geopandas import GeoDataFrame

from storm_sc._settings import logger

from ._adapter import PhysicalScale, PlatformAdapter, RegionLink, Slide
from ._elements import affine_xy, describe_images, is_brightfield, linear_scale, shared_coordinate_systems

# Elements that hold one geometry per cell, in order of preference, when the annotated one was not read
# (e.g. ``spatialdata_io.xenium(..., cells_labels=False)`` while the table annotates ``cell_labels``).
_CELL_ELEMENTS = ("cell_circles", "cell_labels", "cell_boundaries", "nucleus_boundaries")
_CELL_ID = "cell_id"
_LABEL_INDEX = "cell_labels"  # the table column spatialdata_io fills with each cell's label value


class XeniumAdapter(PlatformAdapter):
    """10x Xenium (single cells; H&E only when an aligned post-Xenium H&E image was added)."""

    platform = "xenium"

    def link_regions(self, slide: Slide) -> tuple[RegionLink, ...]:
        sdata = slide.sdata
        present = set(sdata.shapes) | set(sdata.labels)
        links = []
        for region in slide.regions:
            if region in sdata.labels:
                # Whole-slide cell labels must be read in full to find centroids; the cells' shapes (in microns,
                # same ids) give the same centres at a fraction of the cost.
                link = self._substitute(slide, region, set(sdata.shapes))
                if link is not None:
                    logger.info("Using the cell shapes %r for the labels %r.", link.element_key, region)
                    links.append(link)
                    continue
            if region in present:
                links.append(RegionLink(region, region, slide.instance_key))
                continue
            link = self._substitute(slide, region, present)
            if link is None:
                raise ValueError(
                    f"The Xenium table annotates {region!r}, which was not read, and no other cell element "
                    f"({list(_CELL_ELEMENTS)}) matches its rows. Read it, e.g. `spatialdata_io.xenium(..., "
                    "cells_labels=True)` or `cells_as_circles=True`."
                )
            logger.info("Table region %r was not read; using the cells of %r instead.", region, link.element_key)
            links.append(link)
        return tuple(links)

    def _substitute(self, slide: Slide, region: str, present: set[str]) -> RegionLink | None:
        """Find another element holding the same cells as ``region``, matched by cell id or label index."""
        obs = slide.table.obs
        rows = obs[slide.region_key].astype(str) == region
        # spatialdata.concatenate of a dict of slides suffixes every element: "cell_labels-a" goes with "cell_circles-a"
        suffix = next((region[len(base) :] for base in _CELL_ELEMENTS if region.startswith(base)), "")
        for key in (base + suffix for base in _CELL_ELEMENTS):
            if key not in present or key == region:
                continue
            if key in slide.sdata.labels:
                # label values are the table's label index; checked when matching
                if _LABEL_INDEX in obs:
                    return RegionLink(region, key, _LABEL_INDEX)
                continue
            el = slide.sdata.shapes[key]
            # boundaries are indexed by cell_id, or by the label index with cell_id as a column
            options = [(slide.instance_key, None), (_CELL_ID, None), (_LABEL_INDEX, None), (_CELL_ID, _CELL_ID)]
            for table_col, el_col in options:
                if table_col not in obs or (el_col is not None and el_col not in el):
                    continue
                ids = el[el_col] if el_col is not None else el.index
                if obs.loc[rows, table_col].astype(str).isin(ids.astype(str)).all():
                    return RegionLink(region, key, table_col, el_col)
        return None

    def choose_image(self, slide: Slide) -> str | None:
        rgb = [k for k in self.candidate_images(slide) if is_brightfield(slide.sdata.images[k])]
        if len(rgb) == 1:
            return rgb[0]
        if len(rgb) > 1:
            raise ValueError(f"Several H&E images are aligned to this Xenium data: {rgb}; pass `image_key=`.")
        logger.info(
            "This Xenium data has no aligned H&E image (images: %s); expression-only use stays possible. "
            "Add one with `spatialdata_io.xenium_aligned_image(...)` to use histology.",
            describe_images(slide.sdata),
        )
        return None

    def scale(self, slide: Slide) -> PhysicalScale:
        cs = slide.coordinate_system
        # Shapes and points are written in microns; the annotated element first, else any element in the same system.
        candidates = [e for e in slide.region_elements if isinstance(e, GeoDataFrame)]
        candidates += [e for e in (*slide.sdata.shapes.values(), *slide.sdata.points.values()) if e is not None]
        for el in candidates:
            if cs in shared_coordinate_systems([el]):
                unit = linear_scale(affine_xy(el, cs))
                if unit > 0:
                    return PhysicalScale(
                        1.0 / unit,
                        source=f"Xenium micron coordinates ({1.0 / unit:.4g} um per {cs!r} unit)",
                        extra={"pixel_size_um": 1.0 / unit},
                    )
        return PhysicalScale(None)
