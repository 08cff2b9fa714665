"""Training slides: what the user passes, the vocabulary they span, their prepared arrays, and the split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData

from storm_sc._settings import logger
from storm_sc.models import StormInputs
from storm_sc.models._manifest import array_digest

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from storm_sc.models import StormModel
    from storm_sc.pp import GeneVocabulary

# .var columns holding gene symbols / Ensembl ids (as written by spatialdata-io, scanpy and CELLxGENE).
_SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "gene_name", "gene_names", "symbol", "feature_name")
_ENSEMBL_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "feature_id")
TRAIN, VAL = 0, 1


@dataclass
class TrainingSlide:
    """One slide to train on, with how to read it and which group (patient) it belongs to.

    Attributes
    ----------
    data
        A SpatialData, an AnnData with spatial coordinates, or a :class:`storm_sc.io.SpatialInput`.
    name
        Name in logs and the manifest (default: ``slide<i>``).
    group
        Split unit: slides of one group (e.g. a patient) are all in training or all in validation
        (default: the name).
    table_key, image_key, mpp, library_id
        Passed to :func:`storm_sc.io.resolve`.
    layer, gene_symbols
        Passed to :func:`storm_sc.pp.align_genes`.
    use_image, use_expression
        Modalities to read from this slide.
    source
        Provenance for the manifest, e.g. ``{"loader": "her2st", "args": {"section": "C2"}}`` or
        ``{"path": "..."}``.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata_a = st.datasets.toy(n_obs=100, n_genes=20, n_domains=2, seed=0)
    >>> sdata_b = st.datasets.toy(n_obs=100, n_genes=30, n_domains=2, seed=1)
    >>> slides = [
    ...     st.training.TrainingSlide(sdata_a, name="a1", group="patient_a"),
    ...     st.training.TrainingSlide(sdata_b, name="b1", group="patient_b", use_image=False),
    ... ]
    >>> len(st.training.union_vocabulary(slides))
    30
    >>> model = st.training.pretrain(slides, model="storm-tiny", max_epochs=2)  # doctest: +SKIP
    """

    data: Any
    name: str | None = None
    group: str | None = None
    table_key: str | None = None
    image_key: str | None = None
    mpp: float | None = None
    library_id: str | None = None
    layer: str | None = None
    gene_symbols: str | None = None
    use_image: bool = True
    use_expression: bool = True
    source: dict[str, Any] = field(default_factory=dict)


def as_slides(data: Any) -> list[TrainingSlide]:
    """Normalise the ``data`` argument of ``fit``/``pretrain`` into named :class:`TrainingSlide` objects."""
    from spatialdata import SpatialData

    from storm_sc.io import SpatialInput

    single = (SpatialData, AnnData, SpatialInput, TrainingSlide)
    if isinstance(data, single):
        items: list[tuple[str | None, Any]] = [(None, data)]
    elif isinstance(data, Mapping):
        items = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, Sequence) and not isinstance(data, str):
        items = [(None, v) for v in data]
    else:
        raise TypeError(
            "Training data must be a SpatialData / AnnData / SpatialInput / TrainingSlide, a list of them, or a dict "
            f"of name to them; got {type(data).__name__}."
        )
    if not items:
        raise ValueError("No training slides were given.")
    slides = []
    seen: dict[tuple, str | int] = {}
    for i, (key, item) in enumerate(items):
        if not isinstance(item, single):
            raise TypeError(
                f"Training item {key or i} is a {type(item).__name__}; expected SpatialData, AnnData, "
                "SpatialInput or TrainingSlide."
            )
        slide = item if isinstance(item, TrainingSlide) else TrainingSlide(data=item)
        label = key if key is not None else i
        # The same table of the same object twice: two groups, one validating on what the other trains on. Other
        # tables of one object (Visium HD bin sizes, one table per slide) are other training slides.
        reads = (id(slide.data), slide.table_key, slide.library_id)
        if reads in seen:
            raise ValueError(
                f"Training data holds the same object twice (items {seen[reads]!r} and {label!r}), reading the same "
                "table; pass each slide once (or name another `table_key=` / `library_id=` in a TrainingSlide)."
            )
        seen[reads] = label
        for one in _each_slide(slide, key):
            one.name = one.name or key or f"slide{i}"
            one.group = str(one.group) if one.group is not None else one.name
            if not (one.use_image or one.use_expression):
                raise ValueError(f"Slide {one.name!r}: at least one of use_image / use_expression must be True.")
            slides.append(one)
    names = [s.name for s in slides]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"Training slide names must be unique; duplicated: {duplicated}.")
    return slides


def _each_slide(slide: TrainingSlide, key: str | None) -> list[TrainingSlide]:
    """``slide``, or one training slide per slide of a SpatialData holding several (``spatialdata.concatenate``).

    The slides of a named object (a dict key, a ``name=``) are named ``"<name>/<slide>"`` and share its group (the
    object was named as one unit, e.g. a patient); those of an unnamed one are named and grouped by their own names,
    as a list of them would be.
    """
    from spatialdata import SpatialData

    from storm_sc.io._slides import find_slides, slide_of

    parts = find_slides(slide.data, table_key=slide.table_key) if isinstance(slide.data, SpatialData) else None
    if parts is None:
        return [slide]
    unit = slide.name or key
    return [
        replace(
            slide,
            data=slide_of(slide.data, part),
            name=f"{unit}/{part.name}" if unit else part.name,
            group=slide.group if slide.group is not None else unit,
            source={**slide.source, "slide": part.name} if slide.source else {},
        )
        for part in parts
    ]


def _table(slide: TrainingSlide) -> AnnData:
    from spatialdata import SpatialData

    from storm_sc.io import SpatialInput, resolve

    data = slide.data
    if isinstance(data, AnnData):
        return data
    if isinstance(data, SpatialInput):
        return data.table
    if isinstance(data, SpatialData) and slide.table_key is not None:
        return data.tables[slide.table_key]
    return resolve(data, table_key=slide.table_key, image_key=slide.image_key, mpp=slide.mpp).table


def _mostly_ensembl(values: Sequence[Any]) -> bool:
    from storm_sc.pp._vocabulary import is_ensembl

    sample = list(values[:2000])
    return bool(sample) and np.mean([is_ensembl(v) for v in sample]) >= 0.5


def _gene_names(slide: TrainingSlide, table: AnnData) -> tuple[list[str], list[str | None]]:
    """Gene symbols and Ensembl ids (or None) of a table's columns, wherever the table keeps them."""
    names = [str(v) for v in table.var_names]
    if slide.gene_symbols is not None:
        return [str(v) for v in table.var[slide.gene_symbols]], names if _mostly_ensembl(names) else [None] * len(names)
    if _mostly_ensembl(names):
        column = next((c for c in _SYMBOL_COLUMNS if c in table.var.columns), None)
        return (names if column is None else [str(v) for v in table.var[column]]), list(names)
    column = next(
        (c for c in _ENSEMBL_COLUMNS if c in table.var.columns and _mostly_ensembl(list(table.var[c].astype(str)))),
        None,
    )
    return names, ([None] * len(names) if column is None else [str(v) for v in table.var[column]])


