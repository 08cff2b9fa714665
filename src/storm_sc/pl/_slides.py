"""What the plots draw from: the measured table of each slide, its positions and image, and the predicted table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from spatialdata import SpatialData

from storm_sc._constants import OBS_DOMAIN, OBSM_EMBEDDING, UNS_STORM
from storm_sc._settings import logger, quiet_loggers
from storm_sc.io import SpatialInput, resolve
from storm_sc.io._anndata import named_library
from storm_sc.io._resolve import (
    check_keys,
    is_prediction,
    mpp_of_slide,
    mpp_per_object,
    several_slides_scale_hint,
    slide_name,
)
from storm_sc.io._slides import (
    anndata_slides,
    check_library_key,
    find_slides,
    hint_library_key,
    library_column,
    slide_of,
    unique_names,
)

Data = SpatialData | AnnData


def as_slides(data: Any, *, caller: str, many: bool, table_key: str | None = None) -> list[Data]:
    """Return the slides in ``data`` (one, or a non-empty list when ``many``), or a clear error.

    Where several are drawn (``many``), a SpatialData holding several slides (``spatialdata.concatenate``) gives
    one panel per slide, as a list of them would. ``table_key`` is the measured table, whose slides these are.
    """
    check_keys(table_key=table_key)
    if isinstance(data, SpatialData | AnnData) and not many:
        names = _slide_names(data, table_key)
        if len(names) > 1:
            # measured-vs-predicted comparisons are per slide: pooling slides would mix their batch effects
            raise ValueError(
                f"`{caller}` reads one slide, and this {type(data).__name__} holds {len(names)}: {names}. Pass one, "
                f"e.g. st.io.split_slides(data{_table_arg(table_key)})[{names[0]!r}]."
            )
        if isinstance(data, AnnData):
            hint_library_key(data, caller)
        return [data]
    objects = _objects(data, caller=caller, many=many)
    return [slide for item in objects for _, slide in _panels(item, caller=caller, table_key=table_key)]


def _table_arg(table_key: str | None) -> str:
    """``table_key`` as an argument of a call shown in a message (none when not given)."""
    return "" if table_key is None else f", table_key={table_key!r}"


def slides_to_draw(
    data: Any, *, caller: str, mpp: Any = None, library_key: str | None = None, table_key: str | None = None
) -> tuple[list[Data], list[float | None]]:
    """:func:`as_slides` (``many``) and the ``mpp`` of each slide.

    ``mpp``: one for all, one per object of a list, or for an object holding several slides a mapping of their names.

    ``library_key``: the ``.obs`` column telling apart sections stacked in one AnnData (``anndata.concat``), each
    then a slide of its own, as ``library_key`` of the tools makes them.

    ``table_key``: the measured table of a SpatialData, whose slides are drawn.
    """
    check_keys(table_key=table_key, library_key=library_key)
    objects = _objects(data, caller=caller, many=True)
    mpps = mpp_per_object(mpp, len(objects))
    if library_key is not None:
        check_library_key(objects, library_key, caller)
    slides, values = [], []
    for item, value in zip(objects, mpps, strict=True):
        panels = _panels(item, library_key, caller, table_key)
        names = [name for name, _ in panels if name is not None]
        for name, slide in panels:
            slides.append(slide)
            values.append(mpp_of_slide(value, name, names))
    return slides, values


def _objects(data: Any, *, caller: str, many: bool) -> list[Data]:
    """The objects given: ``data`` itself, or the items of a non-empty list of them (``many``)."""
    if isinstance(data, SpatialData | AnnData):
        return [data]
    if many and isinstance(data, Sequence) and not isinstance(data, str) and len(data) > 0:
        bad = sorted({type(d).__name__ for d in data if not isinstance(d, SpatialData | AnnData)})
        if bad:
            raise TypeError(f"`{caller}`: `data` must hold SpatialData or AnnData objects; got {bad}.")
        return list(data)
    expected = "a SpatialData, an AnnData or a non-empty list of them" if many else "a SpatialData or an AnnData"
    hint = "" if many or not isinstance(data, Sequence) else "; plot one slide per call"
    raise TypeError(f"`{caller}`: `data` must be {expected}, got {type(data).__name__}{hint}.")


def _panels(
    item: Data, library_key: str | None = None, caller: str | None = None, table_key: str | None = None
) -> list[tuple[str | None, Data]]:
    """The slides of one object, named: itself (no name), or each slide of a SpatialData (or AnnData) holding several.

    A SpatialData's slides are those of ``table_key``: with several tables per slide (Visium HD's bin sizes) the
    slides of all tables together cannot be told apart, those of the one drawn can.
    """
    if isinstance(item, AnnData):
        libraries = anndata_slides(item, library_key)
        if libraries is None:
            hint_library_key(item, caller)
            return [(None, item)]
        return [(name, piece) for name, _, piece in libraries]
    parts = find_slides(item, table_key=table_key)
    return [(None, item)] if parts is None else [(part.name, slide_of(item, part)) for part in parts]


def _slide_names(item: Data, table_key: str | None = None) -> list[str]:
    """Names of the slides an object holds when it holds several (else one entry)."""
    if isinstance(item, AnnData):
        column = library_column(item)
        return ["the AnnData"] if column is None else list(dict.fromkeys(item.obs[column].astype(str)))
    parts = find_slides(item, table_key=table_key)
    return ["the SpatialData"] if parts is None else [part.name for part in parts]


def scale_hint(data: Any, table_key: str | None = None) -> str:
    """How to give each slide its scale, when an object of ``data`` holds several slides (else ``""``)."""
    objects = list(data) if isinstance(data, list | tuple) else [data]
    several = [
        names for item in objects if isinstance(item, SpatialData) and len(names := _slide_names(item, table_key)) > 1
    ]
    if not several:
        return ""
    return f" {several_slides_scale_hint(several[0])}"


def measured_table_key(sdata: SpatialData, table_key: str | None, predicted_key: str | None) -> str | None:
    """Return the measured table: ``table_key``, the only table, or the only one that is not the predicted one."""
    if table_key is not None:
        if table_key not in sdata.tables:
            raise KeyError(f"No table {table_key!r} in this SpatialData; tables: {list(sdata.tables)}.")
        return table_key
    if len(sdata.tables) <= 1:
        return None  # resolve() picks the only table or explains what is missing
    # Tables of predictions (whatever their key_added) annotate the same spots; the user means the measured one.
    others = [k for k, t in sdata.tables.items() if k != predicted_key and not is_prediction(t)]
    if len(others) == 1:
        return others[0]
    raise ValueError(
        f"This SpatialData holds several tables {others or list(sdata.tables)}; pass `table_key=` naming the measured "
        "one."
    )


def resolve_slide(
    data: Data,
    *,
    table_key: str | None,
    predicted_key: str | None,
    image_key: str | None = None,
    mpp: float | None = None,
) -> SpatialInput:
    """Resolve one slide on its measured table (never on the predicted one that annotates the same spots).

    Quietly: the tools that made what is plotted already logged how the slide was read; warnings still show.
    """
    if isinstance(data, SpatialData):
        key = measured_table_key(data, table_key, predicted_key)
        with quiet_loggers(logger.name):
            return resolve(data, table_key=key, image_key=image_key, mpp=mpp)
    if table_key is not None:
        raise ValueError("`table_key` applies to a SpatialData; an AnnData is itself the table. Drop it.")
    with quiet_loggers(logger.name):
        return resolve(data, image_key=image_key, mpp=mpp)


def measured_table(data: Data, *, table_key: str | None, predicted_key: str | None) -> AnnData:
    """Return the measured table without resolving positions (for computations that need none)."""
    if isinstance(data, AnnData):
        if table_key is not None:
            raise ValueError("`table_key` applies to a SpatialData; an AnnData is itself the table. Drop it.")
        return data
    key = measured_table_key(data, table_key, predicted_key)
    if key is None:
        if not data.tables:
            raise ValueError("This SpatialData has no table (observations x genes).")
        key = next(iter(data.tables))
    return data.tables[key]


def table_and_name(data: Data, *, table_key: str | None, predicted_key: str | None) -> tuple[AnnData, str]:
    """Return the measured table and the slide's name, without reading positions, image or scale."""
    table = measured_table(data, table_key=table_key, predicted_key=predicted_key)
    if isinstance(data, SpatialData):
        # The name needs no scale: a slide whose mpp is unknown (concatenated slides) still gets its title.
        key = measured_table_key(data, table_key, predicted_key) or next(iter(data.tables))
        return table, slide_name(data, table_key=key)
    libraries = table.uns.get("spatial")
    name = next(iter(libraries)) if isinstance(libraries, dict) and len(libraries) == 1 else named_library(table)
    return table, str(name)


