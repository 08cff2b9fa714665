"""10x Visium datasets read with ``spatialdata_io.visium``: DLPFC 151675, Visium FFPE (12 sections), V1 heart."""

from __future__ import annotations

import warnings

import pandas as pd
from spatialdata import SpatialData

from storm_sc._constants import OBS_LAYER, OBS_ORGANOID
from storm_sc._settings import logger, settings
from storm_sc.io._elements import is_blank

from ._fetch import fetch, fetch_all, file_url, is_local, registered

DLPFC_LAYERS = ("L1", "L2", "L3", "L4", "L5", "L6", "WM")
_DLPFC_ROOT = "dlpfc_{sample}/"
_DLPFC_LABELS = "layer_annotations.csv"
_DLPFC_LAYER_MAP = "barcode_level_layer_map.tsv"
_FFPE_ROOT = "visium_ffpe_villacampa2021/"
_FFPE_ORGANOIDS = "organoid_selection.txt"
_HEART_ROOT = "visium_heart_fixture/"
# Files spatialdata_io.visium needs; the lowres image is optional for it and not always published.
_SPACERANGER = (
    "filtered_feature_bc_matrix.h5",
    "spatial/tissue_positions_list.csv",
    "spatial/scalefactors_json.json",
)


def _read_visium(root: str, dataset_id: str) -> SpatialData:
    import spatialdata_io

    path = settings.data_dir / root
    with warnings.catch_warnings():
        # the 10x h5 reader warns about duplicated gene symbols; the reader makes them unique
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        # spatialdata_io builds its table with a string region column, which spatialdata converts (and says so)
        warnings.filterwarnings("ignore", message="Converting `region_key: region` to categorical")
        return spatialdata_io.visium(path, dataset_id=dataset_id)


def _fetch_visium(root: str, *, verbose: bool | None) -> None:
    required = [root + f for f in _SPACERANGER]
    images = [p for p in registered(root + "spatial/") if p.endswith("_image.png")]
    # an image made locally (e.g. a downscaled lowres) is used when present but cannot be downloaded
    optional = [p for p in images if is_local(p) or file_url(p) is not None]
    fetch_all(required, verbose=verbose)
    for path in optional:
        try:
            fetch(path, verbose=verbose)
        except OSError as err:
            # without its image the section still reads, for expression-only use
            logger.warning("%s could not be fetched (%s); reading the section without it.", path, err)


# --------------------------------------------------------------------------------------------------------------------
# DLPFC
# --------------------------------------------------------------------------------------------------------------------
def dlpfc_samples() -> list[str]:
    """DLPFC samples in the registry (the 12 sections of spatialLIBD)."""
    return sorted({p.split("/")[0].removeprefix("dlpfc_") for p in registered("dlpfc_")})


def _dlpfc_layers(root: str, sample: str, *, verbose: bool | None) -> pd.Series:
    labels = root + _DLPFC_LABELS
    if is_local(labels):
        frame = pd.read_csv(fetch(labels), index_col="barcode")
        return frame["layer"]
    # derive the labels from the published barcode -> layer map of all 12 samples
    frame = pd.read_csv(
        fetch(root + _DLPFC_LAYER_MAP, verbose=verbose),
        sep="\t",
        header=None,
        names=["barcode", "sample", "layer"],
        dtype=str,
    )
    frame = frame[frame["sample"] == sample]
    return frame.set_index("barcode")["layer"]


def dlpfc(sample: str = "151675", *, verbose: bool | None = None) -> SpatialData:
    """Human dorsolateral prefrontal cortex (Visium; Maynard et al. 2021) with the manual cortical layers.

    Parameters
    ----------
    sample
        spatialLIBD sample id, one of the 12 sections of the study (151507-151510, 151669-151676); the files of a
        section not in the data directory are downloaded (the count matrix from spatialLIBD, the positions,
        scale factors, lowres image and layer map from HumanPilot). Sections 151669-151672 have layers L3-L6
        and WM only.
    verbose
        Show download progress (default: ``st.settings``).

    Returns
    -------
    The SpatialData of ``spatialdata_io.visium`` (lowres H&E, spot circles in full-resolution pixels, table) with
    ``.obs["layer"]``: categorical ``L1``-``L6``, ``WM``; NaN for unlabelled spots.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.dlpfc()  # doctest: +SKIP
    >>> sdata["table"].obs["layer"].value_counts()  # doctest: +SKIP
    """
    samples = dlpfc_samples()
    if sample not in samples:
        raise ValueError(f"DLPFC sample {sample!r} is not registered; choose one of {samples}.")
    root = _DLPFC_ROOT.format(sample=sample)
    _fetch_visium(root, verbose=verbose)
    layers = _dlpfc_layers(root, sample, verbose=verbose)
    sdata = _read_visium(root, sample)
    table = sdata.tables["table"]
    values = layers.reindex(table.obs_names)
    unknown = sorted(set(values.dropna()) - set(DLPFC_LAYERS))
    if unknown:
        raise ValueError(f"Unexpected DLPFC layer names {unknown}; expected {list(DLPFC_LAYERS)}.")
    table.obs[OBS_LAYER] = pd.Categorical(values.to_numpy(), categories=list(DLPFC_LAYERS))
    logger.info(
        "dlpfc %s: %d spots x %d genes, %d without a layer label",
        sample,
        table.n_obs,
        table.n_vars,
        int(table.obs[OBS_LAYER].isna().sum()),
    )
    return sdata


