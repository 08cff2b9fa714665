"""Principal components of standardised expression, shared by every slide of a call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData
from scipy import sparse

from ._alignment import shared_columns
from ._expression import Z_CLIP, _matrix_of, gene_moments, normalized, validated_kind
from ._input import table_of

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from storm_sc.io._spatial_input import SpatialInput

# Rows standardised at once: bounds the dense temporary block on tables of millions of cells.
_CHUNK = 20_000
# A gene varies on a slide when its variance of log1p expression exceeds this.
_MIN_VARIANCE = 1e-12


def expression_components(
    data: SpatialData | AnnData | SpatialInput | Sequence[SpatialData | AnnData | SpatialInput],
    *,
    n_components: int = 32,
    n_genes: int = 512,
    layer: str | None = None,
    table_key: str | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Principal components of the most variable genes, standardised within each slide, shared by all slides.

    Each slide's expression is brought to log1p of counts per 10,000 (as :func:`normalize_expression` does), the genes
    measured on every slide are ranked by their variance averaged over slides, the ``n_genes`` most variable are
    standardised within each slide (zero mean, unit variance, clipped at +-10, as ``sc.pp.scale(max_value=10)``
    does), and one PCA is fitted on the observations of all slides together. Standardising per slide removes each
    slide's depth and offsets, so the components (and the domains clustered on them) mean the same on every slide.
    Genes are matched between slides as :func:`align_genes` matches them (Ensembl ids, else case-insensitive
    symbols); where a gene occurs twice in a table, its first column is used.

    Parameters
    ----------
    data
        A SpatialData, AnnData or :class:`~storm_sc.io.SpatialInput`, or a list of them.
    n_components
        Components kept (fewer when fewer genes vary or there are fewer observations).
    n_genes
        Most variable genes used.
    layer
        Layer holding the expression instead of ``.X`` (counts, normalised or log1p values are all accepted).
    table_key
        Table of a SpatialData to use.

    Returns
    -------
    ``(n_obs, k)`` float32 component scores per slide (a list for a list), ``k <= n_components``.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> st.pp.expression_components(sdata, n_components=8).shape
    (200, 8)
    """
    single = not isinstance(data, list | tuple)
    slides = [data] if single else list(data)
    if not slides:
        raise ValueError("`data` is an empty list; pass at least one slide.")
    if not isinstance(n_components, int | np.integer) or n_components < 1:
        raise ValueError(f"`n_components` must be a positive integer, got {n_components!r}.")
    if not isinstance(n_genes, int | np.integer) or n_genes < 2:
        raise ValueError(f"`n_genes` must be an integer >= 2, got {n_genes!r}.")
    tables = [table_of(s, caller="expression_components", table_key=table_key) for s in slides]
    for i, t in enumerate(tables):
        if t.n_vars == 0:
            raise ValueError(f"Slide {i} has no genes in its table; expression components need expression.")
        if layer is not None and layer not in t.layers:
            raise KeyError(f"Slide {i}: layer {layer!r} not found (layers: {sorted(t.layers)}).")
    common = shared_columns(tables)
    if len(common[0]) < 2:
        raise ValueError(f"The slides share {len(common[0])} gene(s); expression components need at least 2 in common.")

    matrices = [_log1p_csr(t, columns, layer) for t, columns in zip(tables, common, strict=True)]
    moments = [gene_moments(m) for m in matrices]
    variance = np.stack([v for _, v in moments])
    varying = np.flatnonzero((variance > _MIN_VARIANCE).any(axis=0))
    if len(varying) < 2:
        raise ValueError("Fewer than 2 genes vary across the observations; there are no expression components.")
    score = variance[:, varying].mean(axis=0)
    genes = varying[np.lexsort((varying, -score))][:n_genes]

    gram = np.zeros((len(genes), len(genes)))
    n_total = 0
    for m, (mean, var) in zip(matrices, moments, strict=True):
        for z in _standardised(m, genes, mean, var):
            gram += z.T @ z
            n_total += len(z)
    k = int(min(n_components, len(genes), max(n_total - 1, 1)))
    _, vectors = np.linalg.eigh(gram / max(n_total, 1))
    axes = vectors[:, ::-1][:, :k]
    # Each axis's sign is fixed by its largest loading, so the result does not depend on the eigen-solver.
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(k)])
    scores = []
    for m, (mean, var) in zip(matrices, moments, strict=True):
        parts = [z @ axes for z in _standardised(m, genes, mean, var)]
        scores.append(np.vstack(parts).astype(np.float32) if parts else np.zeros((0, k), dtype=np.float32))
    return scores[0] if single else scores


def _log1p_csr(table: AnnData, columns: np.ndarray, layer: str | None) -> sparse.csr_matrix:
    """log1p (library size 1e4, counted over all of the table's genes) of the table's ``columns``, as CSR."""
    x = _matrix_of(table, layer)
    # Only the shared genes are normalised (library sizes still count every gene): one copy of the panel, not two.
    return sparse.csr_matrix(normalized(x, validated_kind(x, None), columns=columns))


def _standardised(m: sparse.csr_matrix, genes: np.ndarray, mean: np.ndarray, var: np.ndarray):
    """Dense ``(rows, genes)`` blocks standardised within the slide; genes constant on the slide are 0."""
    sd = np.sqrt(var[genes])
    constant = sd <= np.sqrt(_MIN_VARIANCE)
    inv = np.where(constant, 0.0, 1.0 / np.where(constant, 1.0, sd))
    for start in range(0, m.shape[0], _CHUNK):
        block = m[start : start + _CHUNK][:, genes].toarray().astype(np.float64)
        yield np.clip((block - mean[genes]) * inv, -Z_CLIP, Z_CLIP)