def slide_names(slides: Sequence[SpatialInput]) -> list[str]:
    """Return the library ids of ``slides``, made unique."""
    return unique_names([s.library_id for s in slides])


def require_obs(table: AnnData, key: str, where: str) -> None:
    """Raise a clear error when ``.obs[key]`` is missing, pointing at the tool that writes the usual keys."""
    if key in table.obs:
        return
    hint = " Run st.tl.storm_domains first, or pass `key=`." if key == OBS_DOMAIN else ""
    columns = list(table.obs.columns)
    raise KeyError(
        f"{where}: .obs[{key!r}] not found.{hint} Columns of .obs: {columns[:20]}{' ...' * (len(columns) > 20)}"
    )


def gene_values(table: AnnData, gene: str, layer: str | None = None) -> np.ndarray:
    """The ``(n_obs,)`` values of one gene of ``table`` (its ``.X``, or ``layer``), dense float64."""
    column = table[:, gene]
    x = column.X if layer is None else column.layers[layer]
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64).ravel()


def require_obs_in_any(tables: Sequence[AnnData], key: str, names: Sequence[str]) -> None:
    """Refuse ``key`` unless some table has it.

    A column only some slides have (the labels of one section) is drawn as missing on the others.
    """
    if any(key in t.obs for t in tables):
        return
    where = f"Slide {names[0]!r}" if len(tables) == 1 else f"None of the {len(tables)} slides"
    require_obs(tables[0], key, where)


