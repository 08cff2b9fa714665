"""Training on a SpatialData of several slides (spatialdata.concatenate): one training slide per slide."""

from __future__ import annotations

import spatialdata as sd

import storm_sc as st
from storm_sc.training._slides import as_slides


def _both():
    slides = {name: st.datasets.toy(n_obs=60, n_genes=12, n_domains=2, seed=seed) for seed, name in enumerate("ab")}
    return sd.concatenate(slides, concatenate_tables=True), slides["a"]["table"].var_names


def test_concatenated_slides_become_training_slides_named_and_grouped():
    both, _ = _both()
    unnamed = as_slides([both])
    assert [(s.name, s.group) for s in unnamed] == [("toy_spots-a", "toy_spots-a"), ("toy_spots-b", "toy_spots-b")]
    named = as_slides({"patient1": both})
    assert [(s.name, s.group) for s in named] == [
        ("patient1/toy_spots-a", "patient1"),
        ("patient1/toy_spots-b", "patient1"),
    ]
    wrapped = as_slides([st.training.TrainingSlide(both, name="p", group="P", mpp=2.0, use_image=False)])
    assert [(s.name, s.group, s.mpp, s.use_image) for s in wrapped] == [
        ("p/toy_spots-a", "P", 2.0, False),
        ("p/toy_spots-b", "P", 2.0, False),
    ]
    assert [s.data.tables["table"].n_obs for s in wrapped] == [60, 60]


def test_a_model_trains_on_concatenated_slides():
    both, genes = _both()
    model = st.models.StormModel("storm-tiny", genes, seed=0)
    model.pretrained_name = "a-release"  # as from_pretrained sets it: fine-tuned weights are no longer the release's
    model.fit(
        [st.training.TrainingSlide(both, mpp=2.0)], max_epochs=1, batch_size=16, val_fraction=0.0, seed=0,
        verbose=False,
    )  # fmt: skip
    assert model.pretrained_name is None
    names = [entry["name"] for entry in model.manifest["datasets"]]
    assert names == ["toy_spots-a", "toy_spots-b"]
