"""Opening H&E image files lazily (JPEG/PNG decoded on first read, TIFF read by tile), shared by the file readers."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from storm_sc._settings import logger

_PIL_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
_TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".svs"}
_CHUNK = 1024
# Decoded JPEG/PNG pixels kept in memory, most recently used first out last. A legacy ST H&E is ~280 MB decoded:
# without a bound, a corpus of tens of such slides held every one of them for as long as its SpatialData lived.
DECODED_CACHE_BYTES = 2 * 1024**3


class _DecodedCache:
    """Decoded images by file token, evicting the least recently used beyond :data:`DECODED_CACHE_BYTES`.

    The image just decoded always stays, even when it alone exceeds the budget.
    """

    def __init__(self) -> None:
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str, decode: Any) -> np.ndarray:
        with self._lock:
            if token in self._items:
                self._items.move_to_end(token)
                return self._items[token]
            pixels = decode()
            self._items[token] = pixels
            while len(self._items) > 1 and sum(a.nbytes for a in self._items.values()) > DECODED_CACHE_BYTES:
                evicted, _ = self._items.popitem(last=False)
                logger.debug("releasing the decoded pixels of %s", evicted)
            return pixels

    def tokens(self) -> list[str]:
        with self._lock:
            return list(self._items)


DECODED = _DecodedCache()


class _DecodeOnce:
    """Array-like over a JPEG/PNG file that decodes the whole file on the first read and keeps it in :data:`DECODED`.

    JPEG cannot be decoded by tile, so the best that can be done lazily is to defer the decode until a pixel is
    needed and then keep it: without the cache every dask chunk (and every pyramid level) would decode the file
    again. The cache is bounded, so a slide read again after many others is decoded again.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], token: str) -> None:
        self.path = path
        self.shape = shape
        self.token = token
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def _read_file(self) -> np.ndarray:
        logger.debug("decoding %s", self.path)
        with _open_trusted(self.path) as im:
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))

    def __getitem__(self, key: Any) -> np.ndarray:
        return DECODED.get(self.token, self._read_file)[key]


# Serialises the moments PIL's pixel limit is lifted, so that two opens never restore each other's value.
_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _open_trusted(path: Path) -> Iterator[Any]:
    """``PIL.Image.open`` of an H&E file the user chose, whatever its size.

    PIL refuses images above twice its decompression-bomb limit (~179 Mpx), a guard against hostile files from the
    web; an H&E scan saved as JPEG is legitimately that large (a Visium full-resolution image is ~25,000 px square),
    and the user named the file. The limit is checked when the file is opened, so only the open runs without it.
    """
    from PIL import Image

    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    with im:
        yield im


def _file_token(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def open_image(image: str | os.PathLike | Any) -> Any:
    """Open an H&E image lazily: a file path becomes a dask array ``(y, x, c)``; arrays pass through unchanged.

    JPEG/PNG are decoded on first access and kept in a bounded cache shared by all files (:data:`DECODED_CACHE_BYTES`);
    TIFF is read by tile through ``tifffile``'s zarr store.
    """
    if not isinstance(image, str | os.PathLike):
        return image
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}. Pass the path of the H&E image (JPEG, PNG or TIFF).")
    suffix = path.suffix.lower()
    if suffix in _TIFF_SUFFIXES:
        import tifffile
        import zarr

        store = tifffile.imread(path, aszarr=True, series=0, level=0)
        arr = da.from_zarr(zarr.open(store, mode="r"))
        if arr.ndim == 3 and arr.shape[-1] not in (3, 4) and arr.shape[0] not in (1, 3, 4):
            raise ValueError(f"TIFF {path} has shape {arr.shape}; expected (y, x, 3) or (3, y, x) RGB.")
        return arr
    if suffix not in _PIL_SUFFIXES:
        raise ValueError(
            f"Unsupported image format {suffix!r} for {path}; pass a JPEG, PNG or TIFF file, or an array (y, x, 3)."
        )
    with _open_trusted(path) as im:
        width, height = im.size  # reads the header only
    token = _file_token(path)
    return da.from_array(
        _DecodeOnce(path, (height, width, 3), token),
        chunks=(_CHUNK, _CHUNK, 3),
        name=f"storm-image-{token}",
        lock=False,
        asarray=False,
        meta=np.empty((0, 0, 0), dtype=np.uint8),
    )


def image_size_yx(image: Any) -> tuple[int, int]:
    """Height and width of an ``(y, x, c)``, ``(c, y, x)`` or ``(y, x)`` image array."""
    shape = tuple(image.shape)
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    if shape[-1] in (3, 4) and shape[0] not in (3, 4):
        return int(shape[0]), int(shape[1])
    return int(shape[1]), int(shape[2])


def fraction_outside(centers_px: np.ndarray, size_yx: tuple[int, int]) -> float:
    """Fraction of ``(x, y)`` centres that fall outside an image of the given height and width."""
    h, w = size_yx
    x, y = centers_px[:, 0], centers_px[:, 1]
    return float(np.mean((x < 0) | (y < 0) | (x >= w) | (y >= h)))
