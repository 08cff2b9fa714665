"""Several slides in one SpatialData (spatialdata.concatenate): told apart, taken apart, their platform kept."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import spatialdata as sd
from spatialdata.models import TableModel, get_table_keys
from spatialdata.transformations import Identity, set_transformation

import storm_sc as st
from storm_sc.io._slides import find_slides
from tests._paths import real_data

from ._synthetic import fingerprint


def _toys(n: int = 2):
    slides = {}
    for i, name in enumerate("abc"[:n]):
        s = st.datasets.toy(n_obs=40 + 10 * i, n_genes=10, seed=i)
        s.rename_coordinate_systems({"global": name})  # as readers name Visium's after the dataset
        slides[name] = s
    return slides


@pytest.mark.parametrize("tables", ["one", "several"])
def test_concatenated_slides_are_taken_apart(tables):
    both = sd.concatenate(_toys(), concatenate_tables=tables == "one")
    before = fingerprint(both)
    parts = st.io.split_slides(both)
    assert {k: p.tables[next(iter(p.tables))].n_obs for k, p in parts.items()} == {"toy_spots-a": 40, "toy_spots-b": 50}
    a = parts["toy_spots-a"]
    assert list(a.images) == ["toy_image-a"] and list(a.shapes) == ["toy_spots-a"]
    assert a.images["toy_image-a"] is both.images["toy_image-a"]  # shared, not copied
    table = next(iter(a.tables.values()))
    assert get_table_keys(table)[0] == "toy_spots-a"
    assert set(table.obs["region"]) == {"toy_spots-a"}
    # The slide's scale died with concatenate's attrs: the slide asks for mpp= rather than borrowing another's.
    assert a.attrs["storm_sc"] == {"library_id": "toy_spots-a"}
    with pytest.raises(ValueError, match="pass `mpp=`"):
        st.io.resolve(a)
    si = st.io.resolve(a, mpp=2.0)
    assert si.library_id == "toy_spots-a" and si.n_obs == 40 and si.image_key == "toy_image-a"
    table.obs["written"] = 1  # a slide's table is its own copy
    assert fingerprint(both) == before


def test_slides_built_by_storm_sc_stay_apart_when_concatenated_as_a_list():
    # from_arrays (legacy ST, HEST, the bulb and her2st loaders) places each slide in a system named after it, as
    # spatialdata-io's Visium reader does: in one shared "global" system two sections would lie on top of each other
    # and be analysed as one slide, each spot a neighbour of the other section's.
    rng = np.random.default_rng(0)
    slides = []
    for name in ("C2", "C3"):
        table = ad.AnnData(rng.poisson(2.0, (30, 6)).astype(np.float32))
        table.obs_names = [f"{name}_{i}" for i in range(30)]
        centres = rng.uniform(0, 400, (30, 2))
        slides.append(st.io.from_arrays(table, centres, np.zeros((400, 400, 3), np.uint8), mpp=1.0, library_id=name))
    both = sd.concatenate(slides, concatenate_tables=True)
    assert sorted(both.coordinate_systems) == ["C2", "C3"]
    assert {p.name: p.regions for p in find_slides(both)} == {"C2_spots": ("C2_spots",), "C3_spots": ("C3_spots",)}


def test_predictions_of_concatenated_slides_are_not_taken_for_measurements():
    # anndata's concat (under spatialdata.concatenate) drops the prediction tables' .uns record; their layer stays
    slides = _toys()
    for s in slides.values():
        table = s["table"]
        pred = ad.AnnData(np.zeros((table.n_obs, 2), np.float32), obs=table.obs[["region", "instance_id"]].copy())
        pred.layers["predicted_std"] = np.ones_like(pred.X)
        pred.uns["storm"] = {"predict_expression": {}}
        s.tables["storm_predicted"] = TableModel.parse(
            pred, region="toy_spots", region_key="region", instance_key="instance_id"
        )
    both = sd.concatenate(slides, concatenate_tables=True)
    assert "storm" not in both["storm_predicted"].uns
    assert sorted(st.io.split_slides(both)) == ["toy_spots-a", "toy_spots-b"]


def test_one_slide_is_returned_as_it_is():
    sdata = st.datasets.toy(n_obs=30, n_genes=5, seed=0)
    assert find_slides(sdata) is None
    parts = st.io.split_slides(sdata)
    assert list(parts.values())[0] is sdata


def test_one_slide_is_named_without_its_scale():
    # Naming the only slide must not need what analysing it does (a scale, an image): split_slides has no `mpp=`.
    sdata = st.datasets.toy(n_obs=30, n_genes=5, seed=0)
    sdata.attrs.clear()  # no scale recorded: resolve would ask for `mpp=`
    with pytest.raises(ValueError, match="pass `mpp=`"):
        st.io.resolve(sdata)
    assert list(st.io.split_slides(sdata)) == [st.io.resolve(sdata, mpp=1.0).library_id]
    table = sdata.tables["table"].copy()
    table.obsm["spatial"] = np.zeros((table.n_obs, 2))
    del table.uns["spatialdata_attrs"]
    assert list(st.io.split_slides(table)) == ["slide"]  # positions without an image: resolve's name too


def test_fields_of_view_of_one_slide_stay_together():
    # CosMx-like: one table over two elements that share the slide's coordinate system.
    sdata = st.datasets.toy(n_obs=30, n_genes=5, seed=0)
    spots = sdata.shapes["toy_spots"]
    sdata.shapes["fov_1"], sdata.shapes["fov_2"] = spots.iloc[:15].copy(), spots.iloc[15:].copy()
    for key in ("fov_1", "fov_2"):
        set_transformation(sdata.shapes[key], Identity(), to_coordinate_system="global")
    table = sdata.tables.pop("table")
    _, region_key, instance_key = get_table_keys(table)
    table.obs[region_key] = ["fov_1"] * 15 + ["fov_2"] * 15
    table.obs[region_key] = table.obs[region_key].astype("category")
    del table.uns["spatialdata_attrs"]
    sdata.tables["table"] = TableModel.parse(
        table, region=["fov_1", "fov_2"], region_key=region_key, instance_key=instance_key
    )
    assert find_slides(sdata) is None


def test_tables_on_one_slide_are_a_choice_not_slides():
    # Visium HD-like: two tables (bin sizes) on elements of one coordinate system.
    sdata = st.datasets.toy(n_obs=30, n_genes=5, seed=0)
    sdata.shapes["other_bins"] = sdata.shapes["toy_spots"].copy()
    set_transformation(sdata.shapes["other_bins"], Identity(), to_coordinate_system="global")
    other = sdata.tables["table"].copy()
    other.obs["region"] = "other_bins"
    other.obs["region"] = other.obs["region"].astype("category")
    del other.uns["spatialdata_attrs"]
    _, _, instance = get_table_keys(sdata.tables["table"])
    sdata.tables["other"] = TableModel.parse(other, region="other_bins", region_key="region", instance_key=instance)
    assert find_slides(sdata) is None
    with pytest.raises(ValueError, match="pass `table_key=`"):
        st.io.split_slides(sdata)


def test_split_slides_refuses_bad_input():
    with pytest.raises(TypeError, match="must be a SpatialData or an AnnData"):
        st.io.split_slides({"table": 1})
    images_only = sd.SpatialData(images=dict(st.datasets.toy(n_obs=20, n_genes=3, seed=0).images))
    with pytest.raises(ValueError, match="has no table"):
        st.io.split_slides(images_only)
    with pytest.raises(ValueError, match="has no `.obsm\\['spatial'\\]`.*or in microns with `mpp=1`"):
        st.io.split_slides(st.datasets.toy(n_obs=20, n_genes=3, seed=0)["table"])
    with pytest.raises(ValueError, match="No table 'nope'"):
        st.io.split_slides(st.datasets.toy(n_obs=20, n_genes=3, seed=0), table_key="nope")


@pytest.mark.realdata
@pytest.mark.parametrize("tables", ["one", "several"])
def test_concatenated_visium_sections_resolve_as_alone(tables, datasets_from_shared_data):
    real_data("visium_ffpe_villacampa2021")
    names = ["V19D02-085_B1", "V19D02-085_C1"]
    alone = {n: st.io.resolve(st.datasets.visium_ffpe(n)) for n in names}
    both = sd.concatenate([st.datasets.visium_ffpe(n) for n in names], concatenate_tables=tables == "one")
    assert both.attrs == {}  # concatenate drops the reader's name ...
    assert st.io.detect_platform(both) == "visium"  # ... which the tables' columns still tell
    parts = st.io.split_slides(both)
    assert list(parts) == names
    for name, part in parts.items():
        si = st.io.resolve(part)
        assert si.platform == "visium" and si.library_id == name and si.image_key == f"{name}_hires_image"
        assert si.n_obs == alone[name].n_obs
        np.testing.assert_allclose(si.centers_um, alone[name].centers_um)
        assert si.mpp == pytest.approx(alone[name].mpp)


@pytest.mark.realdata
@pytest.mark.parametrize("loader", ["cosmx_lung12"])
def test_concatenated_cell_slides_keep_their_cells_together(loader, datasets_from_shared_data):
    alone = getattr(st.datasets, loader)()
    both = sd.concatenate({"x": getattr(st.datasets, loader)(), "y": getattr(st.datasets, loader)()},
                          concatenate_tables=True)  # fmt: skip
    single = st.io.resolve(alone, use_image=False)
    assert st.io.detect_platform(both) == single.platform  # from the tables' columns: attrs are gone
    parts = st.io.split_slides(both)
    assert len(parts) == 2
    for key, part in zip("xy", parts.values(), strict=True):
        si = st.io.resolve(part, use_image=False)
        # CosMx: all fields of view of one slide stay together (they share the slide's coordinate system)
        assert len(si.regions) == len(single.regions) and all(r.endswith(f"-{key}") for r in si.regions)
        assert si.n_obs == single.n_obs and si.platform == single.platform
        np.testing.assert_allclose(si.centers_um, single.centers_um)


def _scanpy_concat():
    import anndata as ad

    from .test_anndata_input import _visium_adata

    parts = {}
    for name, seed in (("s1", 0), ("s2", 1)):
        a = _visium_adata(n_rows=4 + seed, n_cols=6)
        a.uns["spatial"] = {name: a.uns["spatial"].pop("lib1")}
        parts[name] = a
    both = ad.concat(parts, label="library_id", uns_merge="unique", index_unique="-")
    return both, parts


def test_scanpy_concatenated_libraries_are_taken_apart():
    both, parts = _scanpy_concat()
    assert set(both.uns["spatial"]) == {"s1", "s2"}
    with pytest.raises(ValueError, match=r"several libraries.*split_slides"):
        st.io.resolve(both)
    split = st.io.split_slides(both)
    assert list(split) == ["s1", "s2"]
    for name, piece in split.items():
        assert list(piece.uns["spatial"]) == [name]
        si, alone = st.io.resolve(piece), st.io.resolve(parts[name])
        assert si.n_obs == alone.n_obs and si.mpp == pytest.approx(alone.mpp)
        np.testing.assert_allclose(si.centers_um, alone.centers_um)
    split["s1"].obs["written"] = 1
    assert "written" not in both.obs
    # without a column naming the libraries, there is nothing to split by: the message says what is needed
    del both.obs["library_id"]
    with pytest.raises(ValueError, match=r"\.obs column whose values are these names"):
        st.io.split_slides(both)
