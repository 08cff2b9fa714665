"""Map a dataset's genes onto the model's gene vocabulary and normalise the matched expression."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from storm_sc._settings import logger

from ._expression import ExpressionKind, _matrix_of, normalized, validated_kind
from ._input import table_of
from ._vocabulary import GeneVocabulary, ensembl_key, is_ensembl, symbol_key

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from storm_sc.io._spatial_input import SpatialInput

# Where scanpy, Space Ranger/Xenium readers, CELLxGENE and others keep the "other" gene identifier in .var.
_SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "gene_name", "gene_names", "symbol", "symbols", "feature_name")
_ENSEMBL_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "ensembl_ids", "ensembl", "feature_id", "feature_ids")


@dataclass(frozen=True, eq=False)
class AlignedExpression:
    """Expression of one dataset on the model's gene vocabulary.

    Attributes
    ----------
    X
        ``(n_obs, n_matched)`` float32 expression on the model's scale (library size 1e4, then log1p), CSR when
        the input was sparse; column ``j`` is vocabulary gene ``vocab_indices[j]``.
    vocab_indices
        Vocabulary position of each column of ``X``, increasing.
    data_indices
        Column of the input table each column of ``X`` came from.
    mask
        ``(len(vocabulary),)`` boolean: whether each vocabulary gene was measured in this dataset.
    vocabulary
        The vocabulary aligned to.
    obs_names
        Observation names, in table order.
    input_kind
        Scale the input was on (``"counts"``, ``"log1p"`` or ``"normalized"``).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> vocab = st.pp.GeneVocabulary.from_genes(["gene_0000", "gene_0001", "GFAP"])
    >>> aligned = st.pp.align_genes(sdata, vocab)
    >>> aligned
    AlignedExpression(200 obs; 2 of 3 vocabulary genes measured; sparse; from counts)
    >>> aligned.mask.tolist(), aligned.to_vocabulary_matrix().shape
    ([True, True, False], (200, 3))
    """

    X: np.ndarray | sparse.csr_matrix
    vocab_indices: np.ndarray
    data_indices: np.ndarray
    mask: np.ndarray
    vocabulary: GeneVocabulary
    obs_names: pd.Index
    input_kind: ExpressionKind

    @property
    def n_matched(self) -> int:
        """Number of vocabulary genes measured in the dataset."""
        return int(self.vocab_indices.size)

    @property
    def n_obs(self) -> int:
        """Number of observations."""
        return int(self.X.shape[0])

    def __repr__(self) -> str:
        kind = "sparse" if sparse.issparse(self.X) else "dense"
        return (
            f"AlignedExpression({self.n_obs} obs; {self.n_matched} of {len(self.vocabulary)} vocabulary genes "
            f"measured; {kind}; from {self.input_kind})"
        )

    def to_vocabulary_matrix(self) -> np.ndarray | sparse.csr_matrix:
        """Expression with one column per vocabulary gene; unmeasured genes are zero (see :attr:`mask`).

        Returns
        -------
        ``(n_obs, len(vocabulary))`` float32, CSR when :attr:`X` is sparse.

        Examples
        --------
        >>> full = aligned.to_vocabulary_matrix()  # doctest: +SKIP
        >>> full.shape[1] == len(aligned.vocabulary)  # doctest: +SKIP
        True
        """
        n_vocab = len(self.vocabulary)
        if sparse.issparse(self.X):
            x = sparse.csr_matrix(self.X)
            return sparse.csr_matrix((x.data, self.vocab_indices[x.indices], x.indptr), shape=(x.shape[0], n_vocab))
        out = np.zeros((self.n_obs, n_vocab), dtype=np.float32)
        out[:, self.vocab_indices] = self.X
        return out


def _mostly_ensembl(values: pd.Index | pd.Series) -> bool:
    sample = [v.rsplit("_", 1)[-1] if isinstance(v, str) else v for v in values[: min(len(values), 2000)]]
    return len(sample) > 0 and np.mean([is_ensembl(v) for v in sample]) >= 0.5


def _clean(values: pd.Index | pd.Series, *, ensembl: bool, genomes: np.ndarray | None) -> np.ndarray:
    """Turn data gene identifiers into matching keys; ``None`` where missing (or not an Ensembl id, for ids)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = None
        if not (isinstance(v, str) and v.strip()):
            continue
        # Multi-genome references (Space Ranger, Cell Ranger) prefix every gene with its genome: "GRCh38__GAPDH".
        if genomes is not None and isinstance(genomes[i], str) and v.startswith(genomes[i] + "_"):
            v = v[len(genomes[i]) :].lstrip("_")
        if ensembl:
            out[i] = ensembl_key(v) if is_ensembl(v) else None
        else:
            out[i] = symbol_key(v)
    return out


