"""``st.pl.embedding_umap``: a UMAP of the STORM embedding, for one slide or several together."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from spatialdata import SpatialData

from storm_sc._constants import OBS_DOMAIN, OBSM_EMBEDDING, TABLE_PREDICTED
from storm_sc._settings import logger
from storm_sc.pp._representation_graph import representation_neighbors
from storm_sc.tl._domains import centre_each_slide

from ._colors import categorical_column, category_colors, merged_categories, slide_palette, warn_if_clustered_apart
from ._figure import check_flag, check_positive, check_save, finish, panel_axes
from ._slides import gene_values, require_obs_in_any, require_obsm, slides_to_draw, table_and_name, unique_names

#: Default name of the column telling slides apart in the UMAP (only in the throwaway AnnData).
SLIDE_KEY = "slide"


def embedding_umap(
    data: SpatialData | AnnData | Sequence[SpatialData | AnnData],
    *,
    use_rep: str = OBSM_EMBEDDING,
    color: str | Sequence[str] | None = None,
    slide_key: str = SLIDE_KEY,
    library_key: str | None = None,
    table_key: str | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.5,
    center: Literal["all", "slide"] = "all",
    random_state: int = 0,
    point_size: float | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    ncols: int = 3,
    panel_size: float = 4.5,
    save: str | os.PathLike | None = None,
    show: bool | None = None,
) -> Figure | None:
    """UMAP of the STORM embedding, coloured by domain, slide or any ``.obs`` column.

    The neighbour graph and UMAP (scanpy) are computed on a throwaway AnnData holding only the embedding (of all
    slides, concatenated), so nothing is written into ``data``; the layout is reproducible for a
    ``random_state``. Categorical colours are those stored in ``.uns[f"{column}_colors"]``.

    Parameters
    ----------
    data
        A SpatialData or AnnData whose table holds ``.obsm[use_rep]`` (see :func:`storm_sc.tl.storm_embed`), or
        a list of them, or a SpatialData holding several slides (one UMAP of all slides).
    use_rep
        The embedding in ``.obsm``.
    color
        Column(s) of ``.obs`` to colour by, one panel each (categorical or numeric), gene names (the table's
        ``.X``, as scanpy colours by a gene; an ``.obs`` column of that name comes first), or ``slide_key`` for the
        slide of each observation. Default: the domains when present, and the slide when several are given.
    slide_key
        Name under which the slide of each observation (its library id) can be coloured; an ``.obs`` column of
        that name in the tables is used instead when present.
    library_key
        Column of ``.obs`` naming each row's section in an AnnData that stacks several (``anndata.concat``): each
        section is then a slide (of ``slide_key``), as given to the tools.
    table_key
        The measured table, when a SpatialData holds several besides ``tables["storm_predicted"]``.
    n_neighbors
        Neighbours of the kNN graph (capped at the number of observations minus one).
    min_dist
        UMAP's minimum distance between points.
    center
        ``"all"``: the embedding as it is. ``"slide"``: each slide's mean embedding removed first, as
        :func:`storm_sc.tl.storm_domains` does by default before clustering several slides (what differs between
        whole slides, e.g. one slide without an H&E image, then no longer separates them).
    random_state
        Seed of the UMAP layout.
    point_size
        Marker size; default scanpy's (from the number of observations).
    ax
        Axes to draw into (one per colour); default a new figure.
    ncols
        Panels per row of a new figure.
    panel_size
        Side of one panel, in inches.
    save
        File to write the figure to (suffix gives the format); ``None`` writes nothing.
    show
        Show the figure (``matplotlib.pyplot.show()``) and return ``None``, as scanpy's plots do. Default: show a
        figure the plot makes itself, not one drawn into ``ax``. ``False`` returns the Figure instead.

    Returns
    -------
    The matplotlib Figure, one panel per colour, when it is not shown (``show=False``, or drawn into ``ax``);
    else ``None``.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> sdata["table"].obsm["X_storm"] = sdata["table"].X.toarray()  # any embedding works
    >>> fig = st.pl.embedding_umap(sdata, color="true_domain", show=False)
    >>> fig.axes[0].get_title()
    'true_domain'
    """
    import scanpy as sc

    slides_data, _ = slides_to_draw(data, caller="embedding_umap", library_key=library_key, table_key=table_key)
    check_flag(show, "show", allow_none=True)
    check_positive(point_size, "point_size")
    check_positive(panel_size, "panel_size", allow_none=False)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 2:
        raise ValueError(f"`n_neighbors` must be an integer >= 2, got {n_neighbors!r}.")
    if not isinstance(min_dist, int | float) or min_dist < 0:
        raise ValueError(f"`min_dist` must be a number >= 0, got {min_dist!r}.")
    if center not in ("all", "slide"):
        raise ValueError(f"`center` must be 'all' or 'slide', got {center!r}.")
    if not isinstance(slide_key, str) or not slide_key:
        raise ValueError(f"`slide_key` must be a non-empty string, got {slide_key!r}.")
    save_path = check_save(save)

    found = [table_and_name(d, table_key=table_key, predicted_key=TABLE_PREDICTED) for d in slides_data]
    tables = [table for table, _ in found]
    names = unique_names([name for _, name in found])
    for table, name in zip(tables, names, strict=True):
        require_obsm(table, use_rep, f"Slide {name!r}")
    if color is None:
        color = [OBS_DOMAIN] if all(OBS_DOMAIN in t.obs for t in tables) else []
        if len(tables) > 1:
            color.append(slide_key)
        if not color:
            raise ValueError(
                f"Nothing to colour by: .obs[{OBS_DOMAIN!r}] is missing (run st.tl.storm_domains) and there is one "
                "slide; pass `color=` naming a column of .obs."
            )
    colors = [color] if isinstance(color, str) else list(color)
    if not colors or not all(isinstance(c, str) for c in colors):
        raise ValueError(f"`color` must be a column name or a list of them, got {color!r}.")
    dims = set()
    for table, name in zip(tables, names, strict=True):
        rep = np.asarray(table.obsm[use_rep])
        if rep.ndim != 2 or not np.isfinite(rep).all():
            raise ValueError(f"Slide {name!r}: .obsm[{use_rep!r}] must be a finite 2-D array.")
        dims.add(rep.shape[1])
    # genes: named by no .obs column of any slide, but by some table's genes
    genes = {
        c
        for c in colors
        if c != slide_key and not any(c in t.obs for t in tables) and any(c in t.var_names for t in tables)
    }
    for c in colors:
        if c != slide_key and c not in genes:
            require_obs_in_any(tables, c, names)
    if len(dims) > 1:
        raise ValueError(
            f".obsm[{use_rep!r}] has different widths across slides {sorted(dims)}; embed all slides with the same "
            "model (st.tl.storm_embed on the list)."
        )
    n_total = sum(t.n_obs for t in tables)
    if n_total < 3:
        raise ValueError(f"A UMAP needs at least 3 observations; got {n_total}.")

    reps = [np.asarray(table.obsm[use_rep], dtype=np.float64) for table in tables]
    if center == "slide":
        reps = centre_each_slide(reps, [[np.arange(t.n_obs)] for t in tables])
    parts = []
    for table, name, rep in zip(tables, names, reps, strict=True):
        obs = pd.DataFrame(index=pd.Index([f"{name}:{o}" for o in table.obs_names]))
        for c in colors:
            if c in table.obs:
                column = table.obs[c]
                values = column.to_numpy()
                obs[c] = values.astype(object) if isinstance(column.dtype, pd.CategoricalDtype) else values
            elif c == slide_key:
                obs[c] = name
            elif c in genes and c in table.var_names:
                obs[c] = gene_values(table, c)
            else:  # a column (or gene) this slide lacks (e.g. labels of another section): missing here
                obs[c] = np.nan
        parts.append(AnnData(np.zeros((table.n_obs, 0), dtype=np.float32), obs=obs,
                             obsm={"rep": rep.astype(np.float32)}))  # fmt: skip
    tmp = ad.concat(parts, merge=None)
    for c in colors:
        if c in genes:
            tmp.obs[c] = pd.to_numeric(tmp.obs[c])
            continue
        having = [t for t in tables if c in t.obs]
        numeric = (
            bool(having)
            and all(pd.api.types.is_numeric_dtype(t.obs[c]) for t in having)
            and not all(pd.api.types.is_bool_dtype(t.obs[c]) for t in having)
        )
        if numeric:
            tmp.obs[c] = pd.to_numeric(tmp.obs[c])
            continue
        order = [str(x) for x in pd.unique(tmp.obs[c].dropna().astype(str))]
        warn_if_clustered_apart(tables, c)
        declared = [categorical_column(t, c, "Slide").categories for t in tables if c in t.obs]
        categories = merged_categories([*declared, order])
        tmp.obs[c] = pd.Categorical([None if pd.isna(v) else str(v) for v in tmp.obs[c]], categories=categories)
        present = [t for t in tables if c in t.obs]
        if c == slide_key and not present:
            tmp.uns[f"{c}_colors"] = slide_palette(len(categories))
        else:
            tmp.uns[f"{c}_colors"] = list(category_colors(present, c, categories).values())

    fig, axes = panel_axes(len(colors), ax, ncols=ncols, panel_size=(panel_size * 1.3, panel_size))
    logger.info("UMAP of .obsm[%r] for %d observations in %d slide(s)", use_rep, n_total, len(tables))
    representation_neighbors(tmp, use_rep="rep", n_neighbors=n_neighbors, random_state=random_state)
    sc.tl.umap(tmp, min_dist=min_dist, random_state=random_state)
    for panel, c in zip(axes, colors, strict=True):
        sc.pl.embedding(tmp, basis="umap", color=c, ax=panel, show=False, size=point_size, frameon=False, title=c)
    return finish(fig, save_path, show, own_figure=ax is None)
