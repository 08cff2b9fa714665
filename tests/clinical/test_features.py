from __future__ import annotations

import logging

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import storm_sc as st
from storm_sc.clinical import read_slide_features
from storm_sc.models import ExpressionReadout, StormInputs
from storm_sc.models._readout import READOUT_INPUTS
from storm_sc.tl._clinical import slide_features
from storm_sc.wsi import open_slide, read_tiles, tile_grid
from tests.clinical.conftest import GENES, textured_slide
from tests.wsi._slides import glass, write_pyramid


@pytest.fixture
def slide_file(tmp_path):
    rng = np.random.default_rng(0)
    rgb = np.concatenate([textured_slide(0.5, rng, cells=8), textured_slide(0.2, rng, cells=8)], axis=1)
    return write_pyramid(tmp_path / "slide_a.tif", rgb, 1.75, levels=2)


class _Counter:
    """Counts the tiles the morphology encoder sees per call; optionally interrupts like Ctrl-C after some calls."""

    def __init__(self, model, stop_after: int | None = None):
        self.sizes: list[int] = []
        self.stop_after = stop_after
        self.handle = model.network.morphology.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if self.stop_after is not None and len(self.sizes) >= self.stop_after:
            raise KeyboardInterrupt
        self.sizes.append(int(args[0].shape[0]))

    def remove(self):
        self.handle.remove()


def test_features_file_contents_and_equivalence_with_model_inference(slide_file, tmp_path, tiny_model):
    out = tmp_path / "feats"
    table = slide_features([slide_file], tiny_model, out_dir=out, device="cpu", verbose=False)
    assert list(table.columns) == ["slide_id", "path", "feature_file", "n_tiles", "mpp", "status"]
    row = table.iloc[0]
    assert row["slide_id"] == "slide_a"
    assert row["status"] == "computed"
    assert row["mpp"] == pytest.approx(1.75)
    assert not list(out.glob("*.partial"))
    sf = read_slide_features(row["feature_file"], key="embedding+expression")
    cfg = tiny_model.config
    assert sf.features.shape == (row["n_tiles"], cfg.embed_dim + len(GENES))
    assert sf.genes == GENES
    with h5py.File(row["feature_file"]) as f:
        assert f.attrs["complete"]
        assert f.attrs["n_encoded"] == row["n_tiles"] == f.attrs["n_context"]

    # The streamed, two-pass extraction gives what the model's own inference gives on the same tiles.
    with open_slide(slide_file) as slide:
        grid = tile_grid(slide, patch_um=112.0)
        tiles = read_tiles(slide, grid, np.arange(grid.n_tiles), out_px=cfg.image_size,
                           level=slide.best_level(112.0 / cfg.image_size))  # fmt: skip
    assert slide.best_level(112.0 / cfg.image_size) == 1  # 3.5 um/px tiles come from the 2x level
    np.testing.assert_allclose(sf.coords_um, grid.centers_um)
    inputs = StormInputs.from_arrays(grid.centers_um, config=cfg, patches=tiles)
    expected = tiny_model.embed(inputs, use_expression=False, device="cpu", verbose=False)
    np.testing.assert_allclose(sf.features[:, : cfg.embed_dim], expected, rtol=1e-4, atol=1e-5)
    pred = tiny_model.predict_expression(inputs, device="cpu", verbose=False)
    np.testing.assert_allclose(sf.features[:, cfg.embed_dim :], pred.mean, rtol=2e-3, atol=2e-3)  # stored float16


