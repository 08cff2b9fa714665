"""Several slides in one SpatialData, as ``spatialdata.concatenate`` leaves them: told apart and taken apart.

Concatenated slides keep their own coordinate systems (a Visium slide's is named after it, and concatenating a dict
of slides suffixes the names with their keys: "global-a", "global-b"), so the elements that hold a table's
observations fall into groups that share no coordinate system: one group per slide.
That is the rule used here. Elements of one slide that share a coordinate system stay together (CosMx's fields of
view, which all sit in the slide's ``global``); slides that were concatenated into one coordinate system
(``merge_coordinate_systems_on_name=True``, or each read into ``"global"``) cannot be told apart by it and are not
split; the tools warn when such slides overlap (:func:`overlapping_regions`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from geopandas import GeoDataFrame
from spatialdata import SpatialData
from spatialdata.models import TableModel, get_table_keys
from xarray import DataArray, DataTree

from storm_sc._constants import ATTRS_STORM, LAYER_PREDICTED_STD, UNS_STORM
from storm_sc._settings import logger

from ._anndata import anndata_slide_name, library_naming_columns
from ._elements import affine_xy, apply_affine, coordinate_systems, element_of, find_element, image_size


@dataclass(frozen=True)
class SlidePart:
    """One slide of a SpatialData holding several: its name, its table and the elements its rows annotate."""

    name: str
    table_key: str
    regions: tuple[str, ...]


def is_prediction(table: AnnData) -> bool:
    """Whether a table holds expression predicted by storm_sc (which annotates the same spots as the measured one).

    Known by its record in ``.uns``, or by its uncertainty layer: ``spatialdata.concatenate`` merges two slides'
    prediction tables with anndata, which drops ``.uns`` but keeps layers.
    """
    params = table.uns.get(UNS_STORM)
    return (isinstance(params, Mapping) and "predict_expression" in params) or LAYER_PREDICTED_STD in table.layers


def _annotated(table: AnnData) -> tuple[tuple[str, ...], str] | None:
    """The regions a table annotates and its region column, or ``None`` for a table linked to nothing."""
    try:
        region, region_key, _ = get_table_keys(table)
    except (ValueError, KeyError):
        return None
    if region is None or region_key not in table.obs:
        return None
    return ((region,) if isinstance(region, str) else tuple(region)), region_key


def _components(systems: dict[str, set[str]]) -> list[list[str]]:
    """Elements grouped by chains of shared coordinate systems, in first-seen order."""
    parent = {key: key for key in systems}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    owner: dict[str, str] = {}
    for key, names in systems.items():
        for cs in names:
            if cs in owner:
                parent[root(key)] = root(owner[cs])
            else:
                owner[cs] = key
    groups: dict[str, list[str]] = {}
    for key in systems:
        groups.setdefault(root(key), []).append(key)
    return list(groups.values())


def find_slides(sdata: SpatialData, *, table_key: str | None = None) -> list[SlidePart] | None:
    """The slides of a SpatialData that holds several, or ``None`` when it holds one (or they cannot be told apart).

    With ``table_key``, the slides of that table; otherwise those of every table of measurements (storm_sc's own
    prediction tables annotate the same spots and are left out). Several slides are found when the elements
    annotated by these tables fall into groups sharing no coordinate system and each group is annotated by one table
    (several tables on one slide, such as Visium HD's bin sizes, are a choice for ``table_key=``, not slides).
    Every row must belong to an element present in ``sdata``.
    """
    if table_key is not None:
        keys = [table_key] if table_key in sdata.tables else []
    else:
        keys = [k for k, t in sdata.tables.items() if not is_prediction(t)]
    regions_of: dict[str, tuple[str, ...]] = {}
    systems: dict[str, set[str]] = {}
    for key in keys:
        found = _annotated(sdata.tables[key])
        if found is None:
            return None
        regions, region_key = found
        # the distinct values only, not a string per row: this runs on every tool call
        present = {str(v) for v in pd.unique(sdata.tables[key].obs[region_key])}
        if not present <= set(regions):
            return None
        for region in regions:
            element = find_element(sdata, region)
            if element is None or region in systems:
                return None  # a missing element, or one annotated by two tables: not several slides
            systems[region] = coordinate_systems(element)
        regions_of[key] = regions
    groups = _components(systems)
    if len(groups) < 2:
        return None
    parts = []
    for group in groups:
        tables = [k for k, regions in regions_of.items() if set(regions) & set(group)]
        if len(tables) != 1:
            return None
        parts.append(SlidePart(_slide_name(sdata, group), tables[0], tuple(group)))
    names = [p.name for p in parts]
    if len(set(names)) < len(names):  # unlikely: fall back to the element names, which are unique
        parts = [SlidePart("+".join(p.regions), p.table_key, p.regions) for p in parts]
    return parts


# Two regions of one table overlapping by more than this share of the smaller one's bounding box are two slides
# stacked in one coordinate system: one slide's parts (CosMx's fields of view) tile it, touching at their edges.
_STACKED_OVERLAP = 0.5


def overlapping_regions(sdata: SpatialData, *, table_key: str | None = None) -> tuple[str, str, str] | None:
    """Two regions of one table that lie on top of each other in a shared coordinate system, or ``None``.

    Slides concatenated into one coordinate system (each read into ``"global"``, as spatialdata-io's Xenium and
    CosMx readers leave them) cannot be told apart by :func:`find_slides`; their elements then overlap, which the
    parts of one slide do not. Returns ``(region_a, region_b, coordinate_system)`` for the first such pair. Runs on
    every tool call: the regions' bounding boxes come from their sizes and transformations, without reading data.

    Examples
    --------
    >>> import storm_sc as st
    >>> overlapping_regions(st.datasets.toy(n_obs=50, n_genes=10, seed=0)) is None  # one region
    True
    """
    keys = [table_key] if table_key in sdata.tables else [k for k, t in sdata.tables.items() if not is_prediction(t)]
    for key in keys:
        found = _annotated(sdata.tables[key])
        if found is None or len(found[0]) < 2:
            continue
        elements = {r: find_element(sdata, r) for r in found[0]}
        if any(e is None for e in elements.values()):
            continue
        shared = set.intersection(*(coordinate_systems(e) for e in elements.values()))
        if not shared:
            continue
        cs = "global" if "global" in shared else sorted(shared)[0]
        named = [(r, box) for r, e in elements.items() if (box := _bounding_box(e, cs)) is not None]
        if len(named) < 2:
            continue
        boxes = np.array([box for _, box in named])  # (n, 4): x0, y0, x1, y1
        sides = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:]) - np.maximum(boxes[:, None, :2], boxes[None, :, :2])
        overlap = np.prod(np.clip(sides, 0, None), axis=-1)
        area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1)
        smaller = np.minimum(area[:, None], area[None, :])
        stacked = np.triu((smaller > 0) & (overlap > _STACKED_OVERLAP * smaller), k=1)
        if stacked.any():
            i, j = np.argwhere(stacked)[0]
            return named[i][0], named[j][0], cs
    return None


def _bounding_box(element: object, cs: str) -> np.ndarray | None:
    """``(x0, y0, x1, y1)`` of an element in ``cs``: a raster's pixel frame or shapes' bounds, transformed."""
    if isinstance(element, DataArray | DataTree):
        width, height = image_size(element)
        corners = np.array([[0.0, 0.0], [width, 0.0], [0.0, height], [width, height]])
    elif isinstance(element, GeoDataFrame):
        if element.empty:
            return None
        x0, y0, x1, y1 = element.total_bounds
        corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64)
    else:  # points: not what tables annotate; nothing cheap to compare
        return None
    placed = apply_affine(affine_xy(element, cs), corners)
    return np.concatenate([placed.min(axis=0), placed.max(axis=0)])


def _slide_name(sdata: SpatialData, regions: list[str]) -> str:
    """A slide's name: its element's when it has one (Visium's spots are named after the dataset), else its systems'."""
    if len(regions) == 1:
        return regions[0]
    shared = set.intersection(*(coordinate_systems(element_of(sdata, r)) for r in regions))
    named = sorted(cs for cs in shared if cs != "global")
    return named[0] if named else "+".join(regions)


def _table_rows(table: AnnData, regions: tuple[str, ...]) -> np.ndarray | None:
    """Row indices of ``table`` annotating ``regions``; ``None`` when it annotates none of them."""
    found = _annotated(table)
    if found is None or not set(found[0]) & set(regions):
        return None
    return np.flatnonzero(table.obs[found[1]].astype(str).isin(regions).to_numpy())


def part_rows(sdata: SpatialData, part: SlidePart) -> np.ndarray:
    """Row indices, in ``sdata.tables[part.table_key]``, of the observations of one slide."""
    rows = _table_rows(sdata.tables[part.table_key], part.regions)
    assert rows is not None, "a slide's table annotates its regions"
    return rows


def _subset_table(table: AnnData, rows: np.ndarray, regions: tuple[str, ...]) -> AnnData:
    """The rows of one slide as a table of its own, annotating its regions only."""
    _, region_key, instance_key = get_table_keys(table)
    sub = table[rows].copy()
    kept = [r for r in regions if r in set(sub.obs[region_key].astype(str))] or list(regions[:1])
    sub.obs[region_key] = pd.Categorical(sub.obs[region_key].astype(str), categories=kept)
    sub.uns[TableModel.ATTRS_KEY] = {
        TableModel.REGION_KEY: kept[0] if len(kept) == 1 else kept,
        TableModel.REGION_KEY_KEY: region_key,
        TableModel.INSTANCE_KEY: instance_key,
    }
    return sub


def slide_of(sdata: SpatialData, part: SlidePart) -> SpatialData:
    """One slide of ``sdata`` as a SpatialData of its own.

    It holds the slide's elements and every element placed in one of their coordinate systems (images, other
    shapes), shared with ``sdata`` (not copied), and the rows of each table that annotate them (copied), so that
    nothing written into it reaches ``sdata``. ``attrs`` are kept but for what storm_sc's builders record about a
    single slide (its scale, image and name), which cannot hold for several; ``attrs["storm_sc"]["library_id"]`` is
    the slide's name.
    """
    systems = set().union(*(coordinate_systems(element_of(sdata, r)) for r in part.regions))

    def placed(group: dict) -> dict:
        return {k: e for k, e in group.items() if k in part.regions or coordinate_systems(e) & systems}

    tables = {}
    for key, table in sdata.tables.items():
        rows = _table_rows(table, part.regions)
        if rows is not None:
            found = _annotated(table)
            assert found is not None
            tables[key] = _subset_table(table, rows, tuple(r for r in found[0] if r in part.regions))
    piece = SpatialData(
        images=placed(dict(sdata.images)),
        labels=placed(dict(sdata.labels)),
        points=placed(dict(sdata.points)),
        shapes=placed(dict(sdata.shapes)),
        tables=tables,
    )
    piece.attrs.update(sdata.attrs)
    storm = sdata.attrs.get(ATTRS_STORM)
    # What storm_sc's builders record about one slide (its scale, image, name) cannot hold for several: concatenate
    # drops it or keeps one slide's (attrs_merge=). Only the platform is common to them all.
    platform = storm.get("platform") if isinstance(storm, dict) else None
    piece.attrs[ATTRS_STORM] = {"library_id": part.name, **({"platform": platform} if platform else {})}
    return piece


def library_column(adata: AnnData) -> str | None:
    """The ``.obs`` column naming each row's library in a scanpy-style AnnData holding several, else ``None``.

    Several libraries are several keys of ``.uns["spatial"]`` (as ``scanpy.concat(..., uns_merge="unique")`` of
    Visium AnnData leaves them); the column is the one whose values are two or more of those keys, the first such
    column when several are (``library_id`` first, scanpy's and squidpy's name for it).

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> adata = ad.AnnData(np.ones((3, 1)), uns={"spatial": {"s1": {}, "s2": {}}})
    >>> adata.obs["sample"] = ["s1", "s2", "s2"]
    >>> library_column(adata)
    'sample'
    """
    libs = adata.uns.get("spatial")
    if not isinstance(libs, Mapping) or len(libs) < 2:
        return None
    found = library_naming_columns(adata, {str(k) for k in libs})
    return next((column for column, values in found if len(values) >= 2), None)


def library_of(adata: AnnData, column: str, library: str) -> AnnData:
    """One library of a scanpy-style AnnData holding several, as an AnnData of its own.

    Rows and ``.uns`` are copied; ``.uns["spatial"]`` holds that library only (its images shared, not copied), or
    is left out when it does not describe that library.
    """
    rows = np.flatnonzero(adata.obs[column].astype(str).to_numpy() == library)
    libs = adata.uns.get("spatial")
    rest = {k: v for k, v in adata.uns.items() if k != "spatial"}
    if not isinstance(libs, Mapping) or library not in libs:
        libs = None
    view = adata[rows]
    obs = view.obs.copy()
    if "library_id" not in obs:  # named like a scanpy library wherever it is resolved alone (logs, plot titles)
        obs["library_id"] = pd.Categorical([library] * len(obs))
    return AnnData(
        X=view.X.copy() if view.X is not None else None,
        obs=obs,
        var=view.var.copy(),
        obsm={k: v.copy() for k, v in view.obsm.items()},
        layers={k: v.copy() for k, v in view.layers.items()},
        uns={**copy.deepcopy(rest), **({} if libs is None else {"spatial": {library: libs[library]}})},
    )


def anndata_slides(adata: AnnData, column: str | None = None) -> list[tuple[str, np.ndarray, AnnData]] | None:
    """The libraries of an AnnData holding several: ``(name, row indices, AnnData)``; else ``None``.

    ``column`` names each row's library; by default the one found by :func:`library_column` (scanpy-style
    ``.uns["spatial"]`` with several libraries).
    """
    column = library_column(adata) if column is None else column
    if column is None:
        return None
    values = adata.obs[column].astype(str).to_numpy()
    names = list(dict.fromkeys(values))
    return [(name, np.flatnonzero(values == name), library_of(adata, column, name)) for name in names]


def check_library_key(objects: list[SpatialData | AnnData], library_key: str, caller: str | None = None) -> None:
    """Refuse a ``library_key`` that cannot split the given objects into sections (before any work is done).

    ``caller`` names the function in the messages (plots name themselves; the tools' messages need no prefix).
    """
    where = f"`{caller}`: " if caller else ""
    for item in objects:
        if isinstance(item, SpatialData):
            raise ValueError(
                f"{where}`library_key` splits an AnnData holding several sections (e.g. made by anndata.concat); a "
                "SpatialData's slides are told apart by their coordinate systems (see st.io.split_slides). Drop it, "
                "or pass the slides as a list."
            )
        if library_key not in item.obs:
            raise KeyError(
                f"{where}`library_key` {library_key!r} is not a column of .obs (columns: {list(item.obs.columns)})."
            )
        if item.obs[library_key].isna().any():
            raise ValueError(f"{where}.obs[{library_key!r}] has missing values: every row needs its library.")
        described = item.uns.get("spatial")
        if isinstance(described, Mapping) and described:
            names = sorted({str(v) for v in pd.unique(item.obs[library_key])})
            lacking = [n for n in names if n not in described]
            if lacking:
                # such a section would lose its image and scale factors, and be read at another section's scale
                raise ValueError(
                    f"{where}.uns['spatial'] describes the libraries {sorted(map(str, described))}, but "
                    f".obs[{library_key!r}] also names {lacking}. Name the column whose values are those keys, or "
                    "concatenate with anndata.concat(..., uns_merge='unique') keyed by them, so that every section "
                    "keeps its image and scale."
                )


def hint_library_key(adata: AnnData, caller: str | None = None) -> None:
    """Warn when an AnnData taken as one slide names several libraries in ``.obs["library_id"]``."""
    values = adata.obs.get("library_id")
    if values is None or values.nunique() < 2:
        return
    logger.warning(
        "%sThe AnnData is taken as one slide, but .obs['library_id'] names %d libraries: sections stacked in one "
        "table (anndata.concat) then share one coordinate space and one centre (their spots are each other's "
        "neighbours, and maps draw them on top of each other). Pass library_key='library_id' to take each on its own.",
        f"`{caller}`: " if caller else "",
        values.nunique(),
    )


def split_slides(
    sdata: SpatialData | AnnData, *, table_key: str | None = None
) -> dict[str, SpatialData] | dict[str, AnnData]:
    """One SpatialData per slide of a SpatialData that holds several (e.g. made by ``spatialdata.concatenate``).

    The ``st.tl`` tools take such a SpatialData as it is (they analyse its slides together and write their results
    back into its tables); this is for everything else that reads one slide at a time, such as :func:`resolve`.
    Slides are told apart by their coordinate systems: after ``spatialdata.concatenate`` each slide keeps its own
    (a Visium slide's is named after it), whether the tables were concatenated or not. Images, shapes and labels are
    shared with ``sdata``; each slide's table rows are copied, so writing into a slide does not change ``sdata``.
    A scanpy-style AnnData holding several libraries in ``.uns["spatial"]`` (``scanpy.concat`` of Visium AnnData)
    gives one AnnData per library, told apart by the ``.obs`` column naming them (see :func:`library_column`).

    Parameters
    ----------
    sdata
        The SpatialData, or a scanpy-style AnnData.
    table_key
        The table whose slides to take apart; by default every table of measurements (storm_sc's prediction tables
        follow their spots).

    Returns
    -------
    The slides by name: the name of the slide's spots element when it has one (the dataset id, for Visium read by
    ``spatialdata_io``), else of its coordinate system; an AnnData's by library. An object holding one slide is
    returned as the only entry, named as :func:`resolve` names it (its scale is not needed).

    Examples
    --------
    >>> import spatialdata as sd
    >>> import storm_sc as st
    >>> a = st.datasets.toy(n_obs=50, n_genes=10, seed=0)
    >>> b = st.datasets.toy(n_obs=60, n_genes=10, seed=1)
    >>> both = sd.concatenate({"a": a, "b": b}, concatenate_tables=True)  # names suffixed: "global-a", ...
    >>> {name: s.tables["table"].n_obs for name, s in st.io.split_slides(both).items()}
    {'toy_spots-a': 50, 'toy_spots-b': 60}
    """
    if isinstance(sdata, AnnData):
        if table_key is not None:
            raise ValueError("`table_key` applies to a SpatialData; an AnnData is itself the table. Drop it.")
        libraries = anndata_slides(sdata)
        if libraries is not None:
            return {name: piece for name, _, piece in libraries}
        return {anndata_slide_name(sdata): sdata}
    if not isinstance(sdata, SpatialData):
        raise TypeError(f"`sdata` must be a SpatialData or an AnnData, got {type(sdata).__name__}.")
    if table_key is not None and table_key not in sdata.tables:
        raise ValueError(f"No table {table_key!r}; tables found: {list(sdata.tables)}.")
    parts = find_slides(sdata, table_key=table_key)
    if parts is None:
        from ._resolve import slide_name

        return {slide_name(sdata, table_key=table_key): sdata}
    return {part.name: slide_of(sdata, part) for part in parts}


def unique_names(names: Sequence[str]) -> list[str]:
    """Make names unique by numbering repeats (two toy slides are both called "toy"), as plots and messages say them.

    Examples
    --------
    >>> unique_names(["toy", "C2", "toy"])
    ['toy (1)', 'C2', 'toy (2)']
    """
    out = []
    seen: dict[str, int] = {}
    for name in names:
        if list(names).count(name) > 1:
            seen[name] = seen.get(name, 0) + 1
            out.append(f"{name} ({seen[name]})")
        else:
            out.append(name)
    return out
