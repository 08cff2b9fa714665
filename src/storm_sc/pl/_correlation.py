"""Per-gene agreement of predicted and measured expression: the numbers behind ``st.pl.gene_correlation``.

No plotting here, so that tools and benchmarks can reuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData

from storm_sc._constants import TABLE_PREDICTED
from storm_sc._settings import logger, quiet_loggers
from storm_sc.io import SpatialInput
from storm_sc.pp import GeneVocabulary, align_genes
from storm_sc.pp._alignment import matched_columns
from storm_sc.pp._vocabulary import is_ensembl

from ._slides import as_slides, measured_table, pick_predicted_genes, predicted_table, resolve_slide


@dataclass(frozen=True)
class PairedExpression:
    """Measured (normalised like the model) and predicted values of the same observations and genes.

    Attributes
    ----------
    table
        The measured table.
    predicted
        The predicted table, rows in the measured table's order.
    genes
        Genes as named in the predicted table.
    measured
        Gene -> ``(n_obs,)`` log1p expression (library size 1e4), or ``None`` for a gene the table lacks.
    slide
        The resolved slide (positions, image) when the caller needs positions, else ``None``.
    """

    table: AnnData
    predicted: AnnData
    genes: list[str]
    measured: dict[str, np.ndarray | None]
    slide: SpatialInput | None = None

    def predicted_values(self, gene: str, layer: str | None = None) -> np.ndarray:
        """Return the ``(n_obs,)`` predicted mean (or ``layer``, e.g. the standard deviation) of ``gene``."""
        return self.predicted_matrix([gene], layer)[:, 0]

    def predicted_matrix(self, genes: Sequence[str], layer: str | None = None) -> np.ndarray:
        """Return the ``(n_obs, len(genes))`` predicted means (or ``layer``) of ``genes``, float64."""
        # One AnnData view for all the genes: a view per gene cost ~2 ms, 20 s for a readout's 10,000 genes.
        columns = self.predicted[:, list(genes)]
        x = columns.X if layer is None else columns.layers[layer]
        return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float64)


def pair_expression(
    data: SpatialData | AnnData,
    genes: str | Sequence[str] | None,
    *,
    predicted_key: str = TABLE_PREDICTED,
    predicted: AnnData | None = None,
    table_key: str | None = None,
    layer: str | None = None,
    positions: bool = False,
    image_key: str | None = None,
    mpp: float | None = None,
    caller: str,
) -> PairedExpression:
    """Find, check and pair the measured and predicted expression of ``genes`` (all predicted genes for None).

    With ``positions`` the slide is resolved too (positions in microns, image), as plots over the tissue need.
    """
    (one,) = as_slides(data, caller=caller, many=False, table_key=table_key)
    if positions:
        slide = resolve_slide(one, table_key=table_key, predicted_key=predicted_key, image_key=image_key, mpp=mpp)
        table = slide.table
    else:
        slide, table = None, measured_table(one, table_key=table_key, predicted_key=predicted_key)
    pred = predicted_table(one, table, predicted_key=predicted_key, predicted=predicted)
    if pred.n_vars == 0:
        raise ValueError("The predicted table holds no gene.")
    chosen = pick_predicted_genes(genes, pred)
    if layer is not None and layer not in table.layers:
        raise KeyError(f"`layer` {layer!r} is not a layer of the measured table; layers: {list(table.layers)}.")
    measured: dict[str, np.ndarray | None] = dict.fromkeys(chosen)
    # predict_expression keeps each gene's Ensembl id: a table indexed by ids (Space Ranger's gene_ids) then pairs.
    ids = pred.var["gene_ids"] if "gene_ids" in pred.var.columns else None
    vocabulary = GeneVocabulary.from_genes(
        chosen, ensembl_ids=None if ids is None else [ids[g] if is_ensembl(ids[g]) else None for g in chosen]
    )
    if (matched_columns(table, vocabulary)[0] < 0).all():
        logger.info("None of the %d predicted gene(s) is measured in the table.", len(chosen))
    else:
        # Pairing a few plotted genes is not news worth a log line about the vocabulary's coverage.
        with quiet_loggers(logger.name):
            aligned = align_genes(table, vocabulary, layer=layer)
        x = aligned.X.toarray() if sparse.issparse(aligned.X) else np.asarray(aligned.X)
        for column, v in enumerate(aligned.vocab_indices):
            measured[chosen[int(v)]] = np.asarray(x[:, column], dtype=np.float64)
    return PairedExpression(table=table, predicted=pred, genes=chosen, measured=measured, slide=slide)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; NaN when either side is constant (no agreement can be measured)."""
    return float(_pearson_columns(a[:, None], b[:, None])[0])