def _detection(table: AnnData) -> np.ndarray:
    """Fraction of observations in which each gene is detected (non-zero)."""
    from scipy import sparse

    x = table.X
    if x is None or table.n_obs == 0:
        return np.zeros(table.n_vars)
    if sparse.issparse(x):
        return np.asarray((x != 0).sum(axis=0)).ravel() / table.n_obs
    return np.count_nonzero(np.asarray(x), axis=0) / table.n_obs


def union_vocabulary(
    slides: Sequence[TrainingSlide] | Sequence[SpatialData | AnnData] | Mapping[str, Any],
    *,
    min_slides: int = 1,
    max_genes: int | None = None,
) -> GeneVocabulary:
    """Collect the genes of the slides with expression, in order of first appearance (case-insensitive).

    Gene symbols are read from ``var_names`` or, when those are Ensembl ids, from the usual ``.var`` symbol
    columns (``gene_symbols``, ``gene_name``, ``feature_name``, ...); Ensembl ids are kept when present. Mixing
    whole-transcriptome panels of two species easily gives 50-90k symbols; ``min_slides`` and ``max_genes`` keep
    the vocabulary (and the model's gene embedding table) to the genes that matter.

    Parameters
    ----------
    slides
        The training slides, given as :func:`storm_sc.training.fit` takes them: :class:`TrainingSlide` objects, or
        SpatialData / AnnData objects (a list, or a dict of name to them).
    min_slides
        Keep genes measured in at least this many slides.
    max_genes
        Keep at most this many genes: those measured in the most slides, then detected in the largest fraction
        of observations (averaged over the slides measuring them).

    Returns
    -------
    A :class:`storm_sc.pp.GeneVocabulary`.

    Examples
    --------
    >>> import storm_sc as st
    >>> slides = [st.datasets.toy(n_obs=50, n_genes=n, seed=i) for i, n in enumerate((20, 30))]
    >>> len(st.training.union_vocabulary(slides, max_genes=25))
    25
    """
    from storm_sc.pp import GeneVocabulary
    from storm_sc.pp._vocabulary import ensembl_key, is_ensembl, symbol_key

    if isinstance(min_slides, bool) or not isinstance(min_slides, int) or min_slides < 1:
        raise ValueError(f"`min_slides` must be a positive integer; got {min_slides!r}.")
    if max_genes is not None and (isinstance(max_genes, bool) or not isinstance(max_genes, int) or max_genes < 1):
        raise ValueError(f"`max_genes` must be a positive integer or None; got {max_genes!r}.")
    symbols: list[str] = []
    ensembl: list[list[str]] = []
    n_slides: list[int] = []
    detected: list[float] = []
    seen_symbols: dict[str, int] = {}
    seen_ids: set[str] = set()
    n_with_expression = 0
    if not (isinstance(slides, list | tuple) and all(isinstance(slide, TrainingSlide) for slide in slides)):
        slides = as_slides(slides)
    with_expression = [slide for slide in slides if slide.use_expression]
    # A table without a symbol column names its genes by Ensembl id only; other slides that carry both give
    # them their symbols, so that the same gene from different slides becomes one vocabulary entry.
    id_symbol: dict[str, str] = {}
    names = []
    for slide in with_expression:
        table = _table(slide)
        sym, ids = _gene_names(slide, table)
        names.append((table, sym, ids))
        for s, e in zip(sym, ids, strict=True):
            if e is not None and is_ensembl(e) and not is_ensembl(s):
                id_symbol.setdefault(ensembl_key(e), s)
    for table, sym, ids in names:
        n_with_expression += 1
        rate = _detection(table)
        counted: set[int] = set()
        for s, e, r in zip(sym, ids, rate, strict=True):
            e = e if (e is not None and is_ensembl(e)) else None
            if e is not None and is_ensembl(s):
                s = id_symbol.get(ensembl_key(e), s)
            key = symbol_key(s)
            if not key or key in ("nan", "none"):
                continue
            pos = seen_symbols.get(key)
            if pos is None:
                pos = seen_symbols[key] = len(symbols)
                symbols.append(s.strip())
                ensembl.append([])
                n_slides.append(0)
                detected.append(0.0)
            # Every id seen for a symbol is kept (one gene in several species: ENSG... and ENSMUSG... under GFAP /
            # Gfap), so that tables named by ids of either species align; an id already claimed by another symbol
            # is not given to a second one.
            if e is not None and ensembl_key(e) not in seen_ids:
                ensembl[pos].append(e)
                seen_ids.add(ensembl_key(e))
            if pos not in counted:
                counted.add(pos)
                n_slides[pos] += 1
                detected[pos] += float(r)
    if not symbols:
        raise ValueError("No slide has expression to build a gene vocabulary from; pass `vocabulary=` explicitly.")
    counts = np.asarray(n_slides)
    mean_detection = np.asarray(detected) / np.maximum(counts, 1)
    keep = np.flatnonzero(counts >= min_slides)
    if max_genes is not None and len(keep) > max_genes:
        order = np.lexsort((keep, -mean_detection[keep], -counts[keep]))
        keep = np.sort(keep[order[:max_genes]])
    if not len(keep):
        raise ValueError(f"No gene is measured in {min_slides} slides; lower `min_slides`.")
    kept_ids = [ensembl[i] for i in keep]
    logger.info(
        "Gene vocabulary: %d of %d genes from %d slides with expression.", len(keep), len(symbols), n_with_expression
    )
    return GeneVocabulary.from_genes([symbols[i] for i in keep], ensembl_ids=kept_ids if any(kept_ids) else None)


