"""``st.pl.napari``: the slide in napari (H&E, domains, predicted genes), in microns."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import pandas as pd
from anndata import AnnData
from spatialdata import SpatialData

from storm_sc._constants import LAYER_PREDICTED_STD, OBS_DOMAIN, TABLE_PREDICTED
from storm_sc._settings import logger
from storm_sc.io import SpatialInput
from storm_sc.pp._pyramid import image_levels

from ._colors import categorical_column, category_colors, rgba_of
from ._figure import check_flag, check_positive
from ._slides import as_slides, gene_values, pick_predicted_genes, predicted_table, require_obs, resolve_slide
from ._tissue import image_to_um, spot_diameter_um

if TYPE_CHECKING:
    import napari as napari_module

#: A single-level image larger than this (pixels, either side) is shown through lazily averaged levels, so
#: that napari never reads the whole image to display it zoomed out.
_MULTISCALE_MIN_SIDE = 4096
_UNITS = ("um", "um")
_AXIS_LABELS = ("y", "x")
# Gene layers added when no genes are named: all of a chosen panel's, none of a whole vocabulary's.
MAX_DEFAULT_GENE_LAYERS = 50


def _import_napari() -> Any:
    try:
        return importlib.import_module("napari")
    except ImportError as err:
        raise ImportError(
            'st.pl.napari needs napari, an optional dependency: pip install "storm-sc[napari]" '
            f"(or pip install 'napari[pyqt5]'). Import failed with: {err}"
        ) from err


def _napari_levels(slide: SpatialInput) -> list[da.Array]:
    """Return the image as ``(y, x, c)`` dask arrays, finest first (a large single level gets averaged levels)."""
    levels = [lvl.data for lvl in image_levels(slide.image, slide.image_key or "image")]
    if len(levels) == 1:
        while max(levels[-1].shape[1:]) > _MULTISCALE_MIN_SIDE and min(levels[-1].shape[1:]) >= 2:
            last = levels[-1]
            coarse = da.coarsen(np.mean, last.astype(np.float32), {1: 2, 2: 2}, trim_excess=True)
            levels.append(coarse.round().astype(last.dtype) if last.dtype == np.uint8 else coarse.astype(last.dtype))
    channels = levels[0].shape[0]
    keep = slice(0, 3) if channels >= 3 else slice(0, 1)
    out = [lvl[keep].transpose(1, 2, 0) for lvl in levels]
    return [o[..., 0] for o in out] if channels < 3 else out


def _scale_bar(viewer: Any) -> Any:
    """Return the viewer's scale bar (``viewer.canvas.overlays`` since napari 0.9, ``viewer.scale_bar`` before)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and "scale_bar" in overlays:
        return overlays["scale_bar"]
    return viewer.scale_bar


def _image_placement(slide: SpatialInput) -> dict[str, Any]:
    """Compute napari's ``scale`` and ``translate`` (or ``affine``) of the full-resolution level, in microns ``(y, x)``.

    napari centres data pixel ``j`` on world ``j * scale + translate``; spatialdata's pixel ``j`` covers
    ``[j, j + 1)``, whence the half-pixel shift.
    """
    m = image_to_um(slide)
    if abs(m[0, 1]) < 1e-12 and abs(m[1, 0]) < 1e-12:
        scale = (m[1, 1], m[0, 0])
        translate = (m[1, 2] + 0.5 * m[1, 1], m[0, 2] + 0.5 * m[0, 0])
        return {"scale": scale, "translate": translate}
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    return {"affine": swap @ m @ swap @ half}


