from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

import storm_sc as st


@pytest.fixture(scope="module")
def counts() -> np.ndarray:
    rng = np.random.default_rng(0)
    # overdispersed counts with varying depth, like spots; a few empty genes and one empty observation
    depth = rng.uniform(0.3, 3.0, size=(300, 1))
    x = rng.negative_binomial(2, 0.5, size=(300, 120)) * np.ceil(depth).astype(int)
    x[:, :3] = 0
    x[7] = 0
    return x.astype(np.float32)


def _scanpy_log1p(x: np.ndarray, target_sum: float) -> np.ndarray:
    a = ad.AnnData(x.copy())
    sc.pp.normalize_total(a, target_sum=target_sum)
    sc.pp.log1p(a)
    return np.asarray(a.X)


def test_detects_counts(counts):
    assert st.pp.detect_counts(counts) == "counts"
    assert st.pp.detect_counts(counts.astype(np.int64)) == "counts"
    assert st.pp.detect_counts(sparse.csr_matrix(counts)) == "counts"
    assert st.pp.detect_counts(ad.AnnData(sparse.csc_matrix(counts))) == "counts"


@pytest.mark.parametrize("target_sum", [1e4, 1e6, None])
def test_detects_log1p(counts, target_sum):
    logged = _scanpy_log1p(counts, target_sum)
    assert st.pp.detect_counts(logged) == "log1p"
    assert st.pp.detect_counts(sparse.csr_matrix(logged)) == "log1p"


def test_detects_log1p_of_size_factor_normalisation(counts):
    size_factors = np.random.default_rng(1).uniform(0.2, 5.0, size=(counts.shape[0], 1))
    assert st.pp.detect_counts(np.log1p(counts / size_factors).astype(np.float32)) == "log1p"
    assert st.pp.detect_counts(np.log1p(counts).astype(np.float32)) == "log1p"


def test_detects_normalized(counts):
    lib = np.maximum(counts.sum(1, keepdims=True), 1)
    assert st.pp.detect_counts(counts / lib * 1e6) == "normalized"  # CPM
    assert st.pp.detect_counts(counts / lib) == "normalized"  # fractions, all <= 1
    assert st.pp.detect_counts(sparse.csr_matrix(counts / lib * 1e4)) == "normalized"


@pytest.mark.parametrize("store", ["float16", "2 decimals"])
def test_log1p_stored_with_little_precision_is_still_log1p(counts, store):
    # float16 (3 significant digits) or 2 decimals put expm1 of the values ~1% off integers: read as linear values
    # before, the expression given to the model was compressed like a log taken twice.
    logged = _scanpy_log1p(counts, 1e4)
    stored = logged.astype(np.float16) if store == "float16" else np.round(logged, 2)
    assert st.pp.detect_counts(stored) == "log1p"
    assert st.pp.detect_counts(sparse.csr_matrix(stored.astype(np.float32))) == "log1p"
    np.testing.assert_allclose(st.pp.normalize_expression(stored), logged, atol=0.02)
    lib = np.maximum(counts.sum(1, keepdims=True), 1)
    assert st.pp.detect_counts((counts / lib).astype(np.float16)) == "normalized"
    # linear values that are exactly scaled counts, or sit on a decimal or float16 grid, stay linear
    size_factors = np.random.default_rng(2).uniform(0.5, 2.0, size=(counts.shape[0], 1))
    for linear in (counts / 10, counts * 0.2, counts / 4, np.round(counts / size_factors, 2)):
        assert st.pp.detect_counts(linear) == "normalized"


