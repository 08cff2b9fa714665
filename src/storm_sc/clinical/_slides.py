"""The slides of a feature run: parsing what the user passed, checking everything up front, then extracting."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from storm_sc._settings import logger
from storm_sc.wsi._reader import PLAUSIBLE_MPP

from ._cohort import column_or_index, describe_columns
from ._features import ExtractionSettings, extract_slide, feature_paths, read_status, slide_fingerprint

if TYPE_CHECKING:
    from storm_sc.models import StormModel
    from storm_sc.wsi import WholeSlide

SlidesArg = (
    str | os.PathLike | Sequence[str | os.PathLike] | np.ndarray | pd.Series | Mapping[str, str | os.PathLike]
    | pd.DataFrame
)  # fmt: skip
# Tiles this much smaller than the model's patch (in pixels) are warned about as upsampled: a wrong mpp is off by a
# factor (7.8 for 0.78), while a 20x scan at 0.505 um/px under a 224 px / 112 um patch is 1% short and fine.
_UPSAMPLING_TOLERANCE = 1.25
# Characters that cannot appear in a slide id, which names its feature file.
_BAD_ID_CHARS = set('/\\:*?"<>|')


@dataclass(frozen=True)
class SlideEntry:
    """One slide to process."""

    slide_id: str
    path: Path
    mpp: float | None


def parse_slides(slides: SlidesArg, mpp: float | Mapping[str, float] | None) -> list[SlideEntry]:
    """Parse the slides into ``(slide_id, path, mpp)``; ids default to the file name without its suffix."""
    pairs: list[tuple[str, Any, Any]]
    if isinstance(slides, pd.Series | pd.Index | np.ndarray):
        # A column of a cohort table, or an array of paths: its values are the paths (a Series' index is a row
        # label, not a slide id).
        values = np.asarray(slides, dtype=object)
        if values.ndim != 1:
            raise ValueError(f"`slides` must be a 1-D array of paths; got an array of shape {values.shape}.")
        slides = values.tolist()
    if isinstance(slides, pd.DataFrame):
        ids, paths = column_or_index(slides, "slide_id"), column_or_index(slides, "path")
        missing = [c for c, values in (("slide_id", ids), ("path", paths)) if values is None]
        if missing:
            raise ValueError(
                f"A slide table needs the columns 'slide_id' and 'path'; missing {missing} ({describe_columns(slides)})."
            )
        col_mpp = column_or_index(slides, "mpp")
        if col_mpp is None:
            col_mpp = pd.Series([None] * len(slides), index=slides.index)
        pairs = [(str(i), p, m) for i, p, m in zip(ids, paths, col_mpp, strict=True)]
    elif isinstance(slides, Mapping):
        pairs = [(str(k), v, None) for k, v in slides.items()]
    elif isinstance(slides, str | os.PathLike):
        pairs = [(Path(slides).stem, slides, None)]
    elif isinstance(slides, Sequence) and not isinstance(slides, bytes):
        pairs = [(Path(p).stem, p, None) for p in slides]
    else:
        raise TypeError(
            "`slides` must be a path, a list (array, Series) of paths, a dict of slide id to path, or a DataFrame with "
            f"'slide_id' and 'path' columns; got {type(slides).__name__}."
        )
    if not pairs:
        raise ValueError("`slides` is empty.")
    entries = []
    for slide_id, path, slide_mpp in pairs:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"Slide {slide_id!r}: the path must be a string or os.PathLike; got {type(path).__name__}.")
        given = slide_mpp if slide_mpp is not None and not (isinstance(slide_mpp, float) and math.isnan(slide_mpp)) \
            else None  # fmt: skip
        if given is None and isinstance(mpp, Mapping):
            given = mpp.get(slide_id)
        elif given is None and mpp is not None and not isinstance(mpp, Mapping):
            given = mpp
        entries.append(SlideEntry(slide_id, Path(path).expanduser(), given))
    # The files first: a path that is not one here (a Windows path on Linux) also makes an id that cannot name a
    # file, and the missing file is what the user has to fix.
    folders = [str(e.path) for e in entries if e.path.is_dir()]
    if folders:
        raise IsADirectoryError(
            f"{len(folders)} slide path(s) are folders, not image files: {folders[:10]}; give each slide's image file "
            "(e.g. sorted(Path(folder).glob('*.svs')))."
        )
    missing = [str(e.path) for e in entries if not e.path.is_file()]
    if missing:
        windows = os.sep == "/" and any("\\" in m for m in missing)
        raise FileNotFoundError(
            f"{len(missing)} slide file(s) do not exist: {missing[:10]}."
            + (" Paths written with '\\' are Windows paths, which this system does not read: give each file's "
               "path on this machine, with '/'." if windows else "")
        )  # fmt: skip
    for e in entries:
        if not e.slide_id or e.slide_id in (".", "..") or _BAD_ID_CHARS & set(e.slide_id):
            raise ValueError(f"Slide id {e.slide_id!r} cannot name a file; use ids without {sorted(_BAD_ID_CHARS)}.")
    ids = pd.Series([e.slide_id for e in entries])
    dup = sorted(ids[ids.duplicated()].unique())
    if dup:
        raise ValueError(
            f"Slide ids must be unique (they name the feature files); duplicated: {dup[:10]}. Pass a dict or a table "
            "with explicit ids."
        )
    if isinstance(mpp, Mapping):
        unknown = sorted(set(mpp) - set(ids))
        if unknown:
            raise ValueError(f"`mpp` names slides that are not in `slides`: {unknown[:10]}.")
    _warn_if_shared(entries)
    return entries


def _warn_if_shared(entries: list[SlideEntry]) -> None:
    """Warn when one image file comes under several slide ids: in a cohort, two patients would share its tissue."""
    by_file: dict[Path, list[str]] = {}
    for e in entries:
        by_file.setdefault(e.path.resolve(), []).append(e.slide_id)
    shared = {path: ids for path, ids in by_file.items() if len(ids) > 1}
    if shared:
        examples = "; ".join(f"{ids}: {path}" for path, ids in list(shared.items())[:3])
        logger.warning(
            "%d image file(s) come under several slide ids (%s): their features are the same. In one cohort, "
            "patients sharing a slide leak it between the cross-validation folds; give each file one id.",
            len(shared), examples,
        )  # fmt: skip


def resolve_genes(model: StormModel, genes: Sequence[str] | None) -> np.ndarray:
    """Vocabulary indices of the genes predicted per tile (default: the readout's genes, else the vocabulary)."""
    if genes is None:
        if model.readout is not None:
            return np.sort(model.readout.gene_ids).astype(np.int64)
        return np.arange(len(model.vocabulary), dtype=np.int64)
    if isinstance(genes, str):
        genes = [genes]
    try:
        return np.asarray(model.vocabulary.index(list(genes)), dtype=np.int64)
    except KeyError as err:
        raise ValueError(f"`genes` holds genes outside the model's vocabulary: {err.args[0]}") from err


def _check_scale(slide: WholeSlide, patch_um: float) -> None:
    """Refuse a pixel size at which a tile is larger than the whole image or smaller than a pixel.

    Such an ``mpp`` is a unit mistake (0.00078 mm for 0.78 um), not a slide: it would give a file of no tiles.
    """
    tile_px = patch_um / slide.mpp
    width, height = slide.dimensions
    if 1 <= tile_px <= max(width, height):
        return
    lo, hi = PLAUSIBLE_MPP
    if lo <= slide.mpp * 1000 <= hi:
        hint = f"Is it in millimetres? {slide.mpp:g} mm/px is mpp={slide.mpp * 1000:.4g} um/px."
    elif lo <= slide.mpp / 1000 <= hi:
        hint = f"Is it in nanometres? {slide.mpp:g} nm/px is mpp={slide.mpp / 1000:.4g} um/px."
    elif lo <= slide.mpp <= hi and tile_px > 1:
        # a plausible scale on a small image (a crop, a thumbnail): no unit mistake to point at
        hint = "The image is smaller than one tile: pass a smaller `patch_um`, or leave this slide out."
    else:
        hint = "`mpp` is in microns per pixel: about 0.25 for a 40x scan, 0.5 for 20x."
    source = "as given" if slide.mpp_source == "given" else "as the file records it; pass `mpp=` to override it"
    fit = "larger than the whole image" if tile_px > 1 else "smaller than one pixel"
    raise ValueError(
        f"at mpp={slide.mpp:.4g} um/px ({source}), a {patch_um:g} um tile is {tile_px:.3g} px, {fit} ({width} x "
        f"{height} px, which would span {width * slide.mpp:.3g} x {height * slide.mpp:.3g} um). {hint}"
    )


def _warn_if_upsampled(slide_id: str, mpp: float, mpp_source: str, patch_um: float, out_px: int) -> None:
    """Warn when a tile holds fewer level-0 pixels than the model's patch, which upsamples it.

    Most often ``mpp`` is wrong: 7.8 for a 0.78 um/px scan makes the tiles 10x too small in pixels.
    """
    tile_px = patch_um / mpp
    if tile_px * _UPSAMPLING_TOLERANCE < out_px:
        logger.warning(
            "%s: %g um tiles are %.1f px at mpp=%.4g um/px (%s), fewer than the model's %d px patch: they are "
            "upsampled %.1fx. Is the mpp right (about 0.25 um/px for a 40x scan, 0.5 for 20x)?", slide_id, patch_um,
            tile_px, mpp, "given" if mpp_source == "given" else "from the file", out_px, out_px / tile_px,
        )  # fmt: skip


def compute_slide_features(
    entries: list[SlideEntry],
    model: StormModel,
    *,
    out_dir: Path,
    patch_um: float,
    tissue_threshold: float,
    gene_ids: np.ndarray,
    batch_size: int,
    device: Any,
    overwrite: bool,
    verbose: bool | None,
) -> pd.DataFrame:
    """Extract the features of every slide (see :func:`storm_sc.tl.slide_features`)."""
    import h5py
    from tqdm.auto import tqdm

    from storm_sc._settings import settings as storm_settings
    from storm_sc.wsi import open_slide, tile_grid

    # Everything that can fail on the input is checked first: slide formats, pixel sizes, files in the way.
    digest = model.weights_digest()
    genes_sha = hashlib.sha256(json.dumps([model.vocabulary.symbols[i] for i in gene_ids]).encode()).hexdigest()
    # The readout is not part of the network's weights digest, yet it makes the predicted expression.
    readout_sha = model.readout.digest() if model.readout is not None and len(gene_ids) else "none"
    plans = []
    blocked, foreign = [], []
    for entry in entries:
        # Opened to check format and pixel size, then closed: a cohort of thousands of slides must not hold
        # thousands of open files.
        try:
            with open_slide(entry.path, mpp=entry.mpp) as slide:
                mpp = slide.mpp
                _check_scale(slide, patch_um)
        except ValueError as err:
            # Many slides share a file name (every Visium section's is tissue_hires_image.png): name the slide.
            raise ValueError(f"Slide {entry.slide_id!r}: {err}") from err
        settings = ExtractionSettings(
            model_digest=digest,
            model_config=model.config.name,
            patch_um=float(patch_um),
            tile_px=int(model.config.image_size),
            tissue_threshold=float(tissue_threshold),
            mpp=mpp,
            slide_sha=slide_fingerprint(entry.path),
            genes_sha=genes_sha,
            readout_sha=readout_sha,
        )
        final, _ = feature_paths(out_dir, entry.slide_id)
        reuse = False
        status = read_status(final) if final.exists() else None
        if final.exists() and status is None:
            if not overwrite:  # a damaged file (e.g. truncated by a copy) is no one's data: replaced when asked
                blocked.append(f"{final.name} (unreadable: damaged?)")
        elif final.exists():
            complete, stored, _ = status
            if stored is None:
                # Not written by slide_features (e.g. an AnnData saved under the slide's name): the user's file,
                # never ours to replace.
                foreign.append(str(final))
            elif complete and not settings.differences(stored):
                reuse = True
            elif not overwrite:
                diff = settings.differences(stored)
                blocked.append(f"{final.name} ({'differs in ' + ', '.join(diff) if complete else 'incomplete'})")
        plans.append((entry, settings, final, reuse))
    if foreign:
        raise FileExistsError(
            f"{len(foreign)} file(s) in {out_dir} have the name of a slide's feature file but are not storm_sc "
            f"feature files: {foreign[:5]}. They are never replaced, even with `overwrite=True`: move them, or "
            "choose another `out_dir`."
        )
    if blocked:
        raise FileExistsError(
            f"{len(blocked)} feature file(s) in {out_dir} were made differently and would be replaced: "
            f"{blocked[:5]}. Pass `overwrite=True` to recompute them, or another `out_dir`."
        )

    rows = []
    cohort_bar = len(plans) > 1 and storm_settings.show_progress(verbose)
    # One bar over the slides (each slide's own bars are cleared when it is done): a cohort of a thousand slides
    # otherwise left two thousand bars behind in a notebook.
    for entry, settings, final, reuse in tqdm(plans, desc="slides", unit="slide", disable=not cohort_bar):
        with open_slide(entry.path, mpp=entry.mpp) as slide:
            status = "reused"
            if reuse:
                logger.info("%s: features already complete in %s; reusing them.", entry.slide_id, final)
            else:
                if final.exists():  # overwrite=True was given for a file made differently
                    logger.warning("%s: replacing %s (overwrite=True).", entry.slide_id, final)
                    final.unlink()
                # Here, not while checking: a file reused unchanged was warned about when it was made.
                _warn_if_upsampled(entry.slide_id, slide.mpp, slide.mpp_source, patch_um, model.config.image_size)
                start = time.perf_counter()
                try:
                    grid = tile_grid(slide, patch_um=patch_um, tissue_threshold=tissue_threshold)
                    if grid.n_tiles == 0:
                        logger.warning("%s: no tissue tiles found (tissue_threshold=%g); the file records 0 tiles.",
                                       entry.slide_id, tissue_threshold)  # fmt: skip
                    _, resumed = extract_slide(slide, entry.slide_id, model, settings, out_dir, grid=grid,
                                               gene_ids=gene_ids, batch_size=batch_size, device=device,
                                               verbose=verbose, leave=not cohort_bar)  # fmt: skip
                except OSError as err:
                    # Pixels are only decoded here (a truncated image opens fine): say which of the slides failed.
                    failed = f"Slide {entry.slide_id!r} ({entry.path}): computing its features failed: {err}"
                    # Same class (PermissionError, PIL's UnidentifiedImageError...), so callers' handlers still match.
                    # errno and filename kept too: handlers test them (ENOSPC, EACCES).
                    args = (failed,) if err.errno is None else (err.errno, failed, err.filename)
                    try:
                        named = type(err)(*args)
                    except TypeError:  # a subclass whose constructor wants something else
                        named = OSError(*args)
                    raise named from err
                status = "resumed" if resumed else "computed"
                logger.info("%s: %d tiles in %.1f s -> %s", entry.slide_id, grid.n_tiles,
                            time.perf_counter() - start, final)  # fmt: skip
            with h5py.File(final, "r") as f:
                n_tiles = int(f["coords_um"].shape[0])
            rows.append({"slide_id": entry.slide_id, "path": str(entry.path), "feature_file": str(final),
                         "n_tiles": n_tiles, "mpp": slide.mpp, "status": status})  # fmt: skip
    return pd.DataFrame(rows)