def test_a_slide_bigger_than_the_batch_is_streamed_in_pieces(slide_file, tmp_path, tiny_model):
    counter = _Counter(tiny_model)
    try:
        table = slide_features([slide_file], tiny_model, out_dir=tmp_path / "f", batch_size=16, device="cpu",
                               genes=["G1", "G3"], verbose=False)  # fmt: skip
    finally:
        counter.remove()
    n = int(table["n_tiles"].iloc[0])
    assert n > 2 * 16
    assert max(counter.sizes) == 16
    assert sum(counter.sizes) == n
    assert len(counter.sizes) == -(-n // 16)
    assert read_slide_features(table["feature_file"].iloc[0], key="expression").genes == ["G1", "G3"]


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(slide_file, tmp_path, tiny_model, caplog):
    reference = slide_features([slide_file], tiny_model, out_dir=tmp_path / "ref", batch_size=16, device="cpu",
                               verbose=False)  # fmt: skip
    out = tmp_path / "run"
    counter = _Counter(tiny_model, stop_after=2)
    try:
        with pytest.raises(KeyboardInterrupt):
            slide_features([slide_file], tiny_model, out_dir=out, batch_size=16, device="cpu", verbose=False)
    finally:
        counter.remove()
    partial = out / "slide_a.h5.partial"
    assert partial.exists()
    assert not (out / "slide_a.h5").exists()
    with h5py.File(partial) as f:
        assert f.attrs["n_encoded"] == 32
        assert not f.attrs["complete"]

    counter = _Counter(tiny_model)
    try:
        with caplog.at_level(logging.INFO, logger="storm_sc"):
            resumed = slide_features([slide_file], tiny_model, out_dir=out, batch_size=16, device="cpu",
                                     verbose=False)  # fmt: skip
    finally:
        counter.remove()
    n = int(reference["n_tiles"].iloc[0])
    assert resumed["status"].iloc[0] == "resumed"
    assert "resuming" in caplog.text
    assert sum(counter.sizes) == n - 32  # only the tiles not yet encoded
    assert not partial.exists()
    for key in ("embedding", "expression", "tokens"):
        a = read_slide_features(reference["feature_file"].iloc[0], key=key).features
        b = read_slide_features(resumed["feature_file"].iloc[0], key=key).features
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_complete_files_are_reused_and_never_silently_replaced(slide_file, tmp_path, tiny_model, caplog):
    out = tmp_path / "f"
    first = slide_features([slide_file], tiny_model, out_dir=out, device="cpu", verbose=False)
    path = out / "slide_a.h5"
    stamp = path.stat().st_mtime_ns
    counter = _Counter(tiny_model)
    try:
        again = slide_features([slide_file], tiny_model, out_dir=out, device="cpu", verbose=False)
    finally:
        counter.remove()
    assert again["status"].iloc[0] == "reused"
    assert not counter.sizes
    assert path.stat().st_mtime_ns == stamp
    pd.testing.assert_series_equal(first["n_tiles"], again["n_tiles"])
    # Other settings or another model: an error before any work, unless overwrite=True.
    with pytest.raises(FileExistsError, match="tissue_threshold.*overwrite=True"):
        slide_features([slide_file], tiny_model, out_dir=out, tissue_threshold=0.9, device="cpu", verbose=False)
    other = st.models.StormModel("storm-tiny", GENES, seed=1)
    with pytest.raises(FileExistsError, match="model_digest"):
        slide_features([slide_file], other, out_dir=out, device="cpu", verbose=False)
    assert path.stat().st_mtime_ns == stamp
    redone = slide_features([slide_file], other, out_dir=out, device="cpu", overwrite=True, verbose=False)
    assert redone["status"].iloc[0] == "computed"
    assert path.stat().st_mtime_ns != stamp


def test_slides_from_a_cohort_column_or_an_array_of_paths(slide_file, tmp_path, tiny_model):
    out = tmp_path / "f"
    column = pd.DataFrame({"path": [str(slide_file)]}, index=[7])["path"]
    table = slide_features(column, tiny_model, out_dir=out, device="cpu", verbose=False)
    assert table[["slide_id", "status"]].values.tolist() == [["slide_a", "computed"]]
    again = slide_features(np.array([str(slide_file)]), tiny_model, out_dir=out, device="cpu", verbose=False)
    assert again[["slide_id", "status"]].values.tolist() == [["slide_a", "reused"]]
    with pytest.raises(ValueError, match=r"1-D array of paths; got an array of shape \(1, 1\)"):
        slide_features(np.array([[str(slide_file)]]), tiny_model, out_dir=out, verbose=False)


def test_a_wrong_mpp_is_warned_about_once_per_slide(slide_file, tmp_path, tiny_model, caplog):
    # The file records 1.75 um/px; 17.5 (a misplaced decimal point) makes 112 um tiles 6.4 px for a 32 px model.
    with caplog.at_level(logging.WARNING, logger="storm_sc"):
        slide_features([slide_file], tiny_model, out_dir=tmp_path / "f", mpp=17.5, device="cpu", verbose=False)
    upsampled = [r.getMessage() for r in caplog.records if "upsampled" in r.getMessage()]
    assert len(upsampled) == 1
    assert "slide_a: 112 um tiles are 6.4 px at mpp=17.5 um/px (given)" in upsampled[0]
    assert "upsampled 5.0x. Is the mpp right" in upsampled[0]
    assert caplog.text.count(f"{slide_file}: using mpp=17.5 um/px as given, but the file records 1.75 um/px") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="storm_sc"):
        slide_features([slide_file], tiny_model, out_dir=tmp_path / "g", device="cpu", verbose=False)
    assert not caplog.records
    # a few percent short of the patch (a 20x scan at 0.505 um/px under a 224 px / 112 um patch) is not warned about
    with caplog.at_level(logging.WARNING, logger="storm_sc"):
        slide_features([slide_file], tiny_model, out_dir=tmp_path / "h", mpp=3.6, device="cpu", verbose=False)
    assert not [r for r in caplog.records if "upsampled" in r.getMessage()]


