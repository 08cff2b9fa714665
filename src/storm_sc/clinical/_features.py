"""STORM features of every tissue tile of a whole slide, streamed into one resumable HDF5 file per slide.

Two passes, both written incrementally:

1. tiles are read and encoded in batches (morphology encoder + modality fusion, H&E only) into ``tokens``;
2. once every tile has its token, each tile is placed in its spatial context (its niche and region of
   neighbouring tiles, in microns) by the model's context encoder, giving the joint ``embedding`` and the
   ``expression`` predicted from H&E (the model's expression readout for its genes, the network's head for the
   others; ``expression_source`` records which).

The file is written as ``<slide_id>.h5.partial`` and renamed to ``<slide_id>.h5`` only when complete, with
``complete=True`` in its attributes; a partial file is resumed when it was made by the same model, settings and
slide, and redone otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from storm_sc._settings import logger

if TYPE_CHECKING:
    import h5py
    import torch

    from storm_sc.models import StormModel
    from storm_sc.wsi import TileGrid, WholeSlide

FORMAT_VERSION = 3  # 2: readout predictions, expression_source, readout_sha; 3: stain_statistics
SUFFIX = ".h5"
PARTIAL_SUFFIX = ".h5.partial"
# Datasets of a slide feature file.
H5_COORDS_UM = "coords_um"  # (n, 2) tile centres (x, y) in microns from the slide's top-left corner
H5_COORDS_PX = "coords_px"  # (n, 2) tile centres (x, y) in level-0 pixels
H5_GRID = "grid_rc"  # (n, 2) grid row and column
H5_TISSUE = "tissue_fraction"  # (n,)
H5_TOKENS = "tokens"  # (n, hidden_dim) fused H&E tokens before spatial context (pass 1)
H5_STAIN = "stain_statistics"  # (n, s) each tile's stain (and texture) statistics, for readouts reading them (pass 1)
H5_EMBEDDING = "embedding"  # (n, embed_dim) joint embedding with spatial context (pass 2)
H5_EXPRESSION = "expression"  # (n, n_genes) predicted log1p expression, float16 (pass 2)
H5_GENES = "genes"  # (n_genes,) gene symbols of the expression columns
H5_EXPRESSION_SOURCE = "expression_source"  # (n_genes,) "readout" or "head": what predicted each column
H5_THUMBNAIL = "thumbnail"  # (h, w, 3) uint8 for attention heatmaps
H5_MASK = "tissue_mask"  # (h', w') bool tissue mask the grid was chosen on
# Attributes.
A_COMPLETE = "complete"
A_FINGERPRINT = "fingerprint"
A_N_ENCODED = "n_encoded"
A_N_CONTEXT = "n_context"
# The datasets each ``features_key`` reads, concatenated in this order.
FEATURE_DATASETS = {
    "embedding": (H5_EMBEDDING,),
    "expression": (H5_EXPRESSION,),
    "embedding+expression": (H5_EMBEDDING, H5_EXPRESSION),
    "tokens": (H5_TOKENS,),
}
FEATURE_KEYS = tuple(FEATURE_DATASETS)
# Display thumbnails stored in the file are at most this long.
THUMBNAIL_MAX_SIDE = 1024
# Bytes hashed at each end of a slide file to recognise it again without reading it whole.
_HASH_BYTES = 1 << 20


def slide_fingerprint(path: Path) -> str:
    """Size plus sha256 of the first and last MiB of the file: recognises the same slide cheaply."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(_HASH_BYTES))
        if size > 2 * _HASH_BYTES:
            fh.seek(size - _HASH_BYTES)
            h.update(fh.read(_HASH_BYTES))
    return h.hexdigest()


@dataclass(frozen=True)
class ExtractionSettings:
    """Everything that determines a slide's features; stored in the file and compared before reuse."""

    model_digest: str
    model_config: str
    patch_um: float
    tile_px: int
    tissue_threshold: float
    mpp: float
    slide_sha: str
    genes_sha: str  # a hash: a 20k-gene list would overflow an HDF5 attribute (the genes are stored as a dataset)
    readout_sha: str = "none"  # the model's expression readout, which the network's weights digest leaves out

    def to_json(self) -> str:
        """Serialise the settings as the JSON fingerprint stored in the file."""
        return json.dumps({"format": FORMAT_VERSION, **self.__dict__}, sort_keys=True)

    def differences(self, stored: str) -> list[str]:
        """Names of the settings that differ from a stored fingerprint (``["format"]`` if unreadable)."""
        try:
            old = json.loads(stored)
        except (TypeError, ValueError):
            return ["format"]
        new = json.loads(self.to_json())
        return sorted(k for k in new if old.get(k) != new[k])


