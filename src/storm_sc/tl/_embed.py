"""``st.tl.storm_embed``: a joint STORM embedding per spot or cell."""

from __future__ import annotations

import copy as _copy
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from anndata import AnnData
from spatialdata import SpatialData

from storm_sc._checks import check_integer
from storm_sc._constants import OBSM_EMBEDDING, TABLE_TILES
from storm_sc._settings import logger
from storm_sc.io import SpatialInput
from storm_sc.io._alignment import warn_if_misaligned
from storm_sc.io._resolve import check_keys, mpp_per_object
from storm_sc.io._slides import is_prediction
from storm_sc.models import StormModel
from storm_sc.models._inference import INFERENCE_DRAWS, LEVELS, parse_device

from ._distributed import check_client, map_slides
from ._model_arg import get_model, model_name
from ._target import (
    SlideFanout,
    add_tiles,
    as_slide_list,
    check_key_free,
    check_params_slot,
    copy_for_output,
    is_he_only,
    record_params,
    resolve_or_tile,
    structural_keys,
)

if TYPE_CHECKING:
    from distributed import Client

Modalities = Literal["auto", "image", "expression", "both"]
EmbeddingLevel = Literal["levels", "joint", "observation", "niche", "region"]
_MODALITIES = ("auto", "image", "expression", "both")
_DEFAULT_BATCH = 256


def parse_modalities(modalities: str) -> tuple[bool, bool, bool]:
    """``(want_image, want_expression, strict)``: strict when the user named the modalities explicitly."""
    if modalities not in _MODALITIES:
        raise ValueError(f"`modalities` must be one of {_MODALITIES}, got {modalities!r}.")
    if modalities == "auto":
        return True, True, False
    return modalities in ("image", "both"), modalities in ("expression", "both"), True


def embed_slide(
    net: StormModel,
    slide: SpatialInput,
    *,
    want_image: bool,
    want_expression: bool,
    level: str,
    batch_size: int,
    device: str,
    verbose: bool | None,
    layer: str | None = None,
    gene_symbols: str | None = None,
    n_draws: int = INFERENCE_DRAWS,
) -> tuple[np.ndarray, list[str], float]:
    """Embed one resolved slide: ``(embedding, modalities used, seconds)``; the same code in-process and on workers."""
    start = time.perf_counter()
    use_image = want_image and slide.has_image
    use_expression = want_expression and slide.table.n_vars > 0
    # One pass: patches are cut from the image as the model needs them, so memory does not grow with the slide.
    inputs = net.prepare(
        slide,
        use_image=use_image,
        use_expression=use_expression,
        layer=layer,
        gene_symbols=gene_symbols,
        stream_patches=True,
        verbose=verbose,
    )
    use_image = use_image and inputs.has_image
    use_expression = use_expression and inputs.expression is not None
    embedding = net.embed(
        inputs,
        level=level,
        use_image=use_image,
        use_expression=use_expression,
        batch_size=batch_size,
        device=device,
        verbose=verbose,
        n_draws=n_draws,
    )
    used = [m for m, on in (("image", use_image), ("expression", use_expression)) if on]
    return embedding, used, time.perf_counter() - start


