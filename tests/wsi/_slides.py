"""Small whole-slide files written by the tests themselves (pyramidal TIFF, PNG), with known content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

GLASS = np.array([243, 241, 246], dtype=np.float32)
# Two stain-like colours: haematoxylin-rich (purple) and eosin-rich (pink).
PURPLE = np.array([120, 70, 160], dtype=np.float32)
PINK = np.array([225, 130, 185], dtype=np.float32)


def write_pyramid(path: Path, rgb: np.ndarray, mpp: float | None, *, levels: int = 2, tile: int = 128) -> Path:
    """A tiled pyramidal TIFF (sub-IFD levels, 2x each), with the pixel size in its resolution tags when given."""
    kw = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(rgb, subifds=levels - 1, tile=(tile, tile), photometric="rgb", compression="zlib", **kw)
        level = rgb
        for _ in range(levels - 1):
            h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            level = level[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
            tw.write(level, subfiletype=1, tile=(tile, tile), photometric="rgb", compression="zlib")
    return path


def glass(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Empty slide background with a little scanner noise."""
    return np.clip(GLASS + rng.normal(0, 2.0, (*shape, 3)), 0, 255).astype(np.uint8)


def texture(shape: tuple[int, int], colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stained-tissue-like texture: the colour with blotchy darker 'nuclei' and noise."""
    h, w = shape
    base = np.broadcast_to(colour, (h, w, 3)).astype(np.float32).copy()
    nuclei = rng.random((h, w)) < 0.04
    base[nuclei] *= 0.55
    base += rng.normal(0, 8.0, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def blob_slide(size: tuple[int, int], rng: np.random.Generator, *, colour: np.ndarray = PURPLE,
               box: tuple[int, int, int, int] | None = None) -> np.ndarray:  # fmt: skip
    """Glass with one rectangle of tissue texture at ``box`` = (y0, y1, x0, x1) (default: the middle half)."""
    h, w = size
    rgb = glass(size, rng)
    y0, y1, x0, x1 = box or (h // 4, 3 * h // 4, w // 4, 3 * w // 4)
    rgb[y0:y1, x0:x1] = texture((y1 - y0, x1 - x0), colour, rng)
    return rgb
