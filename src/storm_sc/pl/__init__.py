"""Plots: tissue domains, measured versus predicted expression, embeddings, and the napari viewer."""

from ._correlation import gene_correlations
from ._embedding import embedding_umap
from ._expression import expression, gene_correlation
from ._napari import napari
from ._spatial import domains

__all__ = ["domains", "embedding_umap", "expression", "gene_correlation", "gene_correlations", "napari"]
