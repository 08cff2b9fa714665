"""The gene-program path: which genes, their standardisation, and that the network reads them without leaks."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import sparse

import storm_sc as st
from storm_sc.models import StormNetwork, get_config
from storm_sc.models._programs import Z_CLIP, corpus_loadings, program_arrays, slide_programs


def _slide(rng, n=80, g=30):
    x = rng.poisson(rng.uniform(0.1, 3.0, g), (n, g)).astype(np.float32)
    x[:, 3] = 1.0  # constant: never a program gene
    return sparse.csr_matrix(np.log1p(x))


def test_programs_are_the_most_variable_genes_standardised_like_scanpy_scale(rng):
    x = _slide(rng)
    p = slide_programs(x, 10)
    dense = x.toarray()
    variance = dense.var(axis=0)
    assert p.columns.tolist() == np.argsort(-variance, kind="stable")[:10].tolist()
    assert 3 not in slide_programs(x, 30).columns  # constant genes are never chosen
    ids, z, ok = program_arrays(x, np.arange(100, 130), p, np.arange(80), 12)
    assert ok[:, :10].all() and not ok[:, 10:].any()  # wider than the programs: padding
    assert ids[0, :10].tolist() == (100 + p.columns).tolist()
    expected = (dense[:, p.columns] - dense[:, p.columns].mean(0)) / dense[:, p.columns].std(0)
    np.testing.assert_allclose(z[:, :10], np.clip(expected, -Z_CLIP, Z_CLIP), rtol=1e-5, atol=1e-5)
    # a padding row (-1) is empty; rows are independent of which others are asked for
    ids2, z2, ok2 = program_arrays(x, np.arange(100, 130), p, np.array([-1, 5]), 12)
    assert not ok2[0].any()
    np.testing.assert_allclose(z2[1], z[5])


def test_programs_are_clipped_and_empty_slides_give_none(rng):
    x = np.zeros((200, 2), dtype=np.float32)
    x[0, 0] = 50.0  # one extreme spot: its z would be ~14
    x[:, 1] = rng.normal(size=200) ** 2
    x = sparse.csr_matrix(x)
    _, z, _ = program_arrays(x, np.arange(2), slide_programs(x, 2), np.arange(200), 2)
    assert z.max() == pytest.approx(Z_CLIP)
    assert slide_programs(sparse.csr_matrix((0, 5), dtype=np.float32), 3).columns.size == 0


def test_inputs_carry_program_arrays_only_for_models_with_the_path(toy_sdata, toy_vocab):
    with_path = st.models.StormModel("storm-tiny", toy_vocab, seed=0)
    without = st.models.StormModel(get_config("storm-tiny", program_genes=0), toy_vocab, seed=0)
    inputs = with_path.prepare(toy_sdata, verbose=False)
    from storm_sc.models._inputs import observation_arrays

    arrays = observation_arrays(inputs, np.array([0, 1, -1]), config=with_path.config)
    assert arrays["program_valid"].shape == (3, with_path.config.program_genes)
    assert arrays["program_valid"][:2, :10].all() and not arrays["program_valid"][2].any()
    image_only = observation_arrays(inputs, np.array([0]), config=with_path.config, use_expression=False)
    assert not image_only["program_valid"].any()
    assert "program_ids" not in observation_arrays(inputs, np.array([0]), config=without.config)


def test_program_path_changes_the_embedding_and_hidden_tokens_do_not_leak_through_it(batch_factory):
    cfg = get_config("storm-tiny", program_genes=16)
    torch.manual_seed(0)
    net = StormNetwork(cfg, 50).eval()
    batch = batch_factory(cfg, 50, b=4)
    with torch.no_grad():
        base = net.embed_batch(batch)["joint"]
        shifted = batch_factory(cfg, 50, b=4)
        shifted.program_values = batch.program_values + 1.0
        assert not torch.allclose(base, net.embed_batch(shifted)["joint"])

        # A gene hidden from the centre's tokens (and reconstructed) must be hidden from its program inputs too:
        # make a hidden token's gene a program gene, then change only its program value.
        c = batch.centre
        k = int(c[0])
        if batch.drop_expression is not None:
            batch.drop_expression[k] = False
        slot = int(torch.nonzero(batch.recon_mask[k] & batch.gene_valid[k])[0])
        ids = batch.program_ids.clone()
        ids[k, 0] = batch.gene_ids[k, slot]
        hidden_genes = set(batch.gene_ids[k][batch.recon_mask[k]].tolist())
        ids[k, 1] = next(g for g in range(50) if g not in hidden_genes)
        valid = batch.program_valid.clone()
        valid[k, :2] = True
        batch.program_ids, batch.program_valid = ids, valid
        values = batch.program_values.clone()
        values[k, 0] += 5.0
        reference = _reconstruction_input(net, batch)
        torch.testing.assert_close(reference, _reconstruction_input(net, replace(batch, program_values=values)))
        # a visible program input does reach the same view
        values = batch.program_values.clone()
        values[k, 1] += 5.0
        assert not torch.allclose(reference, _reconstruction_input(net, replace(batch, program_values=values)))


def _reconstruction_input(net, batch):
    """The joint embedding the masked-expression head reconstructs hidden tokens from."""
    captured = {}
    handle = net.reconstruction_head.register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    torch.manual_seed(1)
    net.losses(batch, augment=False)
    handle.remove()
    return captured["x"]


def test_corpus_loadings_find_the_shared_programme_and_ignore_unused_genes(rng):
    # Two slides with different panels share one programme on vocabulary genes 0-9 (rising) and 10-19 (falling).
    slides = []
    for n, cols in ((300, np.arange(0, 30)), (150, np.arange(0, 20))):
        factor = rng.normal(size=n)
        x = rng.normal(size=(n, len(cols))) * 0.5 + 2.0
        x[:, :10] += factor[:, None]
        x[:, 10:20] -= factor[:, None]
        slides.append((sparse.csr_matrix(np.clip(x, 0, None).astype(np.float32)), cols + 5))
    loadings = corpus_loadings(slides, n_vocab=40, n_genes=30, dim=4, seed=0)
    assert loadings.shape == (40, 4) and loadings.dtype == np.float32
    assert not loadings[:5].any() and not loadings[35:].any()  # never measured: no say in the scores
    first = loadings[:, 0]
    assert (np.sign(first[5:15]) == -np.sign(first[15:25])).all()  # the programme's two sides
    assert np.abs(first[5:25]).min() > 3 * np.abs(first[25:35]).max()
    # unit mean-square scores over the corpus (each slide weighing the same), reproducible for a seed
    scores = [program_arrays(x, cols, slide_programs(x, 30), np.arange(x.shape[0]), 30) for x, cols in slides]
    ms = np.mean([np.mean((np.where(ok, z, 0) * loadings[ids, 0]).sum(1) ** 2) for ids, z, ok in scores])
    assert ms == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_array_equal(loadings, corpus_loadings(slides, n_vocab=40, n_genes=30, dim=4, seed=0))
    assert not corpus_loadings([], n_vocab=40, n_genes=30, dim=4).any()


def test_pretraining_sets_the_program_loadings_from_its_corpus(toy_sdata, toy_vocab):
    model = st.models.StormModel(get_config("storm-tiny", program_genes=32), toy_vocab, seed=0)
    before = model.network.expression.program_loadings.clone()
    st.training.fit(model, [toy_sdata], max_steps=1, max_epochs=1, batch_size=32, verbose=False)
    after = model.network.expression.program_loadings
    assert not torch.allclose(before, after)
    assert int((after.abs().sum(1) > 0).sum()) <= 32  # only the slide's program genes load


def test_old_configs_without_programs_still_build_and_save(tmp_path, toy_vocab, toy_sdata):
    model = st.models.StormModel(get_config("storm-tiny", program_genes=0), toy_vocab, seed=0)
    assert model.network.expression.program_proj is None
    path = model.save(tmp_path / "m.safetensors")
    loaded = st.models.StormModel.load(path)
    assert loaded.config.program_genes == 0
    inputs = loaded.prepare(toy_sdata, verbose=False)
    np.testing.assert_allclose(
        loaded.embed(inputs, device="cpu", verbose=False), model.embed(inputs, device="cpu", verbose=False), atol=1e-5
    )
