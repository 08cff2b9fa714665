import numpy as np
import pytest
import torch

import storm_sc as st
from storm_sc.models import StormModel
from storm_sc.pp import align_genes
from storm_sc.training import (
    ContextDataset,
    ContextSampler,
    PreparedSlide,
    TrainingConfig,
    TrainingSlide,
    collate,
    union_vocabulary,
)
from storm_sc.training._slides import TRAIN, VAL, as_slides, prepare_slides, split


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"mask_fraction": 1.0}, "mask_fraction"),
        ({"image_dropout": 0.6, "expression_dropout": 0.5}, "image_dropout"),
        ({"devices": "two"}, "devices"),
        ({"checkpoint_dtype": "int8"}, "checkpoint_dtype"),
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
        # True is an int to Python, not a count
        ({"early_stopping_patience": True}, r"`early_stopping_patience` must be a positive integer or None \(got True"),
        ({"max_steps": True}, r"`max_steps` must be -1 or a positive integer \(got True"),
        ({"image_dropout": "x"}, r"`image_dropout` must be in \[0, 1\) \(got 'x'"),
        ({"stain_jitter": "x"}, r"`stain_jitter` must be a number >= 0 \(got 'x'"),
        ({"monitor": "val/accuracy"}, "monitor"),
    ],
)
def test_training_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**changes)
    with pytest.raises(ValueError, match="Unknown training option"):
        TrainingConfig().replace(epochs=3)
    assert TrainingConfig(val_groups=["P1"]).val_groups == ("P1",)


def test_as_slides_names_groups_and_errors(toy_pair):
    slides = as_slides(toy_pair)
    assert [s.name for s in slides] == ["a", "b"]
    assert [s.group for s in slides] == ["a", "b"]
    slides = as_slides([TrainingSlide(toy_pair["a"], group="P1"), toy_pair["b"]])
    assert [s.name for s in slides] == ["slide0", "slide1"]
    assert slides[0].group == "P1"
    with pytest.raises(ValueError, match="unique"):
        as_slides([TrainingSlide(toy_pair["a"], name="x"), TrainingSlide(toy_pair["b"], name="x")])
    with pytest.raises(TypeError, match="expected SpatialData"):
        as_slides([toy_pair["a"], 3])
    with pytest.raises(ValueError, match="No training slides"):
        as_slides([])


def test_union_vocabulary_joins_ensembl_only_tables(toy_pair):
    # her2st-like symbols only, DLPFC-like Ensembl ids only, Visium-like symbols + a gene_ids column.
    symbols = toy_pair["a"]["table"][:, :6].copy()
    ids = [f"ENSG{i:011d}" for i in range(6)]
    ensembl_only = toy_pair["b"]["table"][:, :6].copy()
    ensembl_only.var_names = ids
    both = toy_pair["b"]["table"][:, :6].copy()
    both.var["gene_ids"] = ids
    vocab = union_vocabulary(as_slides([symbols, ensembl_only, both]))
    assert vocab.symbols == tuple(symbols.var_names)
    assert vocab.ensembl_ids == tuple(ids)
    assert align_genes(ensembl_only, vocab).n_matched == 6


def test_union_vocabulary_keeps_the_ids_of_every_species(toy_pair):
    # A mouse slide (Gfap, ENSMUSG ids) first, then a human one (GFAP, ENSG ids): one entry per symbol holding both
    # ids, so that a human table named by Ensembl ids alone still aligns to every gene.
    mouse = toy_pair["a"]["table"][:, :6].copy()
    mouse.var_names = [g.capitalize() for g in mouse.var_names]
    mouse.var["gene_ids"] = [f"ENSMUSG{i:011d}" for i in range(6)]
    human = toy_pair["b"]["table"][:, :6].copy()
    human.var_names = [g.upper() for g in human.var_names]
    human_ids = [f"ENSG{i:011d}" for i in range(6)]
    human.var["gene_ids"] = human_ids
    vocab = union_vocabulary(as_slides([mouse, human]))
    assert len(vocab) == 6
    assert vocab.all_ensembl_ids[0] == ("ENSMUSG00000000000", "ENSG00000000000")
    ensembl_only = human.copy()
    ensembl_only.var_names = human_ids
    del ensembl_only.var["gene_ids"]
    assert align_genes(ensembl_only, vocab).n_matched == 6
    assert type(vocab).from_dict(vocab.to_dict()) == vocab


