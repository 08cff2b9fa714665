"""Does the H&E line up with the observations? Where the tissue is, the observations should be."""

from __future__ import annotations

import numpy as np

from storm_sc._settings import logger

from ._elements import levels
from ._spatial_input import SpatialInput
from ._tiles import thumbnail

# A coarse overview is enough to tell tissue from glass at the scale of a misalignment (~0.3 s on a slide).
_OVERVIEW_SIDE = 512
# Measured on every slide with an H&E image here (DLPFC, her2st C2-C6, 12 Visium FFPE, 2 bulb sections, the Xenium
# lung crop): 88-100% of the observations lie on the detected tissue, at least 0.87 of the way from chance (the
# image's tissue share) to all of them. The Xenium crop shifted by 1.2 mm: 65% on tissue, -0.05 of the way (the crop
# is 67% tissue); its x and y swapped: 71%, 0.11; DLPFC's image shifted by 2000 px: 67%, 0.51.
# At the 512-pixel overview aligned slides read 72-100% on tissue and a lift of at least 0.70; the thresholds leave
# a wide margin, so that only a gross misalignment is flagged.
_MIN_ON_TISSUE = 0.8
_MIN_LIFT = 0.3
# An image without a pyramid level near the overview's size is decoded whole to make it (her2st's JPEGs: ~10 s);
# the check is skipped there rather than slow every call.
_MAX_LEVEL_SIDE = 8 * _OVERVIEW_SIDE
# Images nearly all tissue, or with almost none found, cannot tell an aligned table from a misaligned one.
_INFORMATIVE_SHARE = (0.01, 0.95)


def on_tissue(slide: SpatialInput) -> tuple[float, float]:
    """The share of ``slide``'s observations inside its image that lie on tissue, and the image's tissue share.

    The tissue is found on a coarse overview of the image (:func:`storm_sc.wsi.detect_tissue`).

    Examples
    --------
    >>> import storm_sc as st
    >>> on_tissue(st.io.resolve(st.datasets.toy(n_obs=100, seed=0)))  # the toy image is all tissue
    (1.0, 1.0)
    """
    from storm_sc.wsi import detect_tissue

    overview, factor = thumbnail(slide.image, side=_OVERVIEW_SIDE)
    mask = detect_tissue(overview, mpp=slide.mpp * factor)
    px = np.asarray(slide.centers_px) / factor
    inside = (px[:, 0] >= 0) & (px[:, 1] >= 0) & (px[:, 0] < mask.shape[1]) & (px[:, 1] < mask.shape[0])
    if not inside.any():
        return float("nan"), float(mask.mean())
    rows, cols = px[inside, 1].astype(np.int64), px[inside, 0].astype(np.int64)
    return float(mask[rows, cols].mean()), float(mask.mean())


def warn_if_misaligned(slide: SpatialInput) -> None:
    """Warn when the observations lie on glass of their H&E image far more than aligned slides do.

    A shifted, flipped or swapped image, or another section's, mostly still covers the observations (the tools refuse
    only observations outside the image); embeddings and predictions then read glass or the wrong tissue.
    """
    if not slide.has_image or slide.centers_px is None or slide.mpp is None or not slide.n_obs:
        return
    if min(max(int(lv.sizes["x"]), int(lv.sizes["y"])) for lv in levels(slide.image)) > _MAX_LEVEL_SIDE:
        logger.debug("Slide %r: no small pyramid level of image %r; alignment not checked.", slide.library_id,
                     slide.image_key)  # fmt: skip
        return
    observations, share = on_tissue(slide)
    if not (_INFORMATIVE_SHARE[0] <= share <= _INFORMATIVE_SHARE[1]) or not np.isfinite(observations):
        return
    lift = (observations - share) / (1.0 - share)  # 0: where random positions would fall; 1: all on tissue
    if observations < _MIN_ON_TISSUE and lift < _MIN_LIFT:
        logger.warning(
            "Slide %r: only %.0f%% of its observations lie on tissue in image %r (the image is %.0f%% tissue; aligned "
            "slides have 88-100%%): the H&E may not line up with the table (shifted, flipped, x and y swapped, or "
            "another section's image), or the table holds spots off the tissue. Check the overlay (st.pl.domains, "
            "st.pl.napari) before reading embeddings or predictions from this image.",
            slide.library_id,
            100 * observations,
            slide.image_key,
            100 * share,
        )