def symbol_column(adata: AnnData, gene_symbols: str | None = None) -> tuple[np.ndarray | None, str]:
    """The data's gene symbols per column, as written (``None`` if it has none), and where they were found.

    ``var[gene_symbols]`` when given; else the var_names, unless they are mostly Ensembl ids, in which case the usual
    symbol columns of ``.var`` (``gene_symbols``, ``gene_name``, ``feature_name``, ...).
    """
    if gene_symbols is not None:
        if gene_symbols not in adata.var.columns:
            raise KeyError(
                f"`gene_symbols={gene_symbols!r}` is not a column of .var; available columns: {list(adata.var.columns)}."
            )
        return adata.var[gene_symbols].to_numpy(), f"var[{gene_symbols!r}]"
    if not _mostly_ensembl(adata.var_names):
        return adata.var_names.to_numpy(), "var_names"
    column = next((c for c in _SYMBOL_COLUMNS if c in adata.var.columns), None)
    return (None, "none") if column is None else (adata.var[column].to_numpy(), f"var[{column!r}]")


def _data_genes(
    adata: AnnData, gene_symbols: str | None, *, unique: bool = True
) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Case-folded symbols and version-less Ensembl ids per data column (``None`` where unknown).

    ``unique``: refuse duplicated gene names (matching to a model's vocabulary must not pick one silently).
    """
    names = adata.var_names
    if unique and not names.is_unique:
        dup = names[names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"The data has duplicated gene names (e.g. {dup}); make them unique first with "
            "`adata.var_names_make_unique()`, or aggregate the duplicated genes."
        )
    names_are_ensembl = _mostly_ensembl(names)
    symbol_source, symbols_from = symbol_column(adata, gene_symbols)

    if names_are_ensembl and gene_symbols is None:
        ensembl_source, ensembl_from = names, "var_names"
    else:
        column = next((c for c in _ENSEMBL_COLUMNS if c in adata.var.columns and _mostly_ensembl(adata.var[c])), None)
        if column is None and names_are_ensembl:
            ensembl_source, ensembl_from = names, "var_names"
        else:
            ensembl_source = None if column is None else adata.var[column]
            ensembl_from = "none" if column is None else f"var[{column!r}]"
    genomes = adata.var["genome"].to_numpy() if "genome" in adata.var.columns else None
    symbols = None if symbol_source is None else _clean(symbol_source, ensembl=False, genomes=genomes)
    ensembl = None if ensembl_source is None else _clean(ensembl_source, ensembl=True, genomes=genomes)
    return symbols, ensembl, f"symbols: {symbols_from}, Ensembl ids: {ensembl_from}"


def shared_columns(tables: Sequence[AnnData]) -> list[np.ndarray]:
    """Columns of the genes that every table measures, one index array per table, in the first table's order.

    Genes are matched as :func:`align_genes` matches them to a vocabulary: by Ensembl id (version suffixes ignored)
    or by case-insensitive symbol (prefixes of a ``.var["genome"]`` column dropped). A column that has both ties them
    together, so a table named by Ensembl ids (DLPFC) and one named by symbols share their genes through any table
    that has both (Visium FFPE), in whatever order the tables come. A gene that occurs twice in a table (even a single
    table) is read from its first column.

    Examples
    --------
    >>> genome = pd.DataFrame({"genome": "GRCh38"}, index=["GRCh38__VIM", "GRCh38__CD3E", "GRCh38__KRT8"])
    >>> a = AnnData(np.zeros((1, 3)), var=genome)
    >>> b = AnnData(np.zeros((1, 3)), var=pd.DataFrame(index=["Krt8", "VIM", "vim"]))
    >>> [c.tolist() for c in shared_columns([a, b])]
    [[0, 2], [1, 0]]
    """
    keys = [_data_genes(table, None, unique=False)[:2] for table in tables]
    # Union-find over identifiers ("id:ENSG...", "sym:vim"): a column naming both makes them one gene.
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def identifiers(symbols: np.ndarray | None, ensembl: np.ndarray | None, column: int) -> list[str]:
        found = [] if ensembl is None or ensembl[column] is None else [f"id:{ensembl[column]}"]
        return found + ([] if symbols is None or symbols[column] is None else [f"sym:{symbols[column]}"])

    per_table = []
    for table, (symbols, ensembl) in zip(tables, keys, strict=True):
        columns = [(c, identifiers(symbols, ensembl, c)) for c in range(table.n_vars)]
        for _, ids in columns:
            for other in ids[1:]:
                parent[root(other)] = root(ids[0])
        per_table.append(columns)
    first_column_of_gene = []
    for columns in per_table:
        genes: dict[str, int] = {}
        for c, ids in columns:
            if ids:
                genes.setdefault(root(ids[0]), c)
        first_column_of_gene.append(genes)
    shared = [gene for gene in first_column_of_gene[0] if all(gene in genes for genes in first_column_of_gene[1:])]
    return [np.asarray([genes[gene] for gene in shared], dtype=np.int64) for genes in first_column_of_gene]


def _match(
    vocabulary: GeneVocabulary, symbols: np.ndarray | None, ensembl: np.ndarray | None, var_names: pd.Index
) -> np.ndarray:
    """Find the data column of each vocabulary gene (-1 when unmeasured): Ensembl ids first, then symbols."""
    vocab_to_data = np.full(len(vocabulary), -1, dtype=np.int64)
    used = np.zeros(len(var_names), dtype=bool)
    ambiguous: list[str] = []

    def assign(v: int, columns: list[int], by: str) -> None:
        columns = [c for c in columns if not used[c]]
        if len(columns) > 1:
            shown = ", ".join(repr(var_names[c]) for c in columns[:4])
            ambiguous.append(f"{vocabulary.symbols[v]!r} <- {shown} (by {by})")
        elif columns:
            vocab_to_data[v] = columns[0]
            used[columns[0]] = True

    if ensembl is not None and vocabulary.ensembl_index:
        by_id: dict[str, list[int]] = defaultdict(list)
        for c, key in enumerate(ensembl):
            if key is not None:
                by_id[key].append(c)
        for key, v in vocabulary.ensembl_index.items():
            if key in by_id:
                assign(v, by_id[key], "Ensembl id")
    if symbols is not None:
        by_symbol: dict[str, list[int]] = defaultdict(list)
        for c, key in enumerate(symbols):
            if key is not None:
                by_symbol[key].append(c)
        for v, symbol in enumerate(vocabulary.symbols):
            key = symbol_key(symbol)
            if vocab_to_data[v] < 0 and key in by_symbol:
                assign(v, by_symbol[key], "case-insensitive symbol")
    if ambiguous:
        raise ValueError(
            f"{len(ambiguous)} vocabulary genes match several data genes, so the data panel has duplicate gene "
            f"symbols after case-folding: {'; '.join(ambiguous[:5])}{' ...' if len(ambiguous) > 5 else ''}. "
            "Rename or drop the duplicates (or aggregate them), or give Ensembl ids on both sides."
        )
    return vocab_to_data


def matched_columns(
    adata: AnnData, vocabulary: GeneVocabulary, *, gene_symbols: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The column of ``adata`` measuring each vocabulary gene (-1 where none), by :func:`align_genes`' rules.

    Also returns the data's version-less Ensembl id per column (``None`` where unknown, or no array when the data
    has none) and where the identifiers were found (for messages). Reads only ``var``: no expression is touched.
    """
    symbols, ensembl, source = _data_genes(adata, gene_symbols)
    return _match(vocabulary, symbols, ensembl, adata.var_names), ensembl, source


def align_genes(
    data: SpatialData | AnnData | SpatialInput,
    vocabulary: GeneVocabulary,
    *,
    layer: str | None = None,
    gene_symbols: str | None = None,
    kind: ExpressionKind | None = None,
    table_key: str | None = None,
) -> AlignedExpression:
    """Put a dataset's expression on the model's genes and scale.

    Genes are matched by Ensembl id where both the data and the vocabulary have them, otherwise by gene symbol
    (case-insensitive). The identifiers are found in ``var_names`` and the usual ``.var`` columns
    (``gene_ids``, ``gene_symbols``, ``gene_name``, ``feature_name``, ...), in either arrangement. Expression is
    normalised over all of the data's genes (library size 1e4, then log1p; see
    :func:`storm_sc.pp.normalize_expression`) and then restricted to the matched genes. A panel that covers
    only part of the vocabulary is fine: :attr:`AlignedExpression.mask` says which genes were measured. The
    input is never modified.

    Parameters
    ----------
    data
        An AnnData, or a SpatialData / SpatialInput whose table is used.
    vocabulary
        The model's genes.
    layer
        Layer holding the expression instead of ``.X``.
    gene_symbols
        Column of ``.var`` holding gene symbols when ``var_names`` are not symbols (as in scanpy plotting).
    kind
        Scale of the input (``"counts"``, ``"log1p"``, ``"normalized"``); detected when ``None``.
    table_key
        Table of a SpatialData to use.

    Returns
    -------
    An :class:`AlignedExpression`.

    Raises
    ------
    ValueError
        Duplicated gene names, ambiguous symbols, no gene in common, or values that are not expression.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> import storm_sc as st
    >>> adata = ad.AnnData(np.array([[1.0, 2.0, 3.0]]))
    >>> adata.var_names = ["Gfap", "Mbp", "Xist"]
    >>> vocab = st.pp.GeneVocabulary.from_genes(["GFAP", "MBP", "SNAP25"])
    >>> aligned = st.pp.align_genes(adata, vocab)
    >>> aligned.n_matched, aligned.mask.tolist()
    (2, [True, True, False])
    """
    if not isinstance(vocabulary, GeneVocabulary):
        raise TypeError(
            f"`vocabulary` must be a st.pp.GeneVocabulary (e.g. `GeneVocabulary.from_genes(...)`); "
            f"got {type(vocabulary).__name__}."
        )
    adata = table_of(data, caller="align_genes", table_key=table_key)
    matrix = _matrix_of(adata, layer)
    vocab_to_data, _, source = matched_columns(adata, vocabulary, gene_symbols=gene_symbols)
    mask = vocab_to_data >= 0
    n_matched = int(mask.sum())
    if n_matched == 0:
        raise ValueError(
            f"No gene in common between the data ({adata.n_vars} genes, e.g. {adata.var_names[:5].tolist()}; "
            f"{source}) and the vocabulary ({len(vocabulary)} genes, e.g. {list(vocabulary.symbols[:5])}). Check the "
            "species, and pass `gene_symbols=` naming the .var column with gene symbols if var_names hold other ids."
        )
    input_kind = validated_kind(matrix, kind)
    vocab_indices = np.flatnonzero(mask)
    data_indices = vocab_to_data[vocab_indices]
    logger.info(
        "align_genes: %d of %d vocabulary genes measured; %d of %d data genes not in the vocabulary (%s; input %s).",
        n_matched,
        len(vocabulary),
        adata.n_vars - n_matched,
        adata.n_vars,
        source,
        input_kind,
    )
    x = normalized(matrix, input_kind, columns=data_indices)
    return AlignedExpression(
        X=x,
        vocab_indices=vocab_indices,
        data_indices=data_indices,
        mask=mask,
        vocabulary=vocabulary,
        obs_names=adata.obs_names.copy(),
        input_kind=input_kind,
    )