@dataclass(eq=False)
class PreparedSlide:
    """A slide's model inputs with its group and the train/validation partition of its observations.

    What :class:`ContextDataset` draws training samples from: :func:`fit` prepares one per slide and assigns the
    partition by slide group; build them yourself for a custom training loop.

    Attributes
    ----------
    slide
        The slide, with its name and group (patient).
    inputs
        The model's inputs of the slide (:meth:`storm_sc.models.StormModel.prepare`).
    partition
        ``(n_obs,)`` int8: ``0`` training, ``1`` validation, per observation.

    Examples
    --------
    >>> import numpy as np
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=60, n_genes=20, n_domains=2, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> inputs = model.prepare(sdata, verbose=False)
    >>> partition = (inputs.centers_um[:, 0] > 600).astype(np.int8)  # the right-hand strip validates
    >>> slide = st.training.PreparedSlide(st.training.TrainingSlide(sdata, name="toy"), inputs, partition)
    >>> slide.name, len(slide.rows(0)), len(slide.rows(1))
    ('toy', 46, 14)
    """

    slide: TrainingSlide
    inputs: StormInputs
    partition: np.ndarray  # (n_obs,) TRAIN / VAL

    @property
    def name(self) -> str:
        """Slide name."""
        return str(self.slide.name)

    def rows(self, part: int) -> np.ndarray:
        """Observations in a partition."""
        return np.flatnonzero(self.partition == part)


