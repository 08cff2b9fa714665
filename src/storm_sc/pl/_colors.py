"""Colours of categorical annotations: the ones stored in ``.uns[f"{key}_colors"]`` (scanpy's convention)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.colors import is_color_like, to_hex, to_rgba

from storm_sc._constants import UNS_STORM
from storm_sc._settings import logger

#: Colour of observations without a category (NaN), as scanpy draws them.
NA_COLOR = "#d3d3d3"
NA_LABEL = "NA"


def categorical_column(table: AnnData, key: str, where: str) -> pd.Categorical:
    """``table.obs[key]`` as a categorical (a copy; strings and booleans are accepted), or a clear error."""
    column = table.obs[key]
    if isinstance(column.dtype, pd.CategoricalDtype):
        return pd.Categorical(column)
    if (
        pd.api.types.is_bool_dtype(column)
        or pd.api.types.is_object_dtype(column)
        or pd.api.types.is_string_dtype(column)
    ):
        return pd.Categorical([None if pd.isna(v) else str(v) for v in column])
    raise TypeError(
        f"{where}.obs[{key!r}] holds {column.dtype} values, not categories; colour by a categorical column "
        "(e.g. the domains of st.tl.storm_domains), or plot continuous values with st.pl.expression."
    )


def default_palette(n: int) -> list[str]:
    """Return scanpy's default palette for ``n`` categories (the one st.tl.storm_domains stores)."""
    from scanpy.plotting.palettes import default_20, default_102

    if n <= 20:
        return [to_hex(c) for c in default_20[:n]]
    return [to_hex(default_102[i % len(default_102)]) for i in range(n)]


def slide_palette(n: int) -> list[str]:
    """Colours of ``n`` slides, apart from the domains' palette: side by side, equal colours would read as a match.

    Examples
    --------
    >>> slide_palette(2)
    ['#1b9e77', '#d95f02']
    """
    from matplotlib import colormaps

    if n <= 8:
        return [to_hex(c) for c in colormaps["Dark2"].colors[:n]]
    return default_palette(20 + n)[20:]  # beyond the 20 colours the domains take first


def stored_colors(table: AnnData, key: str, categories: Sequence[str]) -> dict[str, str] | None:
    """Category -> colour from ``table.uns[f"{key}_colors"]``, or ``None`` when absent or unusable."""
    colors = table.uns.get(f"{key}_colors")
    if colors is None:
        return None
    colors = list(np.asarray(colors, dtype=object).ravel())
    if len(colors) < len(categories) or not all(is_color_like(c) for c in colors):
        logger.info(
            ".uns[%r] holds %d colour(s) for %d categories (or invalid colours); using the default palette.",
            f"{key}_colors",
            len(colors),
            len(categories),
        )
        return None
    return {str(cat): to_hex(c, keep_alpha=True) for cat, c in zip(categories, colors, strict=False)}


def warn_if_clustered_apart(tables: Sequence[AnnData], key: str) -> bool:
    """Warn when ``key`` holds domains of several tables that separate ``storm_domains`` calls numbered; say so.

    One legend then shows domain ``2`` of one slide and domain ``2`` of another as the same thing, which they are
    only when the slides were clustered together (``st.tl.storm_domains([a, b], ...)``).
    """
    calls = set()
    for table in tables:
        stored = table.uns.get(UNS_STORM)
        params = stored.get(key) if isinstance(stored, Mapping) else None
        if isinstance(params, Mapping) and params.get("tool") == "storm_domains" and "clustering" in params:
            calls.add(str(params["clustering"]))
    if len(calls) > 1:
        logger.warning(
            ".obs[%r] of these slides comes from %d separate storm_domains calls: the same domain number does not "
            "mean the same domain on slides clustered apart. Cluster them together (st.tl.storm_domains([...])) to "
            "compare domains across slides.",
            key,
            len(calls),
        )
    return len(calls) > 1


def merged_categories(orders: Sequence[Sequence[object]]) -> list[str]:
    """The union of several category orders, each category placed where its own order puts it.

    Slides subset after clustering lose the domains they no longer hold; taking the union in first-seen order then
    moved a domain to the end of the legend (``0, 1, 3, 4, 2``). A category missing so far goes after the nearest
    earlier category of its own order already placed (else before the nearest later one; else at the end).

    Examples
    --------
    >>> merged_categories([["0", "1", "3", "4"], ["0", "1", "2", "3", "4"]])
    ['0', '1', '2', '3', '4']
    >>> merged_categories([["b", "c"], ["a", "b"]])
    ['a', 'b', 'c']
    """
    out: list[str] = []
    for order in orders:
        names = [str(c) for c in order]
        for i, name in enumerate(names):
            if name in out:
                continue
            before = next((n for n in reversed(names[:i]) if n in out), None)
            after = next((n for n in names[i + 1 :] if n in out), None)
            if before is not None:
                out.insert(out.index(before) + 1, name)
            elif after is not None:
                out.insert(out.index(after), name)
            else:
                out.append(name)
    return out


def category_colors(tables: Sequence[AnnData], key: str, categories: Sequence[str]) -> dict[str, str]:
    """One colour per category of ``categories`` (their union over ``tables``), never modifying the tables.

    Colours stored with the tables win (the first table that has one for a category); categories with none get
    the default palette colour of their position, so that a single table is drawn exactly as scanpy would.
    """
    out: dict[str, str] = {}
    for table in tables:
        if key not in table.obs:  # a column only some slides have
            continue
        column = table.obs[key]
        cats = [str(c) for c in column.cat.categories] if isinstance(column.dtype, pd.CategoricalDtype) else None
        if cats is None:
            continue
        for cat, color in (stored_colors(table, key, cats) or {}).items():
            out.setdefault(cat, color)
    palette = default_palette(len(categories))
    return {str(c): out.get(str(c), palette[i]) for i, c in enumerate(categories)}


def rgba_of(labels: pd.Categorical, colors: dict[str, str], *, alpha: float = 1.0) -> np.ndarray:
    """``(n, 4)`` RGBA per observation; NaN labels get :data:`NA_COLOR`."""
    table = np.array([to_rgba(colors[str(c)], alpha) for c in labels.categories] + [to_rgba(NA_COLOR, alpha)])
    codes = np.asarray(labels.codes)
    return table[np.where(codes < 0, len(labels.categories), codes)]
