"""``st.pl.domains``: tissue domains over the H&E image, in true physical scale."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from spatialdata import SpatialData

from storm_sc._constants import OBS_DOMAIN, TABLE_PREDICTED
from storm_sc.io import SpatialInput
from storm_sc.io._resolve import UnknownScaleError

from ._colors import (
    NA_COLOR,
    NA_LABEL,
    categorical_column,
    category_colors,
    merged_categories,
    rgba_of,
    warn_if_clustered_apart,
)
from ._figure import check_flag, check_fraction, check_positive, check_save, finish, panel_axes
from ._slides import require_obs_in_any, resolve_slide, scale_hint, slide_names, slides_to_draw
from ._tissue import (
    draw_background,
    draw_spots,
    frame_axes,
    spot_bounds,
    spot_diameter_um,
    tissue_background,
)

# Legend entries per column: about a panel's height of small-font rows.
_LEGEND_ROWS = 16


def _legend_handles(categories: Sequence[str], colors: dict[str, str], with_na: bool) -> list[Line2D]:
    handles = [
        Line2D([], [], marker="o", linestyle="", markersize=8, markerfacecolor=colors[c], markeredgewidth=0, label=c)
        for c in categories
    ]
    if with_na:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                markersize=8,
                markerfacecolor=NA_COLOR,
                markeredgewidth=0,
                label=NA_LABEL,
            )
        )
    return handles


def domains(
    data: SpatialData | AnnData | Sequence[SpatialData | AnnData],
    *,
    key: str = OBS_DOMAIN,
    table_key: str | None = None,
    image_key: str | None = None,
    mpp: float | Mapping[str, float | None] | Sequence[float | Mapping[str, float | None] | None] | None = None,
    library_key: str | None = None,
    image: bool = True,
    ax: Axes | Sequence[Axes] | None = None,
    spot_size: float | None = None,
    alpha: float = 0.75,
    legend: bool = True,
    title: str | Sequence[str] | None = None,
    ncols: int = 3,
    panel_size: float = 5.0,
    save: str | os.PathLike | None = None,
    show: bool | None = None,
) -> Figure | None:
    """Tissue domains (or any categorical annotation) over the H&E image, in true physical scale.

    Each observation is drawn as a circle of its real diameter (a square for Visium HD bins) at its position in
    microns, over the H&E image read from a pyramid level at display resolution (the full-resolution image is never
    loaded). Colours are
    those stored in ``.uns[f"{key}_colors"]`` (as written by :func:`storm_sc.tl.storm_domains`), so that every
    plot of the same domains matches. Several slides give one panel each. Nothing in ``data`` is modified.

    Parameters
    ----------
    data
        A SpatialData (or an AnnData with ``.obsm["spatial"]`` and images in ``.uns["spatial"]``), or a list of
        them for one panel per slide (a SpatialData holding several slides, from ``spatialdata.concatenate``, also
        gives one panel per slide).
    key
        Categorical column of ``.obs`` to colour by: the domains, or e.g. a pathologist annotation.
    table_key
        The measured table, when the SpatialData holds several besides ``tables["storm_predicted"]``.
    image_key, mpp
        The H&E image, when several could be used, and its microns per pixel (per unit of ``.obsm["spatial"]`` for
        an AnnData without image), when the data do not state it (see :func:`storm_sc.io.resolve`); ``mpp`` may be
        a list with one value (or ``None``) per object of ``data``, or a mapping of slide name to value for an
        object holding several, as for :func:`storm_sc.tl.storm_embed`.
    library_key
        Column of ``.obs`` naming each row's section in an AnnData that stacks several (``anndata.concat``): one
        panel per section, as given to the tools.
    image
        Draw the H&E image under the observations (when the slide has one).
    ax
        Axes to draw into (one per slide); default a new figure.
    spot_size
        Diameter of the drawn observations in microns; default the platform's spot size (55 um on Visium), or
        from the spacing of the observations (cells).
    alpha
        Opacity of the observations (the tissue shows through below 1).
    legend
        Draw a legend of the categories: one for all slides, or one per slide when separate
        :func:`storm_sc.tl.storm_domains` calls numbered their domains (domain 2 of one is not domain 2 of the other;
        a warning says so).
    title
        Panel title(s); default each slide's library id.
    ncols
        Panels per row of a new figure.
    panel_size
        Side of one panel, in inches.
    save
        File to write the figure to (the suffix gives the format: ``.png``, ``.pdf``, ``.svg`` ...); ``None``
        writes nothing.
    show
        Show the figure (``matplotlib.pyplot.show()``) and return ``None``, as scanpy's plots do. Default: show a
        figure the plot makes itself, not one drawn into ``ax``. ``False`` returns the Figure instead.

    Returns
    -------
    The matplotlib Figure when it is not shown (``show=False``, or drawn into ``ax``), else ``None``; axes in
    microns (y pointing down, as in the image), with a scale bar.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> fig = st.pl.domains(sdata, key="true_domain", show=False)
    >>> len(fig.axes)
    1
    """
    slides_data, mpps = slides_to_draw(data, caller="domains", mpp=mpp, library_key=library_key, table_key=table_key)
    check_flag(image, "image")
    check_flag(legend, "legend")
    check_flag(show, "show", allow_none=True)
    check_positive(spot_size, "spot_size")
    check_positive(panel_size, "panel_size", allow_none=False)
    check_fraction(alpha, "alpha")
    save_path = check_save(save)
    if not isinstance(key, str):
        raise TypeError(f"`key` must be the name of a column of .obs, got {key!r}.")
    try:
        slides = [
            resolve_slide(d, table_key=table_key, predicted_key=TABLE_PREDICTED, image_key=image_key, mpp=m)
            for d, m in zip(slides_data, mpps, strict=True)
        ]
    except UnknownScaleError as err:
        raise UnknownScaleError(f"{err}{scale_hint(data, table_key)}") from err
    names = slide_names(slides)
    require_obs_in_any([s.table for s in slides], key, names)
    labels = []
    for slide, name in zip(slides, names, strict=True):
        if key in slide.table.obs:
            labels.append(categorical_column(slide.table, key, f"Slide {name!r}"))
        else:  # a column only some slides have (labels of one section): this one's spots are drawn as missing
            labels.append(pd.Categorical([None] * slide.table.n_obs, categories=[]))
    if title is None:
        titles = names
    else:
        titles = [title] if isinstance(title, str) else list(title)
        if len(titles) != len(slides):
            raise ValueError(f"`title` must give one title per slide ({len(slides)}), got {len(titles)}.")

    fig, axes = panel_axes(len(slides), ax, ncols=ncols, panel_size=(panel_size, panel_size))
    if warn_if_clustered_apart([s.table for s in slides], key):
        # Numbered apart, domain 2 of one slide is not domain 2 of another: each slide its own colours and legend.
        for panel, slide, lab in zip(axes, slides, labels, strict=True):
            categories = [str(c) for c in lab.categories]
            colors = category_colors([slide.table], key, categories)
            _draw_slide(panel, slide, lab, colors, spot_size=spot_size, image=image, alpha=alpha)
            if legend:
                _legend(panel, categories, colors, pd.isna(lab).any(), title=f"{key} (this slide)")
    else:
        categories = merged_categories([lab.categories for lab in labels])
        colors = category_colors([s.table for s in slides], key, categories)
        for panel, slide, lab in zip(axes, slides, labels, strict=True):
            _draw_slide(panel, slide, lab, colors, spot_size=spot_size, image=image, alpha=alpha)
        if legend:
            _legend(axes[-1], categories, colors, any(pd.isna(lab).any() for lab in labels), title=key)
    for panel, panel_title in zip(axes, titles, strict=True):
        panel.set_title(panel_title)
    return finish(fig, save_path, show, own_figure=ax is None)


def _draw_slide(
    panel: Axes,
    slide: SpatialInput,
    labels: pd.Categorical,
    colors: dict[str, str],
    *,
    spot_size: float | None,
    image: bool,
    alpha: float,
) -> None:
    diameter = spot_size if spot_size is not None else spot_diameter_um(slide)
    bounds = spot_bounds(slide.centers_um, diameter)
    draw_background(panel, tissue_background(slide, bounds, image=image))
    draw_spots(panel, slide, diameter, facecolors=rgba_of(labels, colors, alpha=alpha))
    frame_axes(panel, bounds)


def _legend(panel: Axes, categories: Sequence[str], colors: dict[str, str], with_na: bool, *, title: str) -> None:
    handles = _legend_handles(categories, colors, with_na)
    panel.legend(
        handles=handles,
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
        fontsize="small",
        ncol=math.ceil(len(handles) / _LEGEND_ROWS),  # many domains (Leiden on cells) would run off the figure
    )
