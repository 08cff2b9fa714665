"""HER2+ breast cancer, legacy Spatial Transcriptomics (Andersson et al. 2021; github almaan/her2st)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from spatialdata import SpatialData

from storm_sc._constants import (
    ATTRS_DATASET,
    ATTRS_STORM,
    OBS_EXPRESSION_CLUSTER,
    OBS_PATHOLOGIST_LABEL,
    VAR_HISTOGENE_PANEL,
)
from storm_sc._settings import logger, settings
from storm_sc.io import read_st

from ._fetch import fetch, fetch_all, registered

_ROOT = "her2st/"
_COUNTS = _ROOT + "data/ST-cnts/{section}.tsv.gz"
_SPOTS = _ROOT + "data/ST-spotfiles/{section}_selection.tsv"
_PATHOLOGY = _ROOT + "data/ST-pat/lbl/{section}_labeled_coordinates.tsv"
_CLUSTERS = _ROOT + "res/ST-cluster/lbl/{section}-cluster-annotation.tsv.gz"
_IMAGES = _ROOT + "data/ST-imgs/{patient}/{section}/"
_PANEL = _ROOT + "her_hvg_cut_1000_from_HisToGene.npy"


def her2st_sections() -> list[str]:
    """Sections of the her2st registry (``"A1"`` ... ``"H3"``)."""
    prefix = _COUNTS.split("{")[0]
    return [p[len(prefix) :].removesuffix(".tsv.gz") for p in registered(prefix)]


def her2st_image_path(section: str) -> str | None:
    """Registry path of a section's H&E image, or ``None`` when none is registered."""
    images = registered(_IMAGES.format(patient=section[0], section=section))
    return images[0] if images else None


# What an H&E image of the upstream layout may be saved as.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def her2st_local_image(section: str, data_dir: str | Path | None = None) -> Path | None:
    """An H&E image of ``section`` placed in the data directory in the upstream layout, registered or not.

    The registry lists the images whose checksums storm_sc knows (patient C); a user who cloned the whole her2st
    repository has every patient's images under ``her2st/data/ST-imgs/<patient>/<section>/``, which are used as
    they are, like any file found in the data directory.

    Parameters
    ----------
    section
        Section id, e.g. ``"A1"``.
    data_dir
        The data directory (default: ``st.settings.data_dir``).

    Returns
    -------
    The image's path, or ``None`` when the section's folder holds no image.

    Examples
    --------
    >>> her2st_local_image("A1", "/nonexistent") is None
    True
    """
    root = Path(data_dir) if data_dir is not None else settings.data_dir
    folder = root / _IMAGES.format(patient=section[0], section=section)
    if not folder.is_dir():
        return None
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if len(images) > 1:
        raise ValueError(
            f"her2st {section}: {len(images)} images in {folder} ({[p.name for p in images]}); keep the section's "
            "H&E image alone in its folder."
        )
    return images[0] if images else None


def _position_key(x: pd.Series, y: pd.Series) -> pd.Index:
    return pd.Index([f"{a}x{b}" for a, b in zip(np.rint(x).astype(int), np.rint(y).astype(int), strict=True)])


def _labels_by_position(path: str, column: str, x: str = "x", y: str = "y") -> pd.Series:
    frame = pd.read_csv(fetch(path), sep="\t").dropna(subset=[x, y])
    # the pathologist files give the sub-spot position (new_x/new_y); rounding recovers the array position
    # labels are names (pathology) or cluster numbers; strings keep both as clean categories
    return pd.Series(frame[column].astype(str).to_numpy(), index=_position_key(frame[x], frame[y]))


def her2st(section: str = "C2", *, image: bool | None = None, verbose: bool | None = None) -> SpatialData:
    """HER2-positive breast tumour sections (legacy ST, 100 um spots at 200 um pitch), with published labels.

    Counts, spot positions and the H&E image of one section, read with :func:`storm_sc.io.read_st`; the pixel size
    is estimated from the array pitch (about 0.69 um/px for patient C). Sections without a registered image load
    with positions in the frame of their (absent) image, in microns all the same.

    Parameters
    ----------
    section
        Section id: ``"A1"`` ... ``"H3"`` (see :func:`storm_sc.datasets.available`). Images are registered for
        ``"C2"`` ... ``"C6"``; pathologist labels exist for the first section of each patient (A1, B1, C1, ... J1).
    image
        ``None``: include the image when one is registered, or found in the data directory in the upstream
        layout (``her2st/data/ST-imgs/<patient>/<section>/``, e.g. after cloning the her2st repository; used as
        it is); ``True``: require it (error if there is none); ``False``: leave it out (no download).
    verbose
        Show download progress (default: ``st.settings``).

    Returns
    -------
    SpatialData with the image (``"<section>_image"``, multiscale), spots (``"<section>_spots"``) and ``"table"``
    (integer counts; ``.obs``: ``array_x``, ``array_y``, ``pixel_x``, ``pixel_y``, ``pathologist_label`` where
    published, ``expression_cluster``; ``.var["histogene_panel"]``: the 785 genes used by HisToGene/Hist2ST).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.her2st("C2")  # doctest: +SKIP
    """
    sections = her2st_sections()
    if section not in sections:
        raise ValueError(f"Unknown her2st section {section!r}; choose one of {sections}.")
    image_path = her2st_image_path(section)
    unregistered = None if image_path is not None or image is False else her2st_local_image(section)
    if image is True and image_path is None and unregistered is None:
        with_images = [s for s in sections if her2st_image_path(s) is not None]
        raise ValueError(
            f"her2st section {section!r} has no registered H&E image (images: {with_images}) and none is in "
            f"{settings.data_dir / _IMAGES.format(patient=section[0], section=section)}. "
            "Pass image=None or image=False to load it without one."
        )
    use_image = image is not False and (image_path is not None or unregistered is not None)
    if image is None and not use_image:
        logger.info("her2st %s: no H&E image registered or found; loading expression and positions only", section)
    if unregistered is not None:
        logger.info(
            "her2st %s: using the H&E image found at %s as it is (not in storm_sc's registry)", section, unregistered
        )

    counts, spots = _COUNTS.format(section=section), _SPOTS.format(section=section)
    registered_image = image_path if use_image and image_path is not None else None
    paths = fetch_all([counts, spots] + ([registered_image] if registered_image else []), verbose=verbose)
    sdata = read_st(
        paths[counts],
        paths[spots],
        paths[registered_image] if registered_image else unregistered,
        library_id=section,
    )
    table = sdata.tables["table"]
    keys = _position_key(table.obs["array_x"], table.obs["array_y"])

    pathology = _PATHOLOGY.format(section=section)
    if registered(pathology):
        labels = _labels_by_position(pathology, "label")
        table.obs[OBS_PATHOLOGIST_LABEL] = pd.Categorical(labels.reindex(keys).to_numpy())
    clusters = _CLUSTERS.format(section=section)
    if registered(clusters):
        labels = _labels_by_position(clusters, "label")
        table.obs[OBS_EXPRESSION_CLUSTER] = pd.Categorical(labels.reindex(keys).to_numpy())
    panel = np.load(fetch(_PANEL, verbose=verbose), allow_pickle=False)
    table.var[VAR_HISTOGENE_PANEL] = table.var_names.isin(panel.astype(str))

    sdata.attrs[ATTRS_STORM][ATTRS_DATASET] = f"her2st/{section}"
    return sdata