def test_errors_of_one_slide_name_the_slide_and_its_path(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    section = tmp_path / "V1_A1" / "tissue_hires_image.png"  # every Visium section's image has this name
    section.parent.mkdir()
    Image.fromarray(textured_slide(0.5, rng)).save(section)
    with pytest.raises(ValueError, match=rf"Slide 'V1_A1': {section}: the microns per pixel are unknown"):
        slide_features({"V1_A1": section}, tiny_model, out_dir=tmp_path / "f", verbose=False)
    truncated = tmp_path / "cut.png"
    data = section.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=rf"Slide 'V1_B1' \({truncated}\): computing its features failed: .*truncated"):
        slide_features({"V1_B1": truncated}, tiny_model, out_dir=tmp_path / "f", mpp=3.5, device="cpu",
                       verbose=False)  # fmt: skip


def test_a_failing_slide_keeps_the_class_of_its_error(tmp_path, tiny_model, monkeypatch):
    # A cohort script catching PermissionError (a slide still being copied) must still catch it once the slide is named.
    section = tmp_path / "V1_A1.png"
    Image.fromarray(textured_slide(0.5, np.random.default_rng(0))).save(section)

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("storm_sc.clinical._slides.extract_slide", unreadable)
    with pytest.raises(
        PermissionError, match=r"Slide 'V1_A1' .*computing its features failed: .*Permission denied"
    ) as err:
        slide_features({"V1_A1": section}, tiny_model, out_dir=tmp_path / "f", mpp=3.5, device="cpu", verbose=False)
    assert err.value.errno == 13


def test_a_file_that_is_not_a_feature_file_is_never_replaced(slide_file, tmp_path, tiny_model):
    out = tmp_path / "f"
    out.mkdir()
    path = out / "slide_a.h5"  # e.g. the slide's AnnData, saved under the same name
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=np.ones((3, 2)))
    stamp = path.stat().st_mtime_ns
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"not storm_sc feature files: \[.*slide_a.h5'\].*move them"):
            slide_features([slide_file], tiny_model, out_dir=out, device="cpu", overwrite=overwrite, verbose=False)
    assert path.stat().st_mtime_ns == stamp
    with h5py.File(path, "r") as f:
        assert list(f) == ["X"]


