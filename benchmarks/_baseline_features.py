"""Hand-crafted image features of the classical expression-from-H&E baselines.

Everything is computed in physical units: the windows around each spot are cut at a fixed ``work_mpp`` microns
per pixel (``st.pp.patch_dataset`` does this from any scanner resolution) and filter sizes and areas are given in
microns, so the same feature means the same thing on images scanned at different resolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import local_binary_pattern
from skimage.filters import sobel, threshold_otsu
from skimage.filters.rank import entropy
from skimage.morphology import disk
from tqdm.auto import tqdm

from storm_sc._settings import settings

_PERCENTILES = (10, 25, 50, 75, 90)
# Uniform LBP with 8 neighbours has P + 2 = 10 codes.
_LBP_POINTS = 8
_LBP_BINS = _LBP_POINTS + 2
# A pixel brighter than this (grey, 0-1) is glass, not tissue.
_BACKGROUND_GREY = 0.85
# Blobs of hematoxylin smaller than this (um^2) are stain noise, not nuclei.
_MIN_NUCLEUS_UM2 = 8.0
_ENTROPY_RADIUS_UM = 3.0


def _check_windows(windows: np.ndarray) -> np.ndarray:
    windows = np.asarray(windows)
    if windows.ndim != 4 or windows.shape[-1] != 3 or windows.shape[1] != windows.shape[2]:
        raise ValueError(
            f"`windows` must be (n_spots, side, side, 3) RGB arrays; got shape {windows.shape}. Patches from "
            "`st.pp.patch_dataset(...).to_numpy()` are (n, 3, side, side): pass `patches.transpose(0, 2, 3, 1)`."
        )
    if windows.dtype != np.uint8:
        raise ValueError(f"`windows` must be uint8 (0-255), got {windows.dtype}.")
    return windows


def _check_fields(fields_um: Sequence[float]) -> tuple[float, ...]:
    fields = tuple(float(f) for f in fields_um)
    if not fields or any(not (np.isfinite(f) and f > 0) for f in fields):
        raise ValueError(
            f"`fields_um` must be a non-empty list of positive sizes in microns, e.g. (55, 110, 220); got {fields_um!r}."
        )
    if len(set(fields)) != len(fields):
        raise ValueError(f"`fields_um` lists a size twice: {fields_um!r}.")
    return fields


def _center_crop(arr: np.ndarray, side: int) -> np.ndarray:
    off = (arr.shape[0] - side) // 2
    return arr[off : off + side, off : off + side]


def _window_maps(rgb_u8: np.ndarray, work_mpp: float) -> dict[str, np.ndarray]:
    rgb = rgb_u8.astype(np.float32) / 255.0
    grey = rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    grey_u8 = np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
    hed = rgb2hed(rgb_u8).astype(np.float32)
    radius = max(1, round(_ENTROPY_RADIUS_UM / work_mpp))
    return {
        "rgb": rgb,
        "grey": grey,
        "hed": hed,
        "sobel_grey": sobel(grey).astype(np.float32),
        "sobel_h": sobel(hed[..., 0]).astype(np.float32),
        "lap_grey": ndimage.laplace(grey).astype(np.float32),
        "lap_h": ndimage.laplace(hed[..., 0]).astype(np.float32),
        "entropy": entropy(grey_u8, disk(radius)).astype(np.float32),
        "lbp": local_binary_pattern(grey_u8, _LBP_POINTS, 1, method="uniform").astype(np.int64),
        "h_smooth": ndimage.gaussian_filter(hed[..., 0], sigma=1.0 / work_mpp),
    }


def _field_features(maps: dict[str, np.ndarray], side: int, h_threshold: float, work_mpp: float) -> list[float]:
    m = {k: _center_crop(v, side) for k, v in maps.items()}
    feats: list[float] = []
    for c in range(3):
        ch = m["hed"][..., c].ravel()
        feats += [float(ch.mean()), float(ch.std()), *np.percentile(ch, _PERCENTILES).tolist()]
    rgb = m["rgb"].reshape(-1, 3)
    feats += rgb.mean(0).tolist() + rgb.std(0).tolist()
    grey = m["grey"].ravel()
    feats += [float(grey.mean()), float(grey.std()), *np.percentile(grey, (10, 50, 90)).tolist()]
    sg = m["sobel_grey"].ravel()
    feats += [float(sg.mean()), float(sg.std()), *np.percentile(sg, (50, 90)).tolist()]
    sh = m["sobel_h"].ravel()
    feats += [float(sh.mean()), float(sh.std())]
    feats += [float(m["lap_grey"].var()), float(m["lap_h"].var())]
    ent = m["entropy"].ravel()
    feats += [float(ent.mean()), float(ent.std())]
    lbp = np.bincount(m["lbp"].ravel(), minlength=_LBP_BINS)[:_LBP_BINS]
    feats += (lbp / max(lbp.sum(), 1)).tolist()
    nuclei = m["h_smooth"] > h_threshold
    labels, n_blobs = ndimage.label(nuclei)
    min_px = _MIN_NUCLEUS_UM2 / work_mpp**2
    if n_blobs:
        areas = np.bincount(labels.ravel())[1:]
        areas = areas[areas >= min_px]
    else:
        areas = np.zeros(0)
    area_um2 = (side * work_mpp) ** 2
    feats += [
        float(nuclei.mean()),
        float(len(areas) / area_um2 * 1e4),  # nuclei per 100 x 100 um
        float(areas.mean() * work_mpp**2) if len(areas) else 0.0,
        float((grey < _BACKGROUND_GREY).mean()),
    ]
    return feats


def _field_feature_names(field_um: float) -> list[str]:
    tag = f"f{field_um:g}um"
    names = []
    for ch in ("hema", "eosin", "dab"):
        names += [f"{tag}_{ch}_mean", f"{tag}_{ch}_std"] + [f"{tag}_{ch}_p{p}" for p in _PERCENTILES]
    names += [f"{tag}_{c}_mean" for c in "rgb"] + [f"{tag}_{c}_std" for c in "rgb"]
    names += [f"{tag}_grey_{s}" for s in ("mean", "std", "p10", "p50", "p90")]
    names += [f"{tag}_sobel_{s}" for s in ("mean", "std", "p50", "p90")]
    names += [f"{tag}_sobel_hema_mean", f"{tag}_sobel_hema_std", f"{tag}_laplace_var", f"{tag}_laplace_hema_var"]
    names += [f"{tag}_entropy_mean", f"{tag}_entropy_std"]
    names += [f"{tag}_lbp{i}" for i in range(_LBP_BINS)]
    names += [
        f"{tag}_nuclear_fraction",
        f"{tag}_nuclei_per_1e4um2",
        f"{tag}_nucleus_area_um2",
        f"{tag}_tissue_fraction",
    ]
    return names


def window_side_px(field_um: float, work_mpp: float) -> int:
    """Side in pixels of a ``field_um`` micron window sampled at ``work_mpp`` microns per pixel.

    Parameters
    ----------
    field_um
        Side of the window in microns.
    work_mpp
        Microns per pixel.

    Returns
    -------
    The side, at least 3 pixels (the smallest window the 3 x 3 filters can run on).

    Examples
    --------
    >>> window_side_px(110, 1.0)
    110
    """
    if not (np.isfinite(field_um) and field_um > 0 and np.isfinite(work_mpp) and work_mpp > 0):
        raise ValueError(f"`field_um` and `work_mpp` must be positive numbers, got {field_um!r} and {work_mpp!r}.")
    return max(3, round(field_um / work_mpp))


def stain_texture_features(
    windows: np.ndarray,
    *,
    work_mpp: float,
    fields_um: Sequence[float] = (55.0, 110.0, 220.0),
    verbose: bool | None = None,
) -> pd.DataFrame:
    """Stain, intensity and texture statistics of the tissue around each spot, at several field sizes.

    ``windows`` are centred on the spots and cover the largest field; each smaller field is their central square.
    For each field the features are: per H&E stain channel (colour deconvolution, :func:`skimage.color.rgb2hed`)
    the mean, standard deviation and 10/25/50/75/90th percentiles; RGB means and standard deviations; grey-level
    statistics; Sobel gradient magnitude of the grey and hematoxylin images; Laplacian variance (fine texture);
    mean and spread of local entropy; a uniform local-binary-pattern histogram; and a nuclei proxy (smoothed
    hematoxylin above an Otsu threshold: covered fraction, blob density, mean blob area) with the tissue
    (non-glass) fraction.

    The Otsu threshold is taken from the pixels of ``windows`` themselves (pass one slide at a time): it absorbs
    slide-to-slide stain intensity and uses no expression data.

    Parameters
    ----------
    windows
        ``(n_spots, side, side, 3)`` uint8 RGB windows of one slide, ``side = window_side_px(max(fields_um), work_mpp)``,
        e.g. from ``st.pp.patch_dataset(sdata, patch_um=max(fields_um), patch_px=side).to_numpy()`` (transposed
        to channels last).
    work_mpp
        Microns per pixel of ``windows``; filters and areas are scaled with it.
    fields_um
        Field sizes in microns.
    verbose
        Show a progress bar; defaults to ``storm_sc.settings``.

    Returns
    -------
    ``(n_spots, n_features)`` float64 frame, columns named ``f<field>um_<feature>``, rows in the order of
    ``windows``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> windows = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    >>> stain_texture_features(windows, work_mpp=1.0, fields_um=(20, 40), verbose=False).shape
    (2, 112)
    """
    windows = _check_windows(windows)
    fields = _check_fields(fields_um)
    side = window_side_px(max(fields), work_mpp)
    if abs(windows.shape[1] - side) > 1:
        raise ValueError(
            f"`windows` are {windows.shape[1]} px wide, but the largest field ({max(fields):g} um) at "
            f"{work_mpp:g} um/px needs {side} px; cut them with patch_um={max(fields):g}, patch_px={side}."
        )
    if len(windows) == 0:
        raise ValueError("`windows` is empty; there are no spots to describe.")
    # One nuclear threshold per slide; a subsample of windows is enough to place it.
    sample = windows[:: max(1, len(windows) // 64)]
    h_threshold = float(threshold_otsu(np.concatenate([rgb2hed(w)[..., 0].ravel() for w in sample])))
    sides = [min(windows.shape[1], window_side_px(f, work_mpp)) for f in fields]
    rows = []
    for window in tqdm(
        windows, desc="stain/texture features", disable=not settings.show_progress(verbose), leave=False
    ):
        maps = _window_maps(window, work_mpp)
        row: list[float] = []
        for s in sides:
            row += _field_features(maps, s, h_threshold, work_mpp)
        rows.append(row)
    names = [n for f in fields for n in _field_feature_names(f)]
    return pd.DataFrame(np.asarray(rows, dtype=np.float64).reshape(len(windows), len(names)), columns=names)


def pixel_features(patches: np.ndarray) -> pd.DataFrame:
    """Raw pixels of small thumbnails as features, scaled to ``[0, 1]``.

    Parameters
    ----------
    patches
        ``(n_spots, size, size, 3)`` uint8 thumbnails, e.g. ``st.pp.patch_dataset(sdata, patch_um=110,
        patch_px=8).to_numpy()`` transposed to channels last.

    Returns
    -------
    ``(n_spots, size * size * 3)`` float64 frame, columns ``px_<row>_<col>_<channel>``.

    Examples
    --------
    >>> pixel_features(np.full((1, 4, 4, 3), 255, dtype=np.uint8)).shape
    (1, 48)
    """
    patches = _check_windows(patches)
    size = patches.shape[1]
    names = [f"px_{r}_{c}_{ch}" for r in range(size) for c in range(size) for ch in "rgb"]
    return pd.DataFrame(patches.reshape(len(patches), -1).astype(np.float64) / 255.0, columns=names)