def slide_inputs(model: StormModel, slide: TrainingSlide, **options: Any) -> StormInputs:
    """``model.prepare`` of a slide with the slide's own settings (table, image, scale, genes); ``options`` add to them."""
    return model.prepare(
        slide.data,
        use_image=slide.use_image,
        use_expression=slide.use_expression,
        table_key=slide.table_key,
        image_key=slide.image_key,
        mpp=slide.mpp,
        library_id=slide.library_id,
        layer=slide.layer,
        gene_symbols=slide.gene_symbols,
        **options,
    )


def prepare_slides(
    model: StormModel,
    slides: Sequence[TrainingSlide],
    *,
    cache_dir: str | Path | None,
    num_workers: int,
    verbose: bool | None,
) -> list[PreparedSlide]:
    """Resolve, cut patches, align genes and build neighbour lists, once per slide (patches cached as uint8)."""
    out = []
    for slide in slides:
        logger.info("Preparing training slide %r (group %r).", slide.name, slide.group)
        inputs = slide_inputs(model, slide, cache_dir=cache_dir, num_workers=num_workers, verbose=verbose)
        out.append(PreparedSlide(slide, inputs, np.full(inputs.n_obs, TRAIN, dtype=np.int8)))
    return out


def check_val_groups(groups: Sequence[str], val_groups: Sequence[str]) -> list[str]:
    """The validation groups, sorted, once checked against the slides' groups (before any slide is prepared).

    Examples
    --------
    >>> check_val_groups(["A", "B", "C"], ["C", "B"])
    ['B', 'C']
    """
    groups = sorted({str(g) for g in groups})
    chosen = sorted({str(g) for g in ([val_groups] if isinstance(val_groups, str) else val_groups)})
    unknown = sorted(set(chosen) - set(groups))
    if unknown:
        raise ValueError(
            f"`val_groups` {unknown} match no slide group; groups are {groups} (names are case-sensitive)."
        )
    if len(chosen) == len(groups):
        raise ValueError(
            f"`val_groups` {chosen} covers every group, leaving nothing to train on; leave at least one group out."
        )
    return chosen