def test_union_vocabulary_spans_all_panels(toy_pair):
    a = toy_pair["a"]["table"][:, :20]
    b = toy_pair["b"]["table"][:, 10:].copy()
    b.var_names = [g.upper() for g in b.var_names]  # same genes in another case: one entry each
    vocab = union_vocabulary(as_slides([a, b]))
    assert len(vocab) == 30
    assert vocab.symbols[:3] == ("gene_0000", "gene_0001", "gene_0002")
    both = union_vocabulary(as_slides([a, b]), min_slides=2)
    assert both.symbols == tuple(f"gene_{i:04d}" for i in range(10, 20))
    top = union_vocabulary(as_slides([a, b]), max_genes=12)
    assert len(top) == 12
    assert set(both.symbols) < set(top.symbols)  # genes of both slides rank first, then the most detected
    with pytest.raises(ValueError, match="min_slides"):
        union_vocabulary(as_slides([a, b]), min_slides=0)


def _prepared(data, model=None, **kw):
    slides = as_slides(data)
    model = model or StormModel("storm-tiny", union_vocabulary(slides), seed=0)
    return model, prepare_slides(model, slides, cache_dir=None, num_workers=0, verbose=False)


def test_split_by_group_by_fraction_and_spatial_block(toy_pair, small_toy):
    model, prepared = _prepared([TrainingSlide(toy_pair["a"], group="P1"), TrainingSlide(toy_pair["b"], group="P2")])
    info = split(prepared, val_groups=["P2"], val_fraction=0.2, seed=0)
    assert info["strategy"] == "group"
    assert info["val_groups"] == ["P2"]
    assert (prepared[0].partition == TRAIN).all()
    assert (prepared[1].partition == VAL).all()
    info = split(prepared, val_groups=None, val_fraction=0.3, seed=0)
    assert len(info["val_groups"]) == 1
    with pytest.raises(ValueError, match="match no slide group"):
        split(prepared, val_groups=["P9"], val_fraction=0.2, seed=0)
    with pytest.raises(ValueError, match="every group"):
        split(prepared, val_groups=["P1", "P2"], val_fraction=0.2, seed=0)
    assert split(prepared, val_groups=None, val_fraction=0.0, seed=0)["strategy"] == "none"

    _, single = _prepared(small_toy, model)
    info = split(single, val_groups=None, val_fraction=0.25, seed=0)
    x = single[0].inputs.centers_um[:, 0]
    assert info["strategy"] == "spatial_block"
    assert x[single[0].partition == VAL].min() > x[single[0].partition == TRAIN].max()


def test_items_are_reproducible_per_seed_epoch_and_index(small_toy):
    model, prepared = _prepared(small_toy)
    split(prepared, val_groups=None, val_fraction=0.3, seed=0)
    cfg, opts = model.config, TrainingConfig(seed=5)
    train = ContextDataset(prepared, TRAIN, cfg, opts, train=True)
    val = ContextDataset(prepared, VAL, cfg, opts, train=False)
    assert len(train) + len(val) == 200
    size = 1 + cfg.niche_k + cfg.region_k
    for ds in (train, val):
        for i in range(0, len(ds), 9):
            item = ds[i]
            assert item["has_image"].shape == (size,)
            assert item["has_image"][0]
            assert item["has_expression"][0]
            assert item["niche_valid"].sum() + item["region_valid"].sum() > 0
    a, b = train[3], train[3]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = train[len(train) + 3]  # the same centre in the next epoch
    assert not all(np.array_equal(a[k], c[k]) for k in ("recon_mask", "stain_alpha"))
    assert not val[2]["drop_image"].any()
    assert np.allclose(val[2]["stain_alpha"], 1.0)