def test_a_damaged_feature_file_is_replaced_when_asked(slide_file, tmp_path, tiny_model):
    # A feature file truncated by a copy cannot be read: not mistaken for the user's own file (which would never be
    # replaced), but refused until overwrite=True, which recomputes it.
    out = tmp_path / "f"
    slide_features([slide_file], tiny_model, out_dir=out, device="cpu", verbose=False)
    path = out / "slide_a.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileExistsError, match=r"slide_a.h5 \(unreadable: damaged\?\).*overwrite=True"):
        slide_features([slide_file], tiny_model, out_dir=out, device="cpu", verbose=False)
    table = slide_features([slide_file], tiny_model, out_dir=out, device="cpu", overwrite=True, verbose=False)
    assert table["status"].tolist() == ["computed"]
    assert path.read_bytes() != data[: len(data) // 2]


def test_a_partial_file_from_another_model_is_discarded_not_trusted(slide_file, tmp_path, tiny_model, caplog):
    out = tmp_path / "f"
    other = st.models.StormModel("storm-tiny", GENES, seed=3)
    counter = _Counter(other, stop_after=1)
    try:
        with pytest.raises(KeyboardInterrupt):
            slide_features([slide_file], other, out_dir=out, batch_size=16, device="cpu", verbose=False)
    finally:
        counter.remove()
    assert (out / "slide_a.h5.partial").exists()
    with caplog.at_level(logging.WARNING, logger="storm_sc"):
        table = slide_features([slide_file], tiny_model, out_dir=out, batch_size=16, device="cpu", verbose=False)
    assert table["status"].iloc[0] == "computed"
    assert "discarding the partial feature file" in caplog.text


def test_bad_input_fails_before_any_work(tmp_path, tiny_model, slide_file):
    out = tmp_path / "f"
    png = tmp_path / "nompp.png"
    Image.fromarray(glass((64, 64), np.random.default_rng(0))).save(png)
    with pytest.raises(ValueError, match="Pass `mpp=`"):
        slide_features([slide_file, png], tiny_model, out_dir=out, device="cpu", verbose=False)
    assert not list(out.glob("*.h5*"))  # the first slide was not processed either
    with pytest.raises(FileNotFoundError, match="do not exist"):
        slide_features([slide_file, tmp_path / "gone.svs"], tiny_model, out_dir=out, verbose=False)
    (tmp_path / "scans").mkdir()
    with pytest.raises(IsADirectoryError, match="are folders, not image files"):
        slide_features([tmp_path / "scans"], tiny_model, out_dir=out, verbose=False)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        slide_features([slide_file], tiny_model, out_dir=tmp_path / "a_file", verbose=False)
    with pytest.raises(ValueError, match="unique"):
        slide_features([slide_file, slide_file], tiny_model, out_dir=out, verbose=False)
    with pytest.raises(ValueError, match="cannot name a file"):
        slide_features({"a/b": slide_file}, tiny_model, out_dir=out, verbose=False)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        slide_features([slide_file], tiny_model, out_dir=out, genes=["NOPE"], verbose=False)
    with pytest.raises(ValueError, match="tissue_threshold"):
        slide_features([slide_file], tiny_model, out_dir=out, tissue_threshold=2, verbose=False)
    with pytest.raises(ValueError, match="batch_size"):
        slide_features([slide_file], tiny_model, out_dir=out, batch_size=0, verbose=False)
    feats_model = st.models.StormModel(st.models.get_config("storm-tiny", morphology="features", feature_dim=8,
                                                            features_key="X_uni"), GENES)  # fmt: skip
    with pytest.raises(ValueError, match="precomputed patch features"):
        slide_features([slide_file], feats_model, out_dir=out, verbose=False)
    assert not list(out.glob("*.h5*"))
    # A slide given with an explicit pixel size and a per-slide table works.
    table = slide_features(pd.DataFrame({"slide_id": ["x"], "path": [str(png)], "mpp": [3.5]}), tiny_model,
                           out_dir=out, device="cpu", verbose=False)  # fmt: skip
    assert table["n_tiles"].iloc[0] == 0  # blank glass: a complete file with no tiles


def test_device_dispatch_matches_cpu_when_a_gpu_is_present(slide_file, tmp_path, tiny_model):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = slide_features([slide_file], tiny_model, out_dir=tmp_path / "cpu", device="cpu", verbose=False)
    gpu = slide_features([slide_file], tiny_model, out_dir=tmp_path / "gpu", device="cuda", verbose=False)
    a = read_slide_features(cpu["feature_file"].iloc[0]).features
    b = read_slide_features(gpu["feature_file"].iloc[0]).features
    assert a.shape == b.shape
    # bf16 autocast on the GPU: the same features up to its precision.
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_the_bundled_reference_is_the_default_model(slide_file, tmp_path):
    table = slide_features([slide_file], out_dir=tmp_path / "feats", device="cpu", verbose=False)
    row = table.iloc[0]
    assert row["status"] == "computed"
    sf = read_slide_features(row["feature_file"])
    reference = st.models.StormModel.from_pretrained()
    assert sf.features.shape[0] == row["n_tiles"] > 0
    assert sf.features.shape[1] >= reference.config.embed_dim and np.isfinite(sf.features).all()
    # The same slide through the reference loaded explicitly gives the same file contents.
    again = slide_features([slide_file], reference, out_dir=tmp_path / "again", device="cpu", verbose=False)
    np.testing.assert_array_equal(read_slide_features(again.iloc[0]["feature_file"]).features, sf.features)


def _tile_inputs(slide_file, config) -> StormInputs:
    """The tiles the whole-slide path reads, as prepared inputs for predict_expression."""
    with open_slide(slide_file) as slide:
        grid = tile_grid(slide, patch_um=112.0)
        tiles = read_tiles(slide, grid, np.arange(grid.n_tiles), out_px=config.image_size,
                           level=slide.best_level(112.0 / config.image_size))  # fmt: skip
    return StormInputs.from_arrays(grid.centers_um, config=config, patches=tiles)


def test_expression_comes_from_the_readout_where_the_model_has_one(slide_file, tmp_path):
    reference = st.models.StormModel.from_pretrained()
    readout_ids = np.sort(reference.readout.gene_ids)
    outside = np.setdiff1d(np.arange(len(reference.vocabulary)), readout_ids)
    symbols = reference.vocabulary.symbols
    genes = [symbols[readout_ids[0]], symbols[outside[0]], symbols[readout_ids[-1]]]
    table = slide_features([slide_file], reference, out_dir=tmp_path / "f", genes=genes, device="cpu", verbose=False)
    path = table.iloc[0]["feature_file"]
    with h5py.File(path) as f:
        sources = [s.decode() if isinstance(s, bytes) else s for s in f["expression_source"][:]]
    assert sources == ["readout", "head", "readout"]
    sf = read_slide_features(path, key="expression")
    inputs = _tile_inputs(slide_file, reference.config)
    pred = reference.predict_expression(inputs, genes=genes, device="cpu", verbose=False)
    assert list(pred.sources) == sources
    np.testing.assert_allclose(sf.features, pred.mean, rtol=2e-3, atol=2e-3)  # stored float16

    # By default the readout's genes are predicted (not the whole vocabulary), and the readout is part of what
    # makes a file reusable: a different readout means different features.
    default = slide_features([slide_file], reference, out_dir=tmp_path / "d", device="cpu", verbose=False)
    assert read_slide_features(default.iloc[0]["feature_file"], key="expression").features.shape[1] == len(readout_ids)
    reference.readout = None
    with pytest.raises(FileExistsError, match="readout_sha"):
        slide_features([slide_file], reference, out_dir=tmp_path / "f", genes=genes, device="cpu", verbose=False)


def test_a_readout_of_stain_statistics_predicts_as_predict_expression_does(slide_file, tmp_path):
    # The whole-slide path stores each tile's stain statistics beside its token; a readout that reads them (and their
    # niche mean) must predict exactly what predict_expression predicts from the same tiles.
    reference = st.models.StormModel.from_pretrained()
    rng = np.random.default_rng(0)
    ids = np.arange(5)
    width = 3 * reference.config.hidden_dim + 2 * reference.network.n_statistics
    reference.readout = ExpressionReadout(
        gene_ids=ids, coef=rng.normal(0, 0.05, (width, 5)).astype(np.float32), intercept=np.full(5, 2.0, np.float32),
        residual_sd=np.ones(5, np.float32), cv_pearson=np.zeros(5, np.float32), alpha=np.ones(5, np.float32),
        inputs=READOUT_INPUTS,
    )  # fmt: skip
    genes = [reference.vocabulary.symbols[i] for i in ids]
    table = slide_features([slide_file], reference, out_dir=tmp_path / "f", genes=genes, device="cpu", verbose=False)
    sf = read_slide_features(table.iloc[0]["feature_file"], key="expression")
    inputs = _tile_inputs(slide_file, reference.config)
    pred = reference.predict_expression(inputs, genes=genes, device="cpu", verbose=False)
    assert pred.sources == ["readout"] * 5
    assert pred.mean.std(axis=0).min() > 0.01  # the statistics make the prediction vary between tiles
    np.testing.assert_allclose(sf.features, pred.mean, rtol=2e-3, atol=2e-3)  # stored float16


def test_a_slide_table_indexed_by_slide_id(slide_file, tmp_path, tiny_model):
    table = pd.DataFrame({"path": [str(slide_file)]}, index=pd.Index(["case_7"], name="slide_id"))
    out = slide_features(table, tiny_model, out_dir=tmp_path / "f", device="cpu", verbose=False)
    assert out["slide_id"].tolist() == ["case_7"]
    with pytest.raises(ValueError, match=r"missing \['slide_id'\] \(columns: \['path'\]; index: \['case'\]\)"):
        slide_features(table.rename_axis("case"), tiny_model, out_dir=tmp_path / "f", verbose=False)


def test_an_mpp_in_the_wrong_unit_is_refused_before_any_work(slide_file, tmp_path, tiny_model):
    # 0.00175 (millimetres) gave "no tissue tiles found; the file records 0 tiles" and nothing else.
    out = tmp_path / "f"
    other = write_pyramid(tmp_path / "slide_b.tif", textured_slide(0.5, np.random.default_rng(1)), 1.75, levels=1)
    with pytest.raises(ValueError, match=r"Slide 'slide_b': at mpp=0.00175 um/px \(as given\), a 112 um tile is "
                                         r"6.4e\+04 px, larger than the whole image \(256 x 256 px.*Is it in "
                                         r"millimetres\? 0.00175 mm/px is mpp=1.75 um/px"):  # fmt: skip
        slide_features({"slide_a": slide_file, "slide_b": other}, tiny_model, out_dir=out, mpp={"slide_b": 0.00175},
                       verbose=False)  # fmt: skip
    assert not list(out.glob("*.h5*"))  # the first slide was not processed either
    with pytest.raises(ValueError, match=r"smaller than one pixel.*Is it in nanometres\? 1750 nm/px is mpp=1.75"):
        slide_features([slide_file], tiny_model, out_dir=out, mpp=1750, verbose=False)
    # a plausible scale on an image smaller than one tile (256 px at 0.25 um/px under 112 um tiles) is no unit mistake
    with pytest.raises(ValueError, match=r"larger than the whole image.*smaller than one tile: pass a smaller"):
        slide_features([slide_file], tiny_model, out_dir=out, mpp=0.25, patch_um=224, verbose=False)


def test_the_upsampling_warning_is_for_files_computed_not_reused(slide_file, tmp_path, tiny_model, caplog):
    kw = {"out_dir": tmp_path / "f", "mpp": 17.5, "device": "cpu", "verbose": False}
    with caplog.at_level(logging.WARNING, logger="storm_sc"):
        slide_features([slide_file], tiny_model, **kw)
    assert "upsampled" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="storm_sc"):
        again = slide_features([slide_file], tiny_model, **kw)
    assert again["status"].tolist() == ["reused"]
    assert "upsampled" not in caplog.text


def test_one_image_under_two_slide_ids_is_warned_about(slide_file, tmp_path, tiny_model, caplog):
    # accepted silently, and in a cohort the two ids could be two patients sharing one tissue across folds
    link = tmp_path / "same.tif"
    link.symlink_to(slide_file)
    with caplog.at_level(logging.WARNING, logger="storm_sc"):
        slide_features({"a": slide_file, "b": link}, tiny_model, out_dir=tmp_path / "f", device="cpu", verbose=False)
    assert f"1 image file(s) come under several slide ids (['a', 'b']: {slide_file})" in caplog.text
    assert "leak it between the cross-validation folds" in caplog.text


def test_a_windows_path_is_reported_as_missing_not_as_a_bad_id(tmp_path, tiny_model):
    # the id made from it ('C:\\data\\slides\\C2_q1') was refused first, hiding the real problem
    with pytest.raises(FileNotFoundError, match=r"do not exist: \['C:\\\\data\\\\slides\\\\C2_q1.jpg'\]. Paths "
                                                r"written with '\\' are Windows paths"):  # fmt: skip
        slide_features([r"C:\data\slides\C2_q1.jpg"], tiny_model, out_dir=tmp_path / "f", verbose=False)
