"""Small single-cell platform datasets: Xenium (toy, mouse brain, lung with H&E in HEST format) and CosMx."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from spatialdata import SpatialData

from storm_sc._constants import ATTRS_DATASET, ATTRS_MPP_SOURCE, ATTRS_STORM, ATTRS_TECHNOLOGY
from storm_sc._settings import logger, settings
from storm_sc.io import from_arrays, read_hest

from ._fetch import fetch_all, registered

_XENIUM_TOY = "xenium_toy/"
_COSMX = "cosmx_lung12/"
_LUNG = "xenium_lung_he_ncbi858/NCBI858.{ext}"
_BRAIN = "xenium_mouse_brain/"
# Rough pixel size of the NCBI858 H&E crop (um/px), which upstream does not state. Estimated by eye from the image:
# nuclei span ~2-3 px (6-8 um) and alveolar spaces ~60-70 px (~200-250 um), which gives 2.5-3.5 um/px.
# Uncertain by tens of percent: pass mpp= when a better value is known.
NCBI858_MPP_ESTIMATE = 3.0


def _fetch_folder(root: str, *, verbose: bool | None) -> None:
    fetch_all(registered(root), verbose=verbose)


def xenium_toy(*, verbose: bool | None = None) -> SpatialData:
    """526 cells x 27 genes of a real Xenium subset (SpatialFeatureExperiment's fixture), for reader tests.

    Read with ``spatialdata_io.xenium(path, cells_labels=False, nucleus_labels=False)``. The DAPI images were
    downsampled upstream, so they do not align with the cells in microns; there is no H&E.

    Parameters
    ----------
    verbose
        Unused (the files cannot be downloaded); kept for a uniform signature.

    Returns
    -------
    The SpatialData of ``spatialdata_io.xenium`` (cell and nucleus boundaries, transcripts, DAPI, table).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.xenium_toy()  # doctest: +SKIP
    """
    import spatialdata_io

    _fetch_folder(_XENIUM_TOY, verbose=verbose)
    logger.info("xenium_toy: the morphology images were downsampled upstream and do not align with the cells")
    with warnings.catch_warnings():
        # the labels are left out on purpose (the fixture ships an empty cells.zarr.zip); the table still names them
        warnings.filterwarnings(
            "ignore", message=r".*annotating 'cell_labels', which is not present", category=UserWarning
        )
        sdata = spatialdata_io.xenium(settings.data_dir / _XENIUM_TOY, cells_labels=False, nucleus_labels=False)
    sdata.attrs.setdefault(ATTRS_STORM, {})["library_id"] = "xenium_toy"  # the reader records no dataset name
    return sdata


def cosmx_lung12(*, verbose: bool | None = None) -> SpatialData:
    """NanoString CosMx Lung12 FFPE, two field-of-view crops (120 cells, 980 genes), read with spatialdata-io.

    Parameters
    ----------
    verbose
        Unused (the re-packaged files cannot be downloaded); kept for a uniform signature.

    Returns
    -------
    The SpatialData of ``spatialdata_io.cosmx(path, dataset_id="Lung12")``: per-FOV composite images (fluorescence,
    not H&E), cell labels, transcripts and the table.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.cosmx_lung12()  # doctest: +SKIP
    """
    import spatialdata_io

    _fetch_folder(_COSMX, verbose=verbose)
    # the reader converts the transcript CSV to parquet in a temporary folder, not in the data directory
    with warnings.catch_warnings():
        # spatialdata-io's reader passes anndata an argument anndata deprecates: nothing for a user to act on
        warnings.filterwarnings("ignore", message=r".*dtype argument is deprecated", category=FutureWarning)
        sdata = spatialdata_io.cosmx(settings.data_dir / _COSMX, dataset_id="Lung12")
    sdata.attrs.setdefault(ATTRS_STORM, {})["library_id"] = "Lung12"  # the reader records no dataset name
    return sdata


def xenium_lung_he(*, mpp: float | None = None, verbose: bool | None = None) -> SpatialData:
    """Human lung (pulmonary fibrosis; HEST-1k NCBI858, Xenium) with an H&E crop: 200 cells x 338 genes.

    Read with :func:`storm_sc.io.read_hest` and ``swap_xy=True``: upstream ``obs["x_pixel"]`` is the image row.
    The pixel size of this downsampled crop is not published; by default a rough estimate of 3.0 um/px is used
    (nuclei ~2-3 px, alveolar spaces ~60-70 px wide) and recorded as such in ``attrs["storm_sc"]["mpp_source"]``.

    Parameters
    ----------
    mpp
        Microns per pixel of the crop, when a better value than the estimate is known.
    verbose
        Show download progress (default: ``st.settings``).

    Returns
    -------
    SpatialData (platform ``"hest"``) with the image ``"NCBI858_image"``, cells ``"NCBI858_spots"`` (circles of
    DeepSpot's 20-px cell crop) and ``"table"`` (integer counts).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.xenium_lung_he()  # doctest: +SKIP
    """
    h5ad, jpg, meta = (_LUNG.format(ext=e) for e in ("h5ad", "jpg", "json"))
    paths = fetch_all([h5ad, jpg, meta], verbose=verbose)
    estimated = mpp is None
    if estimated:
        logger.warning(
            "xenium_lung_he: the crop's pixel size is not published; using a rough estimate of %.1f um/px "
            "(pass mpp= if you know better)",
            NCBI858_MPP_ESTIMATE,
        )
    sdata = read_hest(
        paths[h5ad],
        paths[jpg],
        paths[meta],
        mpp=NCBI858_MPP_ESTIMATE if estimated else mpp,
        swap_xy=True,
        library_id="NCBI858",
    )
    if estimated:
        sdata.attrs[ATTRS_STORM][ATTRS_MPP_SOURCE] = "rough estimate from nucleus and alveolus sizes (uncertain)"
    sdata.attrs[ATTRS_STORM][ATTRS_DATASET] = "xenium_lung_he"
    sdata.attrs[ATTRS_STORM][ATTRS_TECHNOLOGY] = "xenium"
    return sdata


def xenium_mouse_brain(*, verbose: bool | None = None) -> SpatialData:
    """Mouse brain Xenium (36,602 cells x 248 genes) with cell centroids in microns; no images.

    Parameters
    ----------
    verbose
        Show download progress (default: ``st.settings``).

    Returns
    -------
    SpatialData (platform ``"generic"``, no image; 1 coordinate unit = 1 um) with cell circles of the median
    cell diameter (from ``cell_area``) and ``"table"`` (counts; ``.obs`` from ``cells.csv.gz``).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.xenium_mouse_brain()  # doctest: +SKIP
    """
    import scanpy as sc

    matrix, cells = _BRAIN + "cell_feature_matrix.h5", _BRAIN + "cells.csv.gz"
    paths = fetch_all([matrix, cells], verbose=verbose)
    table = sc.read_10x_h5(paths[matrix])
    table.var_names_make_unique()
    meta = pd.read_csv(paths[cells])
    meta.index = meta["cell_id"].astype(str)
    missing = ~table.obs_names.isin(meta.index)
    if missing.any():
        raise ValueError(
            f"xenium_mouse_brain: {int(missing.sum())} cells of the matrix have no centroid in cells.csv.gz."
        )
    meta = meta.loc[table.obs_names]
    table.obs = meta.drop(columns=["cell_id"])
    centers_um = meta[["x_centroid", "y_centroid"]].to_numpy(dtype=np.float64)
    diameter = float(np.median(2 * np.sqrt(meta["cell_area"].to_numpy(dtype=np.float64) / np.pi)))
    sdata = from_arrays(
        table,
        centers_um,
        None,
        mpp=1.0,
        spot_diameter_um=diameter,
        platform="generic",
        library_id="xenium_mouse_brain",
    )
    sdata.attrs[ATTRS_STORM][ATTRS_MPP_SOURCE] = "cell centroids in microns"
    sdata.attrs[ATTRS_STORM][ATTRS_DATASET] = "xenium_mouse_brain"
    sdata.attrs[ATTRS_STORM][ATTRS_TECHNOLOGY] = "xenium"
    return sdata
