"""``st.pl.expression`` and ``st.pl.gene_correlation``: measured versus predicted expression."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import cast

import matplotlib
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from spatialdata import SpatialData

from storm_sc._constants import LAYER_PREDICTED_STD, TABLE_PREDICTED
from storm_sc.io import SpatialInput
from storm_sc.io._anndata import UNNAMED_SLIDE

from ._correlation import _pearson, measured_correlations, pair_expression
from ._figure import check_flag, check_positive, check_save, finish, panel_axes
from ._slides import table_and_name
from ._tissue import (
    draw_background,
    draw_spots,
    frame_axes,
    spot_bounds,
    spot_diameter_um,
    tissue_background,
)

# Colour limits of a gene: robust percentiles, so that a few extreme spots do not wash the map out.
_CLIM_PERCENTILES = (1.0, 99.0)


def _limits(*arrays: np.ndarray) -> tuple[float, float]:
    values = np.concatenate([a[np.isfinite(a)] for a in arrays])
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, _CLIM_PERCENTILES)
    if hi <= lo:
        hi = lo + 1e-6
    return float(lo), float(hi)


def _check_cmap(name: str, what: str) -> None:
    if not isinstance(name, str) or name not in matplotlib.colormaps:
        raise ValueError(f"`{what}` {name!r} is not a matplotlib colormap; e.g. 'viridis', 'magma', 'Reds'.")


def expression(
    data: SpatialData | AnnData,
    genes: str | Sequence[str],
    *,
    predicted_key: str = TABLE_PREDICTED,
    predicted: AnnData | None = None,
    table_key: str | None = None,
    image_key: str | None = None,
    mpp: float | None = None,
    layer: str | None = None,
    uncertainty: bool = False,
    image: bool = True,
    share_scale: bool = True,
    spot_size: float | None = None,
    cmap: str = "viridis",
    uncertainty_cmap: str = "magma",
    panel_size: float = 3.5,
    save: str | os.PathLike | None = None,
    show: bool | None = None,
) -> Figure | None:
    """Measured and predicted expression of chosen genes side by side over the tissue.

    One row per gene; columns: the measurement, the prediction from H&E (:func:`storm_sc.tl.predict_expression`)
    and, with ``uncertainty=True``, the predicted standard deviation. Both expression columns are on the model's
    scale (log1p, library size 1e4; the measurement is normalised as in :func:`storm_sc.pp.normalize_expression`)
    and share one colour scale per gene, so that they compare directly; the Pearson r of each gene is in the
    title of its predicted panel. Observations are drawn as circles of their real size, in microns. Nothing in
    ``data`` is modified.

    Parameters
    ----------
    data
        A SpatialData holding the measured table and ``tables[predicted_key]``, or the measured AnnData (with
        ``.obsm["spatial"]``) together with ``predicted=``.
    genes
        Gene(s) to show, among the predicted genes (case-insensitive).
    predicted_key
        Key of the predicted table in ``sdata.tables``.
    predicted
        The predicted AnnData itself (required for an AnnData ``data``).
    table_key
        The measured table, when the SpatialData holds several besides the predicted one.
    image_key, mpp
        The H&E image, when several could be used, and its microns per pixel (per unit of ``.obsm["spatial"]`` for
        an AnnData without image), when the data do not state it (see :func:`storm_sc.io.resolve`).
    layer
        Layer of the measured table holding the expression instead of ``.X``.
    uncertainty
        Add a column with the predicted standard deviation (``layers["predicted_std"]``).
    image
        Draw the H&E image under the observations.
    share_scale
        One colour scale for the measured and predicted panels of a gene (otherwise one each).
    spot_size
        Diameter of the drawn observations in microns; default the platform's spot size.
    cmap, uncertainty_cmap
        Colour maps of expression and of the standard deviation.
    panel_size
        Side of one panel, in inches.
    save
        File to write the figure to (suffix gives the format); ``None`` writes nothing.
    show
        Show the figure (``matplotlib.pyplot.show()``) and return ``None``, as scanpy's plots do (the default).
        ``False`` returns the Figure instead.

    Returns
    -------
    The matplotlib Figure, with ``len(genes)`` rows of 2 (or 3) panels, when it is not shown (``show=False``);
    else ``None``.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> _ = st.tl.predict_expression(sdata, model, genes=["gene_0000", "gene_0001"], verbose=False)
    >>> fig = st.pl.expression(sdata, ["gene_0000", "gene_0001"], show=False)
    >>> len(fig.axes) >= 4
    True
    """
    for flag, name in ((uncertainty, "uncertainty"), (image, "image"), (share_scale, "share_scale")):
        check_flag(flag, name)
    check_flag(show, "show", allow_none=True)
    check_positive(spot_size, "spot_size")
    check_positive(panel_size, "panel_size", allow_none=False)
    _check_cmap(cmap, "cmap")
    _check_cmap(uncertainty_cmap, "uncertainty_cmap")
    save_path = check_save(save)
    if genes is None:
        raise ValueError("`genes` must name the gene(s) to show, e.g. genes=['EPCAM', 'VIM'].")
    paired = pair_expression(
        data,
        genes,
        predicted_key=predicted_key,
        predicted=predicted,
        table_key=table_key,
        layer=layer,
        positions=True,
        image_key=image_key,
        mpp=mpp,
        caller="expression",
    )
    if uncertainty and LAYER_PREDICTED_STD not in paired.predicted.layers:
        raise KeyError(
            f"The predicted table has no layers[{LAYER_PREDICTED_STD!r}] (layers: {list(paired.predicted.layers)}); "
            "predict with st.tl.predict_expression, or pass uncertainty=False."
        )
    slide = cast(SpatialInput, paired.slide)  # resolved: positions=True
    # nothing measured (an H&E-only slide's tiles): no column of empty "not measured" panels
    with_measured = any(paired.measured[gene] is not None for gene in paired.genes)
    n_cols = (3 if uncertainty else 2) - (not with_measured)
    fig, axes = panel_axes(len(paired.genes) * n_cols, None, ncols=n_cols, panel_size=(panel_size * 1.15, panel_size))
    diameter = spot_size if spot_size is not None else spot_diameter_um(slide)
    bounds = spot_bounds(slide.centers_um, diameter)
    tissue = tissue_background(slide, bounds, image=image)  # once: reading it per panel took 1.5 s each
    for row, gene in enumerate(paired.genes):
        measured = paired.measured[gene]
        pred = paired.predicted_values(gene)
        row_axes = axes[row * n_cols : (row + 1) * n_cols]
        shared = _limits(pred, *([measured] if measured is not None else []))
        columns: list[tuple[np.ndarray | None, str, str, tuple[float, float]]] = [
            (measured, "measured", cmap, shared if share_scale or measured is None else _limits(measured)),
            (pred, "predicted", cmap, shared if share_scale else _limits(pred)),
        ][not with_measured :]
        if uncertainty:
            std = paired.predicted_values(gene, LAYER_PREDICTED_STD)
            finite = std[np.isfinite(std)]
            top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
            # From zero: an s.d. reads against none at all, and the readout's (one per gene, the same on every
            # spot) is then one honest colour, not a colour bar stretched over rounding noise.
            constant = bool(finite.size) and float(np.ptp(finite)) <= 1e-6 * top
            label = "predicted s.d. (the same everywhere)" if constant else "predicted s.d."
            columns.append((std, label, uncertainty_cmap, (0.0, top)))
        for col, (ax, (values, label, colormap, (vmin, vmax))) in enumerate(zip(row_axes, columns, strict=True)):
            draw_background(ax, tissue)
            frame_axes(ax, bounds, scalebar=col == 0)
            if col:
                ax.set_ylabel("")
            if row < len(paired.genes) - 1:
                ax.set_xlabel("")
            if values is None:
                ax.set_title(f"{gene}: measured")
                ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center")
                continue
            spots = draw_spots(ax, slide, diameter, values=values, cmap=colormap, vmin=vmin, vmax=vmax)
            if label == "predicted" and measured is not None:
                r = _pearson(measured, pred)
                # a gene measured (or predicted) the same everywhere has no correlation to show
                ax.set_title(f"{gene}: predicted " + (f"(r = {r:.2f})" if np.isfinite(r) else "(no r: constant)"))
            else:
                ax.set_title(f"{gene}: {label}")
            if label != "measured" or not share_scale:
                if label.startswith("predicted s.d."):
                    unit = "s.d. (log1p)"
                else:
                    unit = "log1p, both panels" if share_scale and measured is not None else "log1p"
                fig.colorbar(spots, ax=ax, shrink=0.8, label=unit)
    return finish(fig, save_path, show, own_figure=True)


def gene_correlation(
    data: SpatialData | AnnData,
    *,
    predicted_key: str = TABLE_PREDICTED,
    predicted: AnnData | None = None,
    genes: str | Sequence[str] | None = None,
    top: int | None = 30,
    table_key: str | None = None,
    layer: str | None = None,
    ax: Axes | None = None,
    save: str | os.PathLike | None = None,
    show: bool | None = None,
) -> Figure | None:
    """How well each gene is predicted from H&E: per-gene Pearson r between measured and predicted expression.

    The genes are sorted by correlation and the best ``top`` are drawn as a dot plot, with the median over all
    evaluated genes as a line. The numbers come from :func:`storm_sc.pl.gene_correlations`, which returns them as
    a table (measured expression normalised like the model's targets: library size 1e4, log1p). Nothing in
    ``data`` is modified.

    Parameters
    ----------
    data
        A SpatialData holding the measured table and ``tables[predicted_key]``, or the measured AnnData together
        with ``predicted=``.
    predicted_key
        Key of the predicted table in ``sdata.tables``.
    predicted
        The predicted AnnData itself (required for an AnnData ``data``).
    genes
        Genes to evaluate; default every predicted gene.
    top
        Number of best-predicted genes to draw; ``None`` draws all.
    table_key
        The measured table, when the SpatialData holds several besides the predicted one.
    layer
        Layer of the measured table holding the expression instead of ``.X``.
    ax
        Axes to draw into; default a new figure.
    save
        File to write the figure to (suffix gives the format); ``None`` writes nothing.
    show
        Show the figure (``matplotlib.pyplot.show()``) and return ``None``, as scanpy's plots do. Default: show a
        figure the plot makes itself, not one drawn into ``ax``. ``False`` returns the Figure instead.

    Returns
    -------
    The matplotlib Figure when not shown (``show=False``, or drawn into ``ax``), else ``None``.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> _ = st.tl.predict_expression(sdata, model, verbose=False)
    >>> fig = st.pl.gene_correlation(sdata, top=10, show=False)
    >>> st.pl.gene_correlations(sdata).shape[0]
    40
    """
    check_flag(show, "show", allow_none=True)
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"`top` must be a positive integer or None, got {top!r}.")
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"`ax` must be one matplotlib Axes or None, got {type(ax).__name__}.")
    save_path = check_save(save)
    _, table = measured_correlations(
        data,
        genes,
        predicted_key=predicted_key,
        predicted=predicted,
        table_key=table_key,
        layer=layer,
        caller="gene_correlation",
    )
    finite = table["pearson_r"].dropna()
    shown = finite if top is None else finite.iloc[:top]
    height = max(2.5, 0.22 * len(shown) + 1.2)
    fig, (axis,) = panel_axes(1, ax, ncols=1, panel_size=(4.5, height))
    y = np.arange(len(shown))
    axis.hlines(y, 0, shown.to_numpy(), color="0.75", linewidth=1, zorder=1)
    axis.scatter(shown.to_numpy(), y, c=shown.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1, s=30, zorder=2,
                 edgecolors="0.3", linewidths=0.5)  # fmt: skip
    axis.set_yticks(y, shown.index.tolist(), fontsize="small")
    axis.set_ylim(len(shown) - 0.5, -0.5)
    axis.axvline(0, color="0.3", linewidth=0.8)
    if len(finite):
        median = float(finite.median())
        axis.axvline(median, color="tab:red", linestyle="--", linewidth=1, label=f"median r = {median:.2f}")
        axis.legend(loc="lower right", fontsize="small", frameon=False)
    low = min(0.0, float(shown.min()) if len(shown) else 0.0)
    axis.set_xlim(low - 0.05, 1.0)
    axis.set_xlabel("Pearson r, measured vs predicted (log1p)")
    what = "all" if top is None or len(finite) <= top else f"top {len(shown)} of"
    n_nan = int(table["pearson_r"].isna().sum())
    constant = f"\n({n_nan} constant gene(s) without r)" if n_nan else ""
    _, name = table_and_name(data, table_key=table_key, predicted_key=predicted_key)
    # A generic name says nothing in a title; a figure saved from a loop over slides needs the slide's.
    slide = "" if name == UNNAMED_SLIDE else f"{name}: "
    axis.set_title(f"{slide}{what} {len(finite)} genes{constant}", fontsize="medium")
    return finish(fig, save_path, show, own_figure=ax is None)
