"""Properties of the adapters and of gene alignment over generated inputs (hypothesis)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as hs

import storm_sc as st
from storm_sc.pp import GeneVocabulary
from storm_sc.pp._expression import normalized
from storm_sc.pp._vocabulary import symbol_key
from tests.pp._synthetic import coordinate_image, image_sdata
from tests.reliability._compare import differences, snapshot

# Each example builds real AnnData / SpatialData objects: few examples keep the folder fast, shrinking does the rest.
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

mpps = hs.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@hs.composite
def positions(draw, *, n_max: int = 30, low: float = -1e5, high: float = 1e5) -> np.ndarray:
    n = draw(hs.integers(1, n_max))
    coords = hs.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
    return np.asarray(draw(hs.lists(hs.tuples(coords, coords), min_size=n, max_size=n)), dtype=np.float64)


# --- adapters: positions and physical scale ---------------------------------------------------------------------


@FEW
@given(xy=positions(), mpp=mpps)
def test_positions_only_anndata_scales_by_mpp(xy, mpp):
    adata = ad.AnnData(np.ones((len(xy), 2), dtype=np.float32), obsm={"spatial": xy.copy()})
    before = snapshot(adata)
    si = st.io.resolve(adata, mpp=mpp)
    np.testing.assert_allclose(si.centers_um, xy * mpp, rtol=1e-12, atol=0)
    assert si.centers_px is None and not si.has_image
    assert differences(before, adata) == []


@FEW
@given(
    data=hs.data(),
    size=hs.tuples(hs.integers(40, 120), hs.integers(40, 120)),
    mpp=hs.floats(min_value=0.05, max_value=20.0),
)
def test_image_placed_in_microns_gives_back_its_pixels(data, size, mpp):
    """Image placed by Scale(mpp) in a micron coordinate system, circles stored in microns: resolve with ``mpp=``
    inverts the image's transformation, so ``centers_px`` are the pixels the spots were drawn at."""
    height, width = size
    px = data.draw(positions(n_max=12, low=1.0, high=float(min(height, width) - 1)))
    sdata = image_sdata(coordinate_image(height, width), px, mpp=mpp)
    si = st.io.resolve(sdata, mpp=mpp)
    np.testing.assert_allclose(si.centers_px, px, rtol=1e-9, atol=1e-9 * max(height, width))
    np.testing.assert_allclose(si.centers_um, si.centers_px * mpp, rtol=1e-9, atol=1e-9)
    assert si.mpp == pytest.approx(mpp, rel=1e-12)


@FEW
@given(data=hs.data(), mpp=hs.floats(min_value=0.05, max_value=20.0), factor=hs.floats(min_value=0.6, max_value=1.6))
def test_recorded_scale_and_an_agreeing_user_mpp(data, mpp, factor):
    """A slide built by from_arrays records its mpp; an ``mpp=`` within 2x of it overrides it, linearly."""
    px = data.draw(positions(n_max=12, low=0.0, high=63.0))
    table = ad.AnnData(np.ones((len(px), 3), dtype=np.float32))
    table.obs_names = [f"o{i}" for i in range(len(px))]
    sdata = st.io.from_arrays(table, px, np.zeros((64, 64, 3), np.uint8), mpp=mpp, spot_diameter_um=10 * mpp)
    recorded = st.io.resolve(sdata)
    np.testing.assert_allclose(recorded.centers_px, px, atol=1e-9)
    np.testing.assert_allclose(recorded.centers_um, px * mpp, rtol=1e-9, atol=1e-9)
    given_mpp = st.io.resolve(sdata, mpp=mpp * factor)
    np.testing.assert_allclose(given_mpp.centers_um, px * mpp * factor, rtol=1e-9, atol=1e-9)


