"""H&E patches centred on each observation, in true physical size, read lazily from the slide image."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from storm_sc._constants import DEFAULT_PATCH_PX, DEFAULT_PATCH_UM
from storm_sc._settings import logger, settings, warn_once
from storm_sc.io._elements import check_rgb_pixels
from storm_sc.io._spatial_input import SpatialInput

from ._input import as_spatial_input
from ._pyramid import ImageLevel, choose_level, image_levels, read_windows, window_bounds

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

# Bilinear with PIL's support scaling is a triangle (antialiasing) filter when downsampling and has no
# overshoot, so stain colours are never pushed out of range.
_RESAMPLE = Image.Resampling.BILINEAR
# Grid cells per side of the Z-order curve of locality_order (2**20: sub-micron on a 10 cm slide).
_MORTON_SIDE = 2**20


class PatchDataset(Dataset):
    """H&E patches centred on the observations of one slide, one item per table row, in table order.

    Build it with :func:`storm_sc.pp.patch_dataset`. Items are dictionaries ``{"image": uint8 tensor
    (3, patch_px, patch_px), "index": row index}``. Pixels are read lazily, window by window, from the pyramid
    level closest to (and not coarser than) ``patch_um / patch_px`` microns per pixel; nothing is read when the
    dataset is created. The dataset holds only the lazy image and the centres, so it pickles cheaply and works
    with :class:`torch.utils.data.DataLoader` worker processes.

    Parameters
    ----------
    spatial_input
        The slide, with its H&E image and scale (:func:`storm_sc.io.resolve`).
    patch_um, patch_px
        Side of a patch in microns, and in output pixels.

    Attributes
    ----------
    patch_um
        Side of a patch in microns.
    patch_px
        Side of a patch in output pixels.
    mpp
        Microns per pixel of the image's full-resolution level.
    level
        Index of the pyramid level read (0 = full resolution).
    level_mpp
        Microns per pixel of that level.
    window_px
        Side of a patch in pixels of that level (before resizing to ``patch_px``).
    centers_px
        ``(n, 2)`` observation centres ``(x, y)`` in full-resolution pixels.
    library_id
        The slide's name.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> ds = st.pp.patch_dataset(sdata, patch_um=112, patch_px=32)
    >>> ds
    PatchDataset('toy', n=200, 112 um -> 32 px, level 0 at 2 um/px)
    >>> ds[0]["image"].shape, ds.read([0, 1, 2]).shape
    (torch.Size([3, 32, 32]), (3, 3, 32, 32))
    """

    def __init__(
        self,
        spatial_input: SpatialInput,
        *,
        patch_um: float = DEFAULT_PATCH_UM,
        patch_px: int = DEFAULT_PATCH_PX,
    ) -> None:
        si = spatial_input
        if not si.has_image:
            raise ValueError(
                f"Slide {si.library_id!r} has no H&E image, so no patches can be cut from it. Expression-only use is "
                "possible: `st.pp.align_genes` and `st.pp.spatial_graph` need no image. If the slide does have an "
                "image, name it with `image_key=`."
            )
        _check_patch_size(patch_um, patch_px)
        if si.mpp is None or not (math.isfinite(si.mpp) and si.mpp > 0):
            raise ValueError(
                f"Slide {si.library_id!r} has an image but no valid microns-per-pixel ({si.mpp!r}); pass `mpp=`."
            )
        if si.centers_px is None or np.shape(si.centers_px) != (si.n_obs, 2):
            raise ValueError(
                f"Slide {si.library_id!r}: `centers_px` must be an (n_obs, 2) array of pixel centres for the image; "
                f"got {None if si.centers_px is None else np.shape(si.centers_px)}."
            )
        centers = np.asarray(si.centers_px, dtype=np.float64)
        if not np.isfinite(centers).all():
            raise ValueError(
                f"Slide {si.library_id!r}: some observation centres are NaN or infinite; drop those rows first."
            )
        levels = image_levels(si.image, name=si.image_key or "image")
        check_rgb_pixels(levels[0].data, si.image_key)

        self.patch_um = float(patch_um)
        self.patch_px = int(patch_px)
        self.mpp = float(si.mpp)
        self.centers_px = centers
        self.library_id = si.library_id
        target_mpp = self.patch_um / self.patch_px
        self.level = choose_level(levels, self.mpp, target_mpp)
        chosen: ImageLevel = levels[self.level]
        self._data = chosen.data
        self._scale_yx = chosen.scale_yx
        self.level_mpp = self.mpp * chosen.scale
        self.window_px = self.patch_um / self.level_mpp
        if self.level_mpp > target_mpp * 1.5:
            warn_once(
                "Image %r of slide %r is %.3g um/px, coarser than the %.3g um/px of a %g um / %d px patch: patches are "
                "upsampled %.1fx and carry less detail than the model expects.",
                si.image_key,
                si.library_id,
                self.level_mpp,
                target_mpp,
                self.patch_um,
                self.patch_px,
                self.level_mpp / target_mpp,
            )
        logger.debug(
            "PatchDataset %r: %d patches from level %d (%.3g um/px), %.1f px windows.",
            self.library_id,
            len(self),
            self.level,
            self.level_mpp,
            self.window_px,
        )

    def __len__(self) -> int:
        return self.centers_px.shape[0]

    def __repr__(self) -> str:
        return (
            f"PatchDataset({self.library_id!r}, n={len(self)}, {self.patch_um:g} um -> {self.patch_px} px, "
            f"level {self.level} at {self.level_mpp:.3g} um/px)"
        )

    def _index(self, i: Any) -> int:
        i = operator.index(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"Patch index {i} out of range for {n} observations.")
        return i % n

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Read several patches at once.

        Parameters
        ----------
        indices
            Table row indices.

        Returns
        -------
        ``(len(indices), 3, patch_px, patch_px)`` uint8 array, in the order of ``indices``.

        Examples
        --------
        >>> patches = ds.read([0, 1, 2])  # doctest: +SKIP
        >>> patches.shape  # doctest: +SKIP
        (3, 3, 224, 224)
        """
        rows = [self._index(i) for i in np.asarray(indices).reshape(-1)]
        sy, sx = self._scale_yx
        # Resampling filter support grows with the downsampling factor; keep that much context around the box.
        margin = math.ceil(max(1.0, self.window_px / self.patch_px)) + 1
        # Half a patch in level pixels; spatialdata's level pixel j covers full-resolution [j * s, (j + 1) * s).
        hx, hy = 0.5 * self.patch_um / self.mpp / sx, 0.5 * self.patch_um / self.mpp / sy
        boxes, crops = [], []
        for r in rows:
            cx, cy = self.centers_px[r, 0] / sx, self.centers_px[r, 1] / sy
            x0, x1 = window_bounds(cx, hx, margin)
            y0, y1 = window_bounds(cy, hy, margin)
            boxes.append((y0, y1, x0, x1))
            crops.append((cx - hx - x0, cy - hy - y0, cx + hx - x0, cy + hy - y0))
        out = np.empty((len(rows), 3, self.patch_px, self.patch_px), dtype=np.uint8)
        for k, (window, crop) in enumerate(zip(read_windows(self._data, boxes), crops, strict=True)):
            out[k] = _resize(window, crop, self.patch_px)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self._index(i)
        return {"image": torch.from_numpy(self.read([row])[0]), "index": row}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        # DataLoader calls this with a whole batch of indices: one dask compute per batch instead of per item.
        rows = [self._index(i) for i in indices]
        images = torch.from_numpy(self.read(rows))
        return [{"image": images[k], "index": row} for k, row in enumerate(rows)]

    def reading_batches(self, batch_size: int) -> list[np.ndarray]:
        """Row indices in batches of neighbouring observations, so that each batch reads one compact image area.

        Parameters
        ----------
        batch_size
            Observations per batch.

        Returns
        -------
        Arrays of row indices covering every row once (see :func:`locality_order`).

        Examples
        --------
        >>> [len(b) for b in ds.reading_batches(64)]  # doctest: +SKIP
        [64, 64, 22]
        """
        order = locality_order(self.centers_px)
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def to_numpy(self, *, batch_size: int = 64, num_workers: int = 0, verbose: bool | None = None) -> np.ndarray:
        """Read every patch into memory, e.g. to cache them for small-scale training.

        Parameters
        ----------
        batch_size
            Patches read per dask compute (and per worker task).
        num_workers
            DataLoader worker processes; ``0`` reads in this process.
        verbose
            Show a progress bar; defaults to :attr:`storm_sc.settings.progress`.

        Returns
        -------
        ``(n_obs, 3, patch_px, patch_px)`` uint8 array in table order.

        Examples
        --------
        >>> patches = st.pp.patch_dataset(sdata).to_numpy(batch_size=128)  # doctest: +SKIP
        """
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"`batch_size` must be >= 1 and `num_workers` >= 0; got {batch_size}, {num_workers}.")
        n = len(self)
        gib = n * 3 * self.patch_px**2 / 2**30
        if gib > 4:
            logger.warning("to_numpy: materialising %d patches takes %.1f GiB of memory.", n, gib)
        out = np.empty((n, 3, self.patch_px, self.patch_px), dtype=np.uint8)
        with tqdm(total=n, unit="patch", desc="patches", disable=not settings.show_progress(verbose)) as bar:
            batches = self.reading_batches(batch_size)
            if num_workers == 0:
                # In-process: straight into the output, no per-batch tensor collation.
                for rows in batches:
                    out[rows] = self.read(rows)
                    bar.update(len(rows))
                return out
            for batch in DataLoader(self, batch_sampler=batches, num_workers=num_workers):
                idx = batch["index"].numpy()
                out[idx] = batch["image"].numpy()
                bar.update(len(idx))
        return out


