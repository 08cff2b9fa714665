"""Adapter for 10x Visium HD SpatialData written by ``spatialdata_io.visium_hd``.

The reader writes one table per bin size (``square_002um``, ``square_008um``, ...), each annotating squares (or
circles, or rasterised labels) in full-resolution pixels, plus optional segmented-cell tables. The bin size in the
table name and the bin's side length give the physical scale.
"""

from __future__ import annotations

import math
import re

from geopandas import GeoDataFrame
from spatialdata import SpatialData

from storm_sc._settings import logger

from ._adapter import PhysicalScale, PlatformAdapter, RegionLink, Slide
from ._elements import affine_xy, linear_scale, observation_size, shared_coordinate_systems
from ._slides import is_prediction
from ._visium import finest_rgb_image

_BIN_TABLE = re.compile(r"^square_(\d+)um$")
_BIN_SHAPES = re.compile(r"(?:^|_)square_(\d+)um$")
# spatialdata_io's bin instance ids, kept in the table when it is relinked to rasterised bins
_BIN_INSTANCE = "location_id"
_LABELS_SUFFIX = "_labels"


def bin_size_um(name: str, *, table: bool = True) -> float | None:
    """Bin side in microns from a Visium HD table name (``square_008um`` -> 8) or shapes name; else ``None``."""
    m = (_BIN_TABLE if table else _BIN_SHAPES).search(name)
    return float(m.group(1)) if m else None


class VisiumHDAdapter(PlatformAdapter):
    """10x Visium HD (2 um bins, aggregated to 8 um, 16 um, ...; optional segmented cells)."""

    platform = "visium_hd"

    def choose_table(self, sdata: SpatialData) -> str:
        if len(sdata.tables) == 1:
            return next(iter(sdata.tables))
        # storm_sc's prediction tables annotate the same bins but measure nothing: not candidates
        measured = [k for k, t in sdata.tables.items() if not is_prediction(t)] or list(sdata.tables)
        bins = sorted(k for k in measured if bin_size_um(k) is not None)
        others = sorted(k for k in measured if bin_size_um(k) is None)
        raise ValueError(
            f"This Visium HD data holds several tables; choose one with `table_key=`. Bin tables: {bins} "
            f"(8 um bins, 'square_008um', are closest to single cells); segmented-cell and other tables: {others}."
        )

    def link_regions(self, slide: Slide) -> tuple[RegionLink, ...]:
        links = list(super().link_regions(slide))
        for i, link in enumerate(links):
            # Rasterised bins (visium_hd(..., annotate_table_by_labels=True)) put each bin centre on a label
            # pixel's corner, half a bin off under spatialdata's pixel-area convention; the bins' own squares,
            # still in the data, give the exact centres.
            key = link.element_key
            shapes_key = key.removesuffix(_LABELS_SUFFIX)
            if key not in slide.sdata.labels or shapes_key == key or shapes_key not in slide.sdata.shapes:
                continue
            rows = slide.table.obs[slide.region_key].astype(str) == link.region
            index = slide.sdata.shapes[shapes_key].index.astype(str)
            for col in (_BIN_INSTANCE, slide.instance_key):
                if col in slide.table.obs and slide.table.obs.loc[rows, col].astype(str).isin(index).all():
                    logger.info("Using the bin squares %r for the rasterised bins %r.", shapes_key, key)
                    links[i] = RegionLink(link.region, shapes_key, col)
                    break
        return tuple(links)

    def choose_image(self, slide: Slide) -> str | None:
        best = finest_rgb_image(self, slide)
        if best is None and slide.sdata.images:
            return super().choose_image(slide)
        return best

    def _bin_scale(self, slide: Slide, key: str, bin_um: float, *, annotated: bool) -> PhysicalScale | None:
        size = observation_size(slide.sdata, [key], slide.coordinate_system)
        if size is None or size <= 0:
            return None
        return PhysicalScale(
            bin_um / size,
            source=f"the {bin_um:g} um bins of {key!r}",
            expected_size_um=bin_um if annotated else None,
            extra={"bin_size_um": bin_um} if annotated else {"scale_from_bins": key},
        )

    def scale(self, slide: Slide) -> PhysicalScale:
        cs = slide.coordinate_system
        bin_um = bin_size_um(slide.table_key)
        if bin_um is not None:
            # the table's own bins, or the shapes of the same bin size when the table annotates rasterised labels
            keys = list(slide.element_keys) + sorted(
                k for k in slide.sdata.shapes if k.endswith(f"_{slide.table_key}") or k == slide.table_key
            )
            for key in keys:
                if key in slide.sdata.shapes and cs in shared_coordinate_systems([slide.sdata.shapes[key]]):
                    found = self._bin_scale(slide, key, bin_um, annotated=True)
                    if found is not None:
                        return found
            return PhysicalScale(None, expected_size_um=bin_um, extra={"bin_size_um": bin_um})
        # segmented cells: any bin grid placed in the same coordinate system tells the scale
        for key in sorted(slide.sdata.shapes):
            size_um = bin_size_um(key, table=False)
            if size_um is not None and cs in shared_coordinate_systems([slide.sdata.shapes[key]]):
                found = self._bin_scale(slide, key, size_um, annotated=False)
                if found is not None:
                    return found
        return PhysicalScale(None)

    def scale_hint(self, slide: Slide, units_per_px: float | None) -> str:
        # spatialdata_io keeps no scale factors; without bins (load_segmentations_only=True) nothing in the object
        # states the scale, but Space Ranger's scalefactors_json.json does.
        bins = bin_size_um(slide.table_key) is not None
        folder = f"binned_outputs/{slide.table_key}" if bins else "segmented_outputs"
        hint = f"Space Ranger records it as `microns_per_pixel` in outs/{folder}/spatial/scalefactors_json.json"
        element = slide.region_elements[0]
        if isinstance(element, GeoDataFrame) and slide.coordinate_system is not None:
            # spatialdata_io writes bins and cells in full-resolution pixels: convert to the unit mpp is given in
            per = (1.0 if units_per_px is None else units_per_px) / linear_scale(
                affine_xy(element, slide.coordinate_system)
            )
            unit = f"a pixel of image {slide.image_key!r}" if slide.image_key is not None else "a coordinate unit"
            hint += (
                ": pass that value"
                if math.isclose(per, 1.0, rel_tol=1e-6)
                else f" (per full-resolution pixel; {unit} spans {per:.6g} of them): pass that value x {per:.6g}"
            )
        if not bins:
            hint += (
                "; or read bins with the cells, e.g. spatialdata_io.visium_hd(path, load_segmentations_only=False, "
                "bin_size=16): their size gives the cells their scale"
            )
        return hint + "."

    def library_id(self, slide: Slide) -> str | None:
        lib = super().library_id(slide)
        if lib:
            return lib
        # spatialdata_io names the bins "<dataset_id>_square_XXXum" and cells "<dataset_id>_cell_segmentations"
        for region in slide.element_keys:
            m = re.match(r"^(.+?)_(?:square_\d+um|cell_segmentations|nucleus_segmentations)(?:_labels)?$", region)
            if m:
                return m.group(1)
        return None
