import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import storm_sc as st


def test_prediction_table(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=8)
    pred = st.tl.predict_expression(sdata, trained_model, genes=["gene_0000", "GENE_0001", "NOT_A_GENE"], verbose=False)
    assert list(pred.var_names) == ["gene_0000", "gene_0001"]
    assert pred.shape == (sdata["table"].n_obs, 2)
    assert list(pred.obs_names) == list(sdata["table"].obs_names)
    assert (pred.layers["predicted_std"] > 0).all()
    assert pred.uns["storm"]["genes_not_in_model"] == ["NOT_A_GENE"]
    stored = sdata.tables["storm_predicted"]
    assert stored is pred or stored.shape == pred.shape
    from spatialdata.models import get_table_keys

    assert get_table_keys(stored)[0] == get_table_keys(sdata["table"])[0]
    # the prediction is not a measurement: the model is not fed its own output as expression
    with pytest.raises(ValueError, match="holds expression that storm_sc predicted from the H&E, not measurements"):
        st.tl.storm_embed(sdata, trained_model, table_key="storm_predicted", verbose=False)
    assert "X_storm" not in stored.obsm
    st.tl.storm_embed(sdata, trained_model, table_key="storm_predicted", modalities="image", verbose=False)
    assert stored.obsm["X_storm"].shape[0] == pred.n_obs


def test_prediction_never_reads_measured_expression(toy_sdata_factory, trained_model):
    a = toy_sdata_factory(seed=9)
    b = toy_sdata_factory(seed=9)
    b["table"].X = np.full(b["table"].shape, 7.0, dtype=np.float32)  # same image and positions, other "measurement"
    pa = st.tl.predict_expression(a, trained_model, verbose=False)
    pb = st.tl.predict_expression(b, trained_model, verbose=False)
    np.testing.assert_allclose(pa.X, pb.X)


def test_prediction_follows_morphology(toy_sdata_factory, trained_model, caplog):
    # Each toy seed draws its own domain appearance and markers, so the morphology -> expression mapping is only
    # defined on the training seed: the model sees its pixels, never its measured expression, at prediction time.
    sdata = toy_sdata_factory(seed=11)
    with caplog.at_level("WARNING", logger="storm_sc"):
        pred = st.tl.predict_expression(sdata, trained_model, verbose=False)
    # the slide the model was trained on: said to be in-sample, and recorded
    assert "match the model's training slide(s)" in caplog.text
    assert pred.uns["storm"]["predict_expression"]["in_training"] is not None
    another = toy_sdata_factory(seed=8, n_obs=100)  # named "toy" too, but not the same observations
    other = st.tl.predict_expression(another, trained_model, genes=["gene_0000"], verbose=False)
    assert other.uns["storm"]["predict_expression"]["in_training"] is None
    table = sdata["table"]
    markers = table.var_names[table.var["marker_of"].astype(str) != ""]
    measured = np.log1p(
        np.asarray(table[:, markers].X.todense() if hasattr(table.X, "todense") else table[:, markers].X)
    )
    r = [np.corrcoef(measured[:, i], pred[:, g].X.ravel())[0, 1] for i, g in enumerate(markers)]
    assert np.nanmean(r) > 0.3


def test_prediction_errors(toy_sdata_factory, trained_model):
    no_image = toy_sdata_factory(seed=8, image=False)
    with pytest.raises(ValueError, match="no H&E image.*holds no image: add the slide's H&E"):
        st.tl.predict_expression(no_image, trained_model)
    positions_only = no_image["table"].copy()
    positions_only.obsm["spatial"] = np.asarray(st.io.resolve(no_image).centers_um)
    with pytest.raises(ValueError, match=r"no H&E image.*\.uns\['spatial'\]"):
        st.tl.predict_expression(positions_only, trained_model, mpp=1.0)
    sdata = toy_sdata_factory(seed=8)
    with pytest.raises(ValueError, match="vocabulary"):
        st.tl.predict_expression(sdata, trained_model, genes=["NOPE"])
    st.tl.predict_expression(sdata, trained_model, genes=["gene_0000"], verbose=False)
    with pytest.raises(ValueError, match="already exists"):
        st.tl.predict_expression(sdata, trained_model, genes=["gene_0000"])
    assert "storm_predicted" in sdata.tables


