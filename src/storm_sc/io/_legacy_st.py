"""Reader for legacy Spatial Transcriptomics (the ST pipeline of Stahl et al. 2016; e.g. her2st, mouse olfactory bulb)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData

from storm_sc._constants import ATTRS_STORM, LEGACY_ST_SPOT_DIAMETER_UM
from storm_sc._settings import logger

from ._build import from_arrays
from ._image_file import fraction_outside, image_size_yx, open_image

# Centre-to-centre distance of neighbouring spots on the ST v1 array (100 um spots, 200 um pitch).
LEGACY_ST_PITCH_UM = 200.0
_POSITION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*x\s*(-?\d+(?:\.\d+)?)\s*$")


def estimate_mpp_from_array(
    array_xy: np.ndarray, pixel_xy: np.ndarray, *, pitch_um: float = LEGACY_ST_PITCH_UM
) -> tuple[float, dict[str, float]]:
    """Microns per pixel from an affine least-squares fit of pixel positions on array positions.

    Parameters
    ----------
    array_xy
        ``(n, 2)`` array coordinates (one unit = one spot pitch).
    pixel_xy
        ``(n, 2)`` matching pixel coordinates.
    pitch_um
        Centre-to-centre distance of neighbouring array positions, in microns.

    Returns
    -------
    The estimate and fit details: ``pitch_px_x``, ``pitch_px_y`` (pixels per array step along each array axis),
    ``anisotropy`` (relative difference of the two) and ``rms_residual_px``.

    Examples
    --------
    >>> import numpy as np
    >>> ax = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=float)
    >>> mpp, _ = estimate_mpp_from_array(ax, ax * 250 + 10)
    >>> round(mpp, 3)
    0.8
    """
    array_xy = np.asarray(array_xy, dtype=np.float64)
    pixel_xy = np.asarray(pixel_xy, dtype=np.float64)
    design = np.column_stack([array_xy, np.ones(len(array_xy))])
    if len(array_xy) < 3 or np.linalg.matrix_rank(design) < 3:
        raise ValueError(
            "Cannot estimate the pixel size from the array: need at least 3 spots that are not on one line. "
            "Pass `mpp=` (microns per pixel) explicitly."
        )
    coef, *_ = np.linalg.lstsq(design, pixel_xy, rcond=None)
    step_x, step_y = np.linalg.norm(coef[0]), np.linalg.norm(coef[1])
    residual = design @ coef - pixel_xy
    details = {
        "pitch_px_x": float(step_x),
        "pitch_px_y": float(step_y),
        "anisotropy": float(abs(step_x - step_y) / ((step_x + step_y) / 2)),
        "rms_residual_px": float(np.sqrt((residual**2).sum(1).mean())),
    }
    return float(pitch_um / ((step_x + step_y) / 2)), details


# --------------------------------------------------------------------------------------------------------------------
# Counts and spot files
# --------------------------------------------------------------------------------------------------------------------
def _parse_positions(names: pd.Index) -> np.ndarray | None:
    """``"XxY"`` names -> ``(n, 2)`` float array, or ``None`` when the names are not array positions."""
    parsed = [_POSITION.match(str(n)) for n in names]
    if not parsed or not all(parsed):
        return None
    return np.array([[float(m.group(1)), float(m.group(2))] for m in parsed])


def _read_counts_table(counts: str | os.PathLike | pd.DataFrame | AnnData) -> tuple[AnnData, str | None]:
    stem = None
    if isinstance(counts, AnnData):
        adata = counts.copy()
    else:
        if isinstance(counts, pd.DataFrame):
            frame = counts
        else:
            path = Path(counts)
            if not path.is_file():
                raise FileNotFoundError(
                    f"Counts file not found: {path}. Pass the ST pipeline's counts TSV (spots x genes, row names "
                    "'XxY'), a DataFrame or an AnnData."
                )
            stem = re.sub(r"(\.tsv|\.txt|\.csv)?(\.gz)?$", "", path.name)
            frame = pd.read_csv(path, sep="\t", index_col=0)
        if _parse_positions(frame.index) is None and _parse_positions(frame.columns) is not None:
            logger.info("counts are genes x spots; transposing to spots x genes")
            frame = frame.T
        values = frame.to_numpy()
        if not np.issubdtype(values.dtype, np.number):
            raise ValueError("Counts must be numeric (spots x genes); found non-numeric values.")
        dtype = np.int32 if np.issubdtype(values.dtype, np.integer) else np.float32
        adata = AnnData(
            sparse.csr_matrix(values.astype(dtype)),
            obs=pd.DataFrame(index=frame.index.astype(str)),
            var=pd.DataFrame(index=frame.columns.astype(str)),
        )
    if _parse_positions(adata.obs_names) is None:
        bad = [n for n in adata.obs_names[:5]]
        raise ValueError(
            f"Counts row names must be array positions 'XxY' (e.g. '10x21'); got {bad}. "
            "Pass the counts with spots as rows named by their array position."
        )
    return adata, stem


def _read_spot_table(spots: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    if isinstance(spots, pd.DataFrame):
        frame = spots.copy()
    else:
        path = Path(spots)
        if not path.is_file():
            raise FileNotFoundError(
                f"Spot file not found: {path}. Pass the ST spot detector's '*_selection.tsv' "
                "(columns x, y, pixel_x, pixel_y) or a DataFrame with those columns."
            )
        frame = pd.read_csv(path, sep="\t")
    missing = {"x", "y", "pixel_x", "pixel_y"} - set(frame.columns)
    if missing:
        raise ValueError(
            f"Spot table lacks columns {sorted(missing)} (found {list(frame.columns)}). It needs the array position "
            "x, y and the image position pixel_x, pixel_y of each spot."
        )
    return frame


def _position_keys(xy: np.ndarray) -> pd.Index:
    rounded = np.rint(xy).astype(np.int64)
    return pd.Index([f"{x}x{y}" for x, y in rounded])


def _sample(items: pd.Index | list, n: int = 5) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (" ..." if len(items) > n else "")


def read_st(
    counts: str | os.PathLike | pd.DataFrame | AnnData,
    spots: str | os.PathLike | pd.DataFrame,
    image: str | os.PathLike | Any | None = None,
    *,
    mpp: float | None = None,
    spot_diameter_um: float = LEGACY_ST_SPOT_DIAMETER_UM,
    library_id: str | None = None,
) -> SpatialData:
    """Read a legacy Spatial Transcriptomics slide (ST pipeline output) into a SpatialData in physical scale.

    Counts and spot positions are matched by array position (counts row ``"10x21"`` = spot file ``x=10, y=21``).
    Spots without counts and counts without a position are dropped and reported; unselected spots
    (``selected == 0``, outside the tissue) are dropped.

    Parameters
    ----------
    counts
        Counts TSV(.gz) with spots as rows named ``"XxY"`` (array position) and genes as columns
        (genes x spots is transposed), or the same as a DataFrame or AnnData.
    spots
        The spot detector's ``*_selection.tsv``: columns ``x``, ``y`` (array position), ``pixel_x``, ``pixel_y``
        (position in the H&E image) and optionally ``new_x``, ``new_y`` (sub-spot array position) and ``selected``.
    image
        H&E image: a JPEG/PNG/TIFF path (read lazily) or an array ``(y, x, 3)``. ``None`` for expression only;
        positions then stay in the pixel frame of the (absent) image.
    mpp
        Microns per pixel of the image. ``None`` estimates it from the array pitch (200 um centre-to-centre) by a
        least-squares fit of pixel positions on array positions, and logs the estimate.
    spot_diameter_um
        Spot diameter (100 um on the ST v1 array).
    library_id
        Slide name; defaults to the counts file name without extension (e.g. ``"C2"``), else ``"slide"``.

    Returns
    -------
    A SpatialData built by :func:`storm_sc.io.from_arrays` (platform ``"legacy_st"``): the image, one circle per
    matched spot and a table with counts and ``.obs`` columns ``array_x``, ``array_y``, ``pixel_x``, ``pixel_y``.
    ``sdata.attrs["storm_sc"]["mpp_source"]`` says whether the scale was given or estimated.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.io.read_st(  # doctest: +SKIP
    ...     "her2st/data/ST-cnts/C2.tsv.gz",
    ...     "her2st/data/ST-spotfiles/C2_selection.tsv",
    ...     "her2st/data/ST-imgs/C/C2/5714_HE_BT_C2.jpg",
    ... )
    """
    if mpp is not None and (not np.isfinite(mpp) or mpp <= 0):
        raise ValueError(f"`mpp` must be a positive number of microns per pixel or None to estimate it; got {mpp!r}.")
    if spot_diameter_um is None or not np.isfinite(spot_diameter_um) or spot_diameter_um <= 0:
        raise ValueError(f"`spot_diameter_um` must be a positive number; got {spot_diameter_um!r}.")
    spot_table = _read_spot_table(spots)
    adata, stem = _read_counts_table(counts)
    library_id = library_id or stem or "slide"
    img = open_image(image) if image is not None else None

    unselected = pd.Index([])
    if "selected" in spot_table.columns:
        off = spot_table["selected"] == 0
        unselected = _position_keys(spot_table.loc[off, ["x", "y"]].to_numpy(dtype=np.float64))
        if len(unselected):
            logger.info(
                "%s: dropping %d spots (and their counts) not selected as under tissue", library_id, int(off.sum())
            )
        spot_table = spot_table[~off]
    spot_keys = _position_keys(spot_table[["x", "y"]].to_numpy(dtype=np.float64))
    if spot_keys.duplicated().any():
        raise ValueError(
            f"Spot table has several rows for array positions {_sample(spot_keys[spot_keys.duplicated()])}; "
            "each array position must appear once."
        )
    count_keys = _position_keys(_parse_positions(adata.obs_names))
    if count_keys.duplicated().any():
        raise ValueError(
            f"Counts have several rows for array positions {_sample(count_keys[count_keys.duplicated()])}."
        )

    spot_table.index = spot_keys
    common = count_keys[count_keys.isin(spot_keys)]
    no_position = count_keys[~count_keys.isin(spot_keys) & ~count_keys.isin(unselected)]
    no_counts = spot_keys[~spot_keys.isin(count_keys)]
    if len(common) == 0:
        raise ValueError(
            f"No counts row matches a spot position (counts e.g. {_sample(count_keys, 3)}; spots e.g. "
            f"{_sample(spot_keys, 3)}). Check that counts and spot file belong to the same section."
        )
    if len(no_position):
        logger.warning(
            "%s: %d counts rows have no position in the spot file and are dropped (%s)",
            library_id,
            len(no_position),
            _sample(no_position),
        )
    if len(no_counts):
        logger.info("%s: %d spots have no counts and are dropped (%s)", library_id, len(no_counts), _sample(no_counts))

    table = adata[count_keys.isin(spot_keys)].copy()
    table.obs_names = common
    matched = spot_table.loc[common]
    table.obs["array_x"] = matched["x"].to_numpy().astype(np.int64)
    table.obs["array_y"] = matched["y"].to_numpy().astype(np.int64)
    table.obs["pixel_x"] = matched["pixel_x"].to_numpy(dtype=np.float64)
    table.obs["pixel_y"] = matched["pixel_y"].to_numpy(dtype=np.float64)
    centers_px = matched[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)

    if mpp is None:
        # The pixel positions were placed from the sub-spot fit (new_x/new_y) when the spot detector wrote it; fitting
        # on those instead of the integer grid removes the rounding scatter (~40 px on her2st).
        fit_cols = ["new_x", "new_y"] if {"new_x", "new_y"} <= set(matched.columns) else ["x", "y"]
        mpp, fit = estimate_mpp_from_array(matched[fit_cols].to_numpy(dtype=np.float64), centers_px)
        logger.info(
            "%s: estimated %.4f um/px from the %g um array pitch (%.1f x %.1f px per step, rms residual %.1f px)",
            library_id,
            mpp,
            LEGACY_ST_PITCH_UM,
            fit["pitch_px_x"],
            fit["pitch_px_y"],
            fit["rms_residual_px"],
        )
        if fit["anisotropy"] > 0.05:
            logger.warning(
                "%s: the array pitch differs by %.0f%% between x and y; the image may be stretched",
                library_id,
                100 * fit["anisotropy"],
            )
        mpp_source = "estimated from the array pitch"
    else:
        mpp_source = "given"

    if img is not None:
        outside = fraction_outside(centers_px, image_size_yx(img))
        if outside > 0.01:
            logger.warning(
                "%s: %.0f%% of spots fall outside the image; check that the image belongs to this section",
                library_id,
                100 * outside,
            )

    sdata = from_arrays(
        table,
        centers_px,
        img,
        mpp=mpp,
        spot_diameter_um=spot_diameter_um,
        platform="legacy_st",
        library_id=library_id,
    )
    sdata.attrs[ATTRS_STORM]["mpp_source"] = mpp_source
    return sdata
