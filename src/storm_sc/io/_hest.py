"""Reader for HEST-1k samples (an AnnData with pixel coordinates, an H&E image and a metadata JSON)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
from anndata import AnnData
from spatialdata import SpatialData

from storm_sc._constants import ATTRS_STORM
from storm_sc._settings import logger

from ._build import from_arrays
from ._image_file import fraction_outside, image_size_yx, open_image

# HEST-1k metadata keys for the pixel size of the full-resolution image, most trusted first.
HEST_MPP_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")
# Observation-centre columns in .obs, as (x = column, y = row), by preference.
_OBS_XY_COLUMNS = (("pxl_col_in_fullres", "pxl_row_in_fullres"), ("x_pixel", "y_pixel"))


def _load_metadata(metadata: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if isinstance(metadata, Mapping):
        return dict(metadata)
    path = Path(metadata)
    if not path.is_file():
        raise FileNotFoundError(f"Metadata file not found: {path}. Pass the sample's HEST metadata JSON or a dict.")
    with open(path) as fh:
        return json.load(fh)


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _centers(adata: AnnData) -> tuple[np.ndarray, str]:
    if "spatial" in adata.obsm:
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        if xy.ndim == 2 and xy.shape[1] >= 2:
            return xy[:, :2], 'obsm["spatial"]'
    for x_key, y_key in _OBS_XY_COLUMNS:
        if x_key in adata.obs and y_key in adata.obs:
            return adata.obs[[x_key, y_key]].to_numpy(dtype=np.float64), f'obs["{x_key}"], obs["{y_key}"]'
    raise ValueError(
        "No pixel coordinates found: HEST samples keep them in .obsm['spatial'] or .obs "
        f"{[list(p) for p in _OBS_XY_COLUMNS]}. Add them there (x = column, y = row of the image)."
    )


def read_hest(
    adata: str | os.PathLike | AnnData,
    image: str | os.PathLike | Any | None,
    metadata: str | os.PathLike | Mapping[str, Any] | None = None,
    *,
    mpp: float | None = None,
    swap_xy: bool = False,
    spot_diameter_um: float | None = None,
    library_id: str | None = None,
) -> SpatialData:
    """Read a HEST-1k sample (AnnData + H&E image + metadata JSON) into a SpatialData in physical scale.

    Parameters
    ----------
    adata
        Path of the sample's ``.h5ad`` or an AnnData (not modified) with counts and pixel coordinates of the
        full-resolution image in ``.obsm["spatial"]`` (x, y) or ``.obs`` (``pxl_col_in_fullres``/``pxl_row_in_fullres``
        or ``x_pixel``/``y_pixel``).
    image
        The H&E image: JPEG/PNG/TIFF path (read lazily) or array ``(y, x, 3)``; ``None`` for expression only.
    metadata
        The sample's metadata JSON path or dict. Gives the pixel size (``pixel_size_um_estimated``, else
        ``pixel_size_um_embedded``), the spot or cell diameter (``spot_diameter`` in um, or DeepSpot's
        ``cell_diameter`` in image pixels) and the full-resolution size (``fullres_px_width``/``_height``).
    mpp
        Microns per pixel of ``image``. Overrides the metadata (a disagreement is logged). Required when the
        metadata gives no pixel size.
    swap_xy
        Swap the two coordinate columns, for samples whose "x" is the image row (e.g. DeepSpot's NCBI858 crop).
    spot_diameter_um
        Spot or cell diameter in microns; overrides the metadata.
    library_id
        Slide name; defaults to the metadata ``id``/``sample``, else the file name, else ``"slide"``.

    Returns
    -------
    A SpatialData built by :func:`storm_sc.io.from_arrays` with platform ``"hest"``. When the image is smaller than
    the full-resolution size in the metadata (a downsampled export), pixel size and (if needed) coordinates are
    rescaled to the image given; ``sdata.attrs["storm_sc"]`` records ``mpp_source`` and ``st_technology``.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.io.read_hest(  # doctest: +SKIP
    ...     "NCBI858.h5ad", "NCBI858.jpg", "NCBI858.json", mpp=2.5, swap_xy=True
    ... )
    """
    if mpp is not None and _positive(mpp) is None:
        raise ValueError(f"`mpp` must be a positive number of microns per pixel or None; got {mpp!r}.")
    if spot_diameter_um is not None and _positive(spot_diameter_um) is None:
        raise ValueError(f"`spot_diameter_um` must be a positive number or None; got {spot_diameter_um!r}.")
    meta = _load_metadata(metadata)
    stem = None
    if isinstance(adata, AnnData):
        table = adata.copy()
    else:
        path = Path(adata)
        if not path.is_file():
            raise FileNotFoundError(f"AnnData file not found: {path}. Pass the HEST sample's .h5ad or an AnnData.")
        stem = path.name.removesuffix(".h5ad")
        table = ad.read_h5ad(path)
    library_id = library_id or str(meta.get("id") or meta.get("sample") or stem or "slide")

    meta_mpp = next((v for v in (_positive(meta.get(k)) for k in HEST_MPP_KEYS) if v is not None), None)
    if mpp is None and meta_mpp is None:
        raise ValueError(
            f"{library_id}: the pixel size is unknown: the metadata has none of {list(HEST_MPP_KEYS)}. "
            "Pass `mpp=` (microns per pixel of the image), e.g. from the scanner metadata or a known distance."
        )
    centers_px, source = _centers(table)
    if swap_xy:
        centers_px = centers_px[:, ::-1].copy()
    if not np.isfinite(centers_px).all():
        raise ValueError(f"{library_id}: coordinates in {source} contain NaN; drop those observations first.")

    img = open_image(image) if image is not None else None
    if mpp is not None:
        mpp_source = "given"
        if meta_mpp is not None and abs(meta_mpp - mpp) / mpp > 0.05:
            logger.warning("%s: using mpp=%.4g given, the metadata says %.4g um/px", library_id, mpp, meta_mpp)
    else:
        mpp, mpp_source = meta_mpp, "metadata (full resolution)"
        full_w = _positive(meta.get("fullres_px_width") or meta.get("fullres_width"))
        if img is not None and full_w is not None:
            height, width = image_size_yx(img)
            factor = full_w / width
            if abs(factor - 1) > 0.01:
                # HEST pixel sizes describe the full-resolution slide; a downsampled export needs them scaled.
                mpp = mpp * factor
                mpp_source = f"metadata, scaled by {factor:.4g} to the image given"
                if fraction_outside(centers_px, (height, width)) > 0.5:
                    centers_px = centers_px / factor
                    logger.info("%s: coordinates are in full-resolution pixels; divided by %.4g", library_id, factor)
    if img is not None:
        outside = fraction_outside(centers_px, image_size_yx(img))
        if outside > 0.01:
            swapped = fraction_outside(centers_px[:, ::-1], image_size_yx(img))
            hint = " Try swap_xy=True: the swapped coordinates fit the image." if swapped < outside / 2 else ""
            logger.warning("%s: %.0f%% of observations fall outside the image.%s", library_id, 100 * outside, hint)

    if spot_diameter_um is None:
        if _positive(meta.get("spot_diameter")) is not None:
            spot_diameter_um = float(meta["spot_diameter"])
        elif _positive(meta.get("cell_diameter")) is not None:
            # DeepSpot writes cell_diameter in pixels of the exported image (its crop size for one cell).
            spot_diameter_um = float(meta["cell_diameter"]) * mpp

    sdata = from_arrays(
        table,
        centers_px,
        img,
        mpp=mpp,
        spot_diameter_um=spot_diameter_um,
        platform="hest",
        library_id=library_id,
    )
    sdata.attrs[ATTRS_STORM]["mpp_source"] = mpp_source
    if isinstance(meta.get("st_technology"), str):
        sdata.attrs[ATTRS_STORM]["st_technology"] = meta["st_technology"]
    logger.info(
        "%s: %d observations, %s, %.4g um/px (%s)",
        library_id,
        table.n_obs,
        "with image" if img is not None else "no image",
        mpp,
        mpp_source,
    )
    return sdata
