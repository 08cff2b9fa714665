from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import storm_sc as st
from storm_sc._settings import logger
from tests.pp._synthetic import counts_table

GeneVocabulary = st.pp.GeneVocabulary


@pytest.fixture
def storm_logs(caplog):
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="storm_sc"):
            yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def _adata(var_names, *, seed=0, n_obs=40, **var_columns) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(sparse.csr_matrix(rng.poisson(2.0, size=(n_obs, len(var_names))).astype(np.float32)))
    adata.var_names = list(var_names)
    for key, values in var_columns.items():
        adata.var[key] = list(values)
    return adata


# ---------------------------------------------------------------------------------------------------------------
# GeneVocabulary


def test_vocabulary_basics_and_roundtrip():
    vocab = GeneVocabulary.from_genes(
        ["GFAP", "Snap25", "MBP"], ensembl_ids=["ENSG00000131095.12", None, "ENSG00000197971"]
    )
    assert len(vocab) == 3
    assert list(vocab) == ["GFAP", "Snap25", "MBP"]
    assert vocab.index("gfap") == 0
    assert vocab.index("SNAP25") == 1
    assert vocab.index("ENSG00000197971.3") == 2  # version suffix ignored
    np.testing.assert_array_equal(vocab.index(["MBP", "snap25"]), [2, 1])
    assert "mbp" in vocab
    assert "XIST" not in vocab
    with pytest.raises(KeyError, match="XIST"):
        vocab.index("XIST")
    with pytest.raises(KeyError, match="not in the vocabulary"):
        vocab.index(["GFAP", "XIST"])
    stored = json.loads(json.dumps(vocab.to_dict()))  # storable next to the weights
    again = GeneVocabulary.from_dict(stored)
    assert again == vocab
    assert again.ensembl_ids == vocab.ensembl_ids


def test_vocabulary_refuses_bad_genes():
    with pytest.raises(ValueError, match="duplicated.*'Gfap' / 'GFAP'"):
        GeneVocabulary.from_genes(["Gfap", "MBP", "GFAP"])
    with pytest.raises(ValueError, match="at least one"):
        GeneVocabulary.from_genes([])
    with pytest.raises(ValueError, match="one id"):
        GeneVocabulary.from_genes(["A", "B"], ensembl_ids=["ENSG00000000001"])
    with pytest.raises(ValueError, match="Ensembl gene ids"):
        GeneVocabulary.from_genes(["A"], ensembl_ids=["not-an-id"])
    with pytest.raises(ValueError, match="Ensembl ids must be unique"):
        GeneVocabulary.from_genes(["A", "B"], ensembl_ids=["ENSG00000000001", "ENSG00000000001.2"])
    with pytest.raises(ValueError, match="Not a stored gene vocabulary"):
        GeneVocabulary.from_dict({"genes": ["A"]})
    with pytest.raises(ValueError, match="newer storm_sc"):
        GeneVocabulary.from_dict({"symbols": ["A"], "version": 99})


# ---------------------------------------------------------------------------------------------------------------
# align_genes


def test_partial_panel_is_a_mask(storm_logs):
    adata = _adata(["Gfap", "Mbp", "Xist", "Actb", "Foo1"])
    vocab = GeneVocabulary.from_genes(["SNAP25", "GFAP", "ACTB", "MBP", "PLP1"])
    before = adata.X.toarray().copy()
    aligned = st.pp.align_genes(adata, vocab)
    assert aligned.n_matched == 3
    np.testing.assert_array_equal(aligned.mask, [False, True, True, True, False])
    np.testing.assert_array_equal(aligned.vocab_indices, [1, 2, 3])
    np.testing.assert_array_equal(aligned.data_indices, [0, 3, 1])
    assert sparse.isspmatrix_csr(aligned.X)
    assert aligned.X.dtype == np.float32
    # normalised over ALL data genes (library size), then restricted to the matched ones
    expected = st.pp.normalize_expression(adata).toarray()[:, [0, 3, 1]]
    np.testing.assert_allclose(aligned.X.toarray(), expected)
    np.testing.assert_array_equal(adata.X.toarray(), before)
    assert aligned.obs_names.equals(adata.obs_names)
    assert aligned.input_kind == "counts"
    full = aligned.to_vocabulary_matrix()
    assert full.shape == (adata.n_obs, 5)
    np.testing.assert_allclose(full.toarray()[:, [1, 2, 3]], expected)
    assert full[:, [0, 4]].nnz == 0
    message = " ".join(r.getMessage() for r in storm_logs.records)
    assert "3 of 5 vocabulary genes measured" in message
    assert "2 of 5 data genes not in the vocabulary" in message


def test_dense_input_gives_dense_output():
    adata = _adata(["A", "B", "C"])
    adata.X = adata.X.toarray()
    aligned = st.pp.align_genes(adata, GeneVocabulary.from_genes(["C", "A"]))
    assert isinstance(aligned.X, np.ndarray)
    assert aligned.X.shape == (adata.n_obs, 2)
    np.testing.assert_array_equal(aligned.to_vocabulary_matrix(), aligned.X)


