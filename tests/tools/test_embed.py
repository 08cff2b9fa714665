import matplotlib.pyplot as plt
import numpy as np
import pytest

import storm_sc as st


def test_embed_writes_obsm_and_params(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=1)
    out = st.tl.storm_embed(sdata, trained_model, verbose=False)
    assert out is None
    table = sdata["table"]
    emb = table.obsm["X_storm"]
    assert emb.shape[0] == table.n_obs and emb.dtype == np.float32 and np.isfinite(emb).all()
    params = table.uns["storm"]["X_storm"]
    assert params["tool"] == "storm_embed"
    assert params["modalities"] == ["image", "expression", "spatial context"]
    assert params["storm_sc_version"] == st.__version__
    assert params["level"] == "levels"


def test_embed_levels_are_the_model_levels_side_by_side(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=1)
    st.tl.storm_embed(sdata, trained_model, verbose=False)
    st.tl.storm_embed(sdata, trained_model, level="joint", key_added="joint", verbose=False)
    cfg = trained_model.config
    levels, joint = sdata["table"].obsm["X_storm"], sdata["table"].obsm["joint"]
    assert levels.shape[1] == 3 * cfg.hidden_dim and joint.shape[1] == cfg.embed_dim
    parts = [trained_model.embed(sdata, level=lv, verbose=False) for lv in ("observation", "niche", "region")]
    np.testing.assert_allclose(levels, np.hstack(parts), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(joint, trained_model.embed(sdata, verbose=False), rtol=1e-5, atol=1e-5)


def test_embed_copy_leaves_input_untouched(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=1)
    before = set(sdata["table"].obsm), set(sdata["table"].uns)
    result = st.tl.storm_embed(sdata, trained_model, copy=True, verbose=False)
    assert (set(sdata["table"].obsm), set(sdata["table"].uns)) == before
    assert "X_storm" in result["table"].obsm


def test_embed_refuses_to_overwrite(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=1)
    sdata["table"].obsm["X_storm"] = np.zeros((sdata["table"].n_obs, 2))
    with pytest.raises(ValueError, match="already exists"):
        st.tl.storm_embed(sdata, trained_model, verbose=False)
    np.testing.assert_array_equal(sdata["table"].obsm["X_storm"], 0)
    st.tl.storm_embed(sdata, trained_model, overwrite=True, verbose=False)
    assert sdata["table"].obsm["X_storm"].shape[1] > 2


def test_embed_degrades_without_image(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=2, image=False)
    st.tl.storm_embed(sdata, trained_model, verbose=False)
    assert sdata["table"].uns["storm"]["X_storm"]["modalities"] == ["expression", "spatial context"]
    with pytest.raises(ValueError, match="no H&E image"):
        st.tl.storm_embed(sdata, trained_model, modalities="image", key_added="other", verbose=False)
    assert "other" not in sdata["table"].obsm


def test_embed_warns_about_a_table_without_genes(toy_sdata_factory, trained_model, storm_log):
    # e.g. two slides whose genes are named differently, concatenated: the inner join keeps no gene
    sdata = toy_sdata_factory(seed=2)
    sdata.tables["table"] = sdata["table"][:, []].copy()
    st.tl.storm_embed(sdata, trained_model, verbose=False)
    assert "its table has no genes; embedding it from H&E and spatial context alone" in storm_log.text
    assert sdata["table"].uns["storm"]["X_storm"]["modalities"] == ["image", "spatial context"]


def test_embed_modalities_change_the_embedding(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=3)
    st.tl.storm_embed(sdata, trained_model, modalities="image", key_added="he", verbose=False)
    st.tl.storm_embed(sdata, trained_model, modalities="expression", key_added="ex", verbose=False)
    assert not np.allclose(sdata["table"].obsm["he"], sdata["table"].obsm["ex"])


def test_embed_rejects_bad_arguments_before_work(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=1)
    with pytest.raises(ValueError, match="modalities"):
        st.tl.storm_embed(sdata, trained_model, modalities="rna")
    with pytest.raises(ValueError, match="batch_size"):
        st.tl.storm_embed(sdata, trained_model, batch_size=0)
    with pytest.raises(ValueError, match="level"):
        st.tl.storm_embed(sdata, trained_model, level="cell")
    with pytest.raises(TypeError, match="SpatialData"):
        st.tl.storm_embed("not data", trained_model)
    with pytest.raises(TypeError, match=r"got dict \(pass `list\(slides.values\(\)\)`"):
        st.tl.storm_embed({"patient 1": sdata}, trained_model)
    assert "X_storm" not in sdata["table"].obsm


def test_embed_several_slides(toy_sdata_factory, trained_model):
    slides = [toy_sdata_factory(seed=4), toy_sdata_factory(seed=5, image=False)]
    st.tl.storm_embed(slides, trained_model, verbose=False)
    dims = {s["table"].obsm["X_storm"].shape[1] for s in slides}
    assert len(dims) == 1


def test_one_mpp_per_slide_of_a_list(toy_sdata_factory, trained_model):
    # a slide that knows its scale beside a table of positions in another unit: one call, one mpp each
    sdata = toy_sdata_factory(seed=1)
    cells = sdata["table"].copy()
    cells.obsm["spatial"] = st.io.resolve(sdata).centers_um / 0.5  # half-micron units
    alone = st.tl.storm_embed(cells, trained_model, mpp=0.5, copy=True, verbose=False).obsm["X_storm"]
    st.tl.storm_embed([sdata, cells], trained_model, mpp=[None, 0.5], verbose=False)
    np.testing.assert_allclose(cells.obsm["X_storm"], alone, atol=1e-5)
    assert sdata["table"].uns["storm"]["X_storm"]["modalities"][0] == "image"
    st.tl.storm_domains([sdata, cells], n_domains=3, mpp=[None, 0.5])
    assert cells.obs["storm_domain"].nunique() == 3
    fig = st.pl.domains([sdata, cells], mpp=[None, 0.5], show=False)  # drawn in microns: the same extent for both
    widths = [np.ptp(ax.get_xlim()) for ax in fig.axes[:2]]
    assert widths[1] == pytest.approx(widths[0], rel=0.05)  # the same tissue, in microns
    plt.close(fig)
    with pytest.raises(ValueError, match="holds 3 values for 2 object"):
        st.tl.storm_embed([sdata, cells], trained_model, mpp=[None, 0.5, 1.0], key_added="x")
    with pytest.raises(ValueError, match="`mpp` must be a positive number"):
        st.tl.predict_expression([sdata, cells], trained_model, mpp=[None, -1.0])
    assert "x" not in cells.obsm and "storm_predicted" not in sdata.tables


def test_embed_reads_a_counts_layer_and_a_symbols_column(toy_sdata_factory, trained_model):
    # The scanpy habit: .X normalised and scaled for PCA, counts kept in a layer, var_names as Ensembl-like ids.
    plain = toy_sdata_factory(seed=3)
    expected = st.tl.storm_embed(plain, trained_model, copy=True, verbose=False)["table"].obsm["X_storm"]
    sdata = toy_sdata_factory(seed=3)
    table = sdata["table"]
    table.layers["counts"] = table.X.copy()
    table.var["symbol"] = table.var_names.to_numpy()
    table.var_names = [f"id{i}" for i in range(table.n_vars)]
    x = np.log1p(np.asarray(table.X.todense() if hasattr(table.X, "todense") else table.X, dtype=np.float64))
    table.X = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)
    with pytest.raises(ValueError, match="negative values.*layer="):
        st.tl.storm_embed(sdata, trained_model, gene_symbols="symbol", verbose=False)
    for kwargs, err in (({"layer": "nope"}, "is not a layer"), ({"gene_symbols": "nope"}, "is not a column")):
        with pytest.raises(KeyError, match=err):
            st.tl.storm_embed(sdata, trained_model, **kwargs)
    assert "X_storm" not in table.obsm
    st.tl.storm_embed(sdata, trained_model, layer="counts", gene_symbols="symbol", verbose=False)
    np.testing.assert_allclose(table.obsm["X_storm"], expected, rtol=1e-5, atol=1e-6)
    assert table.uns["storm"]["X_storm"]["layer"] == "counts"


