"""Opening a whole-slide image: pyramidal TIFF/SVS through tiffslide, PNG/JPEG through PIL, in microns."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from storm_sc._settings import logger, warn_once

# White, like bare glass: what a read shows beyond the edge of the scanned image.
PAD_VALUE = 255
# A pixel size outside this range (microns) is not a microscope scan: TIFF/JPEG writers put 72 or 96 dpi (350 um/px)
# in files that carry no physical size at all, and trusting that would tile the slide 100x too coarsely.
PLAUSIBLE_MPP = (0.02, 30.0)
# A given mpp further than this from the one the file records (when that is plausible) is most likely a mistake.
MPP_MISMATCH = 0.10
# A level within this factor of the target resolution counts as "not coarser" (float noise in mpp).
_LEVEL_TOLERANCE = 1.01
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8", ".bif", ".scn", ".qptiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MICRONS_PER_INCH = 25_400.0
# Plain images get power-of-two virtual levels down to this many pixels on the short side.
_MIN_VIRTUAL_LEVEL_PX = 256
# Level pixels read at once per band when a thumbnail is assembled (bounds memory on non-pyramidal files).
_BAND_PIXELS = 16_000_000


class WholeSlide:
    """A whole-slide image opened for reading at physical scale.

    Use :func:`open_slide`. Pixel coordinates are ``(x, y)`` in the full-resolution level (level 0); level ``l``
    pixel ``j`` covers level-0 pixels ``[j * s, (j + 1) * s)`` where ``s`` is that level's downsample along the axis.
    Nothing but the metadata is read when the slide is opened.

    Parameters
    ----------
    path
        The file.
    backend
        The reader of that file format, chosen by :func:`open_slide` (internal).
    mpp, mpp_source
        As the attributes below.

    Attributes
    ----------
    path
        The file.
    mpp
        Microns per pixel of level 0.
    mpp_source
        ``"metadata"`` (read from the file) or ``"given"`` (the ``mpp=`` argument).
    level_dimensions
        ``(width, height)`` of every level, finest first.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> import storm_sc as st
    >>> tmp = tempfile.TemporaryDirectory()
    >>> rgb = np.full((512, 512, 3), 240, np.uint8)  # glass ...
    >>> rgb[128:384, 128:384] = (180, 90, 160)  # ... with a square of tissue
    >>> Image.fromarray(rgb).save(f"{tmp.name}/slide.png")
    >>> slide = st.wsi.open_slide(f"{tmp.name}/slide.png", mpp=0.5)
    >>> slide
    WholeSlide('slide.png', 512 x 512 px, 2 level(s), 0.5 um/px from given)
    >>> slide.level_dimensions, slide.best_level(1.0)
    (((512, 512), (256, 256)), 1)
    >>> slide.read_level(0, 124, 200, 8, 1)[0, :, 0].tolist()  # across the tissue edge at x = 128
    [240, 240, 240, 240, 180, 180, 180, 180]
    >>> slide.close()
    >>> tmp.cleanup()
    """

    def __init__(self, path: Path, backend: _Backend, mpp: float, mpp_source: str) -> None:
        self.path = path
        self._backend = backend
        self.mpp = float(mpp)
        self.mpp_source = mpp_source
        self.level_dimensions: tuple[tuple[int, int], ...] = backend.level_dimensions

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0 in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    def level_scale(self, level: int) -> tuple[float, float]:
        """Level-0 pixels per pixel of ``level`` along x and y."""
        w0, h0 = self.dimensions
        w, h = self.level_dimensions[level]
        return w0 / w, h0 / h

    def level_mpp(self, level: int) -> float:
        """Microns per pixel of ``level`` (mean over the two axes)."""
        sx, sy = self.level_scale(level)
        return self.mpp * 0.5 * (sx + sy)

    def best_level(self, target_mpp: float) -> int:
        """Return the coarsest level still at least as fine as ``target_mpp`` (level 0 when none is).

        Reading the coarsest sufficient level keeps reads small; never going coarser keeps the detail, so the
        final resize only ever downsamples.
        """
        best = 0
        for level in range(self.level_count):
            if self.level_mpp(level) <= target_mpp * _LEVEL_TOLERANCE:
                best = level
        return best

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Pixels ``[y, y + height) x [x, x + width)`` of ``level`` as ``(height, width, 3)`` uint8 RGB.

        Parts of the window outside the image are white, so tiles at the slide's edge keep their size.

        Parameters
        ----------
        level
            Pyramid level.
        x, y
            Top-left corner in pixels of that level (may be negative).
        width, height
            Window size in pixels of that level.

        Returns
        -------
        The window.
        """
        w_l, h_l = self.level_dimensions[level]
        out = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
        x0, x1 = max(x, 0), min(x + width, w_l)
        y0, y1 = max(y, 0), min(y + height, h_l)
        if x0 < x1 and y0 < y1:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._backend.read(level, x0, y0, x1, y1)
        return out

    def read_box(self, box: tuple[float, float, float, float], *, level: int, size: tuple[int, int]) -> np.ndarray:
        """Read the level-0 box ``(x0, y0, x1, y1)`` (sub-pixel) from ``level``, resampled to ``size``.

        Parameters
        ----------
        box
            Left, top, right, bottom in level-0 pixels; may extend beyond the image (white there).
        level
            Pyramid level to read from.
        size
            Output ``(width, height)``.

        Returns
        -------
        ``(height, width, 3)`` uint8 RGB.
        """
        sx, sy = self.level_scale(level)
        bx0, by0, bx1, by1 = box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy
        # The resampling filter's support grows with the downsampling factor; read that much context around the box.
        margin = math.ceil(max(1.0, (bx1 - bx0) / size[0], (by1 - by0) / size[1])) + 1
        x0, y0 = math.floor(bx0) - margin, math.floor(by0) - margin
        x1, y1 = math.ceil(bx1) + margin, math.ceil(by1) + margin
        window = self.read_level(level, x0, y0, x1 - x0, y1 - y0)
        crop = (bx0 - x0, by0 - y0, bx1 - x0, by1 - y0)
        return resample(window, crop, size)

    def thumbnail(self, target_mpp: float) -> tuple[np.ndarray, float]:
        """Read the whole slide at ``target_mpp`` microns per pixel (never finer than level 0), in bands.

        Parameters
        ----------
        target_mpp
            Wanted microns per thumbnail pixel.

        Returns
        -------
        ``(thumbnail, downsample)``: ``(h, w, 3)`` uint8 and the level-0 pixels per thumbnail pixel; thumbnail
        pixel ``j`` covers level-0 ``[j * downsample, (j + 1) * downsample)``.
        """
        f = max(target_mpp / self.mpp, 1.0)
        w0, h0 = self.dimensions
        width, height = max(1, math.ceil(w0 / f)), max(1, math.ceil(h0 / f))
        level = self.best_level(self.mpp * f)
        _, sy = self.level_scale(level)
        # Bands of output rows whose source window holds about _BAND_PIXELS level pixels: bounded memory on huge
        # single-level TIFFs, one read for small or pyramidal ones.
        source_rows = max(1, _BAND_PIXELS // self.level_dimensions[level][0])
        rows_per_band = max(1, int(source_rows / (f / sy)))
        out = np.empty((height, width, 3), dtype=np.uint8)
        for r0 in range(0, height, rows_per_band):
            r1 = min(r0 + rows_per_band, height)
            out[r0:r1] = self.read_box((0.0, r0 * f, width * f, r1 * f), level=level, size=(width, r1 - r0))
        return out, f

    def close(self) -> None:
        """Release the file."""
        self._backend.close()

    def __enter__(self) -> WholeSlide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"WholeSlide({self.path.name!r}, {w} x {h} px, {self.level_count} level(s), "
            f"{self.mpp:.4g} um/px from {self.mpp_source})"
        )


