"""Sparse neighbour lists (indices per observation, -1 padded) for the niche and region levels."""

from __future__ import annotations

import logging

import numpy as np
from anndata import AnnData
from scipy.spatial import cKDTree

# Observations whose radius queries are answered at once: bounds the temporary lists on dense cell data.
_CHUNK = 4096


def niche_neighbors(centers_um: np.ndarray, k: int) -> np.ndarray:
    """Find the ``k`` nearest neighbours of each observation, nearest first, with :func:`storm_sc.pp.spatial_graph`.

    Parameters
    ----------
    centers_um
        ``(n, 2)`` positions in microns.
    k
        Neighbours per observation (fewer, padded with -1, when the slide has at most ``k`` observations).

    Returns
    -------
    ``(n, k)`` int64 indices, ``-1`` where there is no neighbour.

    Examples
    --------
    >>> niche_neighbors(np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]]), 2).tolist()
    [[1, 2], [0, 2], [1, 0]]
    """
    from storm_sc.io import SpatialInput
    from storm_sc.pp import spatial_graph

    n = len(centers_um)
    out = np.full((n, k), -1, dtype=np.int64)
    k_eff = min(k, n - 1)
    if k_eff < 1:
        return out
    light = SpatialInput(
        table=AnnData(shape=(n, 0)),
        table_key=None,
        regions=(),
        platform="generic",
        coordinate_system="um",
        centers_um=np.asarray(centers_um, dtype=np.float64),
    )
    # squidpy announces every graph it builds through spatialdata's logger; per slide prepared, that is noise
    noisy = logging.getLogger("spatialdata._logging")
    level = noisy.level
    noisy.setLevel(max(level, logging.WARNING))
    try:
        graph = spatial_graph(light, n_neighs=k_eff)
    finally:
        noisy.setLevel(level)
    for i in range(n):
        start, end = graph.indptr[i], graph.indptr[i + 1]
        cols, dist = graph.indices[start:end], graph.data[start:end]
        order = np.lexsort((cols, dist))[:k]
        out[i, : len(order)] = cols[order]
    return out


def region_neighbors(centers_um: np.ndarray, radius_um: float, pool: int) -> np.ndarray:
    """Up to ``pool`` observations within ``radius_um`` of each, spread evenly over distance ranks.

    A region holds thousands of cells on single-cell platforms; keeping every ``pool``-th by distance (nearest to
    farthest) bounds memory while still covering the whole radius. Queried in chunks with a KD-tree, so no
    all-pairs structure is ever built.

    Parameters
    ----------
    centers_um
        ``(n, 2)`` positions in microns.
    radius_um
        Region radius.
    pool
        Maximum neighbours kept per observation.

    Returns
    -------
    ``(n, pool)`` int64 indices sorted by distance, ``-1`` padded.

    Examples
    --------
    >>> region_neighbors(np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]]), 2.0, 3).tolist()
    [[1, -1, -1], [0, -1, -1], [-1, -1, -1]]
    """
    centers = np.asarray(centers_um, dtype=np.float64)
    n = len(centers)
    out = np.full((n, pool), -1, dtype=np.int64)
    if n < 2:
        return out
    tree = cKDTree(centers)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        found = tree.query_ball_point(centers[start:stop], r=radius_um)
        for i, cols in zip(range(start, stop), found, strict=True):
            cols = np.asarray(cols, dtype=np.int64)
            cols = cols[cols != i]
            if not len(cols):
                continue
            dist = np.linalg.norm(centers[cols] - centers[i], axis=1)
            cols = cols[np.lexsort((cols, dist))]
            if len(cols) > pool:
                cols = cols[np.linspace(0, len(cols) - 1, pool).round().astype(np.int64)]
            out[i, : len(cols)] = cols
    return out


def pick(pool_row: np.ndarray, k: int, rng: np.random.Generator | None) -> np.ndarray:
    """``k`` entries of a -1 padded neighbour row: random (training) or evenly spread over it (inference)."""
    valid = pool_row[pool_row >= 0]
    out = np.full(k, -1, dtype=np.int64)
    if len(valid) <= k:
        out[: len(valid)] = valid
    elif rng is None:
        out[:] = valid[np.linspace(0, len(valid) - 1, k).round().astype(np.int64)]
    else:
        out[:] = valid[np.sort(rng.choice(len(valid), size=k, replace=False))]
    return out
