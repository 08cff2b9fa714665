"""Which datasets exist, which are in the data directory, and which can be downloaded."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ._fetch import file_url, is_local, registered
from ._her2st import _COUNTS, _SPOTS, her2st_image_path, her2st_sections
from ._visium import _DLPFC_ROOT, _FFPE_ROOT, _HEART_ROOT, dlpfc_samples, visium_ffpe_has_image, visium_ffpe_sections


@dataclass(frozen=True)
class _Entry:
    call: str
    platform: str
    files: tuple[str, ...]
    image: bool
    labels: str


def _entries() -> list[_Entry]:
    out: list[_Entry] = []
    for section in her2st_sections():
        image = her2st_image_path(section)
        files = (_COUNTS.format(section=section), _SPOTS.format(section=section)) + ((image,) if image else ())
        labelled = bool(registered(f"her2st/data/ST-pat/lbl/{section}_"))
        out.append(
            _Entry(
                f'her2st("{section}")',
                "legacy_st",
                files,
                image is not None,
                "pathologist + expression clusters" if labelled else "expression clusters",
            )
        )
    for sample in dlpfc_samples():
        root = _DLPFC_ROOT.format(sample=sample)
        files = tuple(root + f for f in ("filtered_feature_bc_matrix.h5", "spatial/tissue_positions_list.csv"))
        out.append(_Entry(f'dlpfc("{sample}")', "visium", files, True, "cortical layers"))
    out.append(_Entry("mob()", "legacy_st", tuple(registered("mob/")), False, "olfactory bulb layers"))
    for r in (1, 2):
        files = (f"mob_he_stahl2016/HE_Rep{r}.jpg", f"mob_he_stahl2016/DERIVED_MOB{r}_HE_Rep{r}.h5ad")
        out.append(_Entry(f"mob_he({r})", "legacy_st", files, True, ""))
    for section, group in sorted(visium_ffpe_sections().items()):
        if not visium_ffpe_has_image(section):
            continue
        root = f"{_FFPE_ROOT}{group}/{section}/"
        files = tuple(root + f for f in ("filtered_feature_bc_matrix.h5", "spatial/tissue_hires_image.png"))
        labels = "organoid ids" if "organoid" in group else ""
        out.append(_Entry(f'visium_ffpe("{section}")', "visium", files, True, labels))
    out.append(_Entry("visium_heart()", "visium", tuple(registered(_HEART_ROOT)), True, ""))
    out.append(_Entry("xenium_toy()", "xenium", tuple(registered("xenium_toy/")), False, ""))
    out.append(_Entry("xenium_lung_he()", "hest", tuple(registered("xenium_lung_he_ncbi858/")), True, ""))
    out.append(_Entry("xenium_mouse_brain()", "xenium", tuple(registered("xenium_mouse_brain/")), False, ""))
    out.append(_Entry("cosmx_lung12()", "cosmx", tuple(registered("cosmx_lung12/")), False, ""))
    return out


def available() -> pd.DataFrame:
    """List the real datasets: whether each is in the data directory and whether it can be downloaded.

    Returns
    -------
    One row per loadable slide, indexed by the call that loads it (e.g. ``'her2st("C2")'``), with columns
    ``platform``, ``local`` (all its files are in ``st.settings.data_dir``), ``downloadable`` (every file has a
    public source, so it can be fetched into an empty data directory), ``image`` (an H&E or platform image is included) and ``labels`` (published labels).
    :func:`storm_sc.datasets.toy` is always available and not listed.

    Examples
    --------
    >>> import storm_sc as st
    >>> table = st.datasets.available()
    >>> 'dlpfc("151675")' in table.index
    True
    """
    rows = []
    for item in _entries():
        rows.append(
            {
                "dataset": item.call,
                "platform": item.platform,
                "local": all(is_local(p) for p in item.files),
                "downloadable": all(file_url(p) is not None for p in item.files),
                "image": item.image,
                "labels": item.labels,
            }
        )
    return pd.DataFrame(rows).set_index("dataset")