def test_prediction_source_readout_or_head(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=8)
    assert trained_model.readout is not None  # fitted by training
    genes = ["gene_0000", "gene_0001"]
    auto = st.tl.predict_expression(sdata, trained_model, genes=genes, key_added="auto", verbose=False)
    head = st.tl.predict_expression(sdata, trained_model, genes=genes, source="head", key_added="head", verbose=False)
    assert list(auto.var["prediction_source"]) == ["readout", "readout"]
    assert list(head.var["prediction_source"]) == ["head", "head"]
    assert head.uns["storm"]["predict_expression"]["source"] == "head"
    assert not np.allclose(auto.X, head.X)
    with pytest.raises(ValueError, match="`source` must be"):
        st.tl.predict_expression(sdata, trained_model, source="ridge", key_added="bad")
    assert "bad" not in sdata.tables


def test_prediction_too_large_for_memory_fails_before_any_work(toy_sdata_factory, trained_model, monkeypatch):
    import storm_sc.models._inference as inference

    sdata = toy_sdata_factory(seed=8)
    n_obs, n_default = sdata["table"].n_obs, len(trained_model.readout.gene_ids)
    whole = 2 * 4 * n_obs * n_default  # bytes of the default genes' values and standard deviations
    monkeypatch.setattr(inference, "available_memory", lambda: whole)  # 80% of it may be used: too little
    read = []
    monkeypatch.setattr(trained_model, "_inputs", lambda *a, **k: read.append(1))  # no slide may be read
    with pytest.raises(MemoryError, match=r"genes=") as err:
        st.tl.predict_expression(sdata, trained_model, verbose=False)
    assert f"{n_default:,} genes for {n_obs:,} observations" in str(err.value)
    with pytest.raises(MemoryError, match="GiB of memory available"):
        trained_model.predict_expression(sdata, verbose=False)
    assert read == [] and "storm_predicted" not in sdata.tables
    monkeypatch.undo()
    # Two genes take a fraction of that memory.
    monkeypatch.setattr(inference, "available_memory", lambda: whole)
    assert st.tl.predict_expression(sdata, trained_model, genes=["gene_0000", "gene_0001"], verbose=False).n_vars == 2


def test_default_genes_are_the_readouts(toy_sdata_factory, trained_model, caplog):
    """The head predicts far less well than the readout (at chance for the reference on held-out sections): by
    default only the readout's genes are predicted, and requested genes it does not cover are flagged."""
    import copy

    model = copy.deepcopy(trained_model)
    vocab = list(model.vocabulary.symbols)
    model.fit_expression_readout([toy_sdata_factory(seed=11)], genes=vocab[:20], min_detection=0.0, verbose=False)
    sdata = toy_sdata_factory(seed=8)
    default = st.tl.predict_expression(sdata, model, key_added="default", verbose=False)
    assert list(default.var_names) == vocab[:20]
    assert (default.var["prediction_source"] == "readout").all()
    head = st.tl.predict_expression(sdata, model, source="head", key_added="head", verbose=False)
    assert list(head.var_names) == vocab
    with caplog.at_level("WARNING", logger="storm_sc"):
        asked = [vocab[0], vocab[30].upper()]  # named in the warning as asked for, not as the vocabulary spells it
        mixed = st.tl.predict_expression(sdata, model, genes=asked, key_added="mixed", verbose=False)
    assert list(mixed.var["prediction_source"]) == ["readout", "head"]
    assert "1 requested gene(s) are not covered by the model's expression readout" in caplog.text
    assert f"'{asked[1]}'" in caplog.text and vocab[0] not in caplog.text.split("head, which")[-1]


