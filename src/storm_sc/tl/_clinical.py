"""``st.tl.slide_features`` and ``st.tl.fit_outcome``: clinical outcomes from whole-slide H&E."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from storm_sc import __version__
from storm_sc._checks import check_integer
from storm_sc._constants import DEFAULT_PATCH_UM
from storm_sc._settings import logger
from storm_sc.clinical import OutcomeResult, validate_cohort
from storm_sc.clinical._evaluation import MIN_BOOTSTRAP, STORM, cross_validate, evaluate, risk_groups
from storm_sc.clinical._mil import MILSettings
from storm_sc.clinical._slides import SlidesArg, compute_slide_features, parse_slides, resolve_genes
from storm_sc.models import StormModel, resolve_device
from storm_sc.wsi._tiling import check_tiling_args

from ._model_arg import get_model

_DEFAULT_BATCH = 256


def slide_features(
    slides: SlidesArg,
    model: StormModel | str | Path | None = None,
    *,
    out_dir: str | os.PathLike,
    patch_um: float = DEFAULT_PATCH_UM,
    mpp: float | Mapping[str, float] | None = None,
    genes: Sequence[str] | None = None,
    device: str = "auto",
    tissue_threshold: float = 0.5,
    batch_size: int = _DEFAULT_BATCH,
    overwrite: bool = False,
    verbose: bool | None = None,
) -> pd.DataFrame:
    """STORM features of every tissue tile of whole-slide H&E images, one resumable HDF5 file per slide.

    Each slide is opened at physical scale (pyramidal TIFF/SVS through tiffslide, or PNG/JPEG), its tissue found
    on a thumbnail (Otsu on saturation, morphological clean-up), and cut into a grid of ``patch_um`` tiles read
    from the best pyramid level. Tiles are streamed in batches through the model's morphology encoder (a slide
    of 100k tiles is never in memory), then each tile is embedded with its spatial context (its niche and
    region of neighbouring tiles, in microns), and its expression is predicted from H&E (by the model's expression
    readout for the genes it covers, by the network's head for the others, as in
    :func:`storm_sc.tl.predict_expression`; the file's ``expression_source`` says which, per gene).

    Results go to ``<out_dir>/<slide_id>.h5`` (written as ``.h5.partial`` and renamed once complete): tile
    centres in microns and level-0 pixels, the joint embedding, the predicted expression (float16), the H&E
    tokens, a thumbnail and the tissue mask. A complete file made by the same model and settings is reused; an
    interrupted run resumes where it stopped.

    Parameters
    ----------
    slides
        A slide path, a list, array or Series of paths (ids = file names without suffix), a dict of slide id to
        path, or a DataFrame with ``slide_id`` and ``path`` (and optionally ``mpp``) columns (``slide_id`` may be
        its index, named so).
    model
        A :class:`~storm_sc.models.StormModel` reading H&E pixels, a checkpoint path or registered name, or
        ``None`` for the reference checkpoint bundled with storm_sc.
    out_dir
        Folder of the feature files (created if needed).
    patch_um
        Tile side in microns (the model's training patch size is the natural choice).
    mpp
        Microns per level-0 pixel, for all slides or per slide id; overrides the slide metadata. Required for
        files that do not record it. For a Space Ranger (Visium) image, take it from the 100 um spot pitch as
        :func:`storm_sc.io.resolve` does: ``st.io.resolve(spatialdata_io.visium(outs)).mpp`` is that of the image
        it uses (``tissue_hires_image.png`` unless the full-resolution scan is loaded), or by hand 100 divided by
        the distance in pixels between neighbouring spot centres in the image. Not ``55 / spot_diameter_fullres``
        (``/ tissue_hires_scalef``): Space Ranger's ``spot_diameter_fullres`` spans a theoretical 65 um spot, not
        the 55 um capture area, so that value is about 15% too small (3.54 instead of 4.18 um/px on a hires image).
    genes
        Genes whose expression is predicted per tile (default: the genes of the model's expression readout, or
        the whole vocabulary for a model without one; ``[]`` for none). They dominate the files' size: stored as
        float16, the reference's 10,497 readout genes take about 21 KB per tile (about 2 GB for a 100,000-tile
        whole slide), the embedding under 100 bytes; pass the panel a study needs, or ``[]``.
    device
        ``"auto"`` (a GPU when available, in bf16 on Ampere and newer; else the CPU), ``"cpu"``, ``"cuda"``, ...
    tissue_threshold
        Minimum tissue fraction of a kept tile, in ``[0, 1]``.
    batch_size
        Tiles read and encoded at once.
    overwrite
        Recompute feature files made with another model or settings instead of raising an error.
    verbose
        Progress bars (default: ``st.settings``).

    Returns
    -------
    One row per slide: ``slide_id``, ``path``, ``feature_file``, ``n_tiles``, ``mpp``, and ``status``
    (``"computed"``, ``"resumed"`` or ``"reused"``).

    Examples
    --------
    >>> import storm_sc as st
    >>> feats = st.tl.slide_features(["s1.svs", "s2.svs"], out_dir="features")  # doctest: +SKIP
    >>> feats[["slide_id", "n_tiles"]]  # doctest: +SKIP
    """
    check_tiling_args(patch_um, tissue_threshold)
    check_integer(batch_size, "batch_size")
    if isinstance(mpp, Mapping):
        for k, v in mpp.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"`mpp[{k!r}]` must be a positive number of microns per pixel; got {v!r}.")
    entries = parse_slides(slides, mpp)
    dev = resolve_device(device)
    net = get_model(model, verbose=verbose)
    if not net.config.uses_pixels:
        raise ValueError(
            f"Model {net.config.name!r} reads precomputed patch features, not pixels; slide features need a model "
            "with an H&E encoder (morphology 'cnn', 'vit', 'timm:...', 'hf:...' or 'module')."
        )
    if abs(patch_um - net.config.patch_um) > 0.01 * net.config.patch_um:
        logger.warning("patch_um=%g differs from the %g um patches model %r was trained on; its tiles show a "
                       "different field of view.", patch_um, net.config.patch_um, net.config.name)  # fmt: skip
    gene_ids = resolve_genes(net, genes)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"`out_dir` {str(out)!r} is a file; give a folder for the slides' feature files.")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    table = compute_slide_features(
        entries, net, out_dir=out, patch_um=float(patch_um), tissue_threshold=float(tissue_threshold),
        gene_ids=gene_ids, batch_size=batch_size, device=dev, overwrite=overwrite, verbose=verbose,
    )  # fmt: skip
    logger.info("slide_features: %d slide(s), %d tiles in %.1f s (%s).", len(table), int(table["n_tiles"].sum()),
                time.perf_counter() - start, {k: int(v) for k, v in table["status"].value_counts().items()})  # fmt: skip
    return table


def fit_outcome(
    cohort: pd.DataFrame,
    features: pd.DataFrame | str | os.PathLike,
    *,
    task: Literal["response", "survival"] = "response",
    folds: int = 5,
    baseline: str | Sequence[str] | None = None,
    aggregator: Literal["abmil", "mean"] = "abmil",
    features_key: str = "embedding",
    slide_key: str = "slide_id",
    patient_key: str = "patient_id",
    response_key: str = "response",
    time_key: str = "time",
    event_key: str = "event",
    epochs: int = 40,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    hidden_dim: int = 64,
    dropout: float = 0.25,
    batch_size: int = 16,
    max_tiles: int | None = 4096,
    n_bootstrap: int = 1000,
    device: str = "cpu",
    random_state: int = 0,
    verbose: bool | None = None,
) -> OutcomeResult:
    """Predict a patient outcome (response or survival) from whole-slide STORM features, cross-validated by patient.

    Every patient's tiles (all of their slides) form one bag; an attention-based MIL aggregator (gated ABMIL,
    Ilse et al. 2018) or mean pooling scores the bag. Patients, never slides, are split into ``folds`` stratified
    folds (by response, or by the event indicator); each fold's model is trained on the other folds and predicts
    its held-out patients. A clinical baseline column is fitted on the same folds (logistic or Cox regression)
    and compared with a paired bootstrap.

    Response: AUROC with a 95% percentile bootstrap CI over patients. Survival: Harrell's C-index (bootstrap CI),
    the Cox hazard ratio per standard deviation of the out-of-fold risk score, and the log-rank p of a high/low
    split at the median out-of-fold score.

    Small cohorts are warned about: fewer than 10 patients in the smaller response class, or fewer than 10 events,
    and the estimate means little (with 10 patients per class an AUROC of 0.75 is still +-0.22, Hanley & McNeil
    1982; 10 events is the usual floor for one survival effect, Peduzzi et al. 1995). A CI the bootstrap cannot
    resolve is NaN, with a warning: when most resamples lack a class (or an event), or when every resample gives the
    same value (a zero-width interval from a handful of patients or a perfect separation is not certainty).

    Parameters
    ----------
    cohort
        One row per slide with the slide id, the patient id and the outcome: ``response`` (0/1), or ``time``
        (positive) and ``event`` (1 = observed, 0 = censored); plus any baseline columns. Outcomes and baselines
        must be equal across a patient's slides. An id held in the index (``cohort.set_index("slide_id")``) is read
        from there when the index is named like the key.
    features
        The table returned by :func:`slide_features` (``slide_id`` as a column or as the index), or its ``out_dir``.
    task
        ``"response"`` or ``"survival"``.
    folds
        Number of patient-level cross-validation folds.
    baseline
        Numeric clinical baseline column(s) of ``cohort`` (e.g. ``"TMB"``), evaluated with the same folds.
    aggregator
        ``"abmil"`` (gated attention) or ``"mean"`` (mean pooling baseline).
    features_key
        Tile features: ``"embedding"`` (joint STORM embedding with spatial context), ``"expression"`` (predicted
        expression), ``"embedding+expression"``, or ``"tokens"`` (H&E tokens before spatial context).
    slide_key, patient_key, response_key, time_key, event_key
        Column names in ``cohort``.
    epochs, learning_rate, weight_decay, hidden_dim, dropout, batch_size
        Training of the aggregator (AdamW; ``batch_size`` patients per step).
    max_tiles
        Tiles drawn per patient and training step (``None``: all); predictions always use every tile.
    n_bootstrap
        Bootstrap resamples of patients for the confidence intervals (at least 10).
    device
        Torch device of the aggregator.
    random_state
        Seed of the folds, the training and the bootstrap.
    verbose
        Progress bars (default: ``st.settings``).

    Returns
    -------
    :class:`~storm_sc.clinical.OutcomeResult` with ``metrics``, out-of-fold ``predictions``, ``fold_metrics``,
    ``comparison`` with the baseline, per-slide ``attention``, and ``plot`` / ``plot_roc`` / ``plot_km`` /
    ``plot_attention``.

    Examples
    --------
    >>> import storm_sc as st
    >>> feats = st.tl.slide_features(cohort["path"].tolist(), out_dir="features")  # doctest: +SKIP
    >>> result = st.tl.fit_outcome(cohort, feats, task="survival", baseline="TMB")  # doctest: +SKIP
    >>> result.metrics[["c_index", "c_index_ci_low", "c_index_ci_high"]]  # doctest: +SKIP
    >>> result.plot_km()  # doctest: +SKIP
    """
    # The aggregator's settings check themselves (one set of rules for fit_outcome and MILSettings).
    mil = MILSettings(aggregator=aggregator, hidden_dim=hidden_dim, dropout=dropout, epochs=epochs,
                      learning_rate=learning_rate, weight_decay=weight_decay, batch_size=batch_size,
                      max_tiles=max_tiles)  # fmt: skip
    check_integer(n_bootstrap, "n_bootstrap", minimum=MIN_BOOTSTRAP)
    check_integer(folds, "folds", minimum=2)
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer) or random_state < 0:
        raise ValueError(f"`random_state` must be a non-negative integer; got {random_state!r}.")
    baseline_list = None if baseline is None else [baseline] if isinstance(baseline, str) else list(baseline)
    # Every check on the cohort and its files runs before any feature is loaded or any model trained.
    c = validate_cohort(
        cohort, features, task=task, folds=folds, slide_key=slide_key, patient_key=patient_key,
        response_key=response_key, time_key=time_key, event_key=event_key, baseline=baseline_list,
        features_key=features_key,
    )  # fmt: skip
    dev = resolve_device(device)
    logger.info("fit_outcome: %s, %d patients, %d slides, %d tiles, %d folds, %s on %s.", task, len(c.patients),
                len(c.slides), int(c.slides["n_tiles"].sum()), folds, aggregator, features_key)  # fmt: skip
    start = time.perf_counter()
    cv = cross_validate(c, folds=int(folds), key=features_key, mil=mil, random_state=int(random_state), device=dev,
                        verbose=verbose)  # fmt: skip
    storm_name = f"storm_{aggregator}"
    names = {STORM: storm_name, "baseline": "baseline: " + "+".join(baseline_list or [])}
    metrics, comparison = evaluate(c, cv, n_bootstrap=n_bootstrap, random_state=int(random_state), names=names)

    predictions = c.patients.copy()
    predictions.insert(0, "fold", cv.folds)
    predictions["score"] = cv.scores[STORM]
    if "baseline" in cv.scores:
        predictions["baseline_score"] = cv.scores["baseline"]
    if task == "survival":
        predictions["risk_group"] = np.where(risk_groups(cv.scores[STORM]), "high", "low")
    slides_out = c.slides.merge(pd.DataFrame({"patient_id": c.patients.index, "fold": cv.folds}), on="patient_id")
    main = "auroc" if task == "response" else "c_index"
    logger.info("fit_outcome: %s %s = %.3f [%.3f, %.3f] in %.1f s.", storm_name, main, metrics.loc[storm_name, main],
                metrics.loc[storm_name, f"{main}_ci_low"], metrics.loc[storm_name, f"{main}_ci_high"],
                time.perf_counter() - start)  # fmt: skip
    params = {
        "tool": "fit_outcome", "task": task, "folds": int(folds), "aggregator": aggregator,
        "features_key": features_key, "baseline": baseline_list, "epochs": epochs, "learning_rate": learning_rate,
        "weight_decay": weight_decay, "hidden_dim": hidden_dim, "dropout": dropout, "batch_size": batch_size,
        "max_tiles": max_tiles, "n_bootstrap": n_bootstrap, "random_state": random_state,
        "storm_sc_version": __version__,
    }  # fmt: skip
    return OutcomeResult(task=task, metrics=metrics, predictions=predictions, fold_metrics=cv.fold_metrics,
                         comparison=comparison, slides=slides_out, attention=cv.attention, params=params)  # fmt: skip
