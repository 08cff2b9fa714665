"""Pieces of the spatial-domain benchmark: scores against manual labels and the expression baselines.

The baselines are the usual first analysis of a spatial transcriptomics slide: log-normalised expression of the
highly variable genes, PCA, then Leiden (its resolution searched until it gives the wanted number of clusters) or
k-means. Their spatially smoothed variants mix each spot's principal components with its spatial neighbours' by
exactly the graph and rule of :func:`storm_sc.tl.storm_domains`, so that the comparison with STORM isolates the
representation, not the smoothing.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from storm_sc.pp._representation_graph import representation_neighbors

# Resolution bracket and number of halvings of the Leiden search for an exact number of clusters.
_LEIDEN_RES_BOUNDS = (0.005, 5.0)
_LEIDEN_SEARCH_STEPS = 30


def clustering_scores(truth: pd.Series | np.ndarray, predicted: pd.Series | np.ndarray) -> dict[str, float]:
    """Adjusted Rand index and normalised mutual information against manual labels, unlabelled spots left out.

    Parameters
    ----------
    truth
        Manual label per observation; missing values (``NaN`` / ``None``) mark unlabelled observations.
    predicted
        Predicted domain per observation (any hashable labels), aligned with ``truth``.

    Returns
    -------
    ``{"ari": ..., "nmi": ..., "n_scored": ...}`` (NMI with the arithmetic mean normalisation, sklearn's default).

    Examples
    --------
    >>> clustering_scores(np.array(["a", "a", "b", None], dtype=object), np.array([1, 1, 0, 0]))
    {'ari': 1.0, 'nmi': 1.0, 'n_scored': 3}
    """
    truth = pd.Series(np.asarray(truth, dtype=object))
    predicted = np.asarray(predicted)
    if len(truth) != len(predicted):
        raise ValueError(f"`truth` ({len(truth)}) and `predicted` ({len(predicted)}) differ in length.")
    labelled = truth.notna().to_numpy()
    if labelled.sum() < 2:
        raise ValueError("fewer than two labelled observations: nothing to score.")
    t = truth[labelled].astype(str).to_numpy()
    p = predicted[labelled].astype(str)
    return {
        "ari": float(adjusted_rand_score(t, p)),
        "nmi": float(normalized_mutual_info_score(t, p)),
        "n_scored": int(labelled.sum()),
    }


def hvg_pca(
    counts: ad.AnnData, *, n_hvg: int = 2000, n_pcs: int = 30, random_state: int = 0, batch_key: str | None = None
) -> tuple[np.ndarray, list[str]]:
    """PCA of the log-normalised highly variable genes (scanpy's standard recipe).

    Counts are scaled to 1e4 per observation and log1p-transformed; the ``n_hvg`` most variable genes
    (``seurat`` flavour) are standardised (clipped at 10 sd) and reduced to ``n_pcs`` components.

    Parameters
    ----------
    counts
        Observations x genes raw counts in ``.X``; not modified.
    n_hvg
        Highly variable genes kept (all genes when the table has fewer).
    n_pcs
        Principal components.
    random_state
        Seed of the PCA solver.
    batch_key
        Column of ``.obs`` naming the slide of each observation when ``counts`` holds several: genes are then
        ranked within each slide and combined (scanpy's ``batch_key``), so one slide's genes do not dominate.

    Returns
    -------
    ``(pcs, hvgs)``: ``(n_obs, n_pcs)`` float64 components and the genes used.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = ad.AnnData(rng.poisson(2.0, size=(50, 40)).astype(np.float32))
    >>> pcs, genes = hvg_pca(a, n_hvg=20, n_pcs=5)
    >>> pcs.shape, len(genes)
    ((50, 5), 20)
    """
    if n_hvg < 2 or n_pcs < 1:
        raise ValueError(f"`n_hvg` must be >= 2 and `n_pcs` >= 1; got {n_hvg} and {n_pcs}.")
    obs = counts.obs[[batch_key]].copy() if batch_key is not None else pd.DataFrame(index=counts.obs_names)
    adata = ad.AnnData(counts.X.copy(), obs=obs, var=pd.DataFrame(index=counts.var_names))
    adata.var_names_make_unique()
    expressed = np.asarray((adata.X > 0).sum(axis=0)).ravel() > 0
    adata = adata[:, expressed].copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    n_top = min(n_hvg, adata.n_vars)
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor="seurat", batch_key=batch_key)
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    # Scaling centres the genes, which densifies the (spots x HVGs) matrix anyway: do it explicitly.
    if sparse.issparse(adata.X):
        adata.X = adata.X.toarray()
    sc.pp.scale(adata, max_value=10)
    n_comps = min(n_pcs, adata.n_obs - 1, adata.n_vars - 1)
    sc.pp.pca(adata, n_comps=n_comps, svd_solver="arpack", random_state=random_state)
    return np.asarray(adata.obsm["X_pca"], dtype=np.float64), adata.var_names.tolist()


def kmeans_domains(z: np.ndarray, n_domains: int, *, random_state: int = 0) -> np.ndarray:
    """K-means with exactly ``n_domains`` clusters (10 initialisations).

    Parameters
    ----------
    z
        ``(n_obs, d)`` representation.
    n_domains
        Number of clusters.
    random_state
        Seed.

    Returns
    -------
    ``(n_obs,)`` integer labels.

    Examples
    --------
    >>> z = np.r_[np.zeros((5, 2)), np.ones((5, 2))]
    >>> len(set(kmeans_domains(z, 2).tolist()))
    2
    """
    return KMeans(n_clusters=n_domains, n_init=10, random_state=random_state).fit_predict(z)


def _leiden(graph_adata: ad.AnnData, resolution: float, random_state: int) -> np.ndarray:
    sc.tl.leiden(
        graph_adata,
        resolution=resolution,
        random_state=random_state,
        flavor="igraph",
        n_iterations=-1,
        directed=False,
        key_added="_leiden",
    )
    return graph_adata.obs["_leiden"].astype(int).to_numpy()


def leiden_domains(
    z: np.ndarray, n_domains: int, *, n_neighbors: int = 15, random_state: int = 0
) -> tuple[np.ndarray, float]:
    """Leiden clustering of a kNN graph, its resolution bisected until it gives ``n_domains`` clusters.

    Leiden has no "number of clusters" parameter; the resolution is searched on a log scale (as SpaGCN and
    GraphST do). When no resolution gives exactly ``n_domains`` (the count can jump), the clustering with the
    closest count is returned (the last one the bisection tried, among ties).

    Parameters
    ----------
    z
        ``(n_obs, d)`` representation.
    n_domains
        Wanted number of clusters.
    n_neighbors
        Neighbours of the kNN graph (scanpy's default 15).
    random_state
        Seed of the graph and of Leiden.

    Returns
    -------
    ``(labels, resolution)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = np.r_[rng.normal(0, 0.1, (30, 2)), rng.normal(3, 0.1, (30, 2))]
    >>> labels, res = leiden_domains(z, 2)
    >>> len(set(labels.tolist()))
    2
    """
    if n_domains < 1 or n_domains > len(z):
        raise ValueError(f"`n_domains` must be in [1, {len(z)}], got {n_domains}.")
    graph = ad.AnnData(np.zeros((len(z), 0), dtype=np.float32), obsm={"z": np.asarray(z, dtype=np.float32)})
    representation_neighbors(graph, use_rep="z", n_neighbors=n_neighbors, random_state=random_state)
    lo, hi = np.log(_LEIDEN_RES_BOUNDS[0]), np.log(_LEIDEN_RES_BOUNDS[1])
    best: tuple[int, float, np.ndarray] | None = None
    for _ in range(_LEIDEN_SEARCH_STEPS):
        mid = 0.5 * (lo + hi)
        labels = _leiden(graph, float(np.exp(mid)), random_state)
        found = len(np.unique(labels))
        gap = abs(found - n_domains)
        if best is None or gap <= best[0]:
            best = (gap, float(np.exp(mid)), labels)
        if gap == 0:
            break
        lo, hi = (mid, hi) if found < n_domains else (lo, mid)
    assert best is not None
    return best[2], best[1]


def smooth_like_storm(z: np.ndarray, graph: sparse.spmatrix, *, steps: int, weight: float) -> np.ndarray:
    """Spatial smoothing of a representation by the rule of :func:`storm_sc.tl.storm_domains`.

    Parameters
    ----------
    z
        ``(n_obs, d)`` representation.
    graph
        ``(n_obs, n_obs)`` spatial graph (:func:`storm_sc.pp.spatial_graph`).
    steps, weight
        Rounds of neighbour mixing and the neighbours' share per round.

    Returns
    -------
    The smoothed ``(n_obs, d)`` float64 representation.

    Examples
    --------
    >>> g = sparse.csr_matrix(np.array([[0.0, 1.0], [1.0, 0.0]]))
    >>> smooth_like_storm(np.array([[0.0], [2.0]]), g, steps=1, weight=0.5).ravel().tolist()
    [1.0, 1.0]
    """
    from storm_sc.tl._domains import smooth_embedding

    return smooth_embedding(np.asarray(z, dtype=np.float64), sparse.csr_matrix(graph), steps=steps, weight=weight)
