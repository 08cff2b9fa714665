"""Resolve a SpatialData (or a scanpy-style AnnData) from any platform into one :class:`SpatialInput`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from numbers import Real
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from spatialdata import SpatialData
from spatialdata.models import TableModel
from xarray import DataArray, DataTree

from storm_sc._constants import ATTRS_STORM
from storm_sc._settings import logger

from ._adapter import MAX_SCALE_RATIO, PhysicalScale, PlatformAdapter, Slide, full_resolution_hint
from ._anndata import resolve_anndata
from ._cosmx import CosMxAdapter
from ._elements import (
    affine_xy,
    anisotropy,
    apply_affine,
    check_inside,
    check_table,
    coordinate_systems,
    describe_images,
    linear_scale,
    observation_size,
    pick_coordinate_system,
    region_centroids,
    shared_coordinate_systems,
    table_regions,
)
from ._generic import GenericAdapter, HESTAdapter, LegacySTAdapter
from ._slides import is_prediction
from ._spatial_input import SpatialInput
from ._visium import VisiumAdapter
from ._visium_hd import VisiumHDAdapter
from ._xenium import XeniumAdapter

# One adapter per platform name; detect_platform returns one of these keys.
_ADAPTERS: dict[str, PlatformAdapter] = {
    a.platform: a
    for a in (
        VisiumAdapter(),
        VisiumHDAdapter(),
        XeniumAdapter(),
        CosMxAdapter(),
        LegacySTAdapter(),
        HESTAdapter(),
        GenericAdapter(),
    )
}
_READER_ATTR = "spatialdata_io_reader"
# spatialdata_io.visium_hd names its elements "<dataset>_square_008um", "<dataset>_cell_segmentations", ...
# (spatialdata.concatenate of a dict appends "-<key>")
_HD_REGION = re.compile(r"_(?:square_\d+um|cell_segmentations|nucleus_segmentations)(?:_labels)?(?:-.+)?$")
# Plausible observation sizes (um) when the platform gives no expected size: sub-cellular to very large spots.
_SIZE_RANGE_UM = (0.3, 1000.0)


def detect_platform(sdata: SpatialData) -> str:
    """Tell which platform produced a SpatialData.

    Reads ``sdata.attrs["spatialdata_io_reader"]`` (set by ``spatialdata-io`` readers), then
    ``sdata.attrs["storm_sc"]["platform"]`` (set by storm_sc's own builders); without either (``attrs`` that
    ``spatialdata.concatenate`` dropped), the columns and element names the readers give their tables (Visium's
    ``array_row`` / ``array_col``, Visium HD's ``..._square_008um`` bins, Xenium's ``cell_id`` /
    ``transcript_counts``, CosMx's ``fov`` / ``cell_ID``); anything else is ``"generic"``.

    Parameters
    ----------
    sdata
        The SpatialData.

    Returns
    -------
    One of ``"visium"``, ``"visium_hd"``, ``"xenium"``, ``"cosmx"``, ``"legacy_st"``, ``"hest"``, ``"generic"``.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> import storm_sc as st
    >>> sdata = st.io.from_arrays(ad.AnnData(np.ones((1, 1))), np.zeros((1, 2)), mpp=1.0, platform="legacy_st")
    >>> st.io.detect_platform(sdata)
    'legacy_st'
    """
    if not isinstance(sdata, SpatialData):
        raise TypeError(f"`sdata` must be a SpatialData, got {type(sdata).__name__}.")
    reader = sdata.attrs.get(_READER_ATTR)
    if isinstance(reader, str):
        # accept "visium" as well as a qualified "spatialdata_io.visium" / "spatialdata_io.readers.visium"
        name = reader.rsplit(".", 1)[-1].lower()
        if name in _ADAPTERS:
            return name
    storm = sdata.attrs.get(ATTRS_STORM)
    if isinstance(storm, dict) and storm.get("platform") in _ADAPTERS:
        return str(storm["platform"])
    return _platform_from_tables(sdata)


def he_images(sdata: SpatialData) -> list[str]:
    """Keys of the images of ``sdata`` that may be the slide's H&E, as its platform tells them from the others."""
    return _ADAPTERS[detect_platform(sdata)].he_images(sdata)


def _platform_from_tables(sdata: SpatialData) -> str:
    """The platform of a ``spatialdata_io`` reader's tables, for SpatialData whose ``attrs`` were lost.

    ``spatialdata.concatenate`` drops ``attrs`` (unless given ``attrs_merge=``), and with them the reader's name;
    its tables still carry each reader's columns and element names.
    """
    for table in sdata.tables.values():
        if is_prediction(table) or TableModel.ATTRS_KEY not in table.uns:
            continue
        region = table.uns[TableModel.ATTRS_KEY].get(TableModel.REGION_KEY)
        regions = [region] if isinstance(region, str) else list(region or [])
        columns = set(table.obs.columns)
        if any(_HD_REGION.search(str(r)) for r in regions):
            return "visium_hd"
        if {"array_row", "array_col"} <= columns:
            return "visium"
        if {"cell_id", "transcript_counts", "control_probe_counts"} <= columns:
            return "xenium"
        if {"fov", "cell_ID"} <= columns:
            return "cosmx"
    return "generic"


def check_mpp(mpp: float | None) -> None:
    """Refuse an `mpp` argument that is not a positive finite number (None: not given)."""
    if mpp is None:
        return
    if isinstance(mpp, bool) or not isinstance(mpp, Real) or not math.isfinite(mpp) or mpp <= 0:
        raise ValueError(
            f"`mpp` must be a positive number of microns per pixel of the image (per coordinate unit when there is "
            f"no image); got {mpp!r}."
        )


def check_keys(**keys: object) -> None:
    """Refuse key arguments (``table_key=``, ``image_key=`` ...) that are neither a name (a string) nor None.

    Examples
    --------
    >>> check_keys(table_key="table", image_key=None)
    >>> check_keys(image_key=["he"])
    Traceback (most recent call last):
    ...
    TypeError: `image_key` must be a name (a string) or None, got list ['he']; pass image_key='he'.
    """
    for name, value in keys.items():
        if value is None or isinstance(value, str):
            continue
        listed = isinstance(value, list | tuple)
        if listed and len(value) == 1 and isinstance(value[0], str):
            hint = f"; pass {name}={value[0]!r}"
        elif listed:
            hint = "; one name applies to every slide of the call (pass the slides one by one to name another each)"
        else:
            hint = ""
        raise TypeError(f"`{name}` must be a name (a string) or None, got {type(value).__name__} {value!r}{hint}.")


def mpp_per_object(
    mpp: float | Mapping[str, float | None] | Sequence[float | Mapping[str, float | None] | None] | None,
    n_objects: int,
) -> list[float | Mapping[str, float | None] | None]:
    """``mpp`` as one value per object given to a tool: the same for all, or a list with one per object.

    Slides of different scanners (or an AnnData of positions beside a SpatialData that knows its scale) need
    different values in one call, which analyses them together. An object holding several slides (e.g.
    ``spatialdata.concatenate`` of slides whose scale was recorded only in their ``attrs``, which concatenating
    drops) takes a mapping from each slide's name to its value (see :func:`mpp_of_slide`). Each value is checked
    by :func:`check_mpp`.

    Examples
    --------
    >>> mpp_per_object(0.5, 2), mpp_per_object([None, 0.25], 2), mpp_per_object({"a": 1.0, "b": None}, 1)
    ([0.5, 0.5], [None, 0.25], [{'a': 1.0, 'b': None}])
    """
    if isinstance(mpp, list | tuple | np.ndarray | pd.Series):
        if len(mpp) != n_objects:
            one = (
                " (the slides of one object holding several take a mapping, mpp={slide name: value, ...}; or pass"
                " them as a list to give each its own)"
                if n_objects == 1
                else ""
            )
            raise ValueError(
                f"`mpp` holds {len(mpp)} values for {n_objects} object(s) given; pass one value (or None) per object, "
                f"in the order of `data`, or a single number for all{one}."
            )
        # in an array or Series, NaN is how "this slide's own scale" (None in a list) can be written
        missing = isinstance(mpp, np.ndarray | pd.Series)
        values = [
            None if v is None or (missing and pd.isna(v)) else float(v) if isinstance(v, np.number) else v for v in mpp
        ]
    else:
        values = [mpp] * n_objects
    for value in values:
        for one_value in value.values() if isinstance(value, Mapping) else [value]:
            check_mpp(one_value)
    return values


def mpp_of_slide(
    value: float | Mapping[str, float | None] | None, name: str | None, names: Sequence[str]
) -> float | None:
    """One slide's ``mpp`` from its object's entry of :func:`mpp_per_object`: the value, or the slide's in a mapping.

    ``name`` is the slide's name within an object holding several (``None`` for an object that is one slide) and
    ``names`` those of all the object's slides, for the message when the mapping misses one or names another.
    """
    if not isinstance(value, Mapping):
        return value
    if name is None:
        raise ValueError(
            f"`mpp` is a mapping of slide names ({sorted(map(str, value))}) for an object that holds one slide; pass "
            "its value as a number."
        )
    unknown = sorted(str(k) for k in value if k not in names)
    if unknown:
        raise ValueError(f"`mpp` names slides {unknown} that the object does not hold; its slides are {list(names)}.")
    return value.get(name)


def several_slides_scale_hint(names: Sequence[str]) -> str:
    """What to pass when a slide of an object holding several (``names``) has no known scale."""
    return (
        f"The object holds several slides ({list(names)}): give each its own with mpp={{{names[0]!r}: ..., ...}} "
        "(spatialdata.concatenate drops the scales kept in each slide's attrs)."
    )


class UnknownScaleError(ValueError):
    """Neither the data nor the caller give a slide's physical scale (microns per pixel)."""


def _no_scale_message(adapter: PlatformAdapter, slide: Slide, units_per_px: float | None) -> str:
    target = f"pixel of image {slide.image_key!r}" if slide.image_key is not None else "unit of the coordinates"
    return (
        f"The physical scale of this {adapter.platform} slide is unknown: pass `mpp=` (microns per {target}). "
        f"{adapter.scale_hint(slide, units_per_px)}"
    )


def _require_scale_source(adapter: PlatformAdapter, slide: Slide, units_per_px: float | None) -> None:
    """Refuse early, before positions are computed, when neither the data nor the user give a scale."""
    if not adapter.may_know_scale(slide):
        raise UnknownScaleError(_no_scale_message(adapter, slide, units_per_px))


def _check_scale(
    um_per_unit: float,
    found: PhysicalScale,
    *,
    size_um: float | None,
    user_mpp: float | None,
    cs_per_px: float | None,
    platform: str,
    image_key: str | None,
    position_units_per_px: float | None,
) -> None:
    """Refuse a user's mpp that contradicts the platform's own scale; warn about implausible sizes.

    ``position_units_per_px``: coordinate units per pixel of the positions' own element (their full-resolution
    pixels), to recognise an mpp given for those rather than for the image's pixels.
    """
    unit = f"pixel of image {image_key!r}" if image_key is not None else "unit of the coordinates (no image)"
    if user_mpp is not None and found.um_per_unit is not None:
        ratio = um_per_unit / found.um_per_unit
        if not (1 / MAX_SCALE_RATIO <= ratio <= MAX_SCALE_RATIO):
            native = found.um_per_unit * (cs_per_px if cs_per_px is not None else 1.0)
            off = f"{1 / ratio:.3g}x smaller" if ratio < 1 else f"{ratio:.3g}x larger"
            what = f"; observations would measure {size_um:.3g} um across" if size_um is not None else ""
            fullres = ""
            if image_key is not None and cs_per_px is not None and position_units_per_px:
                fullres = full_resolution_hint(
                    user_mpp, found.um_per_unit * position_units_per_px, cs_per_px / position_units_per_px, image_key
                )
            raise ValueError(
                f"`mpp={user_mpp:g}` is {off} than the scale of this {platform} slide found from {found.source} "
                f"(mpp = {native:.4g}){what}. `mpp` is microns per {unit}.{fullres or ' Check its units,'} or "
                "leave `mpp=None` to use the data's own scale (the tools take one `mpp` per slide of a list: e.g. "
                "mpp=[None, 0.5])."
            )
        return
    if size_um is None:
        return
    if found.expected_size_um is not None:
        ratio = size_um / found.expected_size_um
        if 1 / MAX_SCALE_RATIO <= ratio <= MAX_SCALE_RATIO:
            return
        if user_mpp is not None:
            raise ValueError(
                f"With `mpp={user_mpp:g}`, {platform} observations (spots, bins) measure {size_um:.3g} um, but "
                f"should be about {found.expected_size_um:.3g} um ({ratio:.2g}x off). `mpp` is microns per "
                f"{unit}; check its units."
            )
        # The data contradict themselves: the recorded scale is per pixel of the image, so an image re-placed by
        # another transformation (or swapped for another image) silently rescales every position and patch.
        raise ValueError(
            f"With the scale from {found.source}, the observations of this {platform} slide measure {size_um:.3g} "
            f"um across, but the data record {found.expected_size_um:.3g} um ({ratio:.2g}x off): the image and the "
            "observations are not placed consistently (the image's transformation was changed, or it is another "
            "image). Fix the transformations with `spatialdata.transformations.set_transformation`, or choose "
            "another `image_key=`."
        )
    if not (_SIZE_RANGE_UM[0] <= size_um <= _SIZE_RANGE_UM[1]):
        logger.warning(
            "With the scale from %s, observations measure %.3g um across, which is implausible for spots or "
            "cells; check that `mpp` is microns per pixel of the image used.",
            f"mpp={user_mpp:g}" if user_mpp is not None else found.source,
            size_um,
        )


def _placement(slide: Slide) -> dict[str, list[str]]:
    """The coordinate systems of each of the table's elements, for messages."""
    return {k: sorted(coordinate_systems(e)) for k, e in zip(slide.element_keys, slide.region_elements, strict=True)}


def _check_one_slide(slide: Slide) -> None:
    """Refuse a table whose regions share no coordinate system: they are several slides (``spatialdata.concatenate``)."""
    region_els = slide.region_elements
    if len(region_els) < 2 or shared_coordinate_systems(region_els):
        return
    raise ValueError(
        f"Table {slide.table_key!r} annotates {len(region_els)} regions that share no coordinate system, so they are "
        f"separate slides (as `spatialdata.concatenate` leaves them): {_placement(slide)}. This step reads one slide: "
        f"take one with `st.io.split_slides(sdata, table_key={slide.table_key!r})[name]`. The st.tl tools take the "
        "SpatialData of several slides as it is (they analyse its slides together and write back into its table)."
    )


def _coordinate_system(slide: Slide, image: DataArray | DataTree | None, image_key: str | None) -> str:
    """Return the coordinate system shared by the table's elements and the image, with a clear error when none is."""
    region_els = slide.region_elements
    candidates = shared_coordinate_systems(region_els + ([image] if image is not None else []))
    if not candidates:
        placed = _placement(slide)
        if image is not None:
            placed[image_key] = sorted(coordinate_systems(image))
        raise ValueError(
            f"The table's elements and the image share no coordinate system, so they cannot be aligned: {placed}. "
            "Place them in a common one with `spatialdata.transformations.set_transformation`, or choose another "
            "`image_key=`."
        )
    return pick_coordinate_system(candidates, region_els, image)


def _require_table(sdata: SpatialData) -> None:
    if not sdata.tables:
        hint = (
            " For an H&E image alone, run st.tl.storm_embed or st.tl.predict_expression first: they tile the "
            "tissue into a table of their own."
            if sdata.images
            else ""
        )
        raise ValueError(
            "This SpatialData has no table (observations x genes). Add one linked to the spots/cells with "
            f"`spatialdata.models.TableModel.parse(..., region=...)`.{hint}"
        )


def _linked_table(sdata: SpatialData, table_key: str | None) -> tuple[str, PlatformAdapter, Slide]:
    """The platform, its adapter and the chosen table linked to its elements: what naming a slide needs."""
    platform = detect_platform(sdata)
    adapter = _ADAPTERS[platform]
    if table_key is None:
        # Tables of predictions written by storm_sc annotate the same spots; the user means the measured one.
        measured = [k for k, t in sdata.tables.items() if not is_prediction(t)]
        table_key = measured[0] if len(measured) == 1 else adapter.choose_table(sdata)
    table = sdata.tables[table_key]
    check_table(table, table_key)
    regions, region_key, instance_key = table_regions(table, table_key)
    slide = Slide(sdata, table_key, table, regions, region_key, instance_key)
    slide.links = adapter.link_regions(slide)
    return platform, adapter, slide


def _slide_name(sdata: SpatialData, adapter: PlatformAdapter, slide: Slide) -> str:
    # Readers record no dataset name for Xenium or CosMx; a slide saved to and read from zarr is named by its file,
    # one just read by spatialdata-io after its reader ("xenium" says more in a log or a plot title than "table").
    stored = Path(str(sdata.path)).name.removesuffix(".zarr") if getattr(sdata, "path", None) else None
    reader = sdata.attrs.get(_READER_ATTR)
    reader = reader.rsplit(".", 1)[-1] if isinstance(reader, str) and reader else None
    return str(adapter.library_id(slide) or stored or reader or slide.table_key)


def slide_name(sdata: SpatialData, *, table_key: str | None = None) -> str:
    """The name :func:`resolve` gives a one-slide SpatialData, without reading its positions, image or scale."""
    _require_table(sdata)
    _, adapter, slide = _linked_table(sdata, table_key)
    _check_one_slide(slide)
    return _slide_name(sdata, adapter, slide)


def resolve(
    data: SpatialData | AnnData,
    *,
    table_key: str | None = None,
    image_key: str | None = None,
    mpp: float | None = None,
    library_id: str | None = None,
    use_image: bool = True,
) -> SpatialInput:
    """Find the table, its positions, the H&E image and the physical scale of one slide, from any platform.

    Works on SpatialData from ``spatialdata-io`` readers (Visium, Visium HD, Xenium, CosMx), from storm_sc's own
    builders (:func:`~storm_sc.io.from_arrays`, legacy ST, HEST) and on any SpatialData with an image, shapes or
    labels and a linked table; also on a scanpy-style AnnData (``.obsm["spatial"]`` + ``.uns["spatial"]``).
    Coordinate systems are discovered, never assumed. Nothing in ``data`` is modified.

    Parameters
    ----------
    data
        A SpatialData, or an AnnData with ``.obsm["spatial"]`` in full-resolution pixels and
        ``.uns["spatial"][library_id]`` holding ``images`` and ``scalefactors`` (scanpy's Visium layout).
    table_key
        Table to use; required when the SpatialData holds several and the platform has no rule.
    image_key
        H&E image to use; by default the platform's H&E image (Visium: the highest resolution present; Xenium:
        an aligned H&E image if any; CosMx: none, its images are immunofluorescence), else the only 8-bit RGB
        image (or RGBA, its alpha ignored, unless it is blank).
        For an AnnData: ``"hires"`` or ``"lowres"``.
    mpp
        Microns per pixel of the chosen image (of its finest level; per coordinate unit when there is no image):
        for Space Ranger's hires image, its ``microns_per_pixel`` divided by ``tissue_hires_scalef``.
        Overrides the platform's metadata; required when the data do not state a scale.
    library_id
        Name of the slide; defaults to what the data record (dataset id), else the table key.
    use_image
        ``False`` to resolve the observations and their positions only, for steps that read no pixels (domains,
        spatial graphs): no image is chosen or checked, so an unusable image cannot stop them, and ``mpp`` is
        microns per coordinate unit. A scanpy-style AnnData still takes its scale from its own image.

    Returns
    -------
    The resolved :class:`~storm_sc.io.SpatialInput`; ``image`` is ``None`` for expression-only data (and with
    ``use_image=False``).

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> import storm_sc as st
    >>> adata = ad.AnnData(np.ones((2, 3), dtype=np.float32))
    >>> img = np.zeros((100, 100, 3), dtype=np.uint8)
    >>> sdata = st.io.from_arrays(adata, np.array([[20.0, 30.0], [60.0, 70.0]]), img, mpp=0.5)
    >>> si = st.io.resolve(sdata)
    >>> si.centers_um.tolist()
    [[10.0, 15.0], [30.0, 35.0]]
    """
    check_mpp(mpp)
    check_keys(table_key=table_key, image_key=image_key)
    if library_id is not None and not isinstance(library_id, str):
        raise TypeError(f"`library_id` must be a string, got {type(library_id).__name__}.")
    if not use_image and image_key is not None:
        raise ValueError(f"`image_key={image_key!r}` names an image, but `use_image=False` asks for none; drop one.")
    if isinstance(data, AnnData):
        if table_key is not None:
            raise ValueError("`table_key` applies to a SpatialData; an AnnData is itself the table. Drop it.")
        si = resolve_anndata(data, image_key=image_key, mpp=mpp, library_id=library_id, use_image=use_image)
        return si if use_image else replace(si, image_key=None, image=None, centers_px=None, mpp=None)
    if not isinstance(data, SpatialData):
        raise TypeError(f"`data` must be a SpatialData or an AnnData, got {type(data).__name__}.")
    sdata = data
    _require_table(sdata)
    if table_key is not None and table_key not in sdata.tables:
        raise ValueError(f"No table {table_key!r}; tables found: {list(sdata.tables)}.")
    if image_key is not None and image_key not in sdata.images:
        raise ValueError(f"No image {image_key!r}; images found: {describe_images(sdata)}.")

    platform, adapter, slide = _linked_table(sdata, table_key)
    table_key, table, region_key = slide.table_key, slide.table, slide.region_key
    element_keys = slide.element_keys
    _check_one_slide(slide)

    if image_key is None and use_image:
        image_key = adapter.choose_image(slide)
        if image_key is None:
            logger.info("No H&E image for table %r (%s): resolved for expression-only use.", table_key, platform)
    image = sdata.images[image_key] if image_key is not None else None
    cs = _coordinate_system(slide, image, image_key)
    slide.coordinate_system, slide.image_key = cs, image_key

    cs_per_px = None
    if image is not None:
        img_affine = affine_xy(image, cs)
        cs_per_px = linear_scale(img_affine)
        if anisotropy(img_affine) > 1.02:
            logger.warning("Image %r has non-square pixels in %r; using their geometric mean size.", image_key, cs)
    if mpp is None:
        _require_scale_source(adapter, slide, cs_per_px)

    slide.centers = region_centroids(sdata, table, region_key, slide.links, cs)
    found = adapter.scale(slide)
    if mpp is not None:
        um_per_unit = float(mpp) / cs_per_px if cs_per_px is not None else float(mpp)
        source = f"mpp={mpp:g} given"
    elif found.um_per_unit is not None:
        um_per_unit, source = float(found.um_per_unit), found.source
    else:
        raise UnknownScaleError(_no_scale_message(adapter, slide, cs_per_px))
    if not (math.isfinite(um_per_unit) and um_per_unit > 0):
        raise ValueError(f"The scale found ({source}) is not a positive number: {um_per_unit!r}; pass `mpp=`.")
    size_cs = observation_size(sdata, element_keys, cs)
    _check_scale(
        um_per_unit,
        found,
        size_um=None if size_cs is None else size_cs * um_per_unit,
        user_mpp=mpp,
        cs_per_px=cs_per_px,
        platform=platform,
        image_key=image_key,
        position_units_per_px=linear_scale(affine_xy(slide.region_elements[0], cs)),
    )

    centers_cs = slide.centers
    centers_px = image_mpp = None
    if image is not None:
        centers_px = apply_affine(np.linalg.inv(img_affine), centers_cs)
        image_mpp = um_per_unit * cs_per_px
        check_inside(centers_px, image, image_key, table_key)
    centers_um = centers_cs * um_per_unit

    lib = library_id or _slide_name(sdata, adapter, slide)
    extra = {"mpp_source": source, **found.extra}
    if found.expected_size_um is not None:
        extra.setdefault("observation_size_um", found.expected_size_um)
    si = SpatialInput(
        table=table,
        table_key=table_key,
        regions=element_keys,
        platform=platform,
        coordinate_system=cs,
        centers_um=np.ascontiguousarray(centers_um, dtype=np.float64),
        image_key=image_key,
        image=image,
        centers_px=None if centers_px is None else np.ascontiguousarray(centers_px, dtype=np.float64),
        mpp=image_mpp,
        library_id=str(lib),
        extra=extra,
    )
    # "no image" in the line below would otherwise read as if a slide's image had been lost
    unused = "" if use_image else "; images are not read for this step"
    logger.info("Resolved %r (scale from %s%s).", si, source, unused)
    return si