@pytest.mark.parametrize("base", [2, 10])
def test_log1p_in_another_base_is_refused_not_misread(counts, base):
    lib = np.maximum(counts.sum(1, keepdims=True), 1)
    logged = (np.log1p(counts / lib * 1e4) / np.log(base)).astype(np.float32)
    with pytest.raises(ValueError, match=rf"log{base}\(1 \+ x\).*np.log1p\({base} \*\* X - 1\)"):
        st.pp.detect_counts(sparse.csr_matrix(logged))
    with pytest.raises(ValueError, match=f"log{base}"):
        st.pp.normalize_expression(logged)
    # converted as the message says, it is read as log1p
    assert st.pp.detect_counts(np.log1p(base ** logged.astype(np.float64) - 1)) == "log1p"


def test_detect_uses_the_layer(counts):
    adata = ad.AnnData(_scanpy_log1p(counts, 1e4), layers={"counts": counts})
    assert st.pp.detect_counts(adata) == "log1p"
    assert st.pp.detect_counts(adata, layer="counts") == "counts"
    with pytest.raises(KeyError, match="available layers"):
        st.pp.detect_counts(adata, layer="raw")


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-1.0, "negative")],
)
@pytest.mark.parametrize("as_sparse", [False, True])
def test_bad_values_are_refused(counts, value, message, as_sparse):
    x = counts.copy()
    x[3, 10] = value
    x = sparse.csr_matrix(x) if as_sparse else x
    with pytest.raises(ValueError, match=message):
        st.pp.detect_counts(x)
    with pytest.raises(ValueError, match=message):
        st.pp.normalize_expression(x)


def test_scaled_data_is_refused(counts):
    a = ad.AnnData(_scanpy_log1p(counts, 1e4))
    sc.pp.scale(a)
    with pytest.raises(ValueError, match=r"sc\.pp\.scale"):
        st.pp.detect_counts(a)


def test_normalize_counts_matches_scanpy(counts):
    out = st.pp.normalize_expression(counts)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _scanpy_log1p(counts, 1e4), rtol=1e-5, atol=1e-5)
    assert (out[7] == 0).all()  # an empty observation stays empty


def test_every_input_scale_ends_on_the_same_scale(counts):
    expected = st.pp.normalize_expression(counts)
    lib = np.maximum(counts.sum(1, keepdims=True), 1)
    for x in (_scanpy_log1p(counts, 1e6), _scanpy_log1p(counts, 1e4), counts / lib * 1e6, counts / lib):
        np.testing.assert_allclose(st.pp.normalize_expression(x), expected, rtol=1e-4, atol=1e-4)


def test_sparse_chunked_and_dense_agree(counts):
    dense = st.pp.normalize_expression(counts)
    out = st.pp.normalize_expression(sparse.csc_matrix(counts), chunk_size=17)
    assert sparse.isspmatrix_csr(out)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.toarray(), dense, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.pp.normalize_expression(counts, chunk_size=1), dense, rtol=1e-6)
    logged = sparse.csr_matrix(_scanpy_log1p(counts, 1e4))
    np.testing.assert_allclose(st.pp.normalize_expression(logged, chunk_size=50).toarray(), dense, atol=1e-4)


def test_user_data_is_never_modified(counts):
    x = sparse.csr_matrix(counts)
    adata = ad.AnnData(x.copy(), layers={"counts": x.copy()})
    before = adata.X.toarray().copy()
    out = st.pp.normalize_expression(adata, layer="counts")
    out.data[:] = -1  # the result shares no memory with the input
    np.testing.assert_array_equal(adata.X.toarray(), before)
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), before)


def test_explicit_kind_and_bad_options(counts):
    logged = _scanpy_log1p(counts, 1e4)
    np.testing.assert_allclose(
        st.pp.normalize_expression(logged, kind="log1p"), st.pp.normalize_expression(counts), atol=1e-4
    )
    with pytest.raises(ValueError, match="`kind` must be one of"):
        st.pp.normalize_expression(counts, kind="raw")
    with pytest.raises(ValueError, match="target_sum"):
        st.pp.normalize_expression(counts, target_sum=0)
    with pytest.raises(ValueError, match="layer"):
        st.pp.normalize_expression(counts, layer="counts")