def _pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each column pair of two ``(n, g)`` arrays; NaN where either column is constant."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=0) / denom, np.nan)


# Genes per block of the correlation table: bounds the float64 copies of both sides to a few hundred MiB.
_GENE_BLOCK = 512


def correlation_table(paired: PairedExpression) -> pd.DataFrame:
    """Per-gene Pearson r of a :class:`PairedExpression`, best first; unmeasured genes are left out."""
    genes = [gene for gene in paired.genes if paired.measured[gene] is not None]
    parts = []
    for start in range(0, len(genes), _GENE_BLOCK):
        block = genes[start : start + _GENE_BLOCK]
        m = np.column_stack([paired.measured[gene] for gene in block])
        p = paired.predicted_matrix(block)
        parts.append(
            pd.DataFrame(
                {
                    "pearson_r": _pearson_columns(m, p),
                    "n_obs": len(m),
                    "measured_mean": m.mean(axis=0),
                    "predicted_mean": p.mean(axis=0),
                    "measured_fraction": (m > 0).mean(axis=0),
                },
                index=pd.Index(block, name="gene"),
            )
        )
    columns = ["pearson_r", "n_obs", "measured_mean", "predicted_mean", "measured_fraction"]
    frame = pd.concat(parts) if parts else pd.DataFrame(columns=columns, index=pd.Index([], name="gene"))
    return frame.sort_values("pearson_r", ascending=False, na_position="last")


def measured_correlations(
    data: SpatialData | AnnData,
    genes: str | Sequence[str] | None,
    *,
    predicted_key: str,
    predicted: AnnData | None,
    table_key: str | None,
    layer: str | None,
    caller: str,
) -> tuple[PairedExpression, pd.DataFrame]:
    """Pair ``genes`` (see :func:`pair_expression`) and tabulate their correlations; none measured is an error."""
    paired = pair_expression(
        data, genes, predicted_key=predicted_key, predicted=predicted, table_key=table_key, layer=layer, caller=caller
    )
    table = correlation_table(paired)
    if table.empty:
        raise ValueError(
            f"None of the {len(paired.genes)} predicted gene(s) is measured in the table (e.g. {paired.genes[:5]}); "
            "correlations need the measurement. Check the gene names, or `layer=`."
        )
    return paired, table


def gene_correlations(
    data: SpatialData | AnnData,
    *,
    genes: str | Sequence[str] | None = None,
    predicted_key: str = TABLE_PREDICTED,
    predicted: AnnData | None = None,
    table_key: str | None = None,
    layer: str | None = None,
) -> pd.DataFrame:
    """Per-gene Pearson correlation between measured and predicted expression over the observations of a slide.

    The measurement is normalised as the model's targets are (library size 1e4 over all genes of the table, then
    log1p; see :func:`storm_sc.pp.normalize_expression`), and matched to the predicted genes by symbol
    (case-insensitive) or Ensembl id as in :func:`storm_sc.pp.align_genes`. Nothing is modified.

    Parameters
    ----------
    data
        A SpatialData holding the measured table and ``tables[predicted_key]`` (from
        :func:`storm_sc.tl.predict_expression`), or the measured AnnData together with ``predicted=``.
    genes
        Genes to evaluate; default every predicted gene.
    predicted_key
        Key of the predicted table in ``sdata.tables``.
    predicted
        The predicted AnnData itself (required for an AnnData ``data``).
    table_key
        The measured table, when the SpatialData holds several besides the predicted one.
    layer
        Layer of the measured table holding the expression instead of ``.X``.

    Returns
    -------
    A DataFrame indexed by gene, sorted by decreasing ``pearson_r`` (NaN, for a constant gene, last), with columns
    ``pearson_r``, ``n_obs``, ``measured_mean``, ``predicted_mean`` (both log1p) and ``measured_fraction`` (share
    of observations where the gene is detected). Predicted genes that the table does not measure are left out
    (with a log line).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> _ = st.tl.predict_expression(sdata, model, genes=["gene_0000", "gene_0001"], verbose=False)
    >>> st.pl.gene_correlations(sdata).columns.tolist()[:2]
    ['pearson_r', 'n_obs']
    """
    paired, table = measured_correlations(
        data,
        genes,
        predicted_key=predicted_key,
        predicted=predicted,
        table_key=table_key,
        layer=layer,
        caller="gene_correlations",
    )
    unmeasured = [g for g in paired.genes if paired.measured[g] is None]
    if unmeasured:
        logger.info(
            "%d predicted gene(s) are not measured and have no correlation: %s", len(unmeasured), unmeasured[:10]
        )
    return table
