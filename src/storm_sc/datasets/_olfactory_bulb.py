"""Mouse olfactory bulb, legacy Spatial Transcriptomics (Stahl et al. 2016): layer-labelled and H&E replicates."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from spatialdata import SpatialData

from storm_sc._constants import ATTRS_DATASET, ATTRS_MPP_SOURCE, ATTRS_STORM, LEGACY_ST_SPOT_DIAMETER_UM, OBS_LAYER
from storm_sc._settings import logger
from storm_sc.io import from_arrays
from storm_sc.io._image_file import open_image
from storm_sc.io._legacy_st import LEGACY_ST_PITCH_UM, estimate_mpp_from_array

from ._fetch import fetch_all

_MOB_COUNTS = "mob/MOB_Stahl2016_STdeconvolve.h5ad"
_MOB_LABELS = "mob/mOB_annot.csv"
_MOB_HE = "mob_he_stahl2016/HE_Rep{r}.jpg"
_MOB_HE_COUNTS = "mob_he_stahl2016/DERIVED_MOB{r}_HE_Rep{r}.h5ad"


def _layer_order(name: str) -> tuple[int, str]:
    head = name.split(":", 1)[0].strip()
    return (int(head) if head.isdigit() else 10**6, name)


def mob(*, verbose: bool | None = None) -> SpatialData:
    """Mouse olfactory bulb (legacy ST; the STdeconvolve copy, 262 spots) with its five annotated layers.

    No image exists for this replicate: spots are placed in microns from their array positions
    (200 um centre-to-centre, 100 um spots).

    Parameters
    ----------
    verbose
        Show download progress (default: ``st.settings``).

    Returns
    -------
    SpatialData (platform ``"legacy_st"``, no image; 1 coordinate unit = 1 um) with spots ``"MOB_spots"`` and
    ``"table"`` (integer counts, 15,928 genes; ``.obs["layer"]`` categorical, e.g. ``"1: Granular Cell Layer"``;
    ``.obs["array_x"]``, ``.obs["array_y"]``).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.mob()  # doctest: +SKIP
    """
    paths = fetch_all([_MOB_COUNTS, _MOB_LABELS], verbose=verbose)
    table = ad.read_h5ad(paths[_MOB_COUNTS])
    labels = pd.read_csv(paths[_MOB_LABELS], index_col="spot")["layer"]
    unlabelled = int((~table.obs_names.isin(labels.index)).sum())
    if unlabelled:
        logger.warning("mob: %d spots have no layer label", unlabelled)
    array_xy = np.asarray(table.obsm["spatial"], dtype=np.float64)[:, :2]
    table.obs = pd.DataFrame(
        {
            "array_x": array_xy[:, 0],
            "array_y": array_xy[:, 1],
            OBS_LAYER: pd.Categorical(
                labels.reindex(table.obs_names).to_numpy(),
                categories=sorted(labels.dropna().unique(), key=_layer_order),
            ),
        },
        index=table.obs_names,
    )
    del table.obsm["spatial"]  # array units; the shapes hold the positions in microns
    sdata = from_arrays(
        table,
        array_xy * LEGACY_ST_PITCH_UM,
        None,
        mpp=1.0,
        spot_diameter_um=LEGACY_ST_SPOT_DIAMETER_UM,
        platform="legacy_st",
        library_id="MOB",
    )
    sdata.attrs[ATTRS_STORM][ATTRS_MPP_SOURCE] = "array positions x 200 um pitch (coordinates in microns)"
    sdata.attrs[ATTRS_STORM][ATTRS_DATASET] = "mob"
    return sdata


def mob_he(replicate: int = 1, *, verbose: bool | None = None) -> SpatialData:
    """Mouse olfactory bulb replicate 1 or 2 (legacy ST) with its H&E image (~3.4 um/px); no labels.

    The pixel size is estimated from the array pitch (200 um) by a least-squares fit of the spot pixel positions on
    their array positions.

    Parameters
    ----------
    replicate
        ``1`` (267 spots) or ``2`` (280 spots).
    verbose
        Show download progress (default: ``st.settings``).

    Returns
    -------
    SpatialData (platform ``"legacy_st"``) with the image ``"MOB<r>_image"``, spots ``"MOB<r>_spots"`` and
    ``"table"`` (counts; ``.obs["array_x"]``, ``.obs["array_y"]``).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.mob_he(1)  # doctest: +SKIP
    """
    if replicate not in (1, 2):
        raise ValueError(f"`replicate` must be 1 or 2; got {replicate!r}.")
    counts, jpg = _MOB_HE_COUNTS.format(r=replicate), _MOB_HE.format(r=replicate)
    paths = fetch_all([counts, jpg], verbose=verbose)
    table = ad.read_h5ad(paths[counts])
    centers_px = np.asarray(table.obsm["spatial"], dtype=np.float64)[:, :2]
    array_xy = table.obs[["array_x", "array_y"]].to_numpy(dtype=np.float64)
    mpp, fit = estimate_mpp_from_array(array_xy, centers_px)
    logger.info(
        "mob_he %d: %.3f um/px from the array pitch (%.1f x %.1f px per step)",
        replicate,
        mpp,
        fit["pitch_px_x"],
        fit["pitch_px_y"],
    )
    sdata = from_arrays(
        table,
        centers_px,
        open_image(paths[jpg]),
        mpp=mpp,
        spot_diameter_um=LEGACY_ST_SPOT_DIAMETER_UM,
        platform="legacy_st",
        library_id=f"MOB{replicate}",
    )
    sdata.attrs[ATTRS_STORM][ATTRS_MPP_SOURCE] = "estimated from the array pitch"
    sdata.attrs[ATTRS_STORM][ATTRS_DATASET] = f"mob_he/{replicate}"
    return sdata