def test_genes_predicted_zero_everywhere_are_warned_about(toy_sdata_factory, trained_model, caplog):
    import copy

    model = copy.deepcopy(trained_model)
    readout = model.readout
    column = int(np.flatnonzero(readout.gene_ids == model.vocabulary.symbols.index("gene_0001"))[0])
    readout.intercept[column] = -1e6  # its linear prediction is negative everywhere: clipped to 0
    sdata = toy_sdata_factory(seed=8)
    with caplog.at_level("WARNING", logger="storm_sc"):
        result = st.tl.predict_expression(sdata, model, genes=["gene_0000", "gene_0001"], verbose=False)
    assert (result[:, "gene_0001"].X == 0).all() and (result[:, "gene_0000"].X > 0).any()
    assert "1 of 2 gene(s) are predicted 0 at every observation" in caplog.text
    assert "['gene_0001']" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="storm_sc"):
        st.tl.predict_expression(sdata, trained_model, genes=["gene_0000"], key_added="fine", verbose=False)
    assert "predicted 0" not in caplog.text


def _he_only(sdata):
    """The toy slide's H&E image alone, as an H&E-only slide arrives: no table, no spots."""
    import spatialdata as sd

    (key,) = sdata.images
    return sd.SpatialData(images={key: sdata.images[key]}), key


def test_prediction_on_an_he_only_slide_tiles_its_tissue(toy_sdata_factory, trained_model, caplog):
    from spatialdata.models import get_table_keys

    sdata = toy_sdata_factory(seed=8)
    he, _ = _he_only(sdata)
    pred = st.tl.predict_expression(
        he, trained_model, genes=["gene_0000", "gene_0001"], mpp=sdata.attrs["storm_sc"]["mpp"], verbose=False
    )
    tiles = he.shapes["storm_tile_circles"]
    assert pred.n_obs == len(tiles) == he.tables["storm_tiles"].n_obs > 10 and pred.n_vars == 2
    assert get_table_keys(he.tables["storm_predicted"])[0] == "storm_tile_circles"
    assert np.isfinite(pred.X).all() and (pred.layers["predicted_std"] > 0).all()
    # A grid at the model's patch size, in microns.
    steps = np.diff(np.unique(np.round(np.asarray(pred.obsm["spatial_um"])[:, 0], 3)))
    np.testing.assert_allclose(steps, trained_model.config.patch_um, rtol=1e-6)
    with pytest.raises(ValueError, match="already exists"):
        st.tl.predict_expression(he, trained_model, genes=["gene_0000"], mpp=1.0, verbose=False)
    # The tiles are now the slide's observations: embedding, domains and a second prediction use the same ones.
    st.tl.storm_embed(he, trained_model, verbose=False)
    with caplog.at_level("INFO", logger="storm_sc"):
        st.tl.storm_domains(he, n_domains=3)
    # tiles have no expression by construction: said, not warned
    assert "no expression" in caplog.text and not [r for r in caplog.records if r.levelname == "WARNING"]
    again = st.tl.predict_expression(he, trained_model, genes=["gene_0000"], key_added="again", verbose=False)
    table = he.tables["storm_tiles"]
    assert table.obsm["X_storm"].shape[0] == table.n_obs == again.n_obs
    assert table.obs["storm_domain"].nunique() == 3
    np.testing.assert_allclose(again.X[:, 0], pred[:, "gene_0000"].X.ravel(), rtol=1e-5, atol=1e-6)
    # nothing is measured on tiles: the plot shows the prediction and its s.d., without empty "measured" panels
    fig = st.pl.expression(he, ["gene_0000", "gene_0001"], show=False)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["gene_0000: predicted", "gene_0001: predicted"]
    plt.close(fig)


def test_embedding_an_he_only_slide_adds_its_tiles(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=8)
    he, _ = _he_only(sdata)
    st.tl.storm_embed(he, trained_model, mpp=sdata.attrs["storm_sc"]["mpp"], verbose=False)
    table = he.tables["storm_tiles"]
    assert table.n_vars == 0 and table.obsm["X_storm"].shape[0] == len(he.shapes["storm_tile_circles"]) > 10
    assert table.uns["storm"]["X_storm"]["modalities"] == ["image", "spatial context"]
    assert st.io.resolve(he).library_id == "toy_image"  # named after its image, not after the tiles' table
    with pytest.raises(ValueError, match="expression"):
        st.tl.storm_embed(_he_only(sdata)[0], trained_model, mpp=1.0, modalities="expression", verbose=False)


