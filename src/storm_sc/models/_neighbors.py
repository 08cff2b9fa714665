"""Sparse neighbour lists (indices per observation, -1 padded) for the niche and region levels."""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree

from storm_sc._random import counter_uniforms, splitmix64

# Observations whose radius queries are answered at once: bounds the temporary lists on dense cell data.
_CHUNK = 4096
# Regions typically holding more than this many times `pool` observations draw their pool from a thinned set.
_THIN_ABOVE = 8
# Observations probed to estimate how many a region typically holds, and the seed of the thinning.
_PROBES = 1000
_THIN_SEED = 20_240_917
# Distances and positions are compared at this many decimals of a micron: neighbours equidistant on a spot grid
# must tie whatever the rounding of their float positions (a reader that scales pixels to microns in another order
# moves them by ~1e-12 um, which decided the order among tied neighbours, hence the embedding).
_TIE_DECIMALS = 4


def niche_neighbors(centers_um: np.ndarray, k: int) -> np.ndarray:
    """Find the ``k`` nearest neighbours of each observation, nearest first.

    Neighbours at the same distance (common on a grid of spots) are taken in order of their position (x, then y),
    never of their row: an observation's neighbours do not change when the table is reordered. Distances and
    positions are compared at 1e-4 um, so float rounding of the positions practically never breaks a tie either.

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
    centers = np.asarray(centers_um, dtype=np.float64)
    tie_x, tie_y = np.round(centers, _TIE_DECIMALS).T
    n = len(centers)
    out = np.full((n, k), -1, dtype=np.int64)
    k_eff = min(k, n - 1)
    if k_eff < 1:
        return out
    # Twice as many as needed, so that every neighbour tied with the k-th nearest is among the candidates.
    n_query = min(n, 2 * k_eff + 1)
    tree = cKDTree(centers)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        dist, idx = tree.query(centers[start:stop], k=n_query)
        own = np.arange(start, stop)[:, None]
        dist = np.where(idx == own, np.inf, dist)  # the observation itself goes last, then is cut
        rows = np.broadcast_to(np.arange(stop - start)[:, None], idx.shape)
        dist = np.round(dist, _TIE_DECIMALS)
        order = np.lexsort((tie_y[idx].ravel(), tie_x[idx].ravel(), dist.ravel(), rows.ravel()))
        ranked = idx.ravel()[order].reshape(idx.shape)
        out[start:stop, :k_eff] = ranked[:, :k_eff]
    return out


def region_neighbors(centers_um: np.ndarray, radius_um: float, pool: int) -> np.ndarray:
    """Up to ``pool`` observations within ``radius_um`` of each, spread evenly over distance ranks.

    A region holds thousands of cells on single-cell platforms; keeping every ``pool``-th by distance (nearest to
    farthest) bounds memory while still covering the whole radius. Queried in chunks with a KD-tree, so no
    all-pairs structure is ever built. When regions typically hold more than ``8 * pool`` observations (cells,
    Visium HD bins), the pool is drawn from a fixed random subset of the slide thinned to about ``8 * pool`` per
    region: the same spread over distances, at a cost that no longer grows with the density (on a Xenium slide
    with a 400 um radius, ~3500 cells per region, about 20 times less). Spots (Visium, legacy ST) are never
    thinned.

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
    tie_x, tie_y = np.round(centers, _TIE_DECIMALS).T
    n = len(centers)
    out = np.full((n, pool), -1, dtype=np.int64)
    if n < 2:
        return out
    tree = cKDTree(centers)
    candidates = np.arange(n)
    # Probes and the thinned subset are chosen by position, never by row: reordering the table (or a stack of
    # sections) must not change an observation's pool, hence its embedding.
    by_position = np.lexsort((tie_y, tie_x))
    probes = centers[by_position[np.linspace(0, n - 1, min(n, _PROBES)).round().astype(np.int64)]]
    reach = radius_um + 10.0**-_TIE_DECIMALS  # see the cut at the rounded radius below
    typical = float(np.median(tree.query_ball_point(probes, r=reach, return_length=True))) - 1.0
    if typical > _THIN_ABOVE * pool:
        keep = _position_uniforms(tie_x, tie_y) < _THIN_ABOVE * pool / typical
        candidates = np.flatnonzero(keep)
        tree = cKDTree(centers[candidates])
        logging.getLogger("storm_sc").debug(
            "region_neighbors: ~%d observations per region; pools drawn from %d of %d.", typical, len(candidates), n
        )
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        # a little beyond the radius, then cut at the rounded radius: observations exactly at the radius (a grid's
        # ring) are in or out together, whatever the rounding of their positions
        found = tree.query_ball_point(centers[start:stop], r=reach)
        for i, cols in zip(range(start, stop), found, strict=True):
            cols = candidates[np.asarray(cols, dtype=np.int64)]
            cols = cols[cols != i]
            dist = np.round(np.linalg.norm(centers[cols] - centers[i], axis=1), _TIE_DECIMALS)
            inside = dist <= round(radius_um, _TIE_DECIMALS)
            cols, dist = cols[inside], dist[inside]
            if not len(cols):
                continue
            # ties by position, not row, as in niche_neighbors: the pool does not depend on the table's order
            cols = cols[np.lexsort((tie_y[cols], tie_x[cols], dist))]
            if len(cols) > pool:
                cols = cols[np.linspace(0, len(cols) - 1, pool).round().astype(np.int64)]
            out[i, : len(cols)] = cols
    return out


def _position_uniforms(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One uniform in ``[0, 1)`` per observation from its rounded position alone (not its row), seeded."""
    scale = 10.0**_TIE_DECIMALS
    qx = np.round(x * scale).astype(np.int64).view(np.uint64)
    qy = np.round(y * scale).astype(np.int64).view(np.uint64)
    seeds = splitmix64(splitmix64(qx ^ np.uint64(_THIN_SEED)) ^ qy)
    return counter_uniforms(seeds, 0, 1)[:, 0]


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
