"""Prediction targets of the expression benchmark: normalised log1p expression and the gene sets scored."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse


def log1p_normalised(counts: ad.AnnData, *, target_sum: float = 1e4) -> pd.DataFrame:
    """``log1p`` of counts per ``target_sum``, each spot normalised by its total over all of its genes.

    The default, counts per 10,000, is scanpy's convention (``normalize_total(target_sum=1e4)`` then ``log1p``) and
    the scale on which storm_sc predicts expression. The scale changes what a Pearson correlation rewards: with
    counts per million, a sparse gene's first count jumps from 0 to ~5, so the target is mostly "detected or not".

    Parameters
    ----------
    counts
        Spots x genes raw counts (``.X``). Not modified.
    target_sum
        Counts each spot is scaled to before ``log1p`` (``1e6``: log1p(CPM)).

    Returns
    -------
    Spots x genes float32 frame indexed like ``counts``.

    Examples
    --------
    >>> a = ad.AnnData(np.array([[1.0, 3.0], [0.0, 2.0]], dtype=np.float32))
    >>> np.round(log1p_normalised(a).to_numpy().astype(float), 2).tolist()
    [[7.82, 8.92], [0.0, 9.21]]
    >>> np.round(log1p_normalised(a, target_sum=1e6).to_numpy().astype(float), 2).tolist()
    [[12.43, 13.53], [0.0, 13.82]]
    """
    if not (np.isfinite(target_sum) and target_sum > 0):
        raise ValueError(f"`target_sum` must be a positive number of counts, got {target_sum!r}.")
    x = counts.X
    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    x = x.astype(np.float64)
    if (x < 0).any():
        raise ValueError("the table holds negative values; normalised log1p targets need raw counts in `.X`.")
    totals = x.sum(axis=1, keepdims=True)
    if (totals <= 0).any():
        n = int((totals <= 0).sum())
        raise ValueError(f"{n} spots have no counts at all; drop them before building targets.")
    return pd.DataFrame(
        np.log1p(x / totals * target_sum).astype(np.float32),
        index=counts.obs_names.copy(),
        columns=counts.var_names.copy(),
    )


def top_hvgs(train_expr: pd.DataFrame, *, n_top: int = 50, min_detected: float = 0.1) -> list[str]:
    """The most variable genes of the training spots (dispersion normalised within bins of mean expression).

    Uses scanpy's ``cell_ranger`` flavour (dispersions normalised by the median and MAD of their mean-expression
    bin), which is robust to the sparse, noisy genes of ~200-spot sections; the ``seurat`` flavour's z-scores rank
    many low-count housekeeping genes first there. Only genes detected in at least ``min_detected`` of the
    training spots are ranked: the dispersion of a gene seen in a handful of spots is noise, not biology.

    Parameters
    ----------
    train_expr
        Training spots x genes normalised log1p expression (never include the held-out sections).
    n_top
        How many genes to return.
    min_detected
        Minimum fraction of training spots in which a gene must be non-zero.

    Returns
    -------
    Gene names, most variable first.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> expr = pd.DataFrame(rng.poisson(rng.uniform(0.5, 5, 60), (300, 60)).astype(float),
    ...                     columns=[f"g{i}" for i in range(60)])
    >>> len(top_hvgs(np.log1p(expr), n_top=5))
    5
    """
    if not (0 <= min_detected < 1):
        raise ValueError(f"`min_detected` is a fraction of spots in [0, 1), got {min_detected!r}.")
    detected = (train_expr.to_numpy() > 0).mean(axis=0) >= min_detected
    candidates = train_expr.loc[:, detected]
    if candidates.shape[1] < n_top:
        raise ValueError(
            f"only {candidates.shape[1]} genes are detected in >= {min_detected:.0%} of the training spots, "
            f"fewer than `n_top={n_top}`; lower `min_detected` or `n_top`."
        )
    adata = ad.AnnData(candidates.to_numpy(dtype=np.float32), var=pd.DataFrame(index=candidates.columns.astype(str)))
    # Both dispersion flavours expect log1p data; with n_top_genes their mean/dispersion cut-offs are not used.
    hvg = sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor="cell_ranger", inplace=False)
    hvg.index = adata.var_names
    ranked = hvg.loc[hvg["highly_variable"]].sort_values("dispersions_norm", ascending=False)
    return ranked.index.tolist()[:n_top]


def panel_present(panel: Sequence[str], genes: Sequence[str]) -> list[str]:
    """The genes of a fixed panel that are measured, in the panel's order.

    Parameters
    ----------
    panel
        Gene names of the panel (e.g. the 785-gene HisToGene her2st panel).
    genes
        Genes measured in every section of the run.

    Returns
    -------
    Panel genes found in ``genes``.

    Examples
    --------
    >>> panel_present(["A", "B", "C"], ["C", "A"])
    ['A', 'C']
    """
    measured = set(genes)
    return [g for g in dict.fromkeys(panel) if g in measured]