def test_copy_of_an_he_only_slide_leaves_its_attrs_alone(toy_sdata_factory, trained_model):
    # the copy records the scale it was given; the user's object must not learn an mpp it was never given
    sdata = toy_sdata_factory(seed=8)
    he, _ = _he_only(sdata)
    he.attrs["storm_sc"] = {"note": "mine"}
    out = st.tl.storm_embed(he, trained_model, mpp=sdata.attrs["storm_sc"]["mpp"], copy=True, verbose=False)
    assert he.attrs == {"storm_sc": {"note": "mine"}} and not he.tables and "storm_tiles" in out.tables
    assert out.attrs["storm_sc"]["mpp"] == sdata.attrs["storm_sc"]["mpp"]


def test_he_only_slide_errors_before_any_work(toy_sdata_factory, trained_model):
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    sdata = toy_sdata_factory(seed=8)
    he, key = _he_only(sdata)
    with pytest.raises(ValueError, match="mpp="):
        st.tl.predict_expression(he, trained_model, genes=["gene_0000"], verbose=False)
    for bad in (0, -1.0, float("nan")):  # given, but not a scale: says so, instead of asking for `mpp=`
        with pytest.raises(ValueError, match="must be a positive number"):
            st.tl.predict_expression(he, trained_model, genes=["gene_0000"], mpp=bad, verbose=False)
        with pytest.raises(ValueError, match="must be a positive number"):
            st.tl.storm_embed(he, trained_model, mpp=bad, verbose=False)
    two = sd.SpatialData(images={key: he.images[key], "other": he.images[key]})
    with pytest.raises(ValueError, match="image_key="):
        st.tl.predict_expression(two, trained_model, genes=["gene_0000"], mpp=1.0, verbose=False)
    glass = np.full((3, 400, 400), 245, dtype=np.uint8)  # an empty slide: nothing stained
    blank = sd.SpatialData(images={"blank": Image2DModel.parse(glass, dims=("c", "y", "x"))})
    with pytest.raises(ValueError, match="No tissue found"):
        st.tl.predict_expression(blank, trained_model, genes=["gene_0000"], mpp=1.0, verbose=False)
    for s in (he, two, blank):
        assert not s.tables and not s.shapes


def test_genes_measured_by_ensembl_id_pair_with_predictions():
    # Space Ranger tables are indexed by Ensembl ids (gene_ids); the reference predicts symbols. Both are matched as
    # storm_embed matches them, and genes may be asked for by either name.
    model = st.models.StormModel.from_pretrained()
    vocab = model.vocabulary
    with_id = [i for i, e in enumerate(vocab.ensembl_ids) if e is not None and e.startswith("ENSG")][:40]
    symbols = [vocab.symbols[i] for i in with_id]
    ids = [vocab.ensembl_ids[i] for i in with_id]
    sdata = st.datasets.toy(n_obs=120, n_genes=40, n_domains=2, seed=0)
    sdata["table"].var_names = [f"{e}.3" for e in ids]  # versioned, as some pipelines write them
    pred = st.tl.predict_expression(sdata, genes=[symbols[0].lower(), ids[1], "NOT_A_GENE"], verbose=False)
    assert list(pred.var_names) == symbols[:2]
    assert pred.var["measured_in_table"].tolist() == [True, True]
    assert pred.var["gene_ids"].tolist() == ids[:2]
    assert pred.uns["storm"]["genes_not_in_model"] == ["NOT_A_GENE"]
    table = st.pl.gene_correlations(sdata)
    assert sorted(table.index) == sorted(symbols[:2]) and table["n_obs"].eq(120).all()


