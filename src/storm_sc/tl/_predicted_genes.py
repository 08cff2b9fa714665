"""Which genes a prediction holds and how they are named: the user's request, the model's vocabulary, the table's."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from storm_sc._settings import logger
from storm_sc.pp import GeneVocabulary
from storm_sc.pp._alignment import matched_columns, symbol_column
from storm_sc.pp._vocabulary import ensembl_key, ensembl_species, is_ensembl, symbol_key

# What genes=None predicts (StormModel._prediction_genes): the head is at chance where the readout is not.
_DEFAULT_GENES = (
    "None (the default) for the genes the model's expression readout covers (its whole vocabulary with "
    "source='head' or without a readout)"
)


def check_genes(genes: Any) -> None:
    """Refuse a ``genes=`` that is not a gene name, a list of them or ``None``."""
    if genes is None:
        return
    if isinstance(genes, str):
        names = [genes]
    else:
        names = list(genes) if isinstance(genes, Sequence | np.ndarray | pd.Index) else None
    if names is None or not all(isinstance(g, str) and g.strip() for g in names):
        raise TypeError(
            f"`genes` must be a gene name or a list of gene names (symbols or Ensembl ids), or {_DEFAULT_GENES}; "
            f"got {genes!r}."
        )
    if not names:
        raise ValueError(f"`genes` is an empty list; pass gene names, or {_DEFAULT_GENES}.")


def split_genes(genes: Sequence[str] | str | None, vocabulary: GeneVocabulary) -> tuple[list[str] | None, list[str]]:
    """Requested genes the model knows (as its symbols, in request order) and those it does not.

    A gene is named by its symbol (any case) or by its Ensembl id (with or without version).
    """
    if genes is None:
        return None, []
    if isinstance(genes, str):
        genes = [genes]
    inside = [vocabulary.symbols[vocabulary.index(name)] for name in genes if name in vocabulary]
    outside = [name for name in genes if name not in vocabulary]
    return list(dict.fromkeys(inside)), outside


def _measured_columns(
    table: AnnData, vocabulary: GeneVocabulary, genes: list[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """The table's column measuring each predicted gene (-1: none) and the table's Ensembl ids (None if unknown).

    Genes are found as storm_embed finds them (Ensembl ids first, then symbols), so that a table indexed by Ensembl
    ids (Space Ranger's gene_ids) pairs with the predicted symbols. A table whose names cannot be matched that way
    (duplicated names) is matched by symbol alone: the prediction, which never reads the table's expression, is not
    lost for it.
    """
    predicted = GeneVocabulary.from_genes(
        genes,
        ensembl_ids=None
        if vocabulary.all_ensembl_ids is None
        else [vocabulary.all_ensembl_ids[i] for i in vocabulary.index(genes)],
    )
    try:
        columns, data_ids, _ = matched_columns(table, predicted)
    except ValueError as err:
        logger.warning("Predicted genes matched to the table's var_names by symbol only: %s", err)
        names = {symbol_key(str(n)): i for i, n in enumerate(table.var_names)}
        return np.array([names.get(symbol_key(g), -1) for g in genes], dtype=np.int64), None
    return columns, data_ids


def table_species(table: AnnData, data_ids: np.ndarray | None) -> str | None:
    """The Ensembl species code of a table's genes (see :func:`~storm_sc.pp._vocabulary.ensembl_species`).

    From the Ensembl ids the table carries, else from how its symbols are written: all upper case is the human
    convention (``GAPDH``), capitalised the mouse one (``Gapdh``; rat's too, rarer in spatial data). ``None`` when
    neither says.
    """
    if data_ids is not None:
        found = Counter(ensembl_species(str(i)) for i in data_ids if i is not None)
        found.pop(None, None)
        if found:
            return found.most_common(1)[0][0]
    # the part after a genome prefix ("GRCh38__GAPDH", "mm10___Gapdh"); names without letters there say nothing
    tails = (str(n).rsplit("_", 1)[-1] for n in table.var_names if not is_ensembl(str(n)))
    symbols = [t for t in tails if any(c.isalpha() for c in t)]
    if not symbols:
        return None
    lower = np.mean([any(c.islower() for c in n) for n in symbols])
    # human symbols are upper case but for a few (C1orf112); mouse ones are capitalised but for a few (Gm12345 is too)
    return "" if lower < 0.2 else "MUS" if lower > 0.8 else None


def _gene_id(entry: Sequence[str], measured_as: str | None, species: str | None) -> str:
    """The Ensembl id of one gene: the table's, else the model's id of the table's species ("" if unsure)."""
    keys = {ensembl_key(e): e for e in entry}
    if measured_as is not None and measured_as in keys:
        return keys[measured_as]
    if species is None:
        return entry[0] if len(entry) == 1 else ""
    return next((e for e in entry if ensembl_species(e) == species), "")


def prediction_genes(table: AnnData, vocabulary: GeneVocabulary, genes: Sequence[str]) -> pd.DataFrame:
    """The ``var`` of a prediction of the model's ``genes`` for the observations of ``table``.

    A gene the table measures is named as the table writes its symbol (``Gapdh`` on a mouse slide, where the
    model's symbol is ``GAPDH``): its var_names, so that prediction and measurement join on them, or its symbol
    column when the var_names are Ensembl ids (the ids are then in ``gene_ids``); the others by the model's symbol. ``measured_in_table``: whether the table measures the gene; ``gene_ids``: its Ensembl id, the
    table's where it has one, else the model's id of the table's species.
    """
    genes = list(genes)
    columns, data_ids = _measured_columns(table, vocabulary, genes)
    symbols, _ = symbol_column(table)
    names = []
    for gene, column in zip(genes, columns, strict=True):
        written = symbols[column] if symbols is not None and column >= 0 else None
        names.append(written.strip() if isinstance(written, str) and written.strip() else gene)
    if len(set(names)) < len(names):  # two genes written alike (a table whose symbols disagree with its ids)
        names = genes
    var = pd.DataFrame({"measured_in_table": columns >= 0}, index=pd.Index(names, name="gene"))
    if vocabulary.all_ensembl_ids is not None:
        species = table_species(table, data_ids)
        var["gene_ids"] = [
            _gene_id(
                vocabulary.all_ensembl_ids[vocabulary.index(gene)],
                data_ids[column] if data_ids is not None and column >= 0 else None,
                species,
            )
            for gene, column in zip(genes, columns, strict=True)
        ]
    return var
