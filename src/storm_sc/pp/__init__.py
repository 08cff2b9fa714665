"""Preprocessing: H&E patches, expression aligned to the model's gene vocabulary, and the spatial graph."""

from ._alignment import AlignedExpression, align_genes
from ._components import expression_components
from ._expression import detect_counts, normalize_expression
from ._graph import spatial_graph
from ._patches import PatchDataset, patch_dataset
from ._vocabulary import GeneVocabulary

__all__ = [
    "AlignedExpression",
    "GeneVocabulary",
    "PatchDataset",
    "align_genes",
    "detect_counts",
    "expression_components",
    "normalize_expression",
    "patch_dataset",
    "spatial_graph",
]
