"""Where a tool writes its results: the table of a SpatialData (or a bare AnnData), never half-way."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from spatialdata import SpatialData
from spatialdata.models import TableModel, get_table_keys

from storm_sc import __version__
from storm_sc._constants import ATTRS_STORM, SHAPES_TILES, TABLE_TILES, UNS_STORM
from storm_sc._settings import logger
from storm_sc.io import SpatialInput, resolve
from storm_sc.io._resolve import UnknownScaleError, mpp_of_slide, several_slides_scale_hint
from storm_sc.io._slides import (
    anndata_slides,
    check_library_key,
    find_slides,
    hint_library_key,
    is_prediction,
    overlapping_regions,
    part_rows,
    slide_of,
)
from storm_sc.io._tiles import tile_observations


def as_slide_list(data: Any, name: str = "data") -> tuple[list[SpatialData | AnnData], bool]:
    """The slides in ``data`` and whether a single slide was given (so results come back the same shape)."""
    if isinstance(data, SpatialData | AnnData):
        return [data], True
    if isinstance(data, Sequence) and not isinstance(data, str) and data:
        bad = [type(d).__name__ for d in data if not isinstance(d, SpatialData | AnnData)]
        if bad:
            raise TypeError(f"`{name}` must hold SpatialData or AnnData objects; got {sorted(set(bad))}.")
        seen: dict[int, int] = {}
        for i, d in enumerate(data):
            if id(d) in seen:
                # its results would be written twice into the same table, and it would count as two slides
                raise ValueError(
                    f"`{name}` holds the same object twice (items {seen[id(d)]} and {i}); pass each slide once."
                )
            seen[id(d)] = i
        return list(data), False
    hint = ""
    if isinstance(data, Mapping):
        hint = " (pass `list(slides.values())`: each slide is named by its own region or library id, not the keys)"
    raise TypeError(
        f"`{name}` must be a SpatialData, an AnnData or a non-empty list of them; got {type(data).__name__}{hint}."
    )


def copy_for_output(data: SpatialData | AnnData) -> SpatialData | AnnData:
    """A copy whose tables can be written without touching ``data``.

    Images, shapes, labels and points are shared (tools never write into them, and copying a whole-slide image
    would cost its size in memory); tables and ``attrs`` are deep-copied (tools record a slide's scale there).
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
    copied.attrs.update(copy.deepcopy(data.attrs))
    return copied


def structural_keys(table: AnnData, slot: str) -> dict[str, str]:
    """The ``.obs`` or ``.obsm`` entries a table depends on, by name, with what each holds.

    ``overwrite=True`` replaces a result, never these: a domain column written over the region key unlinks the table
    from its shapes (spatialdata then refuses it), an embedding written over ``.obsm["spatial"]`` loses the positions.
    """
    if slot == "obsm":
        return {"spatial": "positions"}
    attrs = table.uns.get("spatialdata_attrs")
    if not isinstance(attrs, Mapping):
        return {}
    roles = {"region_key": "region key (which element each row annotates)", "instance_key": "instance key"}
    return {attrs[k]: role for k, role in roles.items() if isinstance(attrs.get(k), str)}


def check_key_free(
    mapping: Mapping[str, Any],
    key: str,
    where: str,
    *,
    overwrite: bool,
    protected: Mapping[str, str] | None = None,
) -> None:
    """Refuse to replace an existing result unless asked to, and what the table depends on (``protected``) always."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"`key_added` must be a non-empty string, got {key!r}.")
    if protected and key in protected:
        raise ValueError(
            f"{where}[{key!r}] holds the table's {protected[key]}, which no result may replace (not even with "
            "`overwrite=True`); pass another `key_added=`."
        )
    if key in mapping and not overwrite:
        raise ValueError(
            f"{where}[{key!r}] already exists; pass another `key_added=` or `overwrite=True` to replace it."
        )


def check_table_key_free(sdata: SpatialData, key: str, *, overwrite: bool) -> None:
    """Refuse a ``key_added`` for a new table of ``sdata`` that spatialdata would refuse, or that would replace data.

    Checked before any work: spatialdata refuses a bad name (or one differing from another element's only in case)
    when the table is stored, after the work is done, and a table named like another element makes ``sdata[name]``
    ambiguous.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"`key_added` must be a non-empty string, got {key!r}.")
    if key in (".", "..") or key.startswith("__") or not all(c.isalnum() or c in "_-." for c in key):
        raise ValueError(
            f"`key_added={key!r}` is not a valid SpatialData element name: use letters, digits, '_', '-' and '.' "
            "(not starting with '__'), e.g. 'storm_predicted'."
        )
    if key in (TABLE_TILES, SHAPES_TILES):
        raise ValueError(f"`key_added={key!r}` is the name storm_sc gives an H&E-only slide's tiles; choose another.")
    for kind in ("images", "labels", "points", "shapes", "tables"):
        # spatialdata also refuses names that differ only in case ("Table" beside "table")
        clash = next((k for k in getattr(sdata, kind) if k.casefold() == key.casefold()), None)
        if clash is not None and (kind != "tables" or clash != key):
            raise ValueError(f"`key_added={key!r}` is the name of sdata.{kind}[{clash!r}]; choose another name.")
    if key in sdata.tables and not is_prediction(sdata.tables[key]):
        raise ValueError(
            f"`key_added={key!r}` names a table of measurements, which `overwrite=True` would replace with the "
            "prediction; choose another name."
        )
    check_key_free(sdata.tables, key, "sdata.tables", overwrite=overwrite)


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


@dataclass(frozen=True)
class _Origin:
    """Where a slide the tool runs on comes from: ``targets[owner]`` itself, or rows of one of its tables.

    ``table_key`` is ``None`` for the rows of an AnnData (itself the table).
    """

    owner: int
    table_key: str | None = None
    rows: np.ndarray | None = None
    name: str | None = None


def _hint_stacked_regions(sdata: SpatialData, table_key: str | None) -> None:
    """Warn when a SpatialData taken as one slide holds regions lying on top of each other (stacked slides)."""
    found = overlapping_regions(sdata, table_key=table_key)
    if found is None:
        return
    a, b, cs = found
    logger.warning(
        "The SpatialData is analysed as one slide, but its table annotates %r and %r, which overlap in coordinate "
        "system %r: slides concatenated into one coordinate system, whose observations would be each other's "
        "neighbours. Give each slide its own coordinate system before spatialdata.concatenate "
        "(sdata.rename_coordinate_systems({%r: '<slide name>'})), or pass the slides as a list.",
        a,
        b,
        cs,
        cs,
    )


class SlideFanout:
    """The slides a tool runs on (one per slide of each object given) and the way their results go back.

    A SpatialData holding several slides (``spatialdata.concatenate``, see :func:`storm_sc.io.split_slides`), or a
    scanpy-style AnnData holding several libraries in ``.uns["spatial"]``, is taken apart; the tool runs on its
    slides as on a list, writing into their own copies of the table rows, and :meth:`write_back` then puts each
    result into the rows of the given object's tables. Any other object is run on as it is. So the tools need no
    case of their own, and an error before the write-back leaves the user's objects as they were.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=50, n_genes=10, seed=0)
    >>> fanout = SlideFanout([sdata], table_key=None)
    >>> fanout.slides[0] is sdata  # one slide: run on it as it is
    True
    """

    def __init__(
        self,
        targets: list[SpatialData | AnnData],
        table_key: str | None,
        *,
        library_key: str | None = None,
        hint_stacked: bool = True,
    ) -> None:
        self.targets = targets
        self.slides: list[SpatialData | AnnData] = []
        self.origins: list[_Origin] = []
        if library_key is not None:
            check_library_key(targets, library_key)
        for i, target in enumerate(targets):
            if isinstance(target, AnnData):
                libraries = anndata_slides(target, library_key)
                if libraries is None and hint_stacked:
                    hint_library_key(target)
                if libraries is not None:
                    logger.info("%d libraries found in one AnnData: %s", len(libraries), [n for n, _, _ in libraries])
                    for name, rows, piece in libraries:
                        self.slides.append(piece)
                        self.origins.append(_Origin(i, None, rows, name))
                    continue
            parts = find_slides(target, table_key=table_key) if isinstance(target, SpatialData) else None
            if parts is None:
                if isinstance(target, SpatialData) and hint_stacked:
                    _hint_stacked_regions(target, table_key)
                self.slides.append(target)
                self.origins.append(_Origin(i))
                continue
            logger.info("%d slides found in one SpatialData: %s", len(parts), [p.name for p in parts])
            for part in parts:
                self.slides.append(slide_of(target, part))
                self.origins.append(_Origin(i, part.table_key, part_rows(target, part), part.name))

    def mpp_of(self, k: int, mpps: Sequence[Any]) -> float | None:
        """Slide ``k``'s ``mpp`` from the tool's per-object values (:func:`storm_sc.io._resolve.mpp_per_object`)."""
        origin = self.origins[k]
        return mpp_of_slide(mpps[origin.owner], origin.name, self._names_of(origin.owner))

    @contextmanager
    def naming_scales(self, k: int) -> Iterator[None]:
        """Say how to give each slide its scale when a slide of an object holding several has none."""
        origin = self.origins[k]
        try:
            yield
        except UnknownScaleError as err:
            if origin.name is None:
                raise
            names = self._names_of(origin.owner)
            raise UnknownScaleError(f"Slide {origin.name!r}: {err} {several_slides_scale_hint(names)}") from err

    def _names_of(self, owner: int) -> list[str]:
        return [o.name for o in self.origins if o.owner == owner and o.name is not None]

    def _groups(self) -> dict[tuple[int, str | None], list[int]]:
        """Slides taken from the same table of the same object."""
        groups: dict[tuple[int, str | None], list[int]] = {}
        for k, origin in enumerate(self.origins):
            if origin.rows is not None:
                groups.setdefault((origin.owner, origin.table_key), []).append(k)
        return groups

    def _table(self, owner: int, table_key: str | None) -> AnnData:
        target = self.targets[owner]
        return target if isinstance(target, AnnData) else target.tables[table_key]

    def write_back(
        self,
        tables: list[AnnData],
        *,
        obsm: Sequence[str] = (),
        obs: Sequence[str] = (),
        uns: Sequence[str] = (),
        params: str | None = None,
    ) -> None:
        """Copy results from the slides' tables (``tables[k]`` is slide ``k``'s) into the given objects' tables.

        ``obsm`` and ``obs`` keys are assembled row by row; ``uns`` entries are the first slide's (the same on every
        slide, such as domain colours); the parameters in ``.uns["storm"][params]`` are merged: what differs between
        slides becomes a mapping from slide name to value, and ``"slides"`` lists their names.
        """
        for (owner, table_key), members in self._groups().items():
            table = self._table(owner, table_key)
            order = np.argsort(np.concatenate([self.origins[k].rows for k in members]), kind="stable")
            for key in obsm:
                table.obsm[key] = np.concatenate([np.asarray(tables[k].obsm[key]) for k in members])[order]
            for key in obs:
                values = pd.concat([tables[k].obs[key] for k in members], ignore_index=True).iloc[order]
                table.obs[key] = values.array.copy()  # by position: obs_names need not be unique
            for key in uns:
                table.uns[key] = tables[members[0]].uns[key]
            if params is not None:
                names = [self.origins[k].name for k in members]
                entries = [tables[k].uns[UNS_STORM][params] for k in members]
                table.uns.setdefault(UNS_STORM, {})[params] = merged_params(names, entries)

    def gather_tables(self, results: list[AnnData], *, params: str) -> list[AnnData]:
        """One table per given object from one per slide (``results[k]`` annotating slide ``k``'s rows).

        The slides of one table follow that table's row order (the tables of one object, in the order found) and
        the result annotates all their regions; ``.uns["storm"]`` is the first slide's, with ``params`` merged as
        in :meth:`write_back`.
        """
        out: list[AnnData | None] = [None] * len(self.targets)
        for k, origin in enumerate(self.origins):
            if origin.rows is None:
                out[origin.owner] = results[k]
        by_owner: dict[int, list[list[int]]] = {}
        for (owner, _), members in self._groups().items():
            by_owner.setdefault(owner, []).append(members)
        for owner, groups in by_owner.items():
            tables = []
            for members in groups:
                order = np.argsort(np.concatenate([self.origins[k].rows for k in members]), kind="stable")
                tables.append(ad.concat([results[k] for k in members], merge="same")[order])
            combined = ad.concat(tables, merge="same") if len(tables) > 1 else tables[0].copy()
            members = [k for group in groups for k in group]
            first = results[members[0]]
            storm = dict(first.uns[UNS_STORM])
            storm[params] = merged_params(
                [self.origins[k].name for k in members], [results[k].uns[UNS_STORM][params] for k in members]
            )
            combined.uns[UNS_STORM] = storm
            libraries = {name: lib for k in members for name, lib in results[k].uns.get("spatial", {}).items()}
            if libraries:  # a scanpy AnnData's libraries: the images its slides' pixel positions go with
                combined.uns["spatial"] = libraries
            if TableModel.ATTRS_KEY in first.uns:
                _, region_key, instance_key = get_table_keys(first)
                regions = list(dict.fromkeys(r for k in members for r in _regions(results[k])))
                combined.obs[region_key] = pd.Categorical(combined.obs[region_key].astype(str), categories=regions)
                combined = TableModel.parse(combined, region=regions, region_key=region_key, instance_key=instance_key)
            out[owner] = combined
        return out  # type: ignore[return-value]


def _regions(table: AnnData) -> list[str]:
    region = get_table_keys(table)[0]
    return [region] if isinstance(region, str) else list(region)


def merged_params(names: list[str | None], entries: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The parameters of one result computed slide by slide: what differs becomes ``{slide name: value}``.

    Examples
    --------
    >>> merged_params(["a", "b"], [{"tool": "x", "mpp": 1.0}, {"tool": "x", "mpp": 2.0}])
    {'tool': 'x', 'mpp': {'a': 1.0, 'b': 2.0}, 'slides': ['a', 'b']}
    """
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for entry in entries for k in entry):
        values = [entry.get(key) for entry in entries]
        same = all(_same(v, values[0]) for v in values[1:])
        merged[key] = values[0] if same else {str(n): v for n, v in zip(names, values, strict=True)}
    merged["slides"] = [str(n) for n in names]
    return merged


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object)))
    except (TypeError, ValueError):
        return a is b
