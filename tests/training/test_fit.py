import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import storm_sc as st
from storm_sc.models import StormModel
from storm_sc.training import TrainingSlide, fit, pretrain

LOSSES = ("loss", "contrastive", "context_contrastive", "masked_expression", "predicted_expression")


def _ari(model, sdata, n_domains):
    emb = model.embed(sdata, verbose=False)
    labels = KMeans(n_domains, n_init=10, random_state=0).fit_predict(emb)
    return adjusted_rand_score(sdata["table"].obs["true_domain"].cat.codes, labels)


@pytest.fixture(scope="module")
def domains_run():
    sdata = st.datasets.toy(n_obs=400, n_genes=60, n_domains=4, seed=0)
    model = pretrain(
        sdata, model="storm-tiny", max_epochs=3, batch_size=32, lr=3e-3, warmup_steps=5, seed=0, verbose=False
    )
    return sdata, model


def test_training_lowers_the_losses(domains_run):
    _, model = domains_run
    history = model.manifest["run"]["history"]
    assert len(history) == 3
    first, last = history[0], history[-1]
    assert last["train/loss"] < 0.8 * first["train/loss"]
    assert last["train/contrastive"] < first["train/contrastive"]
    assert last["train/context_contrastive"] < first["train/context_contrastive"]
    assert all(np.isfinite(row[f"val/{name}"]) for row in history for name in LOSSES)


def test_embedding_separates_planted_domains_better_than_untrained(domains_run):
    sdata, model = domains_run
    untrained = StormModel("storm-tiny", model.vocabulary, seed=0)
    before, after = _ari(untrained, sdata, 4), _ari(model, sdata, 4)
    # Before training, the stain-statistics path already tells the toy domains' colours apart and the program path
    # is a random projection of the standardised expression (ARI ~0.6); training must add structure on top.
    assert after > 0.7
    assert after > before + 0.15


def test_same_seed_same_weights_and_other_seed_differs(small_toy):
    kw = {"model": "storm-tiny", "max_epochs": 2, "batch_size": 32, "verbose": False}
    a = pretrain(small_toy, seed=3, **kw)
    b = pretrain(small_toy, seed=3, **kw)
    c = pretrain(small_toy, seed=4, **kw)
    assert a.weights_digest() == b.weights_digest()
    assert a.manifest == b.manifest
    assert c.weights_digest() != a.weights_digest()


def test_training_gives_the_callers_global_random_state_back(small_toy):
    import os
    import random

    import torch

    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    expected = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    seed_env = os.environ.get("PL_GLOBAL_SEED")
    pretrain(small_toy, model="storm-tiny", max_epochs=1, batch_size=32, seed=0, verbose=False)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert os.environ.get("PL_GLOBAL_SEED") == seed_env


def test_output_dir_holds_checkpoint_logs_and_manifest(toy_pair, tmp_path):
    slides = [
        TrainingSlide(toy_pair["a"], name="a", group="P1", source={"loader": "toy", "args": {"seed": 1}}),
        TrainingSlide(toy_pair["b"], name="b", group="P2"),
    ]
    model = pretrain(
        slides,
        model="storm-tiny",
        output_dir=tmp_path,
        max_epochs=2,
        batch_size=32,
        val_groups=["P2"],
        seed=0,
        verbose=False,
    )
    saved = StormModel.load(tmp_path / "model.safetensors")
    assert saved.weights_digest() == model.weights_digest()
    manifest = saved.manifest
    assert manifest["split"] == {"strategy": "group", "val_groups": ["P2"], "groups": ["P1", "P2"]}
    a, b = manifest["datasets"]
    assert a["source"] == {"loader": "toy", "args": {"seed": 1}}
    assert a["n_train"] == 150
    assert a["n_val"] == 0
    assert b["n_val"] == 150
    assert len(b["sha256"]["patches"]) == 64
    assert len(b["sha256"]["expression"]) == 64
    assert manifest["training"]["val_groups"] == ["P2"]
    assert manifest["run"]["epochs"] == 2
    metrics = pd.read_csv(tmp_path / "logs" / "metrics.csv")
    for name in LOSSES:
        assert metrics[f"train/{name}_epoch"].notna().sum() == 2
        assert metrics[f"val/{name}"].notna().sum() == 2
    assert metrics["train/patches_per_s"].notna().any()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        pretrain(slides, model="storm-tiny", output_dir=tmp_path, max_epochs=1, verbose=False)


