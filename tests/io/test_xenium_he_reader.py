"""Xenium with its post-Xenium H&E as the real ``spatialdata_io`` reads them: storm_sc on the reader's own output.

No real Xenium output with an H&E is available, so ``tests/io/_xenium_output.py`` writes a tiny but format-faithful
XOA 2.x folder (experiment.xenium, cells.zarr.zip, cells.parquet, cell_feature_matrix.h5, cell_boundaries.parquet,
a DAPI morphology_focus OME-TIFF) with an H&E OME-TIFF and its alignment csv (H&E pixels -> morphology pixels,
scaled, rotated and shifted). These tests show that ``spatialdata_io.xenium`` and ``xenium_aligned_image`` accept
it as written, and that storm_sc detects Xenium, takes the H&E (not the DAPI image) with its own scale derived
through the alignment, puts every cell centre on its stained nucleus in the H&E, and embeds and predicts per cell.
"""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata_io
from spatialdata.transformations import Affine, Identity, Scale, get_transformation

import storm_sc as st
from storm_sc.io._elements import full_res
from tests.io._xenium_output import BACKGROUND_RGB, GENES, HE_MPP, HE_TO_MORPHOLOGY, PIXEL_SIZE, write_xenium

# The smallest read: the table, cell polygons and the DAPI focus image; no raster labels (the table then annotates
# the unread ``cell_labels``), no transcripts; the H&E is added explicitly below.
READ = {
    "cells_boundaries": True,
    "nucleus_boundaries": False,
    "cells_labels": False,
    "nucleus_labels": False,
    "transcripts": False,
    "morphology_mip": False,
    "morphology_focus": True,
    "aligned_images": False,
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("xenium") / "outs"
    return path, write_xenium(path, seed=0)


@pytest.fixture(scope="module")
def xen(written):
    path, truth = written
    with pytest.warns(UserWarning, match="annotating 'cell_labels', which is not present"):
        sdata = spatialdata_io.xenium(path, **READ)
    sdata.images["he_image"] = spatialdata_io.xenium_aligned_image(truth["he_path"], truth["alignment_path"])
    return sdata


def test_the_reader_takes_the_generated_folder_as_written(xen, written):
    _, truth = written
    assert set(xen.images) == {"morphology_focus", "he_image"}
    assert set(xen.shapes) == {"cell_boundaries"}
    assert xen.attrs["spatialdata_io_reader"] == "xenium"
    table = xen.tables["table"]
    assert list(table.obs_names) == truth["cell_ids"]
    assert list(table.var_names) == list(GENES)
    np.testing.assert_array_equal(table.X.toarray(), truth["counts"])
    np.testing.assert_allclose(table.obsm["spatial"], truth["centroids_um"])
    assert table.uns["spatialdata_attrs"] == {
        "region": "cell_labels",
        "region_key": "region",
        "instance_key": "cell_id",
    }
    assert list(xen.shapes["cell_boundaries"].index) == truth["cell_ids"]
    # cells in microns, Scale(1 / pixel_size) to the morphology pixels of 'global'; DAPI is 'global' itself
    to_global = get_transformation(xen.shapes["cell_boundaries"], "global")
    assert isinstance(to_global, Scale)
    np.testing.assert_allclose(to_global.scale, 1 / PIXEL_SIZE)
    assert isinstance(get_transformation(xen.images["morphology_focus"], "global"), Identity)
    assert list(full_res(xen.images["morphology_focus"]).c.values) == ["DAPI"]
    # the H&E: RGB uint8, placed by the alignment csv as it is (H&E pixels -> morphology pixels)
    he = full_res(xen.images["he_image"])
    assert list(he.c.values) == ["r", "g", "b"] and he.dtype == np.uint8
    to_global = get_transformation(xen.images["he_image"], "global")
    assert isinstance(to_global, Affine)
    np.testing.assert_allclose(to_global.to_affine_matrix(("x", "y"), ("x", "y")), HE_TO_MORPHOLOGY)


def test_aligned_images_are_also_found_by_the_reader(written):
    path, _ = written
    with pytest.warns(UserWarning, match="annotating 'cell_labels'"):
        sdata = spatialdata_io.xenium(path, **{**READ, "morphology_focus": False, "aligned_images": True})
    assert set(sdata.images) == {"he_image"}
    si = st.io.resolve(sdata)
    assert si.image_key == "he_image"
    assert si.mpp == pytest.approx(HE_MPP, rel=1e-9)


def test_detected_as_xenium(xen):
    assert st.io.detect_platform(xen) == "xenium"


def test_a_concatenated_slide_keeps_its_platform_and_cells(xen, written):
    # spatialdata.concatenate drops attrs (the reader's name) and suffixes every element: cell_labels-a is
    # still replaced by cell_boundaries-a, and the table's columns still say Xenium.
    import spatialdata as sd

    renamed = sd.concatenate({"a": sd.deepcopy(xen)})  # concatenate renames the elements' systems in place
    si = st.io.resolve(renamed)
    assert si.platform == "xenium" and si.regions == ("cell_boundaries-a",) and si.image_key == "he_image-a"
    np.testing.assert_allclose(si.centers_um, written[1]["centroids_um"], atol=1e-4)


def test_the_he_is_used_with_its_scale_and_cells_sit_on_their_nuclei(xen, written):
    _, truth = written
    si = st.io.resolve(xen)
    assert si.platform == "xenium"
    assert si.coordinate_system == "global"
    assert si.regions == ("cell_boundaries",)  # the unread cell_labels are replaced by the cell polygons
    assert si.image_key == "he_image"  # never the DAPI morphology image
    assert si.extra["pixel_size_um"] == pytest.approx(PIXEL_SIZE, rel=1e-9)
    assert si.mpp == pytest.approx(HE_MPP, rel=1e-9)  # pixel_size x the alignment's scale
    np.testing.assert_allclose(si.centers_um, truth["centroids_um"], atol=1e-4)
    np.testing.assert_allclose(si.centers_px, truth["he_px"], atol=1e-3)
    # every cell centre lands on its hematoxylin-stained nucleus, far darker than the glass
    image = full_res(si.image).values
    x, y = np.floor(si.centers_px).astype(int).T
    assert (image[:, y, x].mean(axis=0) < np.mean(BACKGROUND_RGB) - 80).all()


def test_embed_and_predict_per_cell(written):
    path, truth = written
    with pytest.warns(UserWarning, match="annotating 'cell_labels'"):
        sdata = spatialdata_io.xenium(path, **READ)
    sdata.images["he_image"] = spatialdata_io.xenium_aligned_image(truth["he_path"], truth["alignment_path"])
    table = sdata.tables["table"]
    st.tl.storm_embed(sdata, verbose=False)  # the bundled reference model
    emb = table.obsm["X_storm"]
    assert emb.shape[0] == table.n_obs == len(truth["cell_ids"])
    assert np.isfinite(emb).all()
    pred = st.tl.predict_expression(sdata, genes=["EPCAM", "COL1A1"], verbose=False)
    assert list(pred.var_names) == ["EPCAM", "COL1A1"]
    assert list(pred.obs_names) == list(table.obs_names)
    assert pred.obs.equals(table.obs)
    assert np.isfinite(pred.X).all()


def test_without_he_prediction_asks_for_the_aligned_he_not_for_image_key(written):
    # the DAPI morphology image cannot stand in for the H&E: naming it with image_key= would not help
    path, _ = written
    with pytest.warns(UserWarning, match="annotating 'cell_labels'"):
        sdata = spatialdata_io.xenium(path, **READ)
    with pytest.raises(ValueError, match="no H&E image") as err:
        st.tl.predict_expression(sdata, genes=["EPCAM"], verbose=False)
    message = str(err.value)
    assert "None of its images is H&E" in message and "'morphology_focus'" in message
    assert "spatialdata_io.xenium_aligned_image" in message
    assert "image_key=" not in message
    assert "storm_predicted" not in sdata.tables