def storm_embed(
    data: SpatialData | AnnData | list[SpatialData | AnnData],
    model: StormModel | str | Path | None = None,
    *,
    table_key: str | None = None,
    image_key: str | None = None,
    mpp: float | Mapping[str, float | None] | Sequence[float | Mapping[str, float | None] | None] | None = None,
    library_key: str | None = None,
    modalities: Modalities = "auto",
    layer: str | None = None,
    gene_symbols: str | None = None,
    key_added: str = OBSM_EMBEDDING,
    batch_size: int | None = None,
    device: str = "auto",
    level: EmbeddingLevel = "levels",
    n_draws: int = INFERENCE_DRAWS,
    adapt_epochs: int = 0,
    random_state: int = 0,
    overwrite: bool = False,
    copy: bool = False,
    client: Client | None = None,
    verbose: bool | None = None,
) -> SpatialData | AnnData | list[SpatialData | AnnData] | None:
    """Joint STORM embedding of every spot or cell from H&E morphology, expression and spatial context.

    Each observation is encoded from its H&E patch (``patch_um`` of tissue around it) and its measured expression
    (genes aligned to the model's vocabulary by symbol; missing genes are masked), then placed in its niche and
    region by attention over its spatial neighbours in microns. A panel larger than the model's gene tokens
    (``max_genes``: 64 for the reference) is read as each observation's most expressed genes plus genes drawn at
    random, weighted by their variance over the slide, and seeded by the observation's own values, so that the
    embedding is reproducible; ``n_draws`` such draws are averaged. Works on Visium, Visium HD (a bin table or
    segmented cells), Xenium, CosMx and legacy ST, and on several slides at once (a list).

    Optionally, the model first adapts to the user's own slides without labels (``adapt_epochs > 0``): the same
    self-supervised objectives as pretraining, run on a copy of the model for a few epochs, as GraphST, STAGATE and
    Novae do, on every observation of the slides for all ``adapt_epochs`` epochs (nothing is held out: there are no
    labels to validate against). It helps when the slides differ from the pretraining corpus (tissue, platform,
    staining); the adapted model is not returned and the given model is left unchanged.

    Parameters
    ----------
    data
        A SpatialData (the usual case), an AnnData with ``.obsm["spatial"]`` (and an image in
        ``.uns["spatial"]``), or a list of them. A SpatialData with an H&E image and no table (an H&E-only slide) is
        cut into tiles of the model's patch size wherever there is tissue: their table ``sdata.tables["storm_tiles"]``
        (no genes; the embedding from the image and spatial context goes there) annotating their circles
        ``sdata.shapes["storm_tile_circles"]``, so that :func:`storm_domains` maps the tissue from H&E alone.
        A SpatialData holding several slides (``spatialdata.concatenate``, see :func:`storm_sc.io.split_slides`), or
        an AnnData holding several libraries in ``.uns["spatial"]`` (``scanpy.concat``), is analysed as the list of
        its slides, and the results are written back into its table(s).
    model
        A :class:`~storm_sc.models.StormModel`, a checkpoint path or registered name, or ``None`` for the
        reference checkpoint bundled with storm_sc.
    table_key, image_key, mpp
        Which table and image to use and the image's microns per pixel, when they cannot be found unambiguously
        (see :func:`storm_sc.io.resolve`). For a list of slides scanned at different resolutions, ``mpp`` may be a
        list with one value (or ``None``: the slide's own scale) per object of ``data``. An object holding several
        slides takes a mapping of slide name to value (``mpp={"MOB-lab": 3.4, "MOB-rep1": 3.4}``): slides whose
        scale was kept only in their ``attrs`` (legacy ST, HEST) lose it to ``spatialdata.concatenate``.
    library_key
        Column of ``.obs`` naming each row's section in an AnnData that stacks several (``anndata.concat`` of
        Visium AnnData, whose ``.uns["spatial"]`` no longer tells them apart): each section is then analysed on its
        own, with its own neighbours, and the results written back into the AnnData's rows. Sections stacked in one
        table share one coordinate space, so without it they would be each other's neighbours (a warning says so
        when ``.obs["library_id"]`` names several). Not for a SpatialData, whose slides are found by their
        coordinate systems.
    modalities
        ``"auto"``: H&E, expression and spatial context when present, degrading gracefully when one is missing;
        ``"image"``: H&E (and context) only; ``"expression"``: expression (and context) only; ``"both"``: require
        both (an error if either is missing).
    layer
        Layer of the table holding the expression (raw counts, or log1p-normalised values) when ``.X`` holds
        something else, e.g. values scaled by ``sc.pp.scale``; default ``.X``.
    gene_symbols
        Column of ``.var`` with gene symbols when ``var_names`` hold other ids (Ensembl ids are recognised
        either way); see :func:`storm_sc.pp.align_genes`.
    key_added
        Key in ``.obsm`` of the table for the embedding.
    batch_size
        Observations per forward pass (default 256).
    device
        ``"auto"`` (a GPU when available, in bf16 on Ampere and newer; else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    level
        Which of the model's representations to write. ``"levels"``: the observation (its fused H&E and
        expression), its niche and its region embeddings side by side (``3 * hidden_dim`` numbers, 96 for the
        reference); ``"joint"``: their learned projection to ``embed_dim`` (16 for the reference), which is smaller
        but, clustered alone on the domain benchmark, finds the bulb's layers less well (ARI 0.22 vs 0.36) and the
        cortex's a little better (0.35 vs 0.32; see ``benchmarks/README.md``); or one level alone
        (``"observation"``, ``"niche"``, ``"region"``).
    n_draws
        Draws of random gene tokens averaged into each observation's expression token (panels larger than the
        model's ``max_genes`` only). With one draw the embedding depends on which genes happened to be drawn: on
        DLPFC 151675 a spot's embedding lies a median 9.0% (of its norm) from the mean of 32 draws with one draw,
        4.3% with 4, the default. Domain scores on the benchmark slides move within their noise either way
        (``benchmarks/README.md``); what 4 draws buy is an embedding that depends less on the random numbers.
        4 draws cost 1.2-1.4 times the CPU time of 1; ``n_draws=1`` is the cheapest.
    adapt_epochs
        Epochs of self-supervised adaptation to ``data`` before embedding (0: none).
    random_state
        Seed of the adaptation.
    overwrite
        Replace an existing ``.obsm[key_added]``.
    copy
        Return a copy with the result instead of writing into ``data``.
    client
        A dask ``distributed.Client`` (e.g. ``distributed.get_client()``) to embed the slides of a list in
        parallel on its workers; each worker loads the model once and runs the same code as without a client.
        ``None``: one slide after the other in this process.
        With ``device="auto"`` each worker uses the first GPU it sees: on a machine with several GPUs start one
        worker per GPU with ``dask_cuda.LocalCUDACluster``, which gives each worker its own.
    verbose
        Progress bars (default: ``st.settings``).

    Returns
    -------
    ``None``, or the copy (a list for a list) when ``copy=True``. Results are written only once every slide has
    been embedded, so an error (or an interruption) leaves all inputs as they were. Writes, on the table of each
    slide:

    - ``.obsm[key_added]``: ``(n_obs, d)`` float32 embedding (``d`` depends on ``level``);
    - ``.uns["storm"][key_added]``: the parameters, the modalities used, the model and the storm_sc version.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> st.tl.storm_embed(sdata, model, verbose=False)
    >>> sdata["table"].obsm["X_storm"].shape[0]
    200
    """
    want_image, want_expression, strict = parse_modalities(modalities)
    if level not in LEVELS:
        raise ValueError(f"`level` must be one of {LEVELS}, got {level!r}.")
    check_integer(batch_size, "batch_size", optional=True)
    parse_device(device)
    check_integer(adapt_epochs, "adapt_epochs", minimum=0)
    check_integer(n_draws, "n_draws")
    check_client(client)
    check_keys(table_key=table_key, image_key=image_key, library_key=library_key)
    slides, single = as_slide_list(data)
    mpps = mpp_per_object(mpp, len(slides))  # before the H&E-only path, which would ask for the `mpp` it was given
    outputs = [copy_for_output(s) for s in slides] if copy else slides
    # a SpatialData of several slides (or an AnnData of several libraries) is embedded slide by slide
    fanout = SlideFanout(outputs, table_key, library_key=library_key)
    targets = fanout.slides

    # Everything that can fail on the user's input is checked before any result is written (and, but for H&E-only
    # slides, whose tiles follow the model's patch size, before any model is loaded).
    net = get_model(model, verbose=verbose) if any(is_he_only(t, table_key) for t in targets) else None
    patch_um = None if net is None else net.config.patch_um
    resolved, tiles = [], []
    for k, target in enumerate(targets):
        with fanout.naming_scales(k):
            slide, tiled = resolve_or_tile(
                target,
                patch_um,
                table_key=table_key,
                image_key=image_key,
                mpp=fanout.mpp_of(k, mpps),
                overwrite=overwrite,
            )
        if want_image and tiled is None:  # tiles lie on the tissue by construction
            warn_if_misaligned(slide)
        resolved.append(slide)
        tiles.append(tiled)
    for slide in resolved:
        check_key_free(slide.table.obsm, key_added, f"{slide.library_id}: .obsm", overwrite=overwrite,
                       protected=structural_keys(slide.table, "obsm"))  # fmt: skip
        check_params_slot(slide.table, f"{slide.library_id}: ")
        if want_expression and is_prediction(slide.table):
            raise ValueError(
                f"Slide {slide.library_id!r}: table {slide.table_key!r} holds expression that storm_sc predicted from "
                "the H&E, not measurements; embedding it would give the model its own predictions as measured "
                "expression. Pass the measured table (`table_key=`), or modalities='image' to embed the H&E and "
                "positions alone."
            )
        if strict and want_image and not slide.has_image:
            raise ValueError(
                f"Slide {slide.library_id!r} has no H&E image but modalities={modalities!r} asks for it; "
                "pass `image_key=` or use modalities='expression' or 'auto'."
            )
        if layer is not None and layer not in slide.table.layers:
            raise KeyError(
                f"{slide.library_id}: `layer={layer!r}` is not a layer of the table (layers: {list(slide.table.layers)})."
            )
        if gene_symbols is not None and gene_symbols not in slide.table.var.columns:
            raise KeyError(
                f"{slide.library_id}: `gene_symbols={gene_symbols!r}` is not a column of .var (columns: "
                f"{list(slide.table.var.columns)})."
            )
        if strict and want_expression and slide.table.n_vars == 0:
            raise ValueError(f"Slide {slide.library_id!r} has no expression but modalities={modalities!r} asks for it.")
        if want_expression and slide.table.n_vars == 0 and slide.table_key != TABLE_TILES:
            # Tiles of an H&E-only slide have no genes by construction; a measured table without any is a surprise.
            logger.warning(
                "Slide %r: its table has no genes; embedding it from %s alone. (spatialdata.concatenate and "
                "anndata.concat keep only the genes every slide shares: slides whose genes are named differently "
                "share none.)",
                slide.library_id,
                "H&E and spatial context" if slide.has_image else "spatial context",
            )

    net = net or get_model(model, verbose=verbose)
    given_name = model_name(net, model)  # the model the user gave; `adapt_epochs` says it was adapted
    if adapt_epochs:
        net = _copy.deepcopy(net)
        logger.info("adapting %s to %d slide(s) for %d epoch(s) (self-supervised)", net, len(resolved), adapt_epochs)
        from storm_sc.training import TrainingSlide

        adapt_on = [TrainingSlide(slide, layer=layer, gene_symbols=gene_symbols) for slide in resolved]
        # the adapted copy only embeds: its expression readout is neither refitted (time) nor kept (stale)
        net.readout = None
        # every observation trains, for every epoch asked: without labels nothing is gained by holding tissue out,
        # and validation with early stopping held out a whole slide of two, and could return the epoch-0 weights
        net.fit(adapt_on, max_epochs=adapt_epochs, seed=random_state, val_fraction=0.0, expression_readout=False,
                verbose=verbose)  # fmt: skip

    results = map_slides(
        embed_slide,
        net,
        resolved,
        client=client,
        verbose=verbose,
        want_image=want_image,
        want_expression=want_expression,
        level=level,
        batch_size=batch_size or _DEFAULT_BATCH,
        device=device,
        layer=layer,
        gene_symbols=gene_symbols,
        n_draws=int(n_draws),
    )

    # Results are written only once every slide has been embedded: a failure leaves all inputs untouched.
    digest = net.weights_digest()  # of the weights that embedded (adapted ones included): results say which
    for target, tiled, slide, (embedding, used, seconds) in zip(targets, tiles, resolved, results, strict=True):
        slide.table.obsm[key_added] = embedding
        if tiled is not None:
            add_tiles(target, tiled)  # slide.table is the tiles' table
        record_params(
            slide.table,
            key_added,
            {
                "tool": "storm_embed",
                "model": given_name,
                "weights_sha256": digest,
                "architecture": net.config.name,
                "modalities": used + ["spatial context"],
                "modalities_requested": modalities,
                "layer": layer,
                "gene_symbols": gene_symbols,
                "level": level,
                "n_draws": int(n_draws),
                "adapt_epochs": adapt_epochs,
                "random_state": random_state,
                "table_key": slide.table_key,
                "library_key": library_key,
                "image_key": slide.image_key if "image" in used else None,
                "mpp": slide.mpp if "image" in used else None,
            },
        )
        logger.info(
            "%s: added .obsm[%r] (%d x %d, from %s) in %.1f s",
            slide.library_id,
            key_added,
            *embedding.shape,
            " + ".join(used + ["spatial context"]),
            seconds,
        )
    fanout.write_back([slide.table for slide in resolved], obsm=[key_added], params=key_added)
    if not copy:
        return None
    return outputs[0] if single else outputs