def napari(
    data: SpatialData | AnnData,
    *,
    genes: str | Sequence[str] | None = None,
    key: str | None = OBS_DOMAIN,
    table_key: str | None = None,
    image_key: str | None = None,
    mpp: float | None = None,
    predicted_key: str = TABLE_PREDICTED,
    predicted: AnnData | None = None,
    image: bool = True,
    spot_size: float | None = None,
    show: bool = True,
) -> napari_module.Viewer:
    """Open the slide in napari: H&E image, observations coloured by domain, one layer per predicted gene.

    Everything is placed in microns (the layers' ``units``; the image layer's ``scale`` is its microns per
    pixel), so the scale bar and the cursor read physical distances. The image is shown lazily and as a pyramid
    when it has one. Observations are a Points layer of their real diameter, coloured with the same colours as
    ``.uns[f"{key}_colors"]`` (as :func:`storm_sc.pl.domains`); their ``features`` hold the annotation and, for
    each predicted-gene layer, the prediction and its standard deviation. Gene layers start hidden; toggle them
    in the layer list. Needs the optional dependency napari (``pip install "storm-sc[napari]"``). Nothing in
    ``data`` is modified.

    Parameters
    ----------
    data
        A SpatialData (or an AnnData with ``.obsm["spatial"]`` and images in ``.uns["spatial"]``).
    genes
        Predicted genes to add as layers (case-insensitive); default every gene of ``tables[predicted_key]``
        when that table exists and holds at most 50 (else none, with a warning: a layer per gene of a
        whole-vocabulary prediction would take minutes to build).
    key
        Categorical ``.obs`` column colouring the observations; ``None`` for plain white spots.
    table_key
        The measured table, when the SpatialData holds several besides the predicted one.
    image_key, mpp
        The H&E image, when several could be used, and its microns per pixel (per unit of ``.obsm["spatial"]`` for
        an AnnData without image), when the data do not state it (see :func:`storm_sc.io.resolve`).
    predicted_key
        Key of the predicted table in ``sdata.tables``.
    predicted
        The predicted AnnData itself (for an AnnData ``data``).
    image
        Add the H&E image (when the slide has one).
    spot_size
        Diameter of the observations in microns; default the platform's spot size.
    show
        Show the viewer window (``False``: build it hidden, e.g. for screenshots or tests; its canvas is rendered
        once, so ``viewer.screenshot()`` works straight away).

    Returns
    -------
    The :class:`napari.Viewer`.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> viewer = st.pl.napari(sdata, key="true_domain")  # doctest: +SKIP
    >>> [layer.name for layer in viewer.layers]  # doctest: +SKIP
    ['toy H&E', 'true_domain']
    """
    (one,) = as_slides(data, caller="napari", many=False, table_key=table_key)
    check_flag(image, "image")
    check_flag(show, "show")
    check_positive(spot_size, "spot_size")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"`key` must be the name of a column of .obs or None, got {key!r}.")
    nap = _import_napari()
    slide = resolve_slide(one, table_key=table_key, predicted_key=predicted_key, image_key=image_key, mpp=mpp)
    labels = None
    if key is not None:
        require_obs(slide.table, key, f"Slide {slide.library_id!r}")
        labels = categorical_column(slide.table, key, f"Slide {slide.library_id!r}")
    has_prediction = predicted is not None or (isinstance(one, SpatialData) and predicted_key in one.tables)
    pred = chosen = None
    if genes is not None or has_prediction:
        pred = predicted_table(one, slide.table, predicted_key=predicted_key, predicted=predicted)
        chosen = pick_predicted_genes(genes, pred)
        if genes is None and len(chosen) > MAX_DEFAULT_GENE_LAYERS:
            # a layer costs ~0.2 s and its memory: a whole-vocabulary prediction would take half an hour
            logger.warning(
                "The prediction holds %d genes: none added as layers (at most %d are by default). Pass "
                "`genes=[...]` to add those you want to see.",
                len(chosen),
                MAX_DEFAULT_GENE_LAYERS,
            )
            chosen = []

    viewer = nap.Viewer(title=f"storm_sc: {slide.library_id}", show=show, axis_labels=_AXIS_LABELS)
    if image and slide.has_image:
        levels = _napari_levels(slide)
        viewer.add_image(
            levels if len(levels) > 1 else levels[0],
            multiscale=len(levels) > 1,
            rgb=levels[0].ndim == 3,
            name=f"{slide.library_id} H&E",
            units=_UNITS,
            **_image_placement(slide),
        )
    yx = slide.centers_um[:, ::-1].copy()
    diameter = spot_size if spot_size is not None else spot_diameter_um(slide)
    features = pd.DataFrame(index=pd.RangeIndex(slide.n_obs))
    features["obs_name"] = slide.table.obs_names.to_numpy()
    if labels is not None:
        features[key] = labels.astype(object)
        colors = category_colors([slide.table], key, [str(c) for c in labels.categories])
        face = rgba_of(labels, colors)
        name = key
    else:
        face, name = np.ones((slide.n_obs, 4)), "observations"
    viewer.add_points(
        yx, size=diameter, face_color=face, border_width=0, features=features, name=name, units=_UNITS, opacity=0.8
    )
    for gene in chosen or []:
        values = gene_values(pred, gene)
        gene_features = features.assign(**{gene: values})
        if LAYER_PREDICTED_STD in pred.layers:
            gene_features[f"{gene} s.d."] = gene_values(pred, gene, LAYER_PREDICTED_STD)
        finite = values[np.isfinite(values)]
        lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
        viewer.add_points(
            yx,
            size=diameter,
            features=gene_features,
            face_color=gene,
            face_colormap="viridis",
            face_contrast_limits=(float(lo), float(hi) if hi > lo else float(lo) + 1e-6),
            border_width=0,
            name=f"predicted {gene}",
            units=_UNITS,
            visible=False,
        )
    _scale_bar(viewer).visible = True
    viewer.reset_view()
    if not show:
        # A hidden viewer draws its canvas only once its window has been rendered: without this, the first
        # viewer.screenshot() (or export_figure) of the canvas is black.
        viewer.screenshot(canvas_only=False, flash=False)
    logger.info(
        "napari: %s with %d observations%s",
        slide.library_id,
        slide.n_obs,
        f" and {len(chosen)} predicted gene layer(s)" if chosen else "",
    )
    return viewer
