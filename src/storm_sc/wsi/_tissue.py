"""Tissue detection on a slide thumbnail: Otsu on saturation, then morphological clean-up in microns."""

from __future__ import annotations

import numpy as np

from ._reader import _check_mpp

# Glass, fiducial dots, dust and out-of-focus background are grey (unsaturated); stained tissue is pink/purple.
# Otsu never goes below this floor, so a blank slide yields no tissue instead of splitting background noise.
DEFAULT_MIN_SATURATION = 0.07
# Pixels darker than this value (0-1) are slide labels, black pen, scanner edges or black padding, not tissue.
_MIN_VALUE = 0.25
# Otsu's threshold is also fitted on the pixels below this saturation alone: marker ink (about 0.75) on 1% of a slide
# otherwise lifted it above the tissue's, and the slide lost all its tissue. Stained tissue is mostly below it (99th
# percentile 0.41-0.89 on the Visium FFPE, her2st and bulb images here), and it still counts as tissue above it.
_OTSU_MAX_SATURATION = 0.6
# Otsu splits two populations, glass and tissue. An image that is all tissue (a region exported from a slide, a TMA
# core cropped tight) has no glass, and Otsu then split pale eosin from haematoxylin: a crop from inside a her2st
# tumour lost 40% of its tissue. There, the pixels below Otsu's threshold are tissue-coloured (median saturation 0.19,
# against 0.02-0.08 for the lower class of every Visium FFPE, her2st and bulb image here) and almost none is as grey
# as glass (below 0.08: 0-2% of the pixels of all-tissue her2st crops, 3-6% with 4-5% of glass in the crop, 10-22%
# with a fifth). Only then is the floor the threshold: a crop holding some glass, or tinted glass, keeps Otsu's.
_PALE_TISSUE_MEDIAN_SATURATION = 0.14
_GLASS_SATURATION = 0.08
_NO_GLASS_SHARE = 0.02
# Clean-up sizes in microns: gaps bridged between neighbouring tissue pieces, smallest fragment kept, largest hole
# (fat, lumen, tear) filled.
CLOSING_UM = 30.0
MIN_FRAGMENT_UM2 = 150.0**2
MAX_HOLE_UM2 = 200.0**2


def _green_dominant(rgb: np.ndarray) -> np.ndarray:
    """Green the strongest channel: green pen or marker; haematoxylin and eosin never are."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    return (g > r + 10) & (g > b + 10)


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of ``values``; 1.0 (nothing above it) where they do not vary, as on blank glass."""
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values)) if values.size and np.ptp(values) > 0 else 1.0


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value in ``[0, 1]`` of an ``(h, w, 3)`` uint8 RGB image."""
    x = rgb.astype(np.float32) / 255.0
    mx, mn = x.max(axis=-1), x.min(axis=-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0).astype(np.float32)
    return sat, mx


def detect_tissue(
    rgb: np.ndarray,
    *,
    mpp: float,
    min_saturation: float = DEFAULT_MIN_SATURATION,
    threshold: float | None = None,
) -> np.ndarray:
    """Tissue mask of an H&E thumbnail.

    The saturation threshold is Otsu's over the pixels that are neither dark (labels, black pen, scanner edges) nor
    green-dominant (green pen) nor as saturated as marker ink, never below ``min_saturation``; it is
    ``min_saturation`` itself for an image without glass (the pixels below Otsu's threshold too saturated to be glass,
    and almost none as grey as glass: a region exported from inside the tissue, whose pale eosin Otsu would cut
    away). The mask is then
    closed (30 um), stripped of fragments below (150 um)^2 and of holes below (200 um)^2 filled, all converted to
    the thumbnail's pixel size.

    Parameters
    ----------
    rgb
        ``(h, w, 3)`` uint8 thumbnail.
    mpp
        Microns per thumbnail pixel (sets the clean-up sizes).
    min_saturation
        Floor of the automatic threshold.
    threshold
        A fixed saturation threshold instead of Otsu's.

    Returns
    -------
    ``(h, w)`` bool mask. Blue or red marker ink, whose colours overlap haematoxylin's and eosin's, is not told
    apart from tissue: it cannot hide the tissue, but a pen line over glass is kept in the mask.

    Examples
    --------
    >>> import numpy as np
    >>> from storm_sc.wsi import detect_tissue
    >>> img = np.full((64, 64, 3), 240, np.uint8)
    >>> img[16:48, 16:48] = (180, 90, 160)  # a pink-purple square on glass
    >>> int(detect_tissue(img, mpp=10.0).sum())
    1024
    """
    from skimage import morphology

    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"`rgb` must be an (h, w, 3) uint8 image; got {rgb.shape} {rgb.dtype}.")
    mpp = _check_mpp(mpp, "`mpp` (microns per thumbnail pixel)")
    sat, value = saturation_value(rgb)
    bright = (value >= _MIN_VALUE) & ~_green_dominant(rgb)
    if threshold is None:
        candidates = sat[bright]
        # The lower of the two fits: without the ink-like pixels (ink cannot lift it), and with all (tissue stained
        # as strongly as ink everywhere, which the first fit would not see, is still found).
        otsu = min(_otsu(candidates[candidates < _OTSU_MAX_SATURATION]), _otsu(candidates))
        below = candidates[candidates <= otsu]
        pale_tissue = len(below) and float(np.median(below)) > _PALE_TISSUE_MEDIAN_SATURATION
        if pale_tissue and float(np.mean(candidates < _GLASS_SATURATION)) < _NO_GLASS_SHARE:
            otsu = min_saturation  # no glass to tell apart: the lower class is pale tissue
        threshold = max(otsu, min_saturation)
    mask = bright & (sat > threshold)
    radius = max(1, round(CLOSING_UM / mpp))
    if min(mask.shape) > 2 * radius:
        mask = morphology.closing(mask, morphology.disk(radius))
    mask = morphology.remove_small_objects(mask, max_size=max(1, int(MIN_FRAGMENT_UM2 / mpp**2)))
    mask = morphology.remove_small_holes(mask, max_size=max(1, int(MAX_HOLE_UM2 / mpp**2)))
    return mask