def locality_order(centers: np.ndarray) -> np.ndarray:
    """Order of observations along a Z-order (Morton) curve over their positions; ties by row.

    Consecutive observations in this order are close on the slide, whatever the order of the table (cell ids of a
    segmentation need not follow space). Batches cut from it read compact image areas, so every image chunk is
    decoded a few times per slide instead of once per batch.

    Parameters
    ----------
    centers
        ``(n, 2)`` positions (any unit).

    Returns
    -------
    ``(n,)`` int64 permutation of the rows.

    Examples
    --------
    >>> locality_order(np.array([[10.0, 10.0], [0.0, 0.0], [9.0, 9.0], [1.0, 0.0]])).tolist()
    [1, 3, 2, 0]
    """
    xy = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return np.zeros(0, dtype=np.int64)
    lo = xy.min(axis=0)
    extent = max(float((xy.max(axis=0) - lo).max()), 1e-12)
    cells = np.floor((xy - lo) / extent * (_MORTON_SIDE - 1)).astype(np.uint64)
    code = _spread_bits(cells[:, 0]) | (_spread_bits(cells[:, 1]) << np.uint64(1))
    return np.lexsort((np.arange(len(xy)), code)).astype(np.int64)


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Put the low 32 bits of ``v`` on the even bit positions of a uint64 (one coordinate of a Morton code)."""
    v = v & np.uint64(0xFFFFFFFF)
    for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F),
                        (2, 0x3333333333333333), (1, 0x5555555555555555)):  # fmt: skip
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def _check_patch_size(patch_um: Any, patch_px: Any) -> None:
    if (
        isinstance(patch_um, bool)
        or not isinstance(patch_um, int | float)
        or not (math.isfinite(patch_um) and patch_um > 0)
    ):
        raise ValueError(f"`patch_um` must be a positive number of microns; got {patch_um!r}.")
    if isinstance(patch_px, bool) or not isinstance(patch_px, int | np.integer) or patch_px < 1:
        raise ValueError(f"`patch_px` must be a positive integer; got {patch_px!r}.")


def _resize(window: np.ndarray, crop: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Resample the sub-pixel box ``crop`` (x0, y0, x1, y1) of a ``(c, h, w)`` uint8 window to ``(3, size, size)``."""
    if window.shape[0] == 1:
        window = np.repeat(window, 3, axis=0)
    hwc = np.ascontiguousarray(window[:3].transpose(1, 2, 0))
    resized = Image.fromarray(hwc).resize((size, size), resample=_RESAMPLE, box=crop)
    return np.asarray(resized).transpose(2, 0, 1)