class _Backend:
    level_dimensions: tuple[tuple[int, int], ...]

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def metadata_mpp(self) -> float | None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to release by default."""


class _TiffBackend(_Backend):
    """Pyramidal TIFF, SVS and other TIFF-based formats through tiffslide (pure Python, over tifffile)."""

    def __init__(self, path: Path) -> None:
        import tiffslide

        try:
            self._slide = tiffslide.TiffSlide(path)
            props = self._slide.properties
        except Exception as err:  # tifffile raises many types for files it cannot parse
            raise ValueError(f"Cannot read {path} as a (pyramidal) TIFF slide: {err}") from err
        self._props = props
        self._axes = props["tiffslide.series-axes"]
        if self._axes not in ("YXS", "CYX", "YX"):
            raise ValueError(f"{path}: image axes {self._axes!r} are not a 2-D RGB slide.")
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        group = self._slide.zarr_group
        # Composite series (several located sub-images per level) are assembled by tiffslide's read_region;
        # plain pyramids are sliced directly in level pixels, which avoids rounding level-0 locations.
        self._direct = "tiffslide.series-composition" not in group.attrs
        self._group = group

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        if self._direct:
            arr = self._group[str(level)]
            if self._axes == "YXS":
                out = np.asarray(arr[y0:y1, x0:x1])
            elif self._axes == "CYX":
                out = np.moveaxis(np.asarray(arr[:, y0:y1, x0:x1]), 0, -1)
            else:
                out = np.asarray(arr[y0:y1, x0:x1])[..., None]
        else:
            sx, sy = (self.level_dimensions[0][0] / self.level_dimensions[level][0],
                      self.level_dimensions[0][1] / self.level_dimensions[level][1])  # fmt: skip
            out = self._slide.read_region((round(x0 * sx), round(y0 * sy)), level, (x1 - x0, y1 - y0), as_array=True,
                                          padding=True)  # fmt: skip
        return _as_rgb_uint8(out, self._slide)

    def metadata_mpp(self) -> float | None:
        mx, my = self._props.get("tiffslide.mpp-x"), self._props.get("tiffslide.mpp-y")
        values = [float(v) for v in (mx, my) if v is not None and math.isfinite(float(v)) and float(v) > 0]
        return float(np.mean(values)) if values else None

    def close(self) -> None:
        self._slide.close()


class _ImageBackend(_Backend):
    """PNG/JPEG as a pyramid of power-of-two levels, each decoded once when first read.

    PIL cannot read a window of a compressed image, so a level is decoded whole; coarse levels of JPEGs decode
    straight at the reduced scale (DCT scaling), so a thumbnail or a coarse tiling never decodes full resolution.
    """

    def __init__(self, path: Path) -> None:
        try:
            with warnings.catch_warnings():
                # Large scans are legitimate here; PIL's hard limit (twice this warning's) still applies.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    width, height = int(im.width), int(im.height)
                    self._info = dict(im.info)
        except Image.DecompressionBombError as err:
            raise ValueError(
                f"{path} is too large to read as a plain image ({err}). Convert it to a tiled pyramidal TIFF "
                "(e.g. `tifffile.imwrite(..., tile=(256, 256), subifds=...)` or `vips tiffsave --pyramid --tile`)."
            ) from err
        except OSError as err:
            raise ValueError(f"Cannot read {path} as an image: {err}") from err
        self._path = path
        factors = [1]
        while min(width, height) / (factors[-1] * 2) >= _MIN_VIRTUAL_LEVEL_PX:
            factors.append(factors[-1] * 2)
        self._factors = factors
        self.level_dimensions = tuple((math.ceil(width / f), math.ceil(height / f)) for f in factors)
        self._levels: dict[int, np.ndarray] = {}

    def _level(self, level: int) -> np.ndarray:
        if level not in self._levels:
            size = self.level_dimensions[level]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(self._path) as im:
                    if level > 0:
                        im.draft("RGB", size)  # JPEG: decode at the largest DCT scale still >= size
                    rgb = _to_rgb(im)
                    if rgb.size != size:
                        rgb = rgb.resize(size, Image.Resampling.BOX)
                    self._levels[level] = np.asarray(rgb)
        return self._levels[level]

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self._level(level)[y0:y1, x0:x1]

    def metadata_mpp(self) -> float | None:
        dpi = self._info.get("dpi")
        if not dpi:
            return None
        try:
            values = [float(d) for d in dpi if float(d) > 0]
        except (TypeError, ValueError):
            return None
        return _MICRONS_PER_INCH / float(np.mean(values)) if values else None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "P", "PA"):
        # Transparent pixels are background: composite over white rather than black.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I", "F"):
        raise ValueError(f"Image mode {im.mode!r} is not 8-bit; whole-slide H&E must be 8-bit RGB.")
    return im.convert("RGB")


def _as_rgb_uint8(arr: np.ndarray, slide: Any) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise ValueError(f"{slide}: pixels are {arr.dtype}; whole-slide H&E must be 8-bit RGB.")
    if arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] == 4:
        rgb, alpha = arr[..., :3].astype(np.float32), arr[..., 3:].astype(np.float32) / 255.0
        return (rgb * alpha + PAD_VALUE * (1.0 - alpha)).round().astype(np.uint8)
    if arr.shape[-1] != 3:
        raise ValueError(f"{slide}: {arr.shape[-1]} channels; whole-slide H&E must be RGB.")
    return arr


def _check_mpp(mpp: Any, what: str) -> float:
    if isinstance(mpp, bool) or not isinstance(mpp, int | float | np.floating | np.integer):
        raise TypeError(f"{what} must be a number of microns per pixel; got {type(mpp).__name__}.")
    mpp = float(mpp)
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"{what} must be a positive number of microns per pixel; got {mpp!r}.")
    return mpp


def open_slide(path: str | os.PathLike, *, mpp: float | None = None) -> WholeSlide:
    """Open a whole-slide image (pyramidal TIFF, SVS and other TIFF-based formats, or PNG/JPEG).

    Parameters
    ----------
    path
        The slide file.
    mpp
        Microns per pixel of the full-resolution level. Default: read from the file (the scanner's metadata, or
        the TIFF/PNG/JPEG resolution tags); an error when the file does not record a plausible one.

    Returns
    -------
    The opened :class:`WholeSlide`.

    Examples
    --------
    >>> from storm_sc.wsi import open_slide
    >>> slide = open_slide("slide.svs")  # doctest: +SKIP
    >>> slide.mpp, slide.dimensions  # doctest: +SKIP
    (0.2527, (98304, 75264))
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No slide file at {path}.")
    given = None if mpp is None else _check_mpp(mpp, "`mpp`")
    suffix = path.suffix.lower()
    backend: _Backend
    if suffix in IMAGE_SUFFIXES:
        backend = _ImageBackend(path)
    elif suffix in TIFF_SUFFIXES:
        backend = _TiffBackend(path)
    else:
        raise ValueError(
            f"{path}: unsupported slide format {suffix!r}. Supported: TIFF-based whole-slide formats "
            f"{list(TIFF_SUFFIXES)} and plain images {list(IMAGE_SUFFIXES)}; convert others to a pyramidal TIFF."
        )
    found = backend.metadata_mpp()
    lo, hi = PLAUSIBLE_MPP
    if given is not None:
        if found is not None and lo <= found <= hi and abs(found - given) > MPP_MISMATCH * given:
            # A scanner's own pixel size rarely is wrong; a typed one (7.8 for 0.78) often is, and silently tiles
            # the slide at the wrong scale.
            # once: st.tl.slide_features opens each slide more than once per call, and files reused unchanged too
            warn_once("%s: using mpp=%.4g um/px as given, but the file records %.4g um/px; check `mpp`.", path, given,
                      found)  # fmt: skip
        elif found is not None and abs(found - given) > 0.05 * given:
            logger.info("%s: using mpp=%.4g as given (the file records %.4g).", path.name, given, found)
        return WholeSlide(path, backend, given, "given")
    if found is None or not lo <= found <= hi:
        backend.close()
        recorded = "records none" if found is None else f"records {found:.4g} um/px, not a microscope scan"
        raise ValueError(
            f"{path}: the microns per pixel are unknown (the file {recorded}). Pass `mpp=` (e.g. 0.25 for a "
            "40x scan, 0.5 for 20x)."
        )
    return WholeSlide(path, backend, found, "metadata")


def resample(window: np.ndarray, crop: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """Resample the sub-pixel box ``crop`` (x0, y0, x1, y1) of an ``(h, w, 3)`` uint8 window to ``size`` (w, h).

    Bilinear with PIL's support scaling is a triangle (antialiasing) filter when downsampling and never overshoots,
    so stain colours stay in range.
    """
    im = Image.fromarray(window)
    return np.asarray(im.resize(tuple(int(s) for s in size), Image.Resampling.BILINEAR, box=crop))
