"""Spatial neighbourhood graph of the observations, in microns, one slide at a time."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from storm_sc._settings import logger, quiet_loggers

from ._input import as_spatial_input

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from storm_sc.io._spatial_input import SpatialInput


def _check_args(n_neighs: int | None, radius_um: float | None, delaunay: bool) -> None:
    if n_neighs is not None and (
        isinstance(n_neighs, bool) or not isinstance(n_neighs, int | np.integer) or n_neighs < 1
    ):
        raise ValueError(f"`n_neighs` must be a positive integer; got {n_neighs!r}.")
    if radius_um is not None and not (np.isfinite(radius_um) and radius_um > 0):
        raise ValueError(f"`radius_um` must be a positive number of microns; got {radius_um!r}.")
    if n_neighs is not None and (radius_um is not None or delaunay):
        raise ValueError(
            "Give either `n_neighs` (k nearest neighbours), `radius_um` (all neighbours within a radius) or "
            "`delaunay=True` (optionally pruned with `radius_um`), not several."
        )


def library_codes(table: AnnData, library_key: str | None) -> pd.Categorical | None:
    """The slide of each observation as a categorical (``None`` without ``library_key``); refuses missing names."""
    if library_key is None:
        return None
    if library_key not in table.obs.columns:
        raise KeyError(
            f"`library_key={library_key!r}` is not a column of .obs; available columns: {list(table.obs.columns)}."
        )
    libraries = table.obs[library_key]
    if libraries.isna().any():
        raise ValueError(f"obs[{library_key!r}] has missing values; every observation needs its slide name.")
    return pd.Categorical(libraries.astype(str))


def spatial_graph(
    data: SpatialData | AnnData | SpatialInput,
    *,
    n_neighs: int | None = None,
    radius_um: float | None = None,
    delaunay: bool = False,
    library_key: str | None = None,
    symmetrize: bool = False,
    key_added: str | None = None,
    table_key: str | None = None,
    mpp: float | None = None,
) -> sparse.csr_matrix:
    """Neighbourhood graph of the observations, built on their positions in microns.

    Uses squidpy's spatial neighbour builders on the observation centres in microns (so radii and distances mean
    the same on every platform). When several slides share one table, ``library_key`` keeps them apart: each
    slide gets its own graph and no edge joins two slides. The graph is sparse; nothing of size n x n is ever
    dense.

    Parameters
    ----------
    data
        A SpatialData, an AnnData with spatial coordinates, or a :class:`~storm_sc.io.SpatialInput`.
    n_neighs
        Connect each observation to its ``n_neighs`` nearest neighbours (the default, with 6, which is the
        Visium hexagonal grid).
    radius_um
        Connect all pairs closer than this many microns instead; with ``delaunay=True``, drop Delaunay edges
        longer than this.
    delaunay
        Use the Delaunay triangulation instead.
    library_key
        Column of ``.obs`` naming the slide of each observation.
    symmetrize
        Make the graph undirected (``i -> j`` implies ``j -> i``); k-nearest-neighbour graphs are directed.
    key_added
        If given, also store the graph in the table: ``.obsp[f"{key_added}_connectivities"]``,
        ``.obsp[f"{key_added}_distances"]`` (microns) and ``.uns[f"{key_added}_neighbors"]`` (squidpy layout).
        Existing keys are never overwritten. ``"storm_spatial"`` is the conventional name.
    table_key, mpp
        Passed to :func:`storm_sc.io.resolve` (only when ``data`` is not a SpatialInput).

    Returns
    -------
    ``(n_obs, n_obs)`` CSR matrix of edge lengths in microns, float64; row ``i`` holds the neighbours of
    observation ``i`` and its stored entries are the edges (no self-loops).

    Examples
    --------
    >>> import storm_sc as st
    >>> g = st.pp.spatial_graph(sdata, n_neighs=6)  # doctest: +SKIP
    >>> g.getnnz(axis=1).mean()  # doctest: +SKIP
    6.0
    """
    _check_args(n_neighs, radius_um, delaunay)
    if key_added is not None and (not isinstance(key_added, str) or not key_added):
        raise ValueError(f"`key_added` must be a non-empty string or None; got {key_added!r}.")
    si = as_spatial_input(data, caller="spatial_graph", table_key=table_key, mpp=mpp)
    table = si.table
    libraries = library_codes(table, library_key)
    conn_key, dist_key, uns_key = (
        (f"{key_added}_connectivities", f"{key_added}_distances", f"{key_added}_neighbors")
        if key_added
        else (None,) * 3
    )
    if key_added is not None:
        taken = [f"obsp[{k!r}]" for k in (conn_key, dist_key) if k in table.obsp] + (
            [f"uns[{uns_key!r}]"] if uns_key in table.uns else []
        )
        if taken:
            raise ValueError(
                f"{', '.join(taken)} already exist in the table; pass another `key_added` or delete them first."
            )
    centers = np.asarray(si.centers_um, dtype=np.float64)
    if centers.shape != (table.n_obs, 2) or not np.isfinite(centers).all():
        raise ValueError(
            f"Observation centres must be a finite (n_obs, 2) = ({table.n_obs}, 2) array in microns; got shape "
            f"{centers.shape}{'' if centers.shape != (table.n_obs, 2) else ' with NaN or infinite values'}. "
            "Drop observations without a position first."
        )

    adj, params = _squidpy_graph(centers, libraries, n_neighs=n_neighs, radius_um=radius_um, delaunay=delaunay)
    adj = sparse.csr_matrix(adj, dtype=np.float32)
    adj.setdiag(0)
    adj.eliminate_zeros()
    if symmetrize:
        adj = adj.maximum(adj.T).tocsr()
    adj.sort_indices()
    rows = np.repeat(np.arange(adj.shape[0]), np.diff(adj.indptr))
    # Lengths from the coordinates themselves: exact, and an edge between coincident observations stays an edge.
    lengths = np.linalg.norm(centers[rows] - centers[adj.indices], axis=1)
    distances = sparse.csr_matrix((lengths, adj.indices.copy(), adj.indptr.copy()), shape=adj.shape)
    degree = np.diff(adj.indptr)
    logger.info(
        "spatial_graph: %d observations, %d edges (mean degree %.2f, median edge %.1f um)%s.",
        adj.shape[0],
        adj.nnz,
        degree.mean() if degree.size else 0.0,
        float(np.median(lengths)) if lengths.size else float("nan"),
        f" over {len(libraries.categories)} slides" if libraries is not None else "",
    )
    if key_added is not None:
        adj.data[:] = 1.0
        table.obsp[conn_key] = adj
        table.obsp[dist_key] = distances
        table.uns[uns_key] = {
            "connectivities_key": conn_key,
            "distances_key": dist_key,
            "params": {**params, "units": "um", "library_key": library_key, "symmetrize": symmetrize},
        }
    return distances


def _squidpy_graph(
    centers_um: np.ndarray,
    libraries: pd.Categorical | None,
    *,
    n_neighs: int | None,
    radius_um: float | None,
    delaunay: bool,
) -> tuple[sparse.csr_matrix, dict]:
    with warnings.catch_warnings():
        # squidpy's docstring templating (docrep) emits SyntaxWarnings at import time; nothing for users to act on
        warnings.simplefilter("ignore", SyntaxWarning)
        import squidpy as sq

    # A throwaway AnnData holding only the positions: squidpy then never touches the user's table.
    light = AnnData(obs=pd.DataFrame(index=pd.RangeIndex(len(centers_um)).astype(str)))
    light.obsm["spatial"] = centers_um
    library_key = None
    if libraries is not None:
        light.obs["library"] = libraries
        library_key = "library"
    common = {"spatial_key": "spatial", "library_key": library_key, "copy": True}
    # squidpy announces every graph through spatialdata's logger; spatial_graph logs its own summary instead.
    with quiet_loggers("spatialdata._logging"):
        if delaunay:
            result = sq.gr.spatial_neighbors_delaunay(light, radius=radius_um, **common)
            params = {"mode": "delaunay", "radius_um": radius_um}
        elif radius_um is not None:
            result = sq.gr.spatial_neighbors_radius(light, radius=radius_um, **common)
            params = {"mode": "radius", "radius_um": radius_um}
        else:
            k = 6 if n_neighs is None else int(n_neighs)
            sizes = [len(centers_um)] if libraries is None else np.bincount(libraries.codes).tolist()
            if min(sizes) <= k:
                raise ValueError(
                    f"`n_neighs={k}` needs more than {k} observations per slide; the smallest slide has "
                    f"{min(sizes)}. Lower `n_neighs` or use `radius_um=`."
                )
            result = sq.gr.spatial_neighbors_knn(light, n_neighs=k, **common)
            params = {"mode": "knn", "n_neighbors": k}
    return result.connectivities, params


# Nearest-neighbour distances within this share of their median, for this share of observations: a grid. Measured
# legacy ST positions (her2st, bulb) are 0.96-1.0 regular, Visium 1.0, cells 0.14-0.41.
_GRID_TOLERANCE = 0.15
_GRID_SHARE = 0.9


def grid_pitch(centers_um: np.ndarray, libraries: pd.Categorical | None = None) -> float | None:
    """Spacing of observations laid on a regular grid (Visium, legacy ST, Visium HD bins), or ``None`` off one.

    The median nearest-neighbour distance, when nearly every observation's nearest neighbour lies at about that
    distance; with ``libraries``, every library must be such a grid with the same spacing (within the tolerance).

    Examples
    --------
    >>> xy = np.array([[x, y] for x in range(5) for y in range(5)], dtype=float) * 200.0  # legacy ST: 200 um
    >>> grid_pitch(xy)
    200.0
    >>> grid_pitch(np.random.default_rng(0).uniform(0, 100, (50, 2))) is None  # cells
    True
    """
    from scipy.spatial import cKDTree

    centers_um = np.asarray(centers_um, dtype=np.float64)
    groups = (
        [np.arange(len(centers_um))]
        if libraries is None
        else [np.flatnonzero(libraries.codes == c) for c in range(len(libraries.categories))]
    )
    pitches = []
    for rows in groups:
        if len(rows) < 3:
            return None
        distance, _ = cKDTree(centers_um[rows]).query(centers_um[rows], k=2)
        nearest = distance[:, 1]
        pitch = float(np.median(nearest))
        if pitch <= 0 or np.mean(np.abs(nearest / pitch - 1.0) < _GRID_TOLERANCE) < _GRID_SHARE:
            return None
        pitches.append(pitch)
    if max(pitches) > (1.0 + _GRID_TOLERANCE) * min(pitches):
        return None
    return float(np.median(pitches))