def test_prediction_argument_errors_come_first(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=8)
    default = r"None \(the default\) for the genes the model's expression readout covers"
    for genes, match in (([], f"empty list.*{default}"), ([1, 2], f"gene names.*{default}"), ("", "gene names")):
        with pytest.raises((ValueError, TypeError), match=match):
            st.tl.predict_expression(sdata, trained_model, genes=genes)
    with pytest.raises(ValueError, match="batch_size"):
        st.tl.predict_expression(sdata, trained_model, batch_size=0)
    with pytest.raises(ValueError, match="torch device"):
        st.tl.predict_expression(sdata, trained_model, device="gpu")
    with pytest.raises(ValueError, match="torch device"):
        st.tl.storm_embed(sdata, trained_model, device="gpu")
    assert "storm_predicted" not in sdata.tables and "X_storm" not in sdata["table"].obsm


def test_prediction_survives_duplicated_var_names(toy_sdata_factory, trained_model, caplog):
    # scanpy's read_visium leaves duplicated gene names until var_names_make_unique(); the prediction never reads
    # the table's expression, so it is made and its genes matched by name.
    sdata = toy_sdata_factory(seed=8)
    table = sdata["table"]
    table.var_names = ["gene_0000", "gene_0000", *table.var_names[2:]]
    pred = st.tl.predict_expression(sdata, trained_model, genes=["gene_0000", "gene_0002"], verbose=False)
    assert pred.var["measured_in_table"].tolist() == [True, True]
    assert "by symbol only" in caplog.text


def test_a_scanpy_anndatas_prediction_keeps_its_pixel_positions():
    # sc.pl.spatial draws .obsm["spatial"] over .uns["spatial"]'s image: the prediction of a scanpy AnnData keeps both
    # (here two libraries, as scanpy.concat leaves them), with the microns beside them.
    from tests.io.test_split_slides import _scanpy_concat

    both, _ = _scanpy_concat()
    model = st.models.StormModel("storm-tiny", both.var_names, seed=0)
    pred = st.tl.predict_expression(both, model, genes=list(both.var_names[:2]), source="head", verbose=False)
    np.testing.assert_allclose(pred.obsm["spatial"], both.obsm["spatial"])
    assert set(pred.uns["spatial"]) == {"s1", "s2"}
    assert pred.uns["spatial"]["s1"]["scalefactors"] == both.uns["spatial"]["s1"]["scalefactors"]
    pitch_um = np.linalg.norm(pred.obsm["spatial_um"][1] - pred.obsm["spatial_um"][0])
    assert pitch_um == pytest.approx(100.0, rel=0.01)  # Visium's spot pitch


@pytest.mark.parametrize("species", ["mouse", "human"])
def test_predicted_genes_are_named_and_identified_as_the_table_names_them(species):
    # The reference's symbols are upper case and most carry a mouse and a human Ensembl id: on a mouse table
    # (capitalised symbols, no ids) a measured gene keeps the table's name and gets the mouse id; on a human one
    # the human id, never the other species'.
    model = st.models.StormModel.from_pretrained()
    vocab = model.vocabulary
    two = [i for i, e in enumerate(vocab.all_ensembl_ids) if len(e) == 2][:41]
    prefix = "ENSMUSG" if species == "mouse" else "ENSG0"
    sdata = st.datasets.toy(n_obs=120, n_genes=40, n_domains=2, seed=0)
    written = [vocab.symbols[i].capitalize() if species == "mouse" else vocab.symbols[i] for i in two[:40]]
    sdata["table"].var_names = written
    unmeasured = vocab.symbols[two[40]]
    pred = st.tl.predict_expression(sdata, genes=[vocab.symbols[two[0]], written[1], unmeasured], verbose=False)
    assert list(pred.var_names) == [written[0], written[1], unmeasured]
    assert pred.var["measured_in_table"].tolist() == [True, True, False]
    expected = [next(e for e in vocab.all_ensembl_ids[i] if e.startswith(prefix)) for i in (two[0], two[1], two[40])]
    assert pred.var["gene_ids"].tolist() == expected
    assert list(sdata["table"][:, pred.var_names[:2]].var_names) == written[:2]  # joins with the measurement