# --------------------------------------------------------------------------------------------------------------------
# Visium FFPE (Gracia Villacampa et al. 2021)
# --------------------------------------------------------------------------------------------------------------------
def visium_ffpe_sections() -> dict[str, str]:
    """Section id -> tissue group (e.g. ``"V10F24-078_A1": "mousebrain"``) of the Visium FFPE registry."""
    out = {}
    for p in registered(_FFPE_ROOT):
        if p.endswith("/filtered_feature_bc_matrix.h5"):
            group, section = p[len(_FFPE_ROOT) :].split("/")[:2]
            out[section] = group
    return out


def visium_ffpe_has_image(section: str) -> bool:
    """Whether a Visium FFPE section has its spot positions and H&E image registered."""
    group = visium_ffpe_sections()[section]
    root = f"{_FFPE_ROOT}{group}/{section}/spatial/"
    return bool(registered(root + "tissue_positions_list.csv")) and bool(registered(root + "tissue_hires_image.png"))


def visium_ffpe(section: str = "V10F24-078_A1", *, verbose: bool | None = None) -> SpatialData:
    """One of the Visium FFPE sections of Gracia Villacampa et al. 2021 (mouse brain, human lung, organoids).

    Parameters
    ----------
    section
        Section id (e.g. ``"V10F24-078_A1"``) or ``"<group>/<section>"``. Groups: ``mousebrain`` (A1, B1, D1;
        C1 has counts only upstream and is refused), ``lung_SARS-CoV-2``, ``lungorganoid``, ``kidneyorganoid``.
    verbose
        Show download progress (default: ``st.settings``).

    Returns
    -------
    The SpatialData of ``spatialdata_io.visium`` (hires H&E at ~4.2 um/px, spots, table of integer counts). For
    organoid sections ``.obs["organoid"]`` holds the published organoid id (NaN outside the selected organoids).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.visium_ffpe("V19D02-088_A1")  # doctest: +SKIP
    """
    sections = visium_ffpe_sections()
    section_id = section.split("/")[-1]
    if section_id not in sections:
        raise ValueError(f"Unknown Visium FFPE section {section!r}; choose one of {sorted(sections)}.")
    group = sections[section_id]
    if "/" in section and section.split("/")[0] != group:
        raise ValueError(f"Section {section_id!r} belongs to group {group!r}, not {section.split('/')[0]!r}.")
    if not visium_ffpe_has_image(section_id):
        raise ValueError(
            f"Visium FFPE section {section_id!r} has counts only (its H&E image and spot positions are missing "
            "upstream), so it cannot be loaded as a slide. Choose another section."
        )
    root = f"{_FFPE_ROOT}{group}/{section_id}/"
    _fetch_visium(root, verbose=verbose)
    sdata = _read_visium(root, section_id)

    selection = f"{_FFPE_ROOT}{group}/{_FFPE_ORGANOIDS}"
    if registered(selection):
        table = sdata.tables["table"]
        frame = pd.read_csv(fetch(selection, verbose=verbose), sep=" ")
        # barcodes carry a suffix _k for the k-th section of the group, in section-name order
        group_sections = sorted(s for s, g in sections.items() if g == group)
        suffix = f"_{group_sections.index(section_id) + 1}"
        mine = frame[frame.index.str.endswith(suffix)]
        mine.index = mine.index.str.removesuffix(suffix)
        table.obs[OBS_ORGANOID] = pd.Categorical(mine["organoid"].reindex(table.obs_names).to_numpy())
        logger.info(
            "visium_ffpe %s: %d of %d spots in a selected organoid",
            section_id,
            int(table.obs[OBS_ORGANOID].notna().sum()),
            table.n_obs,
        )
    return sdata


# --------------------------------------------------------------------------------------------------------------------
# V1 human heart fixture
# --------------------------------------------------------------------------------------------------------------------
def visium_heart(*, verbose: bool | None = None) -> SpatialData:
    """100 spots x 100 genes of 10x's V1_Human_Heart (scanpy's test fixture) with its real lowres H&E.

    The fixture's hires image is blank (all black), so it is dropped and only the lowres image is kept.

    Parameters
    ----------
    verbose
        Show download progress (default: ``st.settings``).

    Returns
    -------
    The SpatialData of ``spatialdata_io.visium`` (dataset id ``"V1_Human_Heart"``) without the blank hires image.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.visium_heart()  # doctest: +SKIP
    """
    _fetch_visium(_HEART_ROOT, verbose=verbose)
    dataset_id = "V1_Human_Heart"
    sdata = _read_visium(_HEART_ROOT, dataset_id)
    for key in list(sdata.images):
        if is_blank(sdata.images[key]):
            logger.info("visium_heart: dropping the blank image %r", key)
            del sdata.images[key]
    return sdata
