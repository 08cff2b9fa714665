"""Adapter for a scanpy-style Visium AnnData: ``.obsm["spatial"]`` plus ``.uns["spatial"][library_id]``.

``.obsm["spatial"]`` holds ``(x, y)`` in full-resolution pixels of the original scan, which is not stored; the
stored images (``hires``, ``lowres``) are downscaled by ``scalefactors["tissue_<key>_scalef"]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity

from storm_sc._constants import VISIUM_SPOT_DIAMETER_UM
from storm_sc._settings import logger

from ._adapter import MAX_SCALE_RATIO, full_resolution_hint
from ._elements import check_inside, check_table, is_blank_array
from ._spatial_input import SpatialInput
from ._visium import VISIUM_FULLRES_SPOT_UM, VISIUM_SPOT_PITCH_UM, lattice_scale

_OBSM_KEY = "spatial"
_UNS_KEY = "spatial"


def _table_of_spatialdata_hint(adata: AnnData) -> str:
    if "spatialdata_attrs" not in adata.uns:
        return ""
    return (
        " This AnnData is the table of a SpatialData (it has `.uns['spatialdata_attrs']`): pass the SpatialData "
        "itself (`sdata`, not `sdata['table']`), whose images and transformations storm_sc reads."
    )


def library_naming_columns(adata: AnnData, names: set[str]) -> Iterator[tuple[str, set[str]]]:
    """``(column, values)`` of the ``.obs`` columns naming libraries: text or categories, all among ``names``.

    ``names`` are the keys of ``.uns['spatial']``; ``library_id`` (scanpy's and squidpy's name) comes first.
    """
    for column in sorted(adata.obs.columns, key=lambda c: c != "library_id"):
        values = adata.obs[column]
        if values.dtype.kind in "OSU" or isinstance(values.dtype, pd.CategoricalDtype):
            found = {str(v) for v in pd.unique(values)}
            if found <= names:
                yield str(column), found


def _rows_library(adata: AnnData, libs: dict[str, Any]) -> str | None:
    """The library every row belongs to, when ``.uns['spatial']`` describes several (else ``None``).

    Rows of one library taken out of a ``scanpy.concat`` keep every library's entry in ``.uns['spatial']``; the
    ``.obs`` column whose values are those keys then names a single one.
    """
    for _, found in library_naming_columns(adata, {str(k) for k in libs}):
        if len(found) == 1:
            (library,) = found
            return next(k for k in libs if str(k) == library)
    return None


def _library(adata: AnnData, library_id: str | None) -> tuple[str, dict[str, Any]]:
    libs = adata.uns.get(_UNS_KEY)
    if not isinstance(libs, dict) or not libs:
        raise ValueError(
            "This AnnData has no `.uns['spatial'][library_id]` with images and scalefactors (scanpy's Visium layout). "
            "Read Visium data with `spatialdata_io.visium(...)`, or build a SpatialData with `st.io.from_arrays(...)`."
        )
    if library_id is None and len(libs) > 1:
        library_id = _rows_library(adata, libs)
    if library_id is None:
        if len(libs) > 1:
            raise ValueError(
                f"`.uns['spatial']` holds several libraries {list(libs)}; this step reads one slide: take one with "
                "`st.io.split_slides(adata)[library]` (it finds each row's library in the .obs column whose values "
                "are these names, as scanpy.concat(..., label='library_id') writes it), or name one with "
                "`library_id=` in st.io.resolve. The st.tl tools take the AnnData as it is."
            )
        library_id = next(iter(libs))
    elif library_id not in libs:
        raise ValueError(f"No library {library_id!r} in `.uns['spatial']`; libraries found: {list(libs)}.")
    lib = libs[library_id]
    if not isinstance(lib, dict) or not isinstance(lib.get("scalefactors"), dict):
        # spatialdata_io.visium leaves a scanpy-like .uns['spatial'] without scale factors on the SpatialData's table.
        raise ValueError(
            f"`.uns['spatial'][{library_id!r}]` has no 'scalefactors'; it is not scanpy's Visium layout."
            f"{_table_of_spatialdata_hint(adata)}"
        )
    return library_id, lib


def _to_uint8_rgb(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"The image must be (y, x, 3) RGB or (y, x, 4) RGBA; got shape {arr.shape}.")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        # scanpy reads PNGs as floats in [0, 1]
        scale = 255.0 if float(np.nanmax(arr)) <= 1.0 else 1.0
        return np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _choose_image(lib: dict[str, Any], library_id: str, image_key: str | None) -> tuple[str, float, bool]:
    """The chosen image (highest resolution by default), its scalefactor from full-res pixels, and whether it shows.

    When every image is blank, the highest-resolution one is still returned (its scalefactor places the spots), with
    ``False``: the slide then has no H&E to read.
    """
    sf = lib["scalefactors"]
    images = lib.get("images") or {}
    scalefs = {k: sf.get(f"tissue_{k}_scalef") for k in images}
    usable = {k: float(v) for k, v in scalefs.items() if v is not None and float(v) > 0}
    # A blank placeholder (scanpy's Visium fixture ships a black hires image) would pass for a tissue-free H&E.
    blank = sorted(k for k in usable if is_blank_array(images[k]))
    if image_key is None:
        if not usable:
            raise ValueError(
                f"`.uns['spatial'][{library_id!r}]` has no image with a scalefactor (images: {list(images)}, "
                f"scalefactors: {list(sf)}); an H&E image with its `tissue_<key>_scalef` is needed."
            )
        shown = {k: v for k, v in usable.items() if k not in blank} or usable
        image_key = max(shown, key=lambda k: (shown[k], k))
        if blank and image_key not in blank:
            logger.info("Library %r: image(s) %s show nothing and are not used.", library_id, blank)
    elif image_key in blank:
        raise ValueError(
            f"Image {image_key!r} of `.uns['spatial'][{library_id!r}]` shows nothing (one colour, or fully "
            f"transparent); choose another (`image_key=`, images with a scalefactor: {sorted(usable)})."
        )
    elif image_key not in usable:
        raise ValueError(
            f"No usable image {image_key!r} in `.uns['spatial'][{library_id!r}]['images']`; images with a "
            f"scalefactor: {sorted(usable)}."
        )
    return image_key, usable[image_key], image_key not in blank


def _image_mpp(
    adata: AnnData,
    xy: np.ndarray,
    lib: dict[str, Any],
    library_id: str,
    image_key: str,
    scalef: float,
    mpp: float | None,
) -> tuple[float, str]:
    """Return the microns per pixel of the chosen image, and where that number came from."""
    # microns per full-resolution pixel: the spot lattice first, Space Ranger's theoretical spot second
    fit = lattice_scale(adata.obs, np.zeros(adata.n_obs), xy)
    spot_px = lib["scalefactors"].get("spot_diameter_fullres")
    spot_px = float(spot_px) if spot_px is not None and math.isfinite(float(spot_px)) and float(spot_px) > 0 else None
    if fit is not None:
        um_per_full, found = fit[0], f"the {VISIUM_SPOT_PITCH_UM:g} um Visium spot pitch (array_row/array_col)"
    elif spot_px is not None:
        um_per_full = VISIUM_FULLRES_SPOT_UM / spot_px
        found = f"spot_diameter_fullres (a theoretical {VISIUM_FULLRES_SPOT_UM:g} um spot)"
        logger.warning("No usable array_row/array_col in `.obs`; the scale from spot_diameter_fullres may be ~10% off.")
    else:
        um_per_full, found = None, None
    if mpp is not None:
        image_mpp, source = float(mpp), f"mpp={mpp:g} given"
        if um_per_full is not None:
            native = um_per_full / scalef
            ratio = image_mpp / native
            if not (1 / MAX_SCALE_RATIO <= ratio <= MAX_SCALE_RATIO):
                off = f"{1 / ratio:.3g}x smaller" if ratio < 1 else f"{ratio:.3g}x larger"
                fullres = full_resolution_hint(image_mpp, um_per_full, 1.0 / scalef, image_key)
                raise ValueError(
                    f"`mpp={mpp:g}` is {off} than the scale of the {image_key!r} image found from {found} "
                    f"(mpp = {native:.4g}). `mpp` is microns per pixel of image {image_key!r} (not of the full-"
                    f"resolution scan).{fullres or ' Check its units,'} or leave `mpp=None`."
                )
    elif um_per_full is not None:
        image_mpp, source = um_per_full / scalef, found
    else:
        raise ValueError(
            f"Neither `.obs[['array_row', 'array_col']]` nor `spot_diameter_fullres` give the scale of library "
            f"{library_id!r}; pass `mpp=` (microns per pixel of the {image_key!r} image)."
        )
    return image_mpp, source


def _without_image(
    adata: AnnData, centers_um: np.ndarray, *, platform: str, library_id: str | None, extra: dict[str, Any]
) -> SpatialInput:
    """A slide read from the table's ``.obsm['spatial']`` alone: positions in microns, no image."""
    return SpatialInput(
        table=adata,
        table_key=None,
        regions=(),
        platform=platform,
        coordinate_system=_OBSM_KEY,
        centers_um=centers_um,
        library_id=library_id,
        extra=extra,
    )