def test_ensembl_ids_win_over_symbols():
    # var_names are Ensembl ids (scanpy's var_names="gene_ids"), symbols in var["gene_symbols"]; one gene was
    # renamed since the vocabulary was made, one symbol is shared by two loci
    adata = _adata(
        ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003", "ENSG00000000004"],
        gene_symbols=["NEWNAME", "MBP", "DUP", "DUP"],
    )
    vocab = GeneVocabulary.from_genes(
        ["OLDNAME", "MBP", "DUP"], ensembl_ids=["ENSG00000000001", None, "ENSG00000000004.7"]
    )
    aligned = st.pp.align_genes(adata, vocab)
    np.testing.assert_array_equal(aligned.vocab_indices, [0, 1, 2])
    np.testing.assert_array_equal(aligned.data_indices, [0, 1, 3])


def test_symbols_in_var_names_ensembl_in_a_column():
    # the 10x / spatialdata-io default: var_names symbols, var["gene_ids"] Ensembl
    adata = _adata(["Gfap", "Mbp", "Snap25"], gene_ids=["ENSMUSG00000020932", "ENSMUSG00000041607", "ENSMUSG1"])
    vocab = GeneVocabulary.from_genes(["Other", "SNAP25"], ensembl_ids=["ENSMUSG00000020932", None])
    aligned = st.pp.align_genes(adata, vocab)
    np.testing.assert_array_equal(aligned.data_indices, [0, 2])  # Other <- Gfap by id, SNAP25 <- Snap25 by symbol


def test_gene_symbols_column():
    adata = _adata(["id1", "id2", "id3"], symbol_col=["GFAP", "MBP", "ACTB"])
    vocab = GeneVocabulary.from_genes(["ACTB", "GFAP"])
    aligned = st.pp.align_genes(adata, vocab, gene_symbols="symbol_col")
    np.testing.assert_array_equal(aligned.data_indices, [2, 0])
    with pytest.raises(KeyError, match="available columns"):
        st.pp.align_genes(adata, vocab, gene_symbols="nope")


def test_duplicated_gene_names_are_refused():
    adata = _adata(["A", "B", "A"])
    with pytest.raises(ValueError, match="var_names_make_unique"):
        st.pp.align_genes(adata, GeneVocabulary.from_genes(["A", "B"]))


def test_case_folded_duplicates_are_refused_with_examples():
    adata = _adata(["Sept1", "SEPT1", "Mbp", "MBP", "Gfap"])
    with pytest.raises(ValueError, match=r"duplicate gene symbols after case-folding.*'Sept1', 'SEPT1'.*'Mbp', 'MBP'"):
        st.pp.align_genes(adata, GeneVocabulary.from_genes(["SEPT1", "MBP", "GFAP"]))
    # duplicates that no vocabulary gene points at do not matter
    aligned = st.pp.align_genes(adata, GeneVocabulary.from_genes(["GFAP"]))
    assert aligned.n_matched == 1


def test_no_overlap_is_a_clear_error():
    adata = _adata(["Gfap", "Mbp"])
    with pytest.raises(ValueError, match="No gene in common.*species"):
        st.pp.align_genes(adata, GeneVocabulary.from_genes(["XIST", "CD3E"]))


def test_bad_expression_is_refused_before_alignment():
    adata = _adata(["A", "B"])
    adata.X = adata.X.toarray()
    adata.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        st.pp.align_genes(adata, GeneVocabulary.from_genes(["A"]))
    adata.X[0, 0] = -2
    with pytest.raises(ValueError, match="negative"):
        st.pp.align_genes(adata, GeneVocabulary.from_genes(["A"]))
    with pytest.raises(TypeError, match="GeneVocabulary"):
        st.pp.align_genes(adata, ["A"])


def test_align_a_spatialdata_table_and_log1p_layer():
    table = counts_table(12)
    table.layers["counts"] = table.X.copy()
    table.X = np.log1p(table.X / table.X.sum(1, keepdims=True) * 1e4)
    sdata = st.io.from_arrays(table, np.random.default_rng(0).uniform(0, 50, (12, 2)), mpp=1.0)
    vocab = GeneVocabulary.from_genes(["gene3", "GENE0", "missing"])
    from_log = st.pp.align_genes(sdata, vocab)
    from_counts = st.pp.align_genes(sdata, vocab, layer="counts")
    assert from_log.input_kind == "log1p"
    assert from_counts.input_kind == "counts"
    np.testing.assert_allclose(from_log.X, from_counts.X, atol=1e-4)
    np.testing.assert_array_equal(from_log.mask, [True, True, False])
    pd.testing.assert_index_equal(from_log.obs_names, pd.Index(table.obs_names))