def test_fit_continues_an_existing_model_and_checks_arguments(small_toy):
    vocab = st.pp.GeneVocabulary.from_genes(small_toy["table"].var_names)
    model = StormModel("storm-tiny", vocab, seed=1)
    before = model.weights_digest()
    out = fit(model, small_toy, max_steps=2, batch_size=16, val_fraction=0.0, verbose=False)
    assert out is model
    assert model.weights_digest() != before
    assert model.vocabulary == vocab
    assert model.manifest["split"]["strategy"] == "none"
    assert model.manifest["run"]["global_step"] == 2
    with pytest.raises(ValueError, match="Unknown training option"):
        model.fit(small_toy, epochs=3)
    with pytest.raises(ValueError, match="cannot change an existing model's genes"):
        pretrain(small_toy, model=model, vocabulary=vocab)
    with pytest.raises(TypeError, match="StormModel"):
        fit("storm-tiny", small_toy)


def test_fine_tuning_says_which_genes_the_refitted_readout_no_longer_covers(small_toy, caplog):
    import spatialdata as sd

    model = StormModel("storm-tiny", small_toy["table"].var_names, seed=1)
    fit(model, small_toy, max_steps=2, batch_size=16, val_fraction=0.0, verbose=False)
    assert model.readout.n_genes == 30
    half = sd.SpatialData(
        images=dict(small_toy.images),
        shapes=dict(small_toy.shapes),
        tables={"table": small_toy["table"][:, :15].copy()},
        attrs=dict(small_toy.attrs),
    )
    with caplog.at_level("WARNING", logger="storm_sc"):
        fit(model, half, max_steps=2, batch_size=16, val_fraction=0.0, verbose=False)
    assert model.readout.n_genes == 15
    assert "covers 15 genes, the model's previous readout (1 slides) covered 30, 15 of them no longer" in caplog.text
    # trained again without refitting it, the readout would read features the weights no longer make: dropped
    fit(model, half, max_steps=1, batch_size=16, val_fraction=0.0, expression_readout=False, verbose=False)
    assert model.readout is None and "readout" not in model.manifest
    assert "expression readout (15 genes) is dropped" in caplog.text


def test_only_the_first_process_of_a_data_parallel_run_logs_warnings(small_toy, caplog, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    model = StormModel("storm-tiny", small_toy["table"].var_names, seed=1)
    fit(model, small_toy, max_steps=1, batch_size=16, val_fraction=0.0, verbose=False)
    caplog.clear()
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # what torchrun / SLURM give the second process
    with caplog.at_level("WARNING", logger="storm_sc"):
        fit(model, small_toy, max_steps=1, batch_size=16, val_fraction=0.0, expression_readout=False, verbose=False)
    assert model.readout is None
    assert "is dropped" not in caplog.text


def test_worker_processes_do_not_change_the_result(small_toy):
    kw = {"model": "storm-tiny", "max_epochs": 2, "batch_size": 32, "seed": 2, "verbose": False}
    in_process = pretrain(small_toy, num_workers=0, **kw)
    with_workers = pretrain(small_toy, num_workers=2, **kw)
    assert with_workers.weights_digest() == in_process.weights_digest()


@pytest.mark.parametrize("monitor", ["val/loss", "val/masked_expression"])
def test_early_stopping_ends_the_run_and_keeps_the_best_epoch(monitor):
    slides = [
        TrainingSlide(st.datasets.toy(n_obs=120, n_genes=30, n_domains=2, seed=s), name=f"s{s}", group=f"P{s}")
        for s in (1, 2)
    ]
    model = pretrain(slides, model="storm-tiny", max_epochs=40, batch_size=32, lr=1e-2, warmup_steps=1,
                     early_stopping_patience=1, val_groups=("P2",), expression_readout=False, seed=0,
                     monitor=monitor, verbose=False)  # fmt: skip
    run = model.manifest["run"]
    assert model.manifest["training"]["monitor"] == monitor
    val = [row[monitor] for row in run["history"]]
    # Patience 1: the run stops at the first epoch that fails to improve, long before the 40 allowed.
    assert run["epochs"] < 40 and len(val) == run["best_epoch"] + 2
    assert val[-1] >= min(val[:-1])
    assert run["best_val_loss"] == pytest.approx(min(val), abs=1e-6)
    assert run["best_epoch"] == int(np.argmin(val))
