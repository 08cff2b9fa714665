import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

import storm_sc as st


def _counts(n=300, g=60, seed=0):
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, n)
    rate = rng.gamma(2.0, 2.0, size=(3, g))
    x = rng.poisson(rate[group] * rng.uniform(0.5, 2.0, (n, 1)))
    adata = ad.AnnData(sparse.csr_matrix(x.astype(np.float32)))
    adata.var_names = [f"g{i}" for i in range(g)]
    adata.obs["group"] = group
    return adata


def test_one_slide_is_scanpys_scaled_pca():
    adata = _counts()
    scores = st.pp.expression_components(adata, n_components=5, n_genes=40)
    ref = adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    x = ref.X.toarray().astype(np.float64)
    top = np.argsort(-x.var(axis=0), kind="stable")[:40]
    z = np.clip((x[:, top] - x[:, top].mean(0)) / x[:, top].std(0), -10, 10)
    u, s, _ = np.linalg.svd(z - z.mean(0), full_matrices=False)
    expected = u[:, :5] * s[:5]
    assert scores.shape == (300, 5) and scores.dtype == np.float32
    for j in range(5):  # equal up to the sign of each axis
        c = np.corrcoef(scores[:, j], expected[:, j])[0, 1]
        assert abs(c) > 0.9999
        np.testing.assert_allclose(np.abs(scores[:, j]), np.abs(expected[:, j]), rtol=1e-3, atol=1e-3)


def test_components_are_shared_and_depth_free_across_slides():
    a = _counts(seed=1)
    deeper = a.copy()
    deeper.X = a.X * 3  # the same tissue sequenced three times deeper
    sa, sb = st.pp.expression_components([a, deeper], n_components=4)
    np.testing.assert_allclose(sa, sb, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(st.pp.expression_components([a, deeper], n_components=4)[0], sa)  # deterministic


def test_only_genes_every_slide_measures_are_used():
    a = _counts(seed=2)
    b = _counts(seed=3)[:, :30].copy()  # the second slide measures half the panel
    sa, sb = st.pp.expression_components([a, b], n_components=3)
    assert sb.shape == (b.n_obs, 3)
    # Shuffling the first slide's other genes within each row keeps its library sizes and must change nothing.
    x = a.X.toarray()
    rng = np.random.default_rng(0)
    x[:, 30:] = np.take_along_axis(x[:, 30:], rng.permuted(np.tile(np.arange(30), (a.n_obs, 1)), axis=1), axis=1)
    shuffled = ad.AnnData(sparse.csr_matrix(x), var=a.var)
    np.testing.assert_allclose(st.pp.expression_components([shuffled, b], n_components=3)[0], sa, rtol=1e-5, atol=1e-5)


def test_genes_are_matched_by_ensembl_id_or_symbol_across_slides():
    # DLPFC names genes by Ensembl id, the Visium FFPE sections by symbol (ids in var["gene_ids"]), another in lower
    # case: the same genes, as storm_embed matches them; compared by name they shared none and storm_domains dropped
    # the components with a warning.
    a, b = _counts(seed=2), _counts(seed=3)
    ids = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    expected = st.pp.expression_components([a, b], n_components=3)
    by_id = a.copy()
    by_id.var_names = ids
    by_symbol = b.copy()
    by_symbol.var["gene_ids"] = [f"{g}.7" for g in ids]  # versioned ids
    by_symbol.var_names = [f"SYM{i}" for i in range(b.n_vars)]
    for pair in ([by_id, by_symbol], [a, b.copy()]):
        if pair[1].var_names[0] == "g0":
            pair[1].var_names = [n.upper() for n in pair[1].var_names]  # symbols in another case
        got = st.pp.expression_components(pair, n_components=3)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_genes_shared_by_three_slides_do_not_depend_on_their_order():
    # Ensembl ids only, symbols only, and both: the third ties the first two together wherever it comes.
    from storm_sc.pp._alignment import shared_columns

    ids = [f"ENSG{i:011d}" for i in range(4)]
    by_id = ad.AnnData(np.zeros((1, 4)), var=pd.DataFrame(index=ids))
    by_symbol = ad.AnnData(np.zeros((1, 4)), var=pd.DataFrame(index=["G3", "G2", "G1", "G0"]))
    both = ad.AnnData(np.zeros((1, 4)), var=pd.DataFrame({"gene_ids": ids}, index=["g0", "g1", "g2", "g3"]))
    for order in ([by_id, by_symbol, both], [both, by_id, by_symbol], [by_symbol, both, by_id]):
        columns = shared_columns(order)
        assert all(len(c) == 4 for c in columns)
        names = [[str(t.var_names[i]).upper() for i in c] for t, c in zip(order, columns, strict=True)]
        genes = [[n if n.startswith("ENSG") else f"ENSG{int(n[1:]):011d}" for n in row] for row in names]
        assert genes[0] == genes[1] == genes[2]


def test_a_layer_and_log1p_input_give_the_same_components():
    adata = _counts(seed=4)
    logged = adata.copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    logged.layers["counts"] = adata.X.copy()
    from_layer = st.pp.expression_components(logged, layer="counts", n_components=3)
    from_x = st.pp.expression_components(logged, n_components=3)
    np.testing.assert_allclose(from_layer, from_x, rtol=1e-3, atol=1e-3)


def test_a_repeated_gene_name_is_read_once():
    adata = _counts(seed=5)
    names = list(adata.var_names)
    names[-1] = names[0]  # the last column repeats the first name
    dup = adata.copy()
    dup.var_names = names
    with_dup = st.pp.expression_components(dup, n_components=3)
    assert with_dup.shape == (adata.n_obs, 3) and np.isfinite(with_dup).all()
    # ... even on a single slide: its second column is left out
    from storm_sc.pp._alignment import shared_columns

    (columns,) = shared_columns([dup])
    assert columns.tolist() == list(range(dup.n_vars - 1))


def test_bad_input():
    adata = _counts()
    with pytest.raises(ValueError, match="n_components"):
        st.pp.expression_components(adata, n_components=0)
    with pytest.raises(ValueError, match="n_genes"):
        st.pp.expression_components(adata, n_genes=1)
    with pytest.raises(KeyError, match="layer 'raw' not found"):
        st.pp.expression_components(adata, layer="raw")
    other = adata.copy()
    other.var_names = [f"h{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match="share 0 gene"):
        st.pp.expression_components([adata, other])
    with pytest.raises(ValueError, match="empty list"):
        st.pp.expression_components([])