def split(
    prepared: Sequence[PreparedSlide], *, val_groups: Sequence[str] | None, val_fraction: float, seed: int
) -> dict[str, Any]:
    """Assign each observation to training or validation, by slide group (patient); fills ``partition``.

    Returns the split's description for the manifest.
    """
    groups = sorted({str(p.slide.group) for p in prepared})
    if val_groups is not None:
        chosen = check_val_groups(groups, val_groups)
        strategy = "group"
    elif val_fraction <= 0:
        return {"strategy": "none", "val_groups": [], "groups": groups}
    elif len(groups) >= 2:
        n_val = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
        chosen = sorted(np.random.default_rng(seed).permutation(groups)[:n_val].tolist())
        strategy = "group"
        _warn_large_hold_out(prepared, chosen, val_fraction)
    else:
        # Worth a warning only where the advice can be followed: one slide (e.g. adapting to it) has no other split.
        log = logger.warning if len(prepared) > 1 else logger.info
        log(
            "Only one slide group (%r): validation is a spatial block (the %.0f%% of each slide with the largest x), "
            "which is optimistic compared with held-out patients.%s",
            groups[0],
            100 * val_fraction,
            " Give slides a `group` to split by patient." if len(prepared) > 1 else "",
        )
        for p in prepared:
            x = p.inputs.centers_um[:, 0]
            cut = np.quantile(x, 1 - val_fraction)
            p.partition[:] = np.where(x > cut, VAL, TRAIN)
        return {"strategy": "spatial_block", "val_fraction": val_fraction, "axis": "x", "groups": groups}
    for p in prepared:
        p.partition[:] = VAL if str(p.slide.group) in chosen else TRAIN
    return {"strategy": strategy, "val_groups": chosen, "groups": groups}


def _warn_large_hold_out(prepared: Sequence[PreparedSlide], chosen: Sequence[str], val_fraction: float) -> None:
    """Warn when whole groups hold out far more observations than ``val_fraction`` asked for.

    Groups are held out whole, so with few groups (two: one of them) or uneven ones the share can be many times the
    fraction, and the model trains on a fraction of the data with only an INFO line to say so.
    """
    total = sum(p.inputs.n_obs for p in prepared)
    held = sum(p.inputs.n_obs for p in prepared if str(p.slide.group) in chosen)
    if total and held / total > 2 * val_fraction:
        logger.warning(
            "Validation holds out slide group(s) %s: %.0f%% of the observations (%d of %d), not the %.0f%% of "
            "val_fraction, since groups are held out whole. Pass val_fraction=0 to train on everything, "
            "val_groups=[...] to choose the held-out groups, or give more slides their own `group`.",
            list(chosen),
            100 * held / total,
            held,
            total,
            100 * val_fraction,
        )


def slide_manifest(p: PreparedSlide) -> dict[str, Any]:
    """Provenance of one prepared slide: source, group, split counts and sha256 of the arrays trained on."""
    inp = p.inputs
    digests = {"centers_um": array_digest(inp.centers_um)}
    if inp.patches is not None:
        digests["patches"] = array_digest(inp.patches)
    if inp.features is not None:
        digests["features"] = array_digest(inp.features)
    if inp.expression is not None:
        x = inp.expression
        digests["expression"] = array_digest(x.indptr, x.indices, x.data, inp.gene_index)
    return {
        "name": p.name,
        "group": p.slide.group,
        "library_id": inp.library_id,
        "source": p.slide.source or {"object": type(p.slide.data).__name__},
        "n_obs": inp.n_obs,
        "n_train": int((p.partition == TRAIN).sum()),
        "n_val": int((p.partition == VAL).sum()),
        "has_image": inp.has_image,
        "n_genes_matched": 0 if inp.gene_index is None else len(inp.gene_index),
        "sha256": digests,
    }