def test_collate_lays_out_centres_and_neighbours(small_toy):
    model, prepared = _prepared(small_toy)
    ds = ContextDataset(prepared, TRAIN, model.config, TrainingConfig(), train=True)
    batch = collate([ds[i] for i in range(5)])
    cfg = model.config
    size = 1 + cfg.niche_k + cfg.region_k
    assert batch.n_obs == 5 * size
    assert batch.centre.tolist() == [i * size for i in range(5)]
    assert batch.images.dtype == torch.uint8
    assert batch.images.shape[-1] == cfg.image_size
    valid_niche = batch.niche_idx[batch.niche_valid]
    assert ((valid_niche % size) >= 1).all()
    assert ((valid_niche % size) <= cfg.niche_k).all()
    assert (batch.niche_idx[~batch.niche_valid] == -1).all()
    assert (batch.recon_mask.reshape(5, size, -1)[:, 1:] == 0).all()  # only centres are masked
    losses = model.network.losses(batch)
    assert torch.isfinite(losses["loss"])


def test_dataset_neighbours_respect_the_partition(small_toy):
    model, prepared = _prepared(small_toy)
    split(prepared, val_groups=None, val_fraction=0.3, seed=0)
    ds = ContextDataset(prepared, VAL, model.config, TrainingConfig(), train=False)
    part = prepared[0].partition
    inputs = prepared[0].inputs
    for i in range(len(ds)):
        row = ds.index[i, 1]
        item = ds[i]
        dxy = np.concatenate([item["niche_dxy"][item["niche_valid"]], item["region_dxy"][item["region_valid"]]])
        members = inputs.centers_um[row] + dxy
        nearest = np.argmin(((inputs.centers_um[None] - members[:, None]) ** 2).sum(-1), axis=1)
        assert (part[nearest] == VAL).all()


def test_sampler_shards_processes_and_carries_the_epoch(monkeypatch):
    sampler = ContextSampler(10, shuffle=True, seed=0)
    keys = list(sampler)
    assert sorted(keys) == list(range(10))
    assert len(sampler) == 10
    sampler.set_epoch(2)
    epoch2 = list(sampler)
    assert sorted(epoch2) == list(range(20, 30))
    assert [k - 20 for k in epoch2] != keys
    shards = []
    for rank in (0, 1, 2):
        monkeypatch.setattr(ContextSampler, "_layout", staticmethod(lambda rank=rank: (rank, 3)))
        shards.append(list(sampler))
        assert len(sampler) == 4
    assert all(len(s) == 4 for s in shards)
    assert set().union(*map(set, shards)) == set(range(20, 30))  # every item, the first two repeated to pad
    ordered = ContextSampler(5, shuffle=False, seed=0)
    ordered.set_epoch(3)
    monkeypatch.setattr(ContextSampler, "_layout", staticmethod(lambda: (0, 1)))
    assert list(ordered) == [15, 16, 17, 18, 19]


def test_training_slide_matching_by_source_then_positions():
    from storm_sc.models._manifest import array_digest, training_slide_matching

    xy = np.arange(12.0).reshape(6, 2)
    manifest = {
        "datasets": [
            {"name": "C2", "source": {"loader": "her2st", "args": {"section": "C2"}}, "sha256": {"centers_um": "x"}},
            {"name": "other", "source": {"object": "SpatialData"}, "sha256": {"centers_um": array_digest(xy)}},
        ]
    }
    # The loader's own record wins even when the positions' last bits differ.
    assert training_slide_matching(manifest, xy + 1e-9, source={"loader": "her2st", "args": {"section": "C2"}}) == "C2"
    assert training_slide_matching(manifest, xy, source={"loader": "her2st", "args": {"section": "C3"}}) == "other"
    assert training_slide_matching(manifest, xy + 1e-9) is None


def test_spatial_block_warns_only_where_groups_would_help(toy_pair, small_toy, caplog):
    import logging

    model, two = _prepared([TrainingSlide(toy_pair["a"], group="P"), TrainingSlide(toy_pair["b"], group="P")])
    with caplog.at_level(logging.INFO, logger="storm_sc"):
        split(two, val_groups=None, val_fraction=0.2, seed=0)
        _, one = _prepared(small_toy, model)
        split(one, val_groups=None, val_fraction=0.2, seed=0)
    levels = [
        (r.levelname, "Give slides a `group`" in r.getMessage())
        for r in caplog.records
        if "spatial block" in r.getMessage()
    ]
    # Two slides of one patient: giving groups would help. One slide (adapting to it): nothing to act on.
    assert levels == [("WARNING", True), ("INFO", False)]