def test_the_recorded_model_names_a_pretrained_release_passed_as_an_object():
    from storm_sc.tl._model_arg import model_name

    reference = st.models.StormModel.from_pretrained()
    assert model_name(reference, reference).startswith(f"{reference.pretrained_name} (in-memory")
    untrained = st.models.StormModel("storm-tiny", ["A", "B"], seed=0)
    assert model_name(untrained, untrained) == "storm-tiny (in-memory)"


def test_a_refitted_readout_is_no_longer_the_release(toy_sdata_factory, trained_model):
    import copy

    model = copy.deepcopy(trained_model)
    model.pretrained_name = "some-release"  # as from_pretrained sets it
    model.fit_expression_readout(toy_sdata_factory(seed=1))
    assert model.pretrained_name is None


def test_adaptation_trains_on_every_observation_of_every_slide(toy_sdata_factory, trained_model, monkeypatch):
    import storm_sc.models._model as model_module

    seen = {}
    fit = model_module.StormModel.fit

    def spy(self, slides, **kwargs):
        out = fit(self, slides, **kwargs)
        seen.update(kwargs, history=self.manifest["run"]["history"])
        return out

    monkeypatch.setattr(model_module.StormModel, "fit", spy)
    slides = [toy_sdata_factory(seed=s) for s in (5, 6)]
    before = trained_model.weights_digest()
    st.tl.storm_embed(slides, trained_model, adapt_epochs=2, verbose=False)
    assert seen["val_fraction"] == 0.0  # two slides: one whole slide was held out for validation
    assert len(seen["history"]) == 2 and not any(k.startswith("val") for k in seen["history"][-1])
    assert trained_model.weights_digest() == before


def test_a_fine_tuned_model_keeps_its_lineage(toy_sdata_factory, trained_model, storm_log):
    import copy

    from storm_sc.tl._model_arg import model_name

    base = copy.deepcopy(trained_model)
    base.pretrained_name = "some-release"  # as from_pretrained names a release
    base_digest = base.weights_digest()
    tuned = copy.deepcopy(base)
    tuned.fit([toy_sdata_factory(seed=21)], max_epochs=1, batch_size=16, val_fraction=0.0, seed=0, verbose=False)
    parent = tuned.manifest["parent"]
    assert parent["name"] == "some-release" and parent["weights_sha256"] == base_digest
    assert [d["name"] for d in parent["datasets"]] == [d["name"] for d in trained_model.manifest["datasets"]]
    assert model_name(tuned, tuned) == "storm-tiny (in-memory, fine-tuned from some-release)"
    # the base's training slide is in-sample for the fine-tuned model too
    with storm_log.at_level("WARNING", logger="storm_sc"):
        result = st.tl.predict_expression(toy_sdata_factory(seed=11), tuned, genes=["gene_0000"], verbose=False)
    assert "match the model's training slide(s)" in storm_log.text
    assert result.uns["storm"]["predict_expression"]["weights_sha256"] == tuned.weights_digest()