@FEW
@given(xy=positions(n_max=15, low=0.0, high=2000.0), scalef=hs.floats(0.01, 1.0), mpp=hs.floats(0.1, 50.0))
def test_scanpy_layout_anndata_scales_through_the_image(xy, scalef, mpp):
    """Scanpy's Visium layout: positions in full-resolution pixels, the stored image downscaled by ``scalef``."""
    side = int(np.ceil(2000 * scalef)) + 2
    adata = ad.AnnData(np.ones((len(xy), 2), dtype=np.float32), obsm={"spatial": xy.copy()})
    adata.uns["spatial"] = {
        "lib": {
            "images": {"hires": np.eye(side, dtype=np.uint8)[..., None].repeat(3, 2)},
            "scalefactors": {"tissue_hires_scalef": scalef},
        }
    }
    si = st.io.resolve(adata, mpp=mpp)
    np.testing.assert_allclose(si.centers_px, xy * scalef, rtol=1e-12)
    np.testing.assert_allclose(si.centers_um, si.centers_px * mpp, rtol=1e-12)


# --- genes: vocabulary and alignment ----------------------------------------------------------------------------

symbols = hs.from_regex(r"\A[A-Za-z][A-Za-z0-9]{1,7}\Z")


@hs.composite
def vocabularies(draw, *, with_ids: bool = False) -> GeneVocabulary:
    genes = draw(hs.lists(symbols, min_size=1, max_size=25, unique_by=symbol_key))
    ids = None
    if with_ids:
        numbers = draw(hs.lists(hs.integers(1, 10**9), min_size=len(genes), max_size=len(genes), unique=True))
        known = draw(hs.lists(hs.booleans(), min_size=len(genes), max_size=len(genes)))
        ids = [f"ENSG{n:011d}" if k else None for n, k in zip(numbers, known, strict=True)]
    return GeneVocabulary.from_genes(genes, ensembl_ids=ids)


def recase(name: str, how: int) -> str:
    return (name, name.upper(), name.lower(), name.swapcase())[how]


@hs.composite
def panels(draw, vocab: GeneVocabulary) -> tuple[list[str], list[int]]:
    """Data gene names: a subset of the vocabulary in any case and order, plus genes the model does not know.

    Returns the names and, per name, the vocabulary position it must map to (-1 for unknown genes).
    """
    n = len(vocab)
    chosen = draw(hs.lists(hs.integers(0, n - 1), unique=True, max_size=n))
    names = [recase(vocab.symbols[v], draw(hs.integers(0, 3))) for v in chosen]
    n_unknown = draw(hs.integers(0 if chosen else 1, 6))
    names += [f"unknown_{i}" for i in range(n_unknown)]  # '_' never appears in the vocabulary's symbols
    target = chosen + [-1] * n_unknown
    order = draw(hs.permutations(range(len(names))))
    return [names[i] for i in order], [target[i] for i in order]


def counts(n_obs: int, n_vars: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).poisson(2.0, size=(n_obs, n_vars)).astype(np.float32)


@SOME
@given(data=hs.data(), vocab=vocabularies(), seed=hs.integers(0, 2**16))
def test_alignment_is_a_consistent_mapping(data, vocab, seed):
    names, target = data.draw(panels(vocab))
    assume(any(t >= 0 for t in target))
    adata = ad.AnnData(counts(5, len(names), seed))
    adata.var_names = names
    before = snapshot(adata)
    aligned = st.pp.align_genes(adata, vocab)

    expected = sorted(t for t in target if t >= 0)
    # every kept gene maps to exactly one model gene, in vocabulary order
    assert aligned.vocab_indices.tolist() == expected
    assert len(set(aligned.data_indices.tolist())) == aligned.n_matched
    for v, c in zip(aligned.vocab_indices, aligned.data_indices, strict=True):
        assert target[c] == v
        assert symbol_key(names[c]) == symbol_key(vocab.symbols[v])
    # vocabulary genes not measured are reported, not invented
    assert aligned.mask.tolist() == [v in expected for v in range(len(vocab))]
    # values: library size over all the data's genes, then the matched columns
    full = normalized(adata.X, "counts")
    np.testing.assert_allclose(np.asarray(aligned.X), full[:, aligned.data_indices], rtol=1e-6)
    assert differences(before, adata) == []


