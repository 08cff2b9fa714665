"""Where a tool writes its results: the table of a SpatialData (or a bare AnnData), never half-way."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from anndata import AnnData
from spatialdata import SpatialData

from storm_sc import __version__
from storm_sc._constants import ATTRS_STORM, SHAPES_TILES, TABLE_TILES, UNS_STORM
from storm_sc.io import SpatialInput, resolve
from storm_sc.io._tiles import tile_observations


def as_slide_list(data: Any, name: str = "data") -> tuple[list[SpatialData | AnnData], bool]:
    """The slides in ``data`` and whether a single slide was given (so results come back the same shape)."""
    if isinstance(data, SpatialData | AnnData):
        return [data], True
    if isinstance(data, Sequence) and not isinstance(data, str) and data:
        bad = [type(d).__name__ for d in data if not isinstance(d, SpatialData | AnnData)]
        if bad:
            raise TypeError(f"`{name}` must hold SpatialData or AnnData objects; got {sorted(set(bad))}.")
        return list(data), False
    raise TypeError(
        f"`{name}` must be a SpatialData, an AnnData or a non-empty list of them; got {type(data).__name__}."
    )


def copy_for_output(data: SpatialData | AnnData) -> SpatialData | AnnData:
    """A copy whose tables can be written without touching ``data``.

    Images, shapes, labels and points are shared (tools never write into them, and copying a whole-slide image
    would cost its size in memory); tables are deep-copied.
    """
    if isinstance(data, AnnData):
        return data.copy()
    copied = SpatialData(
        images=dict(data.images),
        labels=dict(data.labels),
        points=dict(data.points),
        shapes=dict(data.shapes),
        tables={k: t.copy() for k, t in data.tables.items()},
    )
    copied.attrs.update(data.attrs)
    return copied


def check_key_free(mapping: Mapping[str, Any], key: str, where: str, *, overwrite: bool) -> None:
    """Refuse to replace an existing result unless asked to."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"`key_added` must be a non-empty string, got {key!r}.")
    if key in mapping and not overwrite:
        raise ValueError(
            f"{where}[{key!r}] already exists; pass another `key_added=` or `overwrite=True` to replace it."
        )


def check_params_slot(table: AnnData, where: str = "") -> None:
    """Refuse a table whose ``.uns["storm"]`` is not a mapping, before any work: the parameters of results go there."""
    slot = table.uns.get(UNS_STORM)
    if slot is not None and not isinstance(slot, MutableMapping):
        raise TypeError(
            f"{where}.uns[{UNS_STORM!r}] is a {type(slot).__name__}, not a dict; storm_sc records the parameters of "
            f"its results there. Rename it first, e.g. `table.uns['my_notes'] = table.uns.pop({UNS_STORM!r})`."
        )


def record_params(table: AnnData, key: str, params: Mapping[str, Any]) -> None:
    """Store the parameters of a result in ``.uns["storm"][key]`` so that it explains itself later."""
    entry = dict(params)
    entry.setdefault("storm_sc_version", __version__)
    table.uns.setdefault(UNS_STORM, {})[key] = entry


def is_he_only(item: SpatialData | AnnData, table_key: str | None) -> bool:
    """Whether ``item`` is an H&E-only slide (a SpatialData without a table), whose observations are tissue tiles."""
    return isinstance(item, SpatialData) and not item.tables and table_key is None


def resolve_or_tile(
    item: SpatialData | AnnData,
    patch_um: float | None,
    *,
    table_key: str | None,
    image_key: str | None,
    mpp: float | None,
    overwrite: bool,
) -> tuple[SpatialInput, SpatialData | None]:
    """:func:`storm_sc.io.resolve` of ``item``, or of its tissue tiles when it is H&E-only (then also the tiles).

    The tiles (:func:`storm_sc.io._tiles.tile_observations`, ``patch_um`` apart: the model's patch size, needed only
    for an H&E-only slide) are returned in a new SpatialData;
    :func:`add_tiles` puts them into ``item`` once the tool's work has succeeded.
    """
    tiles = None
    if is_he_only(item, table_key):
        check_key_free(item.shapes, SHAPES_TILES, "sdata.shapes", overwrite=overwrite)
        check_key_free(item.tables, TABLE_TILES, "sdata.tables", overwrite=overwrite)
        assert patch_um is not None, "an H&E-only slide is tiled at the model's patch size"
        tiles = tile_observations(item, image_key=image_key, mpp=mpp, tile_um=patch_um)
    slide = resolve(item if tiles is None else tiles, table_key=table_key, image_key=image_key, mpp=mpp)
    return slide, tiles


def add_tiles(item: SpatialData, tiles: SpatialData) -> None:
    """Store the tiles of :func:`resolve_or_tile` (their circles and their table) in the slide.

    The image scale they were cut at, and the image's name as the slide's, are kept in ``item.attrs["storm_sc"]``
    (``mpp``, ``library_id``) when the slide had none there, so that later calls on the tiles need no ``mpp=``.
    """
    item.shapes[SHAPES_TILES] = tiles.shapes[SHAPES_TILES]
    item.tables[TABLE_TILES] = tiles.tables[TABLE_TILES]
    kept = item.attrs.setdefault(ATTRS_STORM, {})
    for key in ("mpp", "library_id"):
        kept.setdefault(key, tiles.attrs[ATTRS_STORM][key])
