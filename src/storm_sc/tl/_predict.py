"""``st.tl.predict_expression``: gene expression predicted from the H&E image alone."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from spatialdata import SpatialData
from spatialdata.models import TableModel, get_table_keys

from storm_sc._checks import check_integer
from storm_sc._constants import LAYER_PREDICTED_STD, OBSM_SPATIAL_UM, TABLE_PREDICTED, UNS_STORM
from storm_sc._settings import logger
from storm_sc.io import SpatialInput
from storm_sc.io._alignment import warn_if_misaligned
from storm_sc.io._elements import describe_images
from storm_sc.io._resolve import check_keys, he_images, mpp_per_object
from storm_sc.models import ExpressionPrediction, StormModel
from storm_sc.models._inference import check_prediction_memory, parse_device
from storm_sc.models._manifest import training_slide_matching
from storm_sc.pp import GeneVocabulary

from ._distributed import check_client, map_slides
from ._model_arg import get_model, model_name
from ._predicted_genes import check_genes, prediction_genes, split_genes
from ._target import (
    SlideFanout,
    add_tiles,
    as_slide_list,
    check_table_key_free,
    record_params,
    resolve_or_tile,
)

if TYPE_CHECKING:
    from distributed import Client


def _no_image_hint(item: SpatialData | AnnData) -> str:
    """What to do about a slide resolved without an H&E image, depending on what it holds."""
    if isinstance(item, AnnData):
        return (
            "An AnnData carries its image in .uns['spatial'][library_id]['images'] (scanpy's Visium layout); read "
            "the slide with its image (scanpy.read_visium, spatialdata_io.visium) or pass a SpatialData holding it."
        )
    add = (
        "add the slide's H&E to it (for Xenium, spatialdata_io.xenium_aligned_image reads the post-Xenium H&E with "
        "its alignment), then run again."
    )
    if not item.images:
        return f"The SpatialData holds no image: {add}"
    he = sorted(he_images(item))
    if not he:
        # Xenium's morphology and CosMx's composites are fluorescence: naming one with image_key= cannot help
        return f"None of its images is H&E: {describe_images(item)}; {add}"
    return f"Pass `image_key=` naming the H&E image among {he} (and `mpp=` if its scale is unknown)."


def predict_expression(
    data: SpatialData | AnnData | list[SpatialData | AnnData],
    model: StormModel | str | Path | None = None,
    *,
    genes: Sequence[str] | str | None = None,
    source: str = "auto",
    table_key: str | None = None,
    image_key: str | None = None,
    mpp: float | Mapping[str, float | None] | Sequence[float | Mapping[str, float | None] | None] | None = None,
    library_key: str | None = None,
    key_added: str = TABLE_PREDICTED,
    device: str = "auto",
    batch_size: int = 256,
    overwrite: bool = False,
    client: Client | None = None,
    verbose: bool | None = None,
) -> AnnData | list[AnnData]:
    """Gene expression predicted from the H&E image and the positions alone, with a per-gene uncertainty.

    The measured expression is never read, even when the table has it: each observation's prediction comes from
    its H&E patch and the patches of its spatial neighbours. A warning says when far fewer observations lie on the
    image's tissue than on an aligned slide (a shifted, flipped or swapped image, or another section's). Compare the result with the measurement to find
    where morphology explains expression, or apply the model to H&E-only slides.

    Parameters
    ----------
    data
        A SpatialData with an H&E image (the usual case), an AnnData with ``.obsm["spatial"]`` and an image in
        ``.uns["spatial"]``, or a list of them. A SpatialData with an H&E image and no table (an H&E-only slide) is
        cut into tiles of the model's patch size (112 um for the reference) wherever there is tissue, one
        observation each, stored as circles in ``sdata.shapes["storm_tile_circles"]`` with an (empty) table
        ``sdata.tables["storm_tiles"]``, as :func:`storm_embed` does; the result annotates them (pass ``mpp=``
        unless ``sdata.attrs["storm_sc"]["mpp"]`` holds the scale; the scale is kept there for later calls).
        A SpatialData holding several slides (``spatialdata.concatenate``, see :func:`storm_sc.io.split_slides`), or
        an AnnData holding several libraries, is predicted slide by slide into one table of all their spots.
    model
        A :class:`~storm_sc.models.StormModel`, a checkpoint path or registered name, or ``None`` for the
        reference checkpoint bundled with storm_sc.
    genes
        Genes to predict (symbols, any case, or Ensembl ids); default the genes covered by the model's expression
        readout (10,497 for the reference: about 80 MiB of result per 1,000 observations, so pass the genes you need
        on large slides), or its whole vocabulary for ``source="head"``. Genes outside the model's vocabulary are reported (a
        warning, and ``.uns["storm"]["genes_not_in_model"]`` of the result), not silently dropped; an error when
        none is known. Requested genes the readout does not cover come from the network's head, with a warning. A
        result larger than the memory available is refused before any work (``MemoryError``).
    source
        ``"auto"``: genes covered by the model's expression readout (a ridge on its H&E-only embeddings and patch
        statistics, fitted when the model was trained; see
        :meth:`~storm_sc.models.StormModel.fit_expression_readout`) from the readout, the others from the network's
        prediction head; ``"readout"`` or ``"head"`` to force one. The result's ``var["prediction_source"]`` says
        which predicted each gene. The reference's head is at chance on sections it never saw (mean r 0.000 on
        three held-out Visium FFPE sections, its readout 0.03-0.06; ``docs/model_card.md``).
    table_key, image_key, mpp
        Which table and image to use, and the image's microns per pixel (see :func:`storm_sc.io.resolve`); ``mpp``
        may be a list with one value (or ``None``) per object of ``data``, and for an object holding several slides
        a mapping of slide name to value, as for :func:`storm_sc.tl.storm_embed`.
    library_key
        Column of ``.obs`` naming each row's section in an AnnData that stacks several (``anndata.concat`` of
        Visium AnnData, whose ``.uns["spatial"]`` no longer tells them apart): each section is predicted on its own,
        from its own neighbours, into one result table; see :func:`storm_embed`. Not for a SpatialData.
    key_added
        Key of the result in ``sdata.tables`` (SpatialData input).
    device
        ``"auto"`` (a GPU when available, in bf16 on Ampere and newer; else the CPU), ``"cpu"``, ``"cuda"``, ...
    batch_size
        Observations per forward pass.
    overwrite
        Replace an existing ``sdata.tables[key_added]``.
    client
        A dask ``distributed.Client`` (e.g. ``distributed.get_client()``) to predict the slides of a list in
        parallel on its workers, with the same code as without a client. ``None``: one slide after the other here.
        With ``device="auto"`` each worker uses the first GPU it sees: on a machine with several GPUs start one
        worker per GPU with ``dask_cuda.LocalCUDACluster``, which gives each worker its own.
    verbose
        Progress bars (default: ``st.settings``).

    Returns
    -------
    AnnData (a list of them for a list) with the same ``obs`` as the table (one row per tile for an H&E-only
    slide), ``obsm["spatial_um"]`` the positions in microns and ``obsm["spatial"]`` the table's own (for a scanpy
    AnnData, its pixel positions, with its ``uns["spatial"]``, so that ``sc.pl.spatial`` draws the prediction; the
    microns where the table has none). A gene the table measures is named as the table writes its symbol (``Gapdh``
    on a mouse slide, where the model's symbol is ``GAPDH``), so that prediction and measurement join on
    ``var_names``; the others by the model's symbol.
    ``X`` the predicted log1p expression (library size 1e4) of each gene, ``layers["predicted_std"]`` its
    predicted standard deviation (for readout genes, the gene's cross-validated prediction error, the same for
    every spot; its calibration on held-out sections is measured in ``benchmarks/expression_heldout_ffpe.py``: the
    errors of log1p counts are heavier-tailed than a Gaussian's, so ``mean +- 1.96 sd`` covers somewhat less than
    95%), ``var["measured_in_table"]`` whether the table measures the gene (matched by Ensembl id, then symbol, as
    :func:`storm_sc.pp.align_genes` matches), ``var["gene_ids"]`` its Ensembl id (the table's where it has one,
    else the model's id of the table's species, told by the table's ids or the case of its symbols; empty if unsure),
    ``uns["storm"]`` the parameters (``["predict_expression"]["in_training"]`` names the model's training slide this
    slide matches, by positions or by name and number of observations: a warning then says its predictions are
    in-sample). For a SpatialData it is also
    stored as
    ``sdata.tables[key_added]``, annotating the same element(s) as the measured table; tables are stored only once
    every slide has been predicted, so an error leaves all inputs as they were.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> pred = st.tl.predict_expression(sdata, model, genes=["gene_0000", "gene_0001"], verbose=False)
    >>> pred.shape
    (200, 2)
    """
    check_client(client)
    if source not in ("auto", "readout", "head"):
        raise ValueError(f"`source` must be 'auto', 'readout' or 'head'; got {source!r}.")
    check_integer(batch_size, "batch_size")
    parse_device(device)
    check_genes(genes)
    check_keys(table_key=table_key, image_key=image_key, library_key=library_key)
    given, single = as_slide_list(data)
    mpps = mpp_per_object(mpp, len(given))  # before the H&E-only path, which would ask for the `mpp` it was given
    for item in given:
        if isinstance(item, SpatialData):
            check_table_key_free(item, key_added, overwrite=overwrite)
    # a SpatialData of several slides (or an AnnData of several libraries) is predicted slide by slide
    fanout = SlideFanout(given, table_key, library_key=library_key)
    items = fanout.slides
    net = get_model(model, verbose=verbose)
    slides, tiles = [], []
    for k, item in enumerate(items):
        # H&E alone: the tissue's tiles, at the model's patch size, are the observations.
        with fanout.naming_scales(k):
            slide, tiled = resolve_or_tile(
                item,
                net.config.patch_um,
                table_key=table_key,
                image_key=image_key,
                mpp=fanout.mpp_of(k, mpps),
                overwrite=overwrite,
            )
        tiles.append(tiled)
        if not slide.has_image:
            raise ValueError(
                f"Slide {slide.library_id!r} has no H&E image, and expression is predicted from H&E alone. "
                + _no_image_hint(item)
            )
        if tiled is None:  # tiles lie on the tissue by construction
            warn_if_misaligned(slide)
        slides.append(slide)
    inside, outside = split_genes(genes, net.vocabulary)
    if genes is not None and not inside:
        raise ValueError(
            f"None of the requested genes is in the model's vocabulary of {len(net.vocabulary)} genes: "
            f"{outside[:10]}{' ...' if len(outside) > 10 else ''}."
        )
    if outside:
        logger.warning(
            "%d requested gene(s) are not in the model's panel and are not predicted: %s%s",
            len(outside),
            outside[:10],
            " ..." if len(outside) > 10 else "",
        )
    ids, columns = net._prediction_genes(inside, source)
    if genes is not None and source == "auto" and net.readout is not None and (columns < 0).any():
        # as the user wrote them (XIST, an Ensembl id), not as the vocabulary spells them (Xist)
        asked = {
            net.vocabulary.index(name): name
            for name in ([genes] if isinstance(genes, str) else list(genes))[::-1]
            if name in net.vocabulary
        }
        from_head = [asked[i] for i in ids[columns < 0]]
        logger.warning(
            "%d requested gene(s) are not covered by the model's expression readout and come from the network's "
            "head, which predicts far less well (var['prediction_source'] == 'head'): %s%s",
            len(from_head),
            from_head[:10],
            " ..." if len(from_head) > 10 else "",
        )
    # The results of every slide are held until all are predicted (see below): their sum must fit.
    check_prediction_memory(sum(slide.n_obs for slide in slides), len(ids))
    seen = _training_slides(net, slides)

    start = time.perf_counter()
    predictions = map_slides(
        StormModel.predict_expression,
        net,
        slides,
        client=client,
        verbose=verbose,
        genes=inside,
        source=source,
        batch_size=batch_size,
        device=device,
    )
    params = {
        "tool": "predict_expression",
        "model": model_name(net, model),
        "weights_sha256": net.weights_digest(),
        "architecture": net.config.name,
        "source": source,
        "library_key": library_key,
    }
    results = [
        _prediction_table(item, slide, prediction, {**params, "in_training": seen[k]}, outside, net.vocabulary)
        for k, (item, slide, prediction) in enumerate(zip(items, slides, predictions, strict=True))
    ]
    _warn_if_predicted_zero(results, slides)
    for item, tiled in zip(items, tiles, strict=True):
        if tiled is not None:
            add_tiles(item, tiled)
    # Stored only now that every slide has been predicted: a failure above leaves every input untouched.
    results = fanout.gather_tables(results, params="predict_expression")
    for item, result in zip(given, results, strict=True):
        if isinstance(item, SpatialData):
            item.tables[key_added] = result
    logger.info(
        "predicted %d gene(s) for %d observations in %d slide(s) from H&E in %.1f s%s",
        results[0].n_vars,
        sum(r.n_obs for r in results),
        len(slides),
        time.perf_counter() - start,
        f"; added sdata.tables[{key_added!r}]" if any(isinstance(i, SpatialData) for i in given) else "",
    )
    return results[0] if single else results


def _training_slides(net: StormModel, slides: list[SpatialInput]) -> list[str | None]:
    """Per slide, the model's training slide it matches (its predictions are then in-sample), warned about; or None."""
    seen = [
        training_slide_matching(net.manifest, slide.centers_um, library_id=slide.library_id) if net.manifest else None
        for slide in slides
    ]
    named = {slide.library_id: name for slide, name in zip(slides, seen, strict=True) if name is not None}
    if named:
        logger.warning(
            "Slide(s) %s match the model's training slide(s) %s (same positions, or same name and number of "
            "observations): if they are those slides, the model learned from their measured expression and "
            "predictions there are in-sample, not a measure of accuracy on new tissue.",
            list(named),
            list(named.values()),
        )
    return seen


def _warn_if_predicted_zero(results: list[AnnData], slides: list[SpatialInput]) -> None:
    """Warn about genes predicted 0 at every observation of a slide: a map of them shows nothing, and says why."""
    for result, slide in zip(results, slides, strict=True):
        if result.n_obs == 0 or result.n_vars == 0:
            continue
        # Only the readout's clipped linear prediction reaches exactly 0 (the head's softplus never does).
        zero = np.flatnonzero(~np.asarray(result.X != 0).any(axis=0))
        if len(zero):
            names = result.var_names[zero].tolist()
            logger.warning(
                "Slide %r: %s of %s gene(s) are predicted 0 at every observation (the readout's prediction is below "
                "zero everywhere and clipped), e.g. %s: the model reads no expression of them from this H&E; do "
                "not read their maps as measured absence.",
                slide.library_id,
                f"{len(names):,}",
                f"{result.n_vars:,}",
                names[:10],
            )


def _prediction_table(
    data: SpatialData | AnnData,
    slide: SpatialInput,
    prediction: ExpressionPrediction,
    params: dict[str, Any],
    outside: list[str],
    vocabulary: GeneVocabulary,
) -> AnnData:
    """The AnnData of one slide's prediction, annotating the same elements as its measured table."""
    source = slide.table
    centers_um = np.asarray(slide.centers_um, dtype=np.float64)
    # The table's own positions (a scanpy AnnData's are in image pixels, which sc.pl.spatial needs with its
    # .uns["spatial"]); microns always under their own key.
    own = source.obsm.get("spatial") if source.n_obs else None
    # float32 already: no copy of the (n_obs x genes) arrays, the largest of a prediction.
    result = AnnData(
        X=prediction.mean.astype(np.float32, copy=False),
        obs=source.obs.copy(),
        var=prediction_genes(source, vocabulary, prediction.genes),
        layers={LAYER_PREDICTED_STD: prediction.std.astype(np.float32, copy=False)},
        obsm={"spatial": centers_um if own is None else np.array(own, copy=True), OBSM_SPATIAL_UM: centers_um},
    )
    if isinstance(data, AnnData) and isinstance(source.uns.get("spatial"), Mapping):
        library = source.uns["spatial"].get(slide.library_id)
        if library is not None:  # the images and scale factors that go with those pixel positions
            result.uns["spatial"] = {slide.library_id: library}
    if prediction.sources is not None:
        result.var["prediction_source"] = pd.Categorical(prediction.sources, categories=["readout", "head"])
    record_params(
        result,
        "predict_expression",
        {
            **params,
            "table_key": slide.table_key,
            "image_key": slide.image_key,
            "mpp": slide.mpp,
            "scale": "log1p, library size 1e4",
        },
    )
    result.uns[UNS_STORM]["genes_not_in_model"] = list(outside)
    if isinstance(data, SpatialData) and slide.table_key is not None:
        attrs = source.uns.get(TableModel.ATTRS_KEY)
        if attrs is not None:
            region, region_key, instance_key = get_table_keys(source)
            # Categorical as spatialdata wants it (readers may leave it as strings; parse would warn about it).
            result.obs[region_key] = pd.Categorical(result.obs[region_key])
            result = TableModel.parse(result, region=region, region_key=region_key, instance_key=instance_key)
    return result