def feature_paths(out_dir: Path, slide_id: str) -> tuple[Path, Path]:
    """Return the ``(final, partial)`` paths of a slide's feature file."""
    return out_dir / f"{slide_id}{SUFFIX}", out_dir / f"{slide_id}{PARTIAL_SUFFIX}"


def read_status(path: Path) -> tuple[bool, str | None, int] | None:
    """``(complete, fingerprint, n_tiles)`` of a feature file, or ``None`` when it cannot be read as HDF5 at all.

    A fingerprint of ``None`` is an HDF5 file storm_sc did not write; an unreadable file is damaged (e.g. truncated
    by a copy).
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            fp = f.attrs.get(A_FINGERPRINT)
            n = int(f[H5_COORDS_UM].shape[0]) if H5_COORDS_UM in f else 0
            return bool(f.attrs.get(A_COMPLETE, False)), (None if fp is None else str(fp)), n
    except (OSError, KeyError):
        return None


def extract_slide(
    slide: WholeSlide,
    slide_id: str,
    model: StormModel,
    settings: ExtractionSettings,
    out_dir: Path,
    *,
    grid: TileGrid,
    gene_ids: np.ndarray,
    batch_size: int,
    device: torch.device,
    verbose: bool | None,
    leave: bool = True,
) -> tuple[Path, bool]:
    """Write (or resume) the feature file of one slide; returns its final path and whether it was resumed.

    The caller has already checked that no complete file with other settings is in the way. ``leave=False`` clears
    the slide's progress bars when it is done (a cohort shows one bar over its slides instead).
    """
    final, partial = feature_paths(out_dir, slide_id)
    fingerprint = settings.to_json()
    f = _open_partial(partial, fingerprint, grid, slide_id)
    resumed = f is not None
    try:
        if f is None:
            f = _create_partial(partial, fingerprint, grid, slide, slide_id, model, gene_ids)
        _encode_tiles(f, slide, grid, model, batch_size=batch_size, device=device, verbose=verbose,
                      desc=f"encode {slide_id}", leave=leave)  # fmt: skip
        _contextualise(f, grid, model, gene_ids, batch_size=batch_size, device=device, verbose=verbose,
                       desc=f"context {slide_id}", leave=leave)  # fmt: skip
        f.attrs[A_COMPLETE] = True
        f.flush()
    finally:
        if f is not None:
            f.close()
    os.replace(partial, final)  # atomic: a final file always is a complete one
    return final, resumed


def _open_partial(partial: Path, fingerprint: str, grid: TileGrid, slide_id: str) -> h5py.File | None:
    """Reopen a partial file for resuming, or remove it when it cannot be trusted."""
    import h5py

    if not partial.exists():
        return None
    reason = None
    try:
        f = h5py.File(partial, "a")
    except OSError as err:
        reason = f"it cannot be opened ({err})"
    else:
        stored = f.attrs.get(A_FINGERPRINT)
        same_grid = (H5_GRID in f and f[H5_GRID].shape == (grid.n_tiles, 2)
                     and np.array_equal(f[H5_GRID][:], np.stack([grid.rows, grid.cols], axis=1)))  # fmt: skip
        if stored is None or str(stored) != fingerprint:
            reason = "it was made with other settings, another model or another version of the slide"
        elif not same_grid:
            reason = "its tile grid differs"
        if reason is None:
            logger.info("%s: resuming from %s (%d of %d tiles encoded).", slide_id, partial.name,
                        int(f.attrs.get(A_N_ENCODED, 0)), grid.n_tiles)  # fmt: skip
            return f
        f.close()
    logger.warning("%s: discarding the partial feature file %s: %s.", slide_id, partial, reason)
    partial.unlink()
    return None


def _create_partial(partial: Path, fingerprint: str, grid: TileGrid, slide: WholeSlide, slide_id: str,
                    model: StormModel, gene_ids: np.ndarray) -> h5py.File:  # fmt: skip
    import h5py

    from storm_sc import __version__

    n = grid.n_tiles
    cfg = model.config
    chunk_rows = max(1, min(n, 1024))
    f = h5py.File(partial, "w")
    f.attrs.update({
        A_FINGERPRINT: fingerprint, A_COMPLETE: False, A_N_ENCODED: 0, A_N_CONTEXT: 0,
        "format_version": FORMAT_VERSION, "storm_sc_version": __version__, "slide_id": slide_id,
        "slide_path": str(slide.path), "mpp": slide.mpp, "mpp_source": slide.mpp_source, "patch_um": grid.patch_um,
        "tile_px_level0": grid.tile_px, "tile_px": cfg.image_size, "model_config": cfg.name,
        "mask_downsample": grid.mask_downsample, "dimensions": list(slide.dimensions),
    })  # fmt: skip
    f.create_dataset(H5_COORDS_UM, data=grid.centers_um)
    f.create_dataset(H5_COORDS_PX, data=grid.centers_px)
    f.create_dataset(H5_GRID, data=np.stack([grid.rows, grid.cols], axis=1))
    f.create_dataset(H5_TISSUE, data=grid.tissue_fraction)
    f.create_dataset(H5_TOKENS, shape=(n, cfg.hidden_dim), dtype=np.float32, chunks=(chunk_rows, cfg.hidden_dim)
                     if n else None)  # fmt: skip
    if model.readout is not None and model.readout.uses_stain_statistics:
        # Only for readouts that read them: the stain path computes them too, so this is a second pass over pixels.
        width = model.network.n_statistics
        f.create_dataset(H5_STAIN, shape=(n, width), dtype=np.float32, chunks=(chunk_rows, width) if n else None)
    f.create_dataset(H5_EMBEDDING, shape=(n, cfg.embed_dim), dtype=np.float32,
                     chunks=(chunk_rows, cfg.embed_dim) if n else None)  # fmt: skip
    n_genes = len(gene_ids)
    f.create_dataset(H5_EXPRESSION, shape=(n, n_genes), dtype=np.float16,
                     chunks=(chunk_rows, max(1, min(n_genes, 1024))) if n and n_genes else None,
                     compression="lzf" if n and n_genes else None)  # fmt: skip
    symbols = model.vocabulary.symbols
    f.create_dataset(H5_GENES, data=np.array([symbols[i] for i in gene_ids], dtype=object),
                     dtype=h5py.string_dtype())  # fmt: skip
    sources = np.where(model._readout_columns(gene_ids) >= 0, "readout", "head").astype(object)
    f.create_dataset(H5_EXPRESSION_SOURCE, data=sources, dtype=h5py.string_dtype())
    thumb = _display_thumbnail(slide)
    f.create_dataset(H5_THUMBNAIL, data=thumb[0], compression="gzip")
    f.attrs["thumbnail_downsample"] = thumb[1]
    f.create_dataset(H5_MASK, data=grid.mask, compression="gzip")
    f.flush()
    return f


def _display_thumbnail(slide: WholeSlide) -> tuple[np.ndarray, float]:
    longest_um = max(slide.dimensions) * slide.mpp
    return slide.thumbnail(longest_um / THUMBNAIL_MAX_SIDE)


def _encode_tiles(f: h5py.File, slide: WholeSlide, grid: TileGrid, model: StormModel, *, batch_size: int,
                  device: torch.device, verbose: bool | None, desc: str, leave: bool) -> None:  # fmt: skip
    """Pass 1: H&E tokens of every tile, batch by batch, each batch flushed with its progress counter."""
    import torch

    from storm_sc.models._inference import autocast, evaluating_on
    from storm_sc.wsi import iter_tile_batches

    network = model.network
    start = int(f.attrs.get(A_N_ENCODED, 0))
    if start >= grid.n_tiles:
        return
    tokens, stain = f[H5_TOKENS], f[H5_STAIN] if H5_STAIN in f else None
    with torch.no_grad(), evaluating_on(network, device):
        for idx, tiles in iter_tile_batches(slide, grid, out_px=model.config.image_size, batch_size=batch_size,
                                            start=start, verbose=verbose, desc=desc, leave=leave):  # fmt: skip
            images = torch.from_numpy(tiles).to(device)
            with autocast(device):
                stats = network.patch_statistics(images) if stain is not None else None
                z = network.encode_morphology(images=images, statistics=stats)
                present = torch.ones(len(idx), dtype=torch.bool, device=device)
                # H&E only: the expression token is absent, exactly as in StormModel.embed(use_expression=False).
                fused = network.fusion(z, present, torch.zeros_like(z), torch.zeros_like(present))
            tokens[idx[0] : idx[-1] + 1] = fused.float().cpu().numpy()
            if stats is not None:
                stain[idx[0] : idx[-1] + 1] = stats.float().cpu().numpy()
            f.attrs[A_N_ENCODED] = int(idx[-1] + 1)
            f.flush()


def _contextualise(f: h5py.File, grid: TileGrid, model: StormModel, gene_ids: np.ndarray, *, batch_size: int,
                   device: torch.device, verbose: bool | None, desc: str, leave: bool) -> None:  # fmt: skip
    """Pass 2: joint embedding over neighbouring tiles and expression predicted from them.

    Genes of the model's expression readout are predicted by it (from the H&E-only observation, niche and region
    levels, and the tiles' stain statistics stored in pass 1 when the readout reads them), the others by the
    network's head, exactly as :meth:`storm_sc.models.StormModel.predict_expression` does with ``source="auto"``.
    """
    import torch
    from tqdm.auto import tqdm

    from storm_sc._settings import settings as storm_settings
    from storm_sc.models import StormInputs
    from storm_sc.models._inference import ExpressionPlan, contextual, evaluating_on, readout_extras

    n = grid.n_tiles
    start = int(f.attrs.get(A_N_CONTEXT, 0))
    if start >= n:
        return
    network = model.network
    # Neighbour lists of every tile in microns; only tokens (n x hidden_dim floats) are held, never pixels.
    inputs = StormInputs.from_arrays(grid.centers_um, config=model.config, library_id=str(f.attrs["slide_id"]))
    plan = ExpressionPlan(network, gene_ids, model.readout, model._readout_columns(gene_ids), device)
    bar = tqdm(total=n, initial=start, unit="tile", desc=desc, leave=leave,
               disable=not storm_settings.show_progress(verbose))  # fmt: skip
    with torch.no_grad(), evaluating_on(network, device), bar:
        tokens = torch.from_numpy(f[H5_TOKENS][:]).to(device)
        extras = None
        if plan.needs_statistics:
            extras = readout_extras(f[H5_STAIN][:], inputs, model.readout.inputs, model.config.niche_k)
        for lo in range(start, n, batch_size):
            rows = np.arange(lo, min(lo + batch_size, n))
            levels = contextual(network, inputs, tokens, rows, device)
            f[H5_EMBEDDING][lo : rows[-1] + 1] = levels["joint"].float().cpu().numpy()
            if len(gene_ids):
                means = np.empty((len(rows), len(gene_ids)), dtype=np.float32)
                plan.fill(levels, means, extra=None if extras is None else extras[rows])
                f[H5_EXPRESSION][lo : rows[-1] + 1] = means.astype(np.float16)
            f.attrs[A_N_CONTEXT] = int(rows[-1] + 1)
            f.flush()
            bar.update(len(rows))


@dataclass(frozen=True, eq=False)
class SlideFeatures:
    """The stored features of one slide (see :func:`read_slide_features`).

    Attributes
    ----------
    slide_id
        The slide's name.
    coords_um, coords_px
        ``(n, 2)`` tile centres ``(x, y)`` in microns and in level-0 pixels.
    features
        ``(n, d)`` float32 per-tile features of the requested kind.
    patch_um, mpp
        Tile side in microns; microns per level-0 pixel.
    thumbnail, thumbnail_downsample
        Display thumbnail and level-0 pixels per thumbnail pixel.
    genes
        Gene symbols of the expression columns.
    attrs
        All attributes of the file.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> import storm_sc as st
    >>> tmp = tempfile.TemporaryDirectory()
    >>> rgb = np.full((256, 256, 3), 240, np.uint8)  # glass ...
    >>> rgb[64:192, 64:192] = (180, 90, 160)  # ... with a square of tissue
    >>> Image.fromarray(rgb).save(f"{tmp.name}/slide_01.png")
    >>> model = st.models.StormModel("storm-tiny", ["GFAP", "MBP"], seed=0)
    >>> feats = st.tl.slide_features([f"{tmp.name}/slide_01.png"], model, out_dir=tmp.name, mpp=1.75, device="cpu",
    ...                              verbose=False)
    >>> sf = st.clinical.read_slide_features(feats.loc[0, "feature_file"])
    >>> sf.slide_id, sf.features.shape, sf.patch_um, sf.genes
    ('slide_01', (4, 16), 112.0, ['GFAP', 'MBP'])
    >>> sf.coords_um.tolist()
    [[168.0, 168.0], [280.0, 168.0], [168.0, 280.0], [280.0, 280.0]]
    >>> sf  # doctest: +ELLIPSIS
    SlideFeatures('slide_01': 4 tiles x 16 features, 2 genes, 112 um tiles at 1.75 um/px, thumbnail ... px)
    >>> tmp.cleanup()
    """

    slide_id: str
    coords_um: np.ndarray
    coords_px: np.ndarray
    features: np.ndarray
    patch_um: float
    mpp: float
    thumbnail: np.ndarray
    thumbnail_downsample: float
    genes: list[str]
    attrs: dict[str, Any]

    def __repr__(self) -> str:
        # The dataclass default printed the whole thumbnail and gene list (about 100 KB for one slide).
        return (
            f"SlideFeatures({self.slide_id!r}: {self.features.shape[0]} tiles x {self.features.shape[1]} features, "
            f"{len(self.genes)} genes, {self.patch_um:g} um tiles at {self.mpp:g} um/px, "
            f"thumbnail {self.thumbnail.shape[1]} x {self.thumbnail.shape[0]} px)"
        )


def read_slide_features(path: str | os.PathLike, *, key: str = "embedding", thumbnail: bool = True) -> SlideFeatures:
    """Read a complete slide feature file written by :func:`storm_sc.tl.slide_features`.

    Parameters
    ----------
    path
        The ``.h5`` file.
    key
        ``"embedding"`` (joint STORM embedding with spatial context), ``"expression"`` (predicted expression),
        ``"embedding+expression"`` (both, concatenated) or ``"tokens"`` (H&E tokens before spatial context).
    thumbnail
        Read the stored thumbnail too (otherwise an empty array).

    Returns
    -------
    The slide's :class:`SlideFeatures`.

    Examples
    --------
    >>> from storm_sc.clinical import read_slide_features
    >>> sf = read_slide_features("features/slide_01.h5")  # doctest: +SKIP
    >>> sf.features.shape  # doctest: +SKIP
    (5120, 64)
    """
    import h5py

    if key not in FEATURE_KEYS:
        raise ValueError(f"`key` must be one of {FEATURE_KEYS}; got {key!r}.")
    path = Path(path)
    with h5py.File(path, "r") as f:
        if not bool(f.attrs.get(A_COMPLETE, False)):
            raise ValueError(f"{path} is not a complete slide feature file; rerun st.tl.slide_features.")
        parts = [f[name][:].astype(np.float32) for name in FEATURE_DATASETS[key]]
        feats = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        genes = [g.decode() if isinstance(g, bytes) else str(g) for g in f[H5_GENES][:]]
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        return SlideFeatures(
            slide_id=str(attrs["slide_id"]), coords_um=f[H5_COORDS_UM][:], coords_px=f[H5_COORDS_PX][:],
            features=feats, patch_um=float(attrs["patch_um"]), mpp=float(attrs["mpp"]),
            thumbnail=f[H5_THUMBNAIL][:] if thumbnail else np.zeros((0, 0, 3), np.uint8), thumbnail_downsample=float(attrs["thumbnail_downsample"]), genes=genes,
            attrs=attrs,
        )  # fmt: skip


def _plain(value: Any) -> Any:
    """Convert an HDF5 attribute to a plain Python value."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
