"""The k-nearest-neighbour graph of a representation (for Leiden domains and UMAP views), through scanpy."""

from __future__ import annotations

import functools

import numpy as np
from anndata import AnnData
from scipy import sparse

# scanpy switches from exact (brute-force) neighbours to pynndescent from this many observations (euclidean).
_APPROXIMATE_FROM = 8192


def representation_neighbors(adata: AnnData, *, use_rep: str, n_neighbors: int, random_state: int) -> None:
    """``scanpy.pp.neighbors`` on ``adata.obsm[use_rep]``, working on large data with pynndescent >= 0.7.

    pynndescent 0.7 returns a scipy sparse *array*, and scanpy (1.11) reads the neighbour counts with ``getnnz``,
    which only sparse *matrices* have: every graph of 8,192 observations or more then fails. Above that size the
    same pynndescent search scanpy would run (its own tree and iteration counts) is passed in, returning a matrix.

    Parameters
    ----------
    adata
        Holds the representation; the graph is written where ``scanpy.pp.neighbors`` writes it.
    use_rep
        Key of ``adata.obsm``.
    n_neighbors
        Neighbours per observation (at most ``n_obs - 1`` are used).
    random_state
        Seed of the search.

    Examples
    --------
    >>> import numpy as np
    >>> from anndata import AnnData
    >>> a = AnnData(np.zeros((50, 0), dtype=np.float32), obsm={"z": np.random.default_rng(0).normal(size=(50, 4))})
    >>> representation_neighbors(a, use_rep="z", n_neighbors=5, random_state=0)
    >>> a.obsp["connectivities"].shape
    (50, 50)
    """
    import scanpy as sc

    n_obs = adata.n_obs
    k = min(n_neighbors, n_obs - 1)
    transformer = None
    if n_obs >= _APPROXIMATE_FROM:
        transformer = _pynndescent_matrix_transformer()(
            n_neighbors=k,
            metric="euclidean",
            random_state=random_state,
            n_jobs=sc.settings.n_jobs,
            n_trees=min(64, 5 + round(n_obs**0.5 / 20.0)),
            n_iters=max(5, round(np.log2(n_obs))),
        )
    sc.pp.neighbors(adata, use_rep=use_rep, n_neighbors=k, random_state=random_state, transformer=transformer)


@functools.cache
def _pynndescent_matrix_transformer() -> type:
    from pynndescent import PyNNDescentTransformer

    class PyNNDescentMatrix(PyNNDescentTransformer):
        """pynndescent's transformer returning a ``scipy.sparse.csr_matrix`` (what scanpy reads)."""

        def fit_transform(self, X, y=None, **fit_params):
            return sparse.csr_matrix(super().fit_transform(X, y, **fit_params))

        def transform(self, X):
            return sparse.csr_matrix(super().transform(X))

    return PyNNDescentMatrix