def _positions_only(adata: AnnData, xy: np.ndarray, mpp: float | None, library_id: str | None) -> SpatialInput:
    """A table with positions and no image (e.g. cell centroids): expression and spatial context only."""
    if mpp is None or not math.isfinite(mpp) or mpp <= 0:
        raise ValueError(
            "This AnnData has `.obsm['spatial']` but no image in `.uns['spatial']`, so the unit of its positions is "
            f"unknown; pass `mpp=` (microns per coordinate unit, e.g. 1.0 for positions in microns), got {mpp!r}."
        )
    si = _without_image(
        adata,
        xy * float(mpp),
        platform="generic",
        library_id=library_id or named_library(adata),
        extra={"mpp_source": "given (microns per coordinate unit)"},
    )
    logger.info("Resolved %r (positions only: no image).", si)
    return si


def _require_positions(adata: AnnData) -> None:
    if _OBSM_KEY not in adata.obsm:
        raise ValueError(
            "This AnnData has no `.obsm['spatial']` positions; it needs them (x, y) in full-resolution pixels, or in "
            "microns with `mpp=1`."
            f"{_table_of_spatialdata_hint(adata)}"
        )


def anndata_slide_name(adata: AnnData) -> str:
    """The name :func:`resolve_anndata` gives a one-library AnnData, without reading its positions or scale."""
    _require_positions(adata)
    libs = adata.uns.get(_UNS_KEY)
    # with no libraries, resolve reads the positions alone; with several, _library says how to pick one
    return _library(adata, None)[0] if isinstance(libs, dict) and libs else named_library(adata)


