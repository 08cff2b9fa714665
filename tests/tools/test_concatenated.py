"""The tools on a SpatialData of several slides (spatialdata.concatenate): as on the list of slides, written back."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

import storm_sc as st
from tests._paths import real_data
from tests.io._synthetic import fingerprint

TOY_MPP = 2.0  # st.datasets.toy's scale, which concatenate drops with the slides' attrs


def _slides(factory):
    slides = {}
    for name, seed in (("a", 1), ("b", 2)):
        s = factory(seed, n_obs=120)
        s.rename_coordinate_systems({"global": name})
        slides[name] = s
    return slides


def _run_all(data, model, **kwargs):
    st.tl.storm_embed(data, model, mpp=TOY_MPP, verbose=False, **kwargs)
    st.tl.storm_domains(data, n_domains=3, mpp=TOY_MPP)
    return st.tl.predict_expression(data, model, genes=["gene_0000", "gene_0003"], mpp=TOY_MPP, verbose=False)


@pytest.mark.parametrize("tables", ["one", "several"])
def test_concatenated_slides_get_the_results_of_the_list(toy_sdata_factory, trained_model, tables):
    alone = _slides(toy_sdata_factory)
    predicted_alone = _run_all(list(alone.values()), trained_model)
    both = sd.concatenate(_slides(toy_sdata_factory), concatenate_tables=tables == "one")
    predicted = _run_all(both, trained_model)

    if tables == "one":
        table = both.tables["table"]
        pieces = {"a": table[table.obs["region"] == "toy_spots-a"], "b": table[table.obs["region"] == "toy_spots-b"]}
    else:
        assert set(both.tables) == {"table-a", "table-b", "storm_predicted"}
        pieces = {"a": both.tables["table-a"], "b": both.tables["table-b"]}
    for name, piece in pieces.items():
        ref = alone[name].tables["table"]
        np.testing.assert_allclose(piece.obsm["X_storm"], ref.obsm["X_storm"], atol=1e-5)
        assert (piece.obs["storm_domain"].astype(str).to_numpy() == ref.obs["storm_domain"].astype(str)).all()
    first = next(iter(pieces.values()))
    assert list(first.uns["storm_domain_colors"]) == list(alone["a"].tables["table"].uns["storm_domain_colors"])
    params = first.uns["storm"]["X_storm"]
    assert params["tool"] == "storm_embed"
    assert params["slides"] == (["toy_spots-a", "toy_spots-b"] if tables == "one" else ["toy_spots-a"])

    # One prediction table for the SpatialData, annotating both slides' spots, rows as the measured table's.
    assert both.tables["storm_predicted"] is predicted
    assert set(predicted.obs["region"]) == {"toy_spots-a", "toy_spots-b"}
    measured_rows = np.concatenate([p.obs_names for p in pieces.values()])
    assert list(predicted.obs_names) == list(measured_rows)
    np.testing.assert_allclose(predicted.X, np.vstack([p.X for p in predicted_alone]), atol=1e-4)
    assert predicted.uns["storm"]["predict_expression"]["slides"] == ["toy_spots-a", "toy_spots-b"]
    # ... and it follows its spots when the slides are taken apart again, e.g. for st.pl
    part = st.io.split_slides(both)["toy_spots-b"]
    assert part.tables["storm_predicted"].n_obs == 120
    # st.pl draws one panel per slide, as for the list
    fig = st.pl.domains(both, mpp=TOY_MPP, show=False)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["toy_spots-a", "toy_spots-b"]
    plt.close(fig)
    # ... but a comparison with the measurement is per slide: it names the slides instead of pooling them
    with pytest.raises(ValueError, match=r"holds 2: \['toy_spots-a', 'toy_spots-b'\].*split_slides"):
        st.pl.gene_correlations(both)
    assert len(st.pl.gene_correlations(part)) == 2


def test_copy_and_refusals_leave_the_concatenated_slides_as_they_were(toy_sdata_factory, trained_model):
    both = sd.concatenate(_slides(toy_sdata_factory), concatenate_tables=True)
    before = fingerprint(both)
    out = st.tl.storm_embed(both, trained_model, mpp=TOY_MPP, copy=True, verbose=False)
    assert fingerprint(both) == before
    assert out.tables["table"].obsm["X_storm"].shape[0] == 240

    st.tl.storm_embed(both, trained_model, mpp=TOY_MPP, verbose=False)
    after_embed = fingerprint(both)
    with pytest.raises(ValueError, match=r"already exists.*overwrite=True"):
        st.tl.storm_embed(both, trained_model, mpp=TOY_MPP, verbose=False)
    with pytest.raises(KeyError, match="layer 'nope' not found"):
        st.tl.storm_domains(both, n_domains=3, mpp=TOY_MPP, layer="nope")
    assert fingerprint(both) == after_embed


def test_each_concatenated_slide_takes_its_own_scale_by_name(toy_sdata_factory, trained_model):
    # spatialdata.concatenate drops the scale kept in each slide's attrs: the tools say how to give each its own,
    # and take a mapping of slide names, each value for its own slide.
    slides = _slides(toy_sdata_factory)
    alone = {name: s for name, s in _slides(toy_sdata_factory).items()}
    st.tl.storm_embed(list(alone.values()), trained_model, verbose=False)
    both = sd.concatenate(slides, concatenate_tables=True)
    with pytest.raises(
        ValueError, match=r"holds several slides \(\['toy_spots-a', 'toy_spots-b'\]\).*mpp=\{'toy_spots-a'"
    ):
        st.tl.storm_embed(both, trained_model, verbose=False)
    with pytest.raises(ValueError, match=r"names slides \['toy_spots-c'\]"):
        st.tl.storm_embed(both, trained_model, mpp={"toy_spots-a": 2.0, "toy_spots-c": 2.0}, verbose=False)
    with pytest.raises(ValueError, match="must be a positive number"):
        st.tl.storm_embed(both, trained_model, mpp={"toy_spots-a": 2.0, "toy_spots-b": -1.0}, verbose=False)
    assert "X_storm" not in both.tables["table"].obsm
    scales = {"toy_spots-a": TOY_MPP, "toy_spots-b": TOY_MPP}
    st.tl.storm_embed(both, trained_model, mpp=scales, verbose=False)
    table = both.tables["table"]
    for name in ("a", "b"):
        rows = (table.obs["region"] == f"toy_spots-{name}").to_numpy()
        np.testing.assert_allclose(table.obsm["X_storm"][rows], alone[name]["table"].obsm["X_storm"], atol=1e-5)
    other = st.tl.storm_embed(
        both,
        trained_model,
        mpp={"toy_spots-a": TOY_MPP, "toy_spots-b": 2 * TOY_MPP},
        copy=True,
        overwrite=True,
        verbose=False,
    ).tables["table"]
    a_rows = (table.obs["region"] == "toy_spots-a").to_numpy()
    np.testing.assert_allclose(other.obsm["X_storm"][a_rows], table.obsm["X_storm"][a_rows], atol=1e-5)
    assert not np.allclose(other.obsm["X_storm"][~a_rows], table.obsm["X_storm"][~a_rows], atol=1e-3)
    st.tl.storm_domains(both, n_domains=3, mpp=scales)
    with pytest.raises(ValueError, match=r"holds several slides \(\['toy_spots-a', 'toy_spots-b'\]\).*mpp=\{"):
        st.pl.domains(both)
    fig = st.pl.domains(both, mpp=scales, show=False)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="holds one slide"):
        st.tl.storm_embed(alone["a"], trained_model, mpp={"toy_spots-a": 2.0}, overwrite=True, verbose=False)


@pytest.mark.realdata
def test_concatenated_visium_sections_end_to_end(datasets_from_shared_data):
    """Two real Visium sections concatenated by spatialdata, the bundled reference, the three tools."""
    real_data("visium_ffpe_villacampa2021")
    names = ["V19D02-085_B1", "V19D02-085_C1"]
    both = sd.concatenate([st.datasets.visium_ffpe(n) for n in names], concatenate_tables=True)
    st.tl.storm_embed(both, verbose=False)
    st.tl.storm_domains(both, n_domains=4)
    predicted = st.tl.predict_expression(both, genes=["EPCAM", "COL1A1"], verbose=False)

    alone = [st.datasets.visium_ffpe(n) for n in names]
    st.tl.storm_embed(alone, verbose=False)
    table = both.tables["table"]
    np.testing.assert_allclose(
        table.obsm["X_storm"], np.vstack([s.tables["table"].obsm["X_storm"] for s in alone]), atol=1e-4
    )
    assert table.obs["storm_domain"].notna().all() and table.obs["storm_domain"].nunique() == 4
    # domains are shared across the two sections: each holds spots of more than one, and they meet
    counts = table.obs.groupby(["region", "storm_domain"], observed=True).size().unstack(fill_value=0)
    assert (counts > 0).sum(axis=0).max() == 2
    assert predicted.shape == (table.n_obs, 2) and list(predicted.obs_names) == list(table.obs_names)
    assert table.uns["storm"]["X_storm"]["image_key"] == {n: f"{n}_hires_image" for n in names}


def test_scanpy_concatenated_anndata_is_analysed_per_library():
    from tests.io.test_split_slides import _scanpy_concat

    both, parts = _scanpy_concat()
    model = st.models.StormModel("storm-tiny", both.var_names, seed=0)
    st.tl.storm_embed(both, model, verbose=False)
    st.tl.storm_domains(both, n_domains=2)
    predicted = st.tl.predict_expression(both, model, genes=list(both.var_names[:2]), verbose=False)
    st.tl.storm_embed(list(parts.values()), model, verbose=False)
    np.testing.assert_allclose(both.obsm["X_storm"], np.vstack([p.obsm["X_storm"] for p in parts.values()]), atol=1e-5)
    assert both.obs["storm_domain"].notna().all()
    assert both.uns["storm"]["X_storm"]["slides"] == ["s1", "s2"]
    assert list(predicted.obs_names) == list(both.obs_names) and predicted.n_vars == 2
    fig = st.pl.domains(both, show=False)  # one panel per library, as for a SpatialData of several slides
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["s1", "s2"]
    plt.close(fig)


def test_one_library_taken_out_of_a_scanpy_concat_is_that_library():
    # adata[adata.obs.library_id == "s2"] keeps every library in .uns['spatial']: its rows name the one to read.
    from tests.io.test_split_slides import _scanpy_concat

    both, parts = _scanpy_concat()
    model = st.models.StormModel("storm-tiny", both.var_names, seed=0)
    one = both[both.obs["library_id"] == "s2"].copy()
    assert len(one.uns["spatial"]) == 2
    st.tl.storm_embed([one, parts["s2"]], model, verbose=False)
    np.testing.assert_allclose(one.obsm["X_storm"], parts["s2"].obsm["X_storm"], atol=1e-5)
    st.tl.storm_domains(one, n_domains=2)
    assert st.io.resolve(one).library_id == "s2"
    fig = st.pl.domains(one, show=False)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["s2"]
    plt.close(fig)


def test_sections_stacked_by_anndata_concat_are_analysed_apart_with_library_key(caplog):
    import anndata as ad

    from tests.io.test_split_slides import _scanpy_concat

    _, parts = _scanpy_concat()
    parts = {name: part.copy() for name, part in parts.items()}
    stacked = ad.concat(parts, label="library_id", index_unique="-")  # uns_merge=None: .uns["spatial"] is gone
    assert "spatial" not in stacked.uns
    model = st.models.StormModel("storm-tiny", stacked.var_names, seed=0)
    mpp = {name: st.io.resolve(p).mpp for name, p in parts.items()}
    assert mpp["s1"] == pytest.approx(mpp["s2"])
    with caplog.at_level("WARNING", logger="storm_sc"):
        as_one = st.tl.storm_embed(stacked, model, mpp=mpp["s1"], copy=True, verbose=False)
    assert "library_key='library_id'" in caplog.text  # the two sections overlap in one coordinate space
    before = stacked.copy()
    with pytest.raises(KeyError, match="not a column"):
        st.tl.storm_embed(stacked, model, mpp=mpp["s1"], library_key="sample", verbose=False)
    assert "X_storm" not in stacked.obsm and stacked.obs.equals(before.obs)

    st.tl.storm_embed(stacked, model, mpp=mpp["s1"], library_key="library_id", verbose=False)
    for part in parts.values():  # each alone as it is in the stack: positions in pixels, no image
        del part.uns["spatial"]
        st.tl.storm_embed(part, model, mpp=mpp["s1"], verbose=False)
    alone = [part.obsm["X_storm"] for part in parts.values()]
    np.testing.assert_allclose(stacked.obsm["X_storm"], np.vstack(alone), atol=1e-5)
    assert not np.allclose(as_one.obsm["X_storm"], stacked.obsm["X_storm"], atol=1e-3)
    assert stacked.uns["storm"]["X_storm"]["library_key"] == "library_id"
    st.tl.storm_domains(stacked, n_domains=2, library_key="library_id", mpp=mpp["s1"])
    assert stacked.uns["storm"]["storm_domain"]["n_slides"] == 2  # the sections, not the one AnnData
    by_name = {"s1": mpp["s1"], "s2": mpp["s1"]}  # as storm_embed takes it, one value per section
    again = st.tl.storm_domains(stacked, n_domains=2, library_key="library_id", mpp=by_name, copy=True, overwrite=True)
    assert (again.obs["storm_domain"] == stacked.obs["storm_domain"]).all()
    with pytest.raises(ValueError, match="different scales"):
        st.tl.storm_domains(stacked, n_domains=2, library_key="library_id", mpp={"s1": 1.0, "s2": 2.0}, copy=True)
    with pytest.raises(ValueError, match="`random_state` must be an integer >= 0"):
        st.tl.storm_domains(stacked, n_domains=2, library_key="library_id", random_state=np.random.default_rng(0))
    fig = st.pl.domains(
        stacked, library_key="library_id", mpp=mpp["s1"], show=False
    )  # one panel per section, not overlaid
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["s1", "s2"]
    plt.close(fig)
    fig = st.pl.embedding_umap(stacked, library_key="library_id", show=False)  # the sections as slides to colour by
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == ["s1", "s2"]
    plt.close(fig)
    with pytest.raises(KeyError, match="`domains`: `library_key` 'sample'"):
        st.pl.domains(stacked, library_key="sample", mpp=mpp["s1"])
    caplog.clear()
    with caplog.at_level("WARNING", logger="storm_sc"):  # drawn overlaid without library_key: said so, as the tools do
        plt.close(st.pl.domains(stacked, mpp=mpp["s1"], show=False))
    assert "`domains`: The AnnData is taken as one slide" in caplog.text
    by_batch = stacked.copy()
    by_batch.obs = by_batch.obs.rename(columns={"library_id": "batch"})  # any column name, not only scanpy's
    fig = st.pl.domains(by_batch, library_key="batch", mpp=mpp["s1"], show=False)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["s1", "s2"]
    plt.close(fig)
    # with the images kept (uns_merge="unique"), naming the column gives what finding it does
    both, _ = _scanpy_concat()
    both.obs["sample"] = both.obs["library_id"].map({"s1": "a", "s2": "b"}).astype(str)
    with pytest.raises(ValueError, match=r"describes the libraries \['s1', 's2'\].*\['a', 'b'\]"):
        st.tl.storm_embed(both, model, library_key="sample")  # each section would lose its image and scale
    genes = list(both.var_names[:2])
    named = st.tl.predict_expression(both, model, genes=genes, library_key="library_id", verbose=False)
    found = st.tl.predict_expression(both, model, genes=genes, key_added="found", verbose=False)
    assert list(named.obs_names) == list(both.obs_names)
    np.testing.assert_allclose(named.X, found.X)
    with pytest.raises(ValueError, match="SpatialData's slides"):
        st.tl.storm_embed(st.datasets.toy(n_obs=30, n_genes=5, seed=0), model, library_key="library_id")


def test_the_same_object_twice_and_embeddings_of_other_widths_are_refused(toy_sdata_factory):
    first, second = toy_sdata_factory(1, n_obs=60), toy_sdata_factory(2, n_obs=60)
    with pytest.raises(ValueError, match="same object twice"):
        st.tl.storm_domains([first, first], n_domains=2, mpp=TOY_MPP)
    first["table"].obsm["X_storm"] = np.ones((60, 96), dtype=np.float32)
    second["table"].obsm["X_storm"] = np.ones((60, 16), dtype=np.float32)
    with pytest.raises(ValueError, match="same model"):
        st.tl.storm_domains([first, second], n_domains=2, mpp=TOY_MPP)
    assert "storm_domain" not in first["table"].obs


def test_results_go_back_by_position_when_obs_names_repeat(toy_sdata_factory):
    alone = _slides(toy_sdata_factory)
    for s in alone.values():
        s["table"].obsm["X_storm"] = s["table"].X.toarray()  # any embedding
    st.tl.storm_domains(list(alone.values()), n_domains=3, mpp=TOY_MPP)
    both = sd.concatenate(_slides(toy_sdata_factory), concatenate_tables=True, obs_names_make_unique=False)
    table = both.tables["table"]
    table.obsm["X_storm"] = table.X.toarray()
    assert not table.obs_names.is_unique  # each slide's spots are named 0, 1, ...
    st.tl.storm_domains(both, n_domains=3, mpp=TOY_MPP)
    expected = np.concatenate([s["table"].obs["storm_domain"].astype(str) for s in alone.values()])
    assert (table.obs["storm_domain"].astype(str).to_numpy() == expected).all()


def test_slides_stacked_in_one_coordinate_system_are_warned_about(toy_sdata_factory, caplog):
    # Each read into "global" (spatialdata-io's Xenium and CosMx readers do that) and concatenated: one coordinate
    # system, two overlapping tissues that cannot be told apart by it. Analysed as one slide, but not silently.
    slides = {name: toy_sdata_factory(seed, n_obs=120) for name, seed in (("a", 1), ("b", 2))}
    both = sd.concatenate(slides, concatenate_tables=True, merge_coordinate_systems_on_name=True)
    both.tables["table"].obsm["X_storm"] = both.tables["table"].X.toarray()
    with caplog.at_level("WARNING", logger="storm_sc"):
        st.tl.storm_domains(both, n_domains=3, mpp=TOY_MPP)
    assert "'toy_spots-a' and 'toy_spots-b', which overlap in coordinate system 'global'" in caplog.text
    assert "rename_coordinate_systems" in caplog.text
    # the regions of one slide that tile it (fields of view side by side) are not stacked slides
    one = toy_sdata_factory(3, n_obs=120)
    table = one.tables["table"]
    spots = one.shapes["toy_spots"]
    left = (spots.geometry.x < spots.geometry.x.median()).to_numpy()
    assert st.io._slides.overlapping_regions(both) == ("toy_spots-a", "toy_spots-b", "global")
    tiled = sd.SpatialData(
        images=dict(one.images),
        shapes={"fov_1": spots[left], "fov_2": spots[~left]},
        tables={"table": _relinked(table, left)},
    )
    assert st.io._slides.overlapping_regions(tiled) is None


def _relinked(table, left):
    from spatialdata.models import TableModel

    table = table.copy()
    del table.uns[TableModel.ATTRS_KEY]
    table.obs["region"] = pd.Categorical(np.where(left, "fov_1", "fov_2"))
    return TableModel.parse(table, region=["fov_1", "fov_2"], region_key="region", instance_key="instance_id")
