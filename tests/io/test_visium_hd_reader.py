"""Visium HD as the real ``spatialdata_io.visium_hd`` reads it: storm_sc on the installed reader's own output.

No real Visium HD output is available, so ``tests/io/_spaceranger_hd.py`` writes a tiny but format-faithful Space
Ranger folder (10x HDF5 matrices, tissue_positions.parquet, scalefactors, PNG/TIFF images, feature_slice.h5,
segmented cells). These tests show that the installed reader accepts it as written (counts, barcodes and pixel
positions come through), and that storm_sc detects the platform, finds the bin scale and the full-resolution image,
asks for a table among the bins and cells, falls back to the hires image, follows rasterised bins, and embeds and
predicts on a bin table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import spatialdata_io
from spatialdata.transformations import Identity, get_transformation

import storm_sc as st
from storm_sc.io._elements import full_res
from storm_sc.io._resolve import UnknownScaleError
from tests.io._spaceranger_hd import BACKGROUND_RGB, GENES, HIRES_SCALEF, LOWRES_SCALEF, MPP, write_visium_hd
from tests.io._synthetic import fingerprint

BINS = ("square_002um", "square_008um", "square_016um")


def _read(path, dataset_id="hdtest", **kwargs):
    # The reader's defaults: every bin size, the full-resolution image from microscope_image/, hires and lowres,
    # and the segmented cells since the files are there (load_segmentations_only=None only warns about a future
    # default, FutureWarning, which pytest ignores here).
    return spatialdata_io.visium_hd(path, dataset_id=dataset_id, **kwargs)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("visium_hd") / "outs"
    return path, write_visium_hd(path)


@pytest.fixture(scope="module")
def hd(written):
    return _read(written[0])


def _nearest_neighbour_um(xy: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def test_the_reader_takes_the_generated_folder_as_written(hd, written):
    path, truth = written
    assert set(hd.tables) == {*BINS, "cell_segmentations"}
    assert set(hd.shapes) == {f"hdtest_{b}" for b in BINS} | {"hdtest_cell_segmentations"}
    assert set(hd.images) == {"hdtest_full_image", "hdtest_hires_image", "hdtest_lowres_image"}
    assert hd.attrs["spatialdata_io_reader"] == "visium_hd"
    for bin_um, key in zip((2, 8, 16), BINS, strict=True):
        table = hd.tables[key]
        assert list(table.obs_names) == truth["barcodes"][bin_um]
        assert list(table.var_names) == list(GENES)
        assert list(table.var["gene_ids"]) == list(GENES.values())
        np.testing.assert_array_equal(table.X.toarray(), truth["counts"][bin_um])
        np.testing.assert_allclose(table.obsm["spatial"], truth["centers_px"][bin_um])
        assert table.uns["spatialdata_attrs"] == {
            "region": f"hdtest_{key}",
            "region_key": "region",
            "instance_key": "location_id",
        }
        assert isinstance(get_transformation(hd.shapes[f"hdtest_{key}"], "hdtest"), Identity)
    # bigger bins hold the sums of their 2 um bins, as barcode_mappings.parquet maps them
    two = hd.tables["square_002um"]
    mapping = pd.read_parquet(path / "barcode_mappings.parquet").set_index("square_002um").loc[two.obs_names]
    for key in BINS[1:]:
        summed = pd.DataFrame(two.X.toarray(), index=two.obs_names).groupby(mapping[key].to_numpy()).sum()
        np.testing.assert_array_equal(summed.loc[hd.tables[key].obs_names].to_numpy(), hd.tables[key].X.toarray())
    np.testing.assert_array_equal(hd.tables["cell_segmentations"].X.toarray(), truth["cell_counts"])
    # hires and lowres sit in the slide's system by the inverse of their scale factors
    for tag, scalef in (("hires", HIRES_SCALEF), ("lowres", LOWRES_SCALEF)):
        to_slide = get_transformation(hd.images[f"hdtest_{tag}_image"], "hdtest").to_affine_matrix(
            ("x", "y"), ("x", "y")
        )
        np.testing.assert_allclose(np.diag(to_slide)[:2], 1 / scalef)


def test_detected_as_visium_hd(hd):
    assert st.io.detect_platform(hd) == "visium_hd"


def test_several_tables_need_a_choice_listing_bins_and_cells(hd):
    before = fingerprint(hd)
    with pytest.raises(
        ValueError, match=r"table_key=.*\['square_002um', 'square_008um', 'square_016um'\].*\['cell_segmentations'\]"
    ):
        st.io.resolve(hd)
    assert fingerprint(hd) == before


@pytest.mark.parametrize("bin_um", [2, 8, 16])
def test_bin_size_sets_the_scale_on_the_full_image(hd, bin_um):
    key = f"square_{bin_um:03}um"
    si = st.io.resolve(hd, table_key=key)
    assert si.platform == "visium_hd"
    assert si.coordinate_system == "hdtest"
    assert si.library_id == "hdtest"
    assert si.regions == (f"hdtest_{key}",)
    assert si.extra["bin_size_um"] == bin_um
    assert si.image_key == "hdtest_full_image"
    assert si.mpp == pytest.approx(MPP)
    # positions: the reader's full-resolution pixels, and one bin apart in microns (the grid is slightly rotated)
    np.testing.assert_allclose(si.centers_px, si.table.obsm["spatial"], atol=1e-9)
    np.testing.assert_allclose(_nearest_neighbour_um(si.centers_um), bin_um, rtol=1e-6)
    # the image agrees: bins in tissue sit on stained tissue, darker than the bare glass
    image = full_res(si.image).values
    x, y = np.floor(si.centers_px).astype(int).T
    assert (image[:, y, x].mean(axis=0) < np.mean(BACKGROUND_RGB) - 25).mean() > 0.9


def test_segmented_cells_take_the_scale_of_the_bins(hd):
    si = st.io.resolve(hd, table_key="cell_segmentations")
    assert si.regions == ("hdtest_cell_segmentations",)
    assert si.mpp == pytest.approx(MPP)
    assert si.extra["scale_from_bins"].startswith("hdtest_square_")
    # a cell is a 5 x 5 block of 2 um bins: 10 um across, its neighbours at least that far
    assert (_nearest_neighbour_um(si.centers_um) >= 10 - 1e-6).all()


def test_without_full_image_hires_is_used_and_cytassist_is_not(tmp_path):
    path = tmp_path / "outs"
    write_visium_hd(path, full_image=False, cells=False)
    with pytest.warns(UserWarning, match="No full resolution image found"):
        # load_all_images=True also loads the CytAssist capture, an RGB image that must not be taken for the H&E
        sdata = _read(path, load_all_images=True)
    assert "hdtest_cytassist_image" in sdata.images
    si = st.io.resolve(sdata, table_key="square_008um")
    assert si.image_key == "hdtest_hires_image"
    assert si.mpp == pytest.approx(MPP / HIRES_SCALEF)
    np.testing.assert_allclose(si.centers_px, si.table.obsm["spatial"] * HIRES_SCALEF, atol=1e-9)
    np.testing.assert_allclose(si.centers_um, si.table.obsm["spatial"] * MPP, atol=1e-9)


def test_mpp_of_the_full_resolution_scan_given_for_the_hires_image_says_what_to_pass(tmp_path):
    path = tmp_path / "outs"
    write_visium_hd(path, full_image=False, cells=False)
    with pytest.warns(UserWarning, match="No full resolution image found"):
        sdata = _read(path, bin_size=8)
    # Space Ranger's microns_per_pixel is per full-resolution pixel; the hires image's are 1 / HIRES_SCALEF of them
    with pytest.raises(ValueError, match="microns per pixel of image 'hdtest_hires_image'") as err:
        st.io.resolve(sdata, table_key="square_008um", mpp=MPP)
    suggested = MPP / HIRES_SCALEF
    assert f"spans {1 / HIRES_SCALEF:.4g} of those: pass mpp={suggested:.4g}" in str(err.value)
    assert st.io.resolve(sdata, table_key="square_008um", mpp=suggested).mpp == pytest.approx(suggested)


def test_tables_annotating_rasterised_bins(written):
    # annotate_table_by_labels=True: the reader relinks every bin table to labels rasterised from array_row/col
    sdata = _read(written[0], annotate_table_by_labels=True)
    assert sdata.tables["square_008um"].uns["spatialdata_attrs"]["region"] == "hdtest_square_008um_labels"
    si = st.io.resolve(sdata, table_key="square_008um")
    assert si.regions == ("hdtest_square_008um",)
    assert si.mpp == pytest.approx(MPP)
    np.testing.assert_allclose(si.centers_px, si.table.obsm["spatial"], atol=1e-9)


def test_embed_and_predict_on_the_16um_bins(written):
    sdata = _read(written[0])
    table = sdata.tables["square_016um"]
    st.tl.storm_embed(sdata, table_key="square_016um", verbose=False)  # the bundled reference model
    emb = table.obsm["X_storm"]
    assert emb.shape[0] == table.n_obs == 25
    assert np.isfinite(emb).all()
    pred = st.tl.predict_expression(sdata, table_key="square_016um", genes=["EPCAM", "COL1A1"], verbose=False)
    assert list(pred.var_names) == ["EPCAM", "COL1A1"]
    assert list(pred.obs_names) == list(table.obs_names)
    assert pred.obs.equals(table.obs)
    assert np.isfinite(pred.X).all()
    assert (pred.layers["predicted_std"] > 0).all()


def test_plots_draw_each_slide_of_concatenated_bin_tables(written):
    # Concatenated Visium HD slides hold one table per bin size, each annotating both slides: the slides of the
    # table chosen by table_key= are drawn, one panel each, as the tools analyse them.
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import spatialdata

    reads = [_read(written[0], dataset_id=d, bin_size=[8, 16], load_segmentations_only=False) for d in ("a", "b")]
    for sdata in reads:
        del sdata.tables["cell_segmentations"]
    both = spatialdata.concatenate(reads, concatenate_tables=True)
    table = both.tables["square_008um"]
    table.obs["storm_domain"] = pd.Categorical(np.arange(table.n_obs) % 2)
    table.obsm["X_storm"] = np.random.default_rng(0).normal(size=(table.n_obs, 4))
    fig = st.pl.domains(both, table_key="square_008um", image=False, show=False)
    assert [ax.get_title() for ax in fig.axes] == ["a_square_008um", "b_square_008um"]
    fig = st.pl.embedding_umap(both, table_key="square_008um", color="slide", show=False)
    assert len(fig.axes[0].collections[0].get_offsets()) == table.n_obs
    with pytest.raises(ValueError, match=r"split_slides\(data, table_key='square_008um'\)\['a_square_008um'\]"):
        st.pl.expression(both, "EPCAM", table_key="square_008um", show=False)
    # what one-slide steps advise takes that slide apart (split_slides without table_key finds no slides here)
    with pytest.raises(ValueError, match=r"split_slides\(sdata, table_key='square_008um'\)\[name\]"):
        st.io.resolve(both, table_key="square_008um")
    assert list(st.io.split_slides(both, table_key="square_008um")) == ["a_square_008um", "b_square_008um"]
    plt.close("all")


def test_segmented_cells_alone_point_at_space_rangers_microns_per_pixel(written):
    # read without bins, nothing in the object states the scale: the error says where Space Ranger records it, and
    # what that value becomes for the image chosen (the hires image's pixels are 1 / HIRES_SCALEF of full-res ones)
    cells = _read(written[0], load_segmentations_only=True)
    with pytest.raises(UnknownScaleError) as err:
        st.io.resolve(cells)
    message = str(err.value)
    assert "microns per pixel of image 'hdtest_full_image'" in message
    assert "`microns_per_pixel` in outs/segmented_outputs/spatial/scalefactors_json.json: pass that value" in message
    assert "load_segmentations_only=False" in message
    assert "100 um pitch" not in message
    with pytest.raises(UnknownScaleError, match=rf"pass that value x {1 / HIRES_SCALEF:g}"):
        st.io.resolve(cells, image_key="hdtest_hires_image")
    with pytest.raises(UnknownScaleError, match="microns per unit of the coordinates"):
        st.tl.storm_domains(cells, n_domains=2)
    # following the hint gives the scale the bins give
    assert st.io.resolve(cells, mpp=MPP).mpp == pytest.approx(MPP)
    hires = st.io.resolve(cells, image_key="hdtest_hires_image", mpp=MPP / HIRES_SCALEF)
    np.testing.assert_allclose(hires.centers_um, st.io.resolve(cells, mpp=MPP).centers_um)