def patch_dataset(
    data: SpatialData | AnnData | SpatialInput,
    *,
    table_key: str | None = None,
    image_key: str | None = None,
    mpp: float | None = None,
    patch_um: float = DEFAULT_PATCH_UM,
    patch_px: int = DEFAULT_PATCH_PX,
    library_id: str | None = None,
) -> PatchDataset:
    """H&E patches of fixed physical size centred on each observation, as a torch Dataset.

    Patches are ``patch_um`` microns wide whatever the scanner resolution, resampled to ``patch_px`` pixels with
    an antialiasing filter; parts beyond the image edge are white (255), like bare glass. Nothing is read until
    items are requested, and then only the small window around each observation, from the pyramid level
    closest to ``patch_um / patch_px`` microns per pixel (never a coarser one when a finer one exists).

    Parameters
    ----------
    data
        A SpatialData, an AnnData with spatial coordinates, or a :class:`~storm_sc.io.SpatialInput` from
        :func:`storm_sc.io.resolve`.
    table_key, image_key, mpp, library_id
        Passed to :func:`storm_sc.io.resolve` to choose the table and image and to set the physical scale;
        only valid when ``data`` is not already a SpatialInput.
    patch_um
        Side of a patch in microns.
    patch_px
        Side of a patch in pixels.

    Returns
    -------
    A :class:`PatchDataset` with one item per table row, in table order: ``{"image": uint8 tensor
    (3, patch_px, patch_px), "index": row}``.

    Examples
    --------
    >>> import storm_sc as st
    >>> from torch.utils.data import DataLoader
    >>> ds = st.pp.patch_dataset(sdata, patch_um=112, patch_px=224)  # doctest: +SKIP
    >>> batch = next(iter(DataLoader(ds, batch_size=32, num_workers=2)))  # doctest: +SKIP
    >>> batch["image"].shape  # doctest: +SKIP
    torch.Size([32, 3, 224, 224])
    """
    _check_patch_size(patch_um, patch_px)
    si = as_spatial_input(
        data, caller="patch_dataset", table_key=table_key, image_key=image_key, mpp=mpp, library_id=library_id
    )
    return PatchDataset(si, patch_um=patch_um, patch_px=patch_px)