# The name of a slide that records none (plots leave it out of their titles).
UNNAMED_SLIDE = "slide"


def named_library(adata: AnnData) -> str:
    """A positions-only AnnData's name: its one ``.obs["library_id"]`` (one section of a stack), else "slide".

    Examples
    --------
    >>> import anndata as ad, pandas as pd
    >>> named_library(ad.AnnData(obs=pd.DataFrame({"library_id": ["s1", "s1"]}, index=["a", "b"])))
    's1'
    """
    column = adata.obs.get("library_id")
    if column is not None and len(names := pd.unique(column.astype(str))) == 1:
        return str(names[0])
    return UNNAMED_SLIDE


def resolve_anndata(
    adata: AnnData,
    *,
    image_key: str | None = None,
    mpp: float | None = None,
    library_id: str | None = None,
    use_image: bool = True,
) -> SpatialInput:
    """Resolve a scanpy-style Visium AnnData; called by :func:`storm_sc.io.resolve`.

    Parameters
    ----------
    adata
        Observations with ``.obsm["spatial"]`` (full-resolution pixels) and ``.uns["spatial"][library_id]``.
    image_key
        ``"hires"`` or ``"lowres"`` (any key of ``.uns["spatial"][library_id]["images"]`` with a
        ``tissue_<key>_scalef``); defaults to the highest resolution present.
    mpp
        Microns per pixel of the chosen image; by default from the 100 um spot pitch (``.obs["array_row"]``,
        ``.obs["array_col"]``), else from ``spot_diameter_fullres`` (Space Ranger's theoretical 65 um spot).
    library_id
        Library in ``.uns["spatial"]``; required when there are several.
    use_image
        Read the image (``False``: positions in microns only, for steps that need no pixels). Blank images (one
        colour, or fully transparent) are never read: with only such images, the slide is resolved without one.

    Without ``.uns["spatial"]``, the positions alone are used (expression-only), and ``mpp`` is then required:
    microns per unit of ``.obsm["spatial"]``.

    Returns
    -------
    A :class:`SpatialInput` whose image is the chosen stored image (not a copy of the user's array when it is
    already uint8 RGB) and whose ``centers_px`` are in that image's pixels.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> import storm_sc as st
    >>> adata = ad.AnnData(np.ones((1, 2), dtype=np.float32), obsm={"spatial": np.array([[500.0, 400.0]])})
    >>> adata.uns["spatial"] = {"s1": {"images": {"hires": np.eye(100, dtype=np.uint8)[..., None].repeat(3, 2)},
    ...     "scalefactors": {"tissue_hires_scalef": 0.1, "spot_diameter_fullres": 100.0}}}
    >>> si = st.io.resolve(adata)
    >>> si.centers_px.tolist(), round(si.mpp, 2)
    ([[50.0, 40.0]], 6.5)
    """
    check_table(adata, None)
    _require_positions(adata)
    xy = np.asarray(adata.obsm[_OBSM_KEY], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise ValueError(f"`.obsm['spatial']` must be (n_obs, 2) with x, y; got shape {xy.shape}.")
    xy = xy[:, :2]
    if not np.isfinite(xy).all():
        raise ValueError("`.obsm['spatial']` holds NaN or infinite positions; drop those observations first.")
    if not adata.uns.get(_UNS_KEY) and image_key is None:
        return _positions_only(adata, xy, mpp, library_id)
    library_id, lib = _library(adata, library_id)
    image_key, scalef, shows = _choose_image(lib, library_id, image_key)
    image_mpp, source = _image_mpp(adata, xy, lib, library_id, image_key, scalef, mpp)
    extra = {
        "mpp_source": source,
        "scalefactor": scalef,
        "spot_diameter_um": VISIUM_SPOT_DIAMETER_UM,
        "spot_pitch_um": VISIUM_SPOT_PITCH_UM,
    }
    if not shows or not use_image:
        if not shows and use_image:
            logger.warning(
                "The image(s) of `.uns['spatial'][%r]` show nothing (one colour, or fully transparent): no H&E is "
                "read, only expression and positions. Put the slide's H&E image there to use it.",
                library_id,
            )
        # the spots are placed in microns by the scale the data record, whether or not an image is read
        si = _without_image(adata, xy * scalef * image_mpp, platform="visium", library_id=library_id, extra=extra)
        logger.info("Resolved %r (scale from %s).", si, source)
        return si

    rgb = _to_uint8_rgb(lib["images"][image_key])
    image = Image2DModel.parse(
        rgb, dims=("y", "x", "c"), c_coords=["r", "g", "b"], transformations={_OBSM_KEY: Identity()}
    )
    centers_px = xy * scalef
    check_inside(centers_px, image, image_key, None)
    si = SpatialInput(
        table=adata,
        table_key=None,
        regions=(),
        platform="visium",
        coordinate_system=_OBSM_KEY,
        centers_um=centers_px * image_mpp,
        image_key=image_key,
        image=image,
        centers_px=centers_px,
        mpp=image_mpp,
        library_id=library_id,
        extra=extra,
    )
    logger.info("Resolved %r (scale from %s).", si, source)
    return si