def require_obsm(table: AnnData, key: str, where: str) -> None:
    """Raise a clear error when ``.obsm[key]`` is missing."""
    if key in table.obsm:
        return
    hint = " Run st.tl.storm_embed first, or pass `use_rep=`." if key == OBSM_EMBEDDING else ""
    raise KeyError(f"{where}: .obsm[{key!r}] not found.{hint} Keys of .obsm: {sorted(table.obsm)}.")


def predicted_table(data: Data, measured: AnnData, *, predicted_key: str, predicted: AnnData | None) -> AnnData:
    """Return the predicted table, rows in the order of the measured table (a view; nothing is copied)."""
    if predicted is not None:
        if not isinstance(predicted, AnnData):
            raise TypeError(
                f"`predicted` must be the AnnData of st.tl.predict_expression, got {type(predicted).__name__}."
            )
        source = "`predicted`"
    elif isinstance(data, SpatialData):
        if predicted_key not in data.tables:
            raise KeyError(
                f"No predicted expression: sdata.tables[{predicted_key!r}] not found (tables: {list(data.tables)}). "
                "Run st.tl.predict_expression(sdata, model, genes=[...]) first, or pass `predicted_key=`."
            )
        predicted, source = data.tables[predicted_key], f"sdata.tables[{predicted_key!r}]"
    else:
        raise ValueError(
            "An AnnData cannot hold the predicted table: pass `predicted=`, the AnnData returned by "
            "st.tl.predict_expression(adata, model, ...)."
        )
    wanted = measured.obs_names
    missing = wanted.difference(predicted.obs_names)
    if len(missing) == len(wanted):
        raise ValueError(
            f"{source} shares no observation name with the measured table ({measured.n_obs} obs, e.g. "
            f"{wanted[:3].tolist()}); was it predicted for another slide?"
        )
    if len(missing):
        raise ValueError(
            f"{source} lacks {len(missing)} of the {measured.n_obs} observations of the measured table (e.g. "
            f"{missing[:3].tolist()}); predict again on this slide."
        )
    if not predicted.obs_names.is_unique:
        raise ValueError(f"{source} has duplicated observation names; it cannot be matched to the measured table.")
    if predicted.obs_names.equals(wanted):
        return predicted
    return predicted[wanted]


def pick_genes(genes: str | Sequence[str], available: pd.Index, *, what: str, hint: str) -> list[str]:
    """Return the requested genes as named in ``available``; unknown ones are an error.

    Names match case-insensitively, and a name also matches without the genome prefix that multi-genome references
    put on every gene (``"SFTPC"`` finds ``"GRCh38__SFTPC"``) when that is unambiguous.
    """
    if isinstance(genes, str):
        genes = [genes]
    if not isinstance(genes, Sequence) or len(genes) == 0 or not all(isinstance(g, str) for g in genes):
        raise ValueError(f"`genes` must be a gene name or a non-empty list of gene names, got {genes!r}.")
    lookup: dict[str, str] = {}
    unprefixed: dict[str, list[str]] = {}
    for name in map(str, available):
        lookup.setdefault(name.casefold(), name)
        if "__" in name:
            unprefixed.setdefault(name.split("__", 1)[1].lstrip("_").casefold(), []).append(name)
    picked, unknown = [], []
    for gene in genes:
        key = gene.casefold()
        if key in lookup:
            picked.append(lookup[key])
        elif len(unprefixed.get(key, ())) == 1:
            picked.append(unprefixed[key][0])
        elif key in unprefixed:
            raise KeyError(f"Gene {gene!r} is ambiguous in {what}: {unprefixed[key]}; pass one of these names.")
        else:
            unknown.append(gene)
    if unknown:
        shown = list(available[:10])
        raise KeyError(f"Gene(s) {unknown} not in {what} ({len(available)} genes, e.g. {shown}). {hint}")
    return list(dict.fromkeys(picked))


def pick_predicted_genes(genes: str | Sequence[str] | None, predicted: AnnData) -> list[str]:
    """Return ``genes`` as named in the predicted table (every predicted gene for None); unknown ones are an error."""
    if genes is None:
        return [str(g) for g in predicted.var_names]
    requested = [genes] if isinstance(genes, str) else list(genes) if pd.api.types.is_list_like(genes) else []
    outside = set(predicted.uns.get(UNS_STORM, {}).get("genes_not_in_model", ())) & {str(g) for g in requested}
    if outside:
        raise KeyError(
            f"Gene(s) {sorted(outside)} were requested from st.tl.predict_expression but are not in "
            "the model's vocabulary, so they cannot be predicted by this model (see `model.vocabulary`)."
        )
    return pick_genes(
        genes,
        predicted.var_names,
        what="the predicted table",
        hint="Predict them first with st.tl.predict_expression(sdata, model, genes=[...]); only genes of the "
        "model's vocabulary can be predicted.",
    )
