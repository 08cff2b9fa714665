"""Gene-program inputs: each observation's standardised expression of its slide's most variable genes.

The gene tokens (:mod:`storm_sc.models._tokens`) show the encoder a few dozen genes per observation, half of them
drawn at random: enough to tell cell types apart, too few and too noisy for the graded programs that separate
tissue layers, where every observation must be described by the same genes. The program path reads, for every
observation of a slide, the same genes (the slide's most variable ones), standardised over the slide as scanpy's
``pp.scale`` does, and projects them with a fixed gene-loading map: the main axes of gene co-expression of the
pretraining corpus (:func:`corpus_loadings`). That is a PCA whose axes are shared by every slide and panel, the
input that spatial-domain methods start from; standardising per slide also removes each slide's sequencing depth
and ambient offsets from this path.

The map is fixed rather than learned with the network: trained end to end on a small corpus, the projection was
not learned (a reconstruction objective on standardised single-gene values stayed at chance, they are mostly
counting noise), while the corpus's co-expression axes carry layer structure to held-out slides of tissues the
corpus covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from storm_sc.pp._expression import Z_CLIP, gene_moments


@dataclass(frozen=True)
class SlidePrograms:
    """Which columns of a slide feed the program path, and their standardisation.

    Attributes
    ----------
    columns
        ``(k,)`` panel columns, the slide's ``k`` most variable genes (variance of log1p expression), most
        variable first.
    mean, scale
        ``(k,)`` mean and standard deviation of each column over the slide's observations.
    """

    columns: np.ndarray
    mean: np.ndarray
    scale: np.ndarray


def slide_programs(expression: sparse.csr_matrix, n_genes: int) -> SlidePrograms:
    """Choose and standardise the program genes of one slide (unsupervised: its expression only).

    Genes that do not vary on the slide are never chosen, so a slide with fewer than ``n_genes`` varying genes
    gets fewer columns (the rest of the inputs are padding).

    Parameters
    ----------
    expression
        ``(n_obs, n_panel)`` CSR log1p expression of the slide.
    n_genes
        Number of genes to keep.

    Returns
    -------
    The columns and their mean and standard deviation.

    Examples
    --------
    >>> x = sparse.csr_matrix(np.array([[0.0, 2.0, 1.0], [0.0, 0.0, 1.5]], dtype=np.float32))
    >>> p = slide_programs(x, 5)
    >>> p.columns.tolist(), p.mean.tolist()
    ([1, 2], [1.0, 1.25])
    """
    n_obs, n_panel = expression.shape
    if not n_obs or not n_panel:
        empty = np.zeros(0)
        return SlidePrograms(np.zeros(0, dtype=np.int64), empty, empty)
    mean, variance = gene_moments(expression)
    varying = np.flatnonzero(variance > 1e-12)
    order = varying[np.lexsort((varying, -variance[varying]))][:n_genes]
    return SlidePrograms(order.astype(np.int64), mean[order], np.sqrt(variance[order]))


def program_arrays(
    expression: sparse.csr_matrix,
    gene_index: np.ndarray,
    programs: SlidePrograms,
    rows: np.ndarray,
    n_genes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Program inputs of several observations of one slide.

    Parameters
    ----------
    expression
        ``(n_obs, n_panel)`` CSR log1p expression of the slide.
    gene_index
        ``(n_panel,)`` vocabulary index of each column.
    programs
        The slide's :func:`slide_programs`.
    rows
        Observations; ``-1`` gives an empty (all-invalid) row.
    n_genes
        Width of the arrays (the model's ``program_genes``).

    Returns
    -------
    ``(ids, values, valid)``, each ``(len(rows), n_genes)``: vocabulary indices, standardised values (clipped to
    +-10) and which slots hold a gene.

    Examples
    --------
    >>> x = sparse.csr_matrix(np.array([[0.0, 2.0, 1.0], [0.0, 0.0, 1.5]], dtype=np.float32))
    >>> ids, z, ok = program_arrays(x, np.array([7, 8, 9]), slide_programs(x, 3), np.array([0, -1]), 3)
    >>> ids[0].tolist(), z[0].round(2).tolist(), ok.tolist()
    ([8, 9, 0], [1.0, -1.0, 0.0], [[True, True, False], [False, False, False]])
    """
    rows = np.asarray(rows, dtype=np.int64)
    k = min(len(programs.columns), n_genes)
    ids = np.zeros((len(rows), n_genes), dtype=np.int64)
    values = np.zeros((len(rows), n_genes), dtype=np.float32)
    valid = np.zeros((len(rows), n_genes), dtype=bool)
    present = rows >= 0
    if not k or not present.any():
        return ids, values, valid
    cols = programs.columns[:k]
    dense = expression[rows[present]][:, cols].toarray().astype(np.float64)
    z = (dense - programs.mean[:k]) / programs.scale[:k]
    ids[present, :k] = gene_index[cols]
    values[present, :k] = np.clip(z, -Z_CLIP, Z_CLIP)
    valid[present, :k] = True
    return ids, values, valid


