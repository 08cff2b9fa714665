"""Spatial smoothing of per-spot predictions: the simplest use of spatial context, as a baseline's post-processing."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import kneighbors_graph

from storm_sc.tl._domains import smooth_embedding

# The expression benchmarks' smoothed baselines were measured with the 6 nearest spots; kept fixed so that their
# tables stay comparable (storm_domains now smooths over a spot grid's first ring instead).
SMOOTH_NEAREST = 6


def smooth_over_neighbours(
    values: np.ndarray, xy_um: np.ndarray, *, n_neighs: int = SMOOTH_NEAREST, steps: int = 1, weight: float = 0.5
) -> np.ndarray:
    """Mix each spot's values with the unweighted mean of its nearest spots' (``storm_domains``' mixing rule).

    Parameters
    ----------
    values
        ``(n, g)`` per spot (e.g. predicted expression).
    xy_um
        ``(n, 2)`` spot positions in microns (one section: neighbours never cross sections).
    n_neighs
        Nearest spots averaged (6: Visium's first hexagonal ring; on legacy ST's square grid, its 4 sides and 2
        of its diagonals).
    steps, weight
        Rounds of ``(1 - weight) * own + weight * neighbours' mean``.

    Returns
    -------
    ``(n, g)`` float64 smoothed values.

    Examples
    --------
    >>> xy = np.array([[0.0, 0.0], [100.0, 0.0], [250.0, 0.0]])
    >>> smooth_over_neighbours(np.array([[0.0], [3.0], [6.0]]), xy, n_neighs=1).ravel().tolist()
    [1.5, 1.5, 4.5]
    """
    values = np.asarray(values, dtype=np.float64)
    xy_um = np.asarray(xy_um, dtype=np.float64)
    if values.ndim != 2 or xy_um.shape != (len(values), 2):
        raise ValueError(f"`values` must be (n, g) and `xy_um` (n, 2); got {values.shape} and {xy_um.shape}.")
    k = min(n_neighs, len(values) - 1)
    if k < 1 or steps == 0:
        return values.copy()
    graph = kneighbors_graph(xy_um, n_neighbors=k, mode="distance", include_self=False)
    return smooth_embedding(values, graph, steps=steps, weight=weight)