def test_a_bad_key_added_is_refused_before_any_work(toy_sdata_factory, trained_model):
    sdata = toy_sdata_factory(seed=8)
    image = next(iter(sdata.images))
    for key, match in (
        ("my pred", "not a valid SpatialData element name"),
        (image, f"the name of sdata.images\\[{image!r}\\]"),
        ("table", "names a table of measurements"),  # overwrite=True would have replaced the counts
        ("Table", r"the name of sdata.tables\['table'\]"),  # spatialdata refuses names differing only in case
        ("storm_tiles", "an H&E-only slide's tiles"),
    ):
        for overwrite in (False, True):
            with pytest.raises(ValueError, match=match):
                st.tl.predict_expression(sdata, trained_model, genes=["gene_0000"], key_added=key, overwrite=overwrite)
    assert list(sdata.tables) == ["table"] and sdata["table"].n_vars > 1
    st.tl.predict_expression(sdata, trained_model, genes=["gene_0000"], verbose=False)
    st.tl.predict_expression(sdata, trained_model, genes=["gene_0001"], overwrite=True, verbose=False)  # its own
    assert list(sdata.tables["storm_predicted"].var_names) == ["gene_0001"]


def test_predicted_genes_of_an_ensembl_indexed_table_take_its_symbol_column():
    # Space Ranger's layout read with gene ids as var_names: the symbols are in a .var column, written the table's way.
    model = st.models.StormModel.from_pretrained()
    vocab = model.vocabulary
    two = [i for i, e in enumerate(vocab.all_ensembl_ids) if len(e) == 2][:40]
    sdata = st.datasets.toy(n_obs=120, n_genes=40, n_domains=2, seed=0)
    table = sdata["table"]
    table.var["gene_symbols"] = [vocab.symbols[i].capitalize() for i in two]
    table.var_names = [next(e for e in vocab.all_ensembl_ids[i] if e.startswith("ENSMUSG")) for i in two]
    pred = st.tl.predict_expression(sdata, genes=[vocab.symbols[two[0]], vocab.symbols[two[1]]], verbose=False)
    assert list(pred.var_names) == list(table.var["gene_symbols"][:2])
    assert pred.var["gene_ids"].tolist() == list(table.var_names[:2])


def test_the_species_of_a_table_is_read_from_its_ids_or_the_case_of_its_symbols():
    from anndata import AnnData

    from storm_sc.pp._vocabulary import ensembl_species
    from storm_sc.tl._predicted_genes import table_species

    assert [ensembl_species(i) for i in ("ENSG00000141510.3", "ENSMUSG00000045394", "ENSGALG00000000001")] == [
        "",
        "MUS",
        "GAL",  # a species code holding a G (chicken) is not read as human
    ]
    assert ensembl_species("GAPDH") is None

    def table(names):
        return AnnData(np.zeros((1, len(names)), dtype=np.float32), var=pd.DataFrame(index=names))

    assert table_species(table(["GAPDH", "ACTB", "EPCAM", "KRT8", "CD3E", "C1orf112"]), None) == ""
    assert table_species(table(["Gapdh", "Actb", "Gm12345"]), None) == "MUS"
    assert table_species(table(["GRCh38__GAPDH", "GRCh38__ACTB"]), None) == ""  # the genome prefix is not the symbol
    assert table_species(table(["gene_0000", "gene_0001"]), None) is None  # nothing to tell by
    ids = np.array(["ENSMUSG00000045394", None, "ENSMUSG00000053093"], dtype=object)
    assert table_species(table(["A", "B", "C"]), ids) == "MUS"


def test_he_only_images_that_are_not_rgb_uint8_are_named_as_such(trained_model):
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    tissue = np.random.default_rng(0).random((3, 300, 300))
    floats = sd.SpatialData(images={"he": Image2DModel.parse(tissue.astype(np.float32), dims=("c", "y", "x"))})
    with pytest.raises(ValueError, match="is float32; H&E patches are read from uint8"):
        st.tl.storm_embed(floats, trained_model, image_key="he", mpp=1.0, verbose=False)
    grey = (tissue[:1] * 255).astype(np.uint8)
    single = sd.SpatialData(images={"he": Image2DModel.parse(grey, dims=("c", "y", "x"))})
    with pytest.raises(ValueError, match="one channel"):
        st.tl.predict_expression(single, trained_model, genes=["gene_0000"], image_key="he", mpp=1.0, verbose=False)
    assert not floats.tables and not single.tables