def corpus_loadings(
    slides: Sequence[tuple[sparse.csr_matrix, np.ndarray]],
    n_vocab: int,
    n_genes: int,
    dim: int,
    *,
    rows_per_slide: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """The main axes of gene co-expression over a corpus: the fixed gene-loading map of the program path.

    Each slide contributes its program inputs (:func:`program_arrays`: its ``n_genes`` most variable genes,
    standardised over the slide) for up to ``rows_per_slide`` observations, weighted so that every slide counts
    the same however many observations it has. A truncated SVD of the stacked rows, keyed by the vocabulary, gives
    each gene's loading on ``dim`` axes, scaled so that the corpus's program scores have unit mean square. Genes
    that are never among a slide's program genes load zero: they cannot move the scores.

    Parameters
    ----------
    slides
        ``(expression, gene_index)`` of each slide: ``(n_obs, n_panel)`` CSR log1p expression (the observations
        to learn from) and the vocabulary index of each column.
    n_vocab
        Size of the vocabulary.
    n_genes
        Program genes per slide (the model's ``program_genes``).
    dim
        Number of axes (the model's ``program_dim``).
    rows_per_slide
        Observations drawn from each slide.
    seed
        Seed of the draws and of the SVD's start vector.

    Returns
    -------
    ``(n_vocab, dim)`` float32 loadings; each axis's sign makes its largest loading positive. Axes beyond the
    corpus's rank are zero.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = sparse.csr_matrix(np.log1p(rng.poisson(2.0, (60, 8)).astype(np.float32)))
    >>> corpus_loadings([(x, np.arange(8) + 2)], n_vocab=12, n_genes=8, dim=3).shape
    (12, 3)
    """
    from scipy.sparse.linalg import svds

    rng = np.random.default_rng(seed)
    blocks = []
    for expression, gene_index in slides:
        if expression is None or not expression.shape[0] or not expression.shape[1]:
            continue
        programs = slide_programs(expression, n_genes)
        if not len(programs.columns):
            continue
        n = expression.shape[0]
        rows = np.sort(rng.choice(n, size=min(n, rows_per_slide), replace=False))
        ids, values, valid = program_arrays(expression, gene_index, programs, rows, n_genes)
        r, c = np.nonzero(valid)
        data = values[r, c].astype(np.float64) / np.sqrt(len(rows))
        blocks.append(sparse.csr_matrix((data, (r, ids[r, c])), shape=(len(rows), n_vocab)))
    out = np.zeros((n_vocab, dim), dtype=np.float32)
    if not blocks:
        return out
    stacked = sparse.vstack(blocks).tocsc()
    # Only genes that are some slide's program genes take part: the rest load exactly zero.
    used = np.flatnonzero(np.diff(stacked.indptr))
    stacked = stacked[:, used]
    k = min(dim, min(stacked.shape) - 1)
    if k < 1:
        return out
    v0 = np.random.default_rng(seed).normal(size=min(stacked.shape))
    _, s, vt = svds(stacked, k=k, v0=v0)
    order = np.argsort(-s)
    s, vt = s[order], vt[order]
    keep = s > 1e-8 * max(s[0], 1e-300)
    # Rows carry 1/sqrt(rows of their slide): the mean over slides of each axis's mean-square score is s^2 / slides.
    axes = vt[keep].T * (np.sqrt(len(blocks)) / s[keep])
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    out[used, : axes.shape[1]] = axes * signs
    return out