def test_the_held_out_loss_does_not_depend_on_the_random_state(small_toy):
    # It picks the best epoch: the neighbours each contrastive view keeps were drawn from torch's global state, and
    # the same weights on the same batches scored differently on every pass.
    import lightning as L
    from torch.utils.data import DataLoader

    from storm_sc.training import StormLightningModule

    model, prepared = _prepared(small_toy)
    split(prepared, val_groups=None, val_fraction=0.3, seed=0)  # one slide: a spatial block held out
    options = TrainingConfig(batch_size=16)
    val = ContextDataset(prepared, VAL, model.config, options, train=False)
    loader = DataLoader(val, batch_size=16, collate_fn=collate)
    module = StormLightningModule(model.network, options)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    scores = []
    for state in (1, 2):
        torch.manual_seed(state)
        scores.append(trainer.validate(module, loader, verbose=False)[0]["val/context_contrastive"])
    assert scores[0] == scores[1]


def test_dense_weights_decay_and_tables_tokens_norms_do_not():
    from storm_sc.training._module import weight_decay_groups

    network = StormModel("storm-tiny", [f"g{i}" for i in range(30)], seed=0).network
    names = {id(p): n for n, p in network.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in group} for group in weight_decay_groups(network))
    assert len(decay) + len(no_decay) == len(names)
    # a name filter ("pos", "query") once spared these dense layers
    assert {"context.niche_pos.mlp.0.weight", "prediction_head.gene_query.weight"} <= decay
    assert {"expression.gene_embedding.weight", "expression.pool.query", "logit_scale"} <= no_decay
    assert not [n for n in decay if n.endswith("bias") or "norm" in n]


def test_a_hold_out_much_larger_than_val_fraction_is_a_warning(toy_pair, caplog):
    _, prepared = _prepared([TrainingSlide(toy_pair["a"], group="P1"), TrainingSlide(toy_pair["b"], group="P2")])
    with caplog.at_level("WARNING", logger="storm_sc"):
        info = split(prepared, val_groups=None, val_fraction=0.2, seed=0)
    held = info["val_groups"]
    assert (
        f"Validation holds out slide group(s) {held}: 50% of the observations (150 of 300), not the 20%" in caplog.text
    )
    assert "val_fraction=0 to train on everything" in caplog.text
    # five equal groups: one of them is the 20% asked for
    caplog.clear()
    inputs = prepared[0].inputs
    five = [
        PreparedSlide(
            TrainingSlide(toy_pair["a"], name=f"s{i}", group=f"G{i}"), inputs, np.zeros(inputs.n_obs, np.int8)
        )
        for i in range(5)
    ]
    with caplog.at_level("WARNING", logger="storm_sc"):
        split(five, val_groups=None, val_fraction=0.2, seed=0)
    assert "Validation holds out" not in caplog.text


def test_the_same_object_twice_is_refused(toy_pair):
    a = toy_pair["a"]
    with pytest.raises(ValueError, match=r"holds the same object twice \(items 0 and 2\), reading the same table"):
        as_slides([a, toy_pair["b"], a])
    with pytest.raises(ValueError, match=r"same object twice \(items 'x' and 'y'\)"):
        as_slides({"x": a, "y": TrainingSlide(a, group="other")})
    # another table of the same object (Visium HD bin sizes) is another training slide
    two_tables = st.datasets.toy(n_obs=60, n_genes=10, n_domains=2, seed=3)
    two_tables.tables["coarse"] = two_tables["table"].copy()
    slides = as_slides([TrainingSlide(two_tables, name="fine", table_key="table", group="p"),
                        TrainingSlide(two_tables, name="coarse", table_key="coarse", group="p")])  # fmt: skip
    assert [s.name for s in slides] == ["fine", "coarse"]