@SOME
@given(data=hs.data(), vocab=vocabularies(), seed=hs.integers(0, 2**16))
def test_alignment_does_not_depend_on_the_data_column_order_and_is_idempotent(data, vocab, seed):
    names, target = data.draw(panels(vocab))
    assume(any(t >= 0 for t in target))
    x = counts(4, len(names), seed)
    adata = ad.AnnData(x)
    adata.var_names = names
    order = data.draw(hs.permutations(range(len(names))))
    shuffled = ad.AnnData(x[:, order])
    shuffled.var_names = [names[i] for i in order]
    a, b = st.pp.align_genes(adata, vocab), st.pp.align_genes(shuffled, vocab)
    assert a.vocab_indices.tolist() == b.vocab_indices.tolist()
    np.testing.assert_allclose(np.asarray(a.X), np.asarray(b.X), rtol=1e-6)
    # aligning the aligned genes again is the identity mapping
    again = ad.AnnData(np.asarray(a.X))
    again.var_names = [vocab.symbols[v] for v in a.vocab_indices]
    twice = st.pp.align_genes(again, vocab, kind="log1p")
    assert twice.vocab_indices.tolist() == a.vocab_indices.tolist()
    assert twice.data_indices.tolist() == list(range(a.n_matched))


@SOME
@given(data=hs.data(), vocab=vocabularies(with_ids=True), seed=hs.integers(0, 2**16))
def test_ensembl_ids_with_versions_map_like_symbols(data, vocab, seed):
    """var_names are versioned Ensembl ids (symbols in a column, any case): ids match first, then symbols."""
    names, target = data.draw(panels(vocab))
    assume(any(t >= 0 for t in target))
    ids = []
    for v in target:
        known = v >= 0 and vocab.ensembl_ids[v] is not None
        ids.append(f"{vocab.ensembl_ids[v]}.{data.draw(hs.integers(1, 30))}" if known else f"ENSG9{len(ids):010d}")
    adata = ad.AnnData(counts(3, len(names), seed))
    adata.var_names = ids
    adata.var["gene_symbols"] = names
    aligned = st.pp.align_genes(adata, vocab)
    assert aligned.vocab_indices.tolist() == sorted(t for t in target if t >= 0)
    for v, c in zip(aligned.vocab_indices, aligned.data_indices, strict=True):
        assert target[c] == v


@FEW
@given(data=hs.data(), vocab=vocabularies(), exact=hs.booleans())
def test_duplicated_genes_are_refused_without_touching_the_data(data, vocab, exact):
    names, target = data.draw(panels(vocab))
    known = [i for i, t in enumerate(target) if t >= 0]
    assume(known)
    i = data.draw(hs.sampled_from(known))
    twin = names[i] if exact else recase(names[i], 3 if names[i].swapcase() != names[i] else 1)
    assume(exact or twin != names[i])
    adata = ad.AnnData(counts(3, len(names) + 1, 0))
    adata.var_names = [*names, twin]
    before = snapshot(adata)
    match = r"duplicated gene names" if exact else r"duplicate gene symbols after case-folding"
    with pytest.raises(ValueError, match=match):
        st.pp.align_genes(adata, vocab)
    assert differences(before, adata) == []


@SOME
@given(vocab=hs.one_of(vocabularies(), vocabularies(with_ids=True)), how=hs.integers(0, 3))
def test_vocabulary_round_trips_and_indexes_any_case(vocab, how):
    stored = json.loads(json.dumps(vocab.to_dict()))
    back = GeneVocabulary.from_dict(stored)
    assert back == vocab and hash(back) == hash(vocab)
    assert back.symbols == vocab.symbols and back.ensembl_ids == vocab.ensembl_ids
    positions = list(range(len(vocab)))
    assert vocab.index([recase(s, how) for s in vocab.symbols]).tolist() == positions
    assert all(recase(s, how) in vocab for s in vocab.symbols)
    if vocab.ensembl_ids is not None:
        for pos, gene_id in enumerate(vocab.ensembl_ids):
            if gene_id is not None:
                assert vocab.index(f"{gene_id.lower()}.7") == pos


@FEW
@given(vocab=vocabularies(), how=hs.integers(1, 3))
def test_vocabulary_refuses_symbols_equal_up_to_case(vocab, how):
    twin = recase(vocab.symbols[0], how)
    assume(twin != vocab.symbols[0])
    with pytest.raises(ValueError, match="must be unique"):
        GeneVocabulary.from_genes([*vocab.symbols, twin])
