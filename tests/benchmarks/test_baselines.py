"""The expression benchmark's pieces on generated data: splits, features, targets, metrics and ridge."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from benchmarks._baseline_features import pixel_features, stain_texture_features, window_side_px
from benchmarks._metrics import mse_per_gene, pearson_per_gene
from benchmarks._ridge import fit_ridge
from benchmarks._splits import across_patient_splits, inner_groups, patient_of, within_patient_splits
from benchmarks._targets import log1p_normalised, panel_present, top_hvgs


# --------------------------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------------------------
def test_within_patient_leaves_each_section_out_and_never_mixes_patients():
    splits = within_patient_splits(["C2", "C3", "C4", "D1", "D2", "E1"])
    assert [s.name for s in splits] == ["C2", "C3", "C4", "D1", "D2"]  # E has one section: nothing to train on
    for s in splits:
        assert s.test == (s.name,)
        assert s.name not in s.train
        assert {patient_of(t) for t in s.train} == {patient_of(s.name)}
    assert splits[0].train == ("C3", "C4")


def test_across_patient_holds_out_whole_patients():
    splits = across_patient_splits(["C2", "C3", "D1", "E1", "E2"])
    assert [s.name for s in splits] == ["patient C", "patient D", "patient E"]
    c = splits[0]
    assert c.test == ("C2", "C3")
    assert c.train == ("D1", "E1", "E2")
    for s in splits:
        assert not set(s.train) & set(s.test)
        assert set(s.train) | set(s.test) == {"C2", "C3", "D1", "E1", "E2"}


def test_across_patient_is_empty_with_one_patient():
    assert across_patient_splits(["C2", "C3", "C4"]) == []


@pytest.mark.parametrize("bad", [["C2", "XX"], ["C2", "c2"], "C2"])
def test_bad_section_ids_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        within_patient_splits(bad)


def test_inner_groups_by_section_then_by_stripes():
    sections = np.array(["C3", "C4", "C3", "C5"])
    assert inner_groups(sections, np.zeros(4)).tolist() == [0, 1, 0, 2]
    x = np.array([5.0, 1.0, 3.0, 0.0, 4.0, 2.0])
    groups = inner_groups(np.array(["C3"] * 6), x, n_blocks=3)
    # stripes follow x: the two leftmost spots together, etc.
    assert groups.tolist() == [2, 0, 1, 0, 2, 1]
    with pytest.raises(ValueError, match="n_blocks"):
        inner_groups(np.array(["C3"] * 6), x, n_blocks=1)


# --------------------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------------------
def _tissue_windows(rng: np.random.Generator, n: int, side: int, *, nuclei: int, pink: bool) -> np.ndarray:
    """H&E-like windows: pink (eosin) or pale background with ``nuclei`` dark blue-purple discs."""
    bg = np.array([235, 160, 200] if pink else [240, 235, 240], dtype=np.float64)
    yy, xx = np.mgrid[:side, :side]
    out = np.empty((n, side, side, 3), dtype=np.uint8)
    for k in range(n):
        img = np.broadcast_to(bg, (side, side, 3)).copy()
        for cy, cx in rng.uniform(0, side, (nuclei, 2)):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = [70, 50, 140]
        out[k] = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return out


def test_stain_texture_features_track_nuclei_and_stain():
    rng = np.random.default_rng(0)
    side = window_side_px(60, 1.0)
    sparse = _tissue_windows(rng, 3, side, nuclei=3, pink=False)
    dense = _tissue_windows(rng, 3, side, nuclei=12, pink=True)
    feats = stain_texture_features(np.concatenate([sparse, dense]), work_mpp=1.0, fields_um=(30, 60), verbose=False)
    assert feats.shape[0] == 6
    assert list(feats.columns[:2]) == ["f30um_hema_mean", "f30um_hema_std"]
    assert feats.columns.str.startswith("f60um_").sum() == feats.columns.str.startswith("f30um_").sum()
    assert np.isfinite(feats.to_numpy()).all()
    lo, hi = feats.iloc[:3], feats.iloc[3:]
    for col in ("f60um_hema_mean", "f60um_nuclear_fraction", "f60um_nuclei_per_1e4um2", "f60um_sobel_mean"):
        assert hi[col].min() > lo[col].max(), col
    assert hi["f60um_eosin_mean"].min() > lo["f60um_eosin_mean"].max()
    lbp = feats.filter(like="f60um_lbp").to_numpy()
    np.testing.assert_allclose(lbp.sum(axis=1), 1.0)


def test_smaller_field_sees_only_the_centre():
    rng = np.random.default_rng(1)
    side = window_side_px(40, 1.0)
    windows = _tissue_windows(rng, 1, side, nuclei=0, pink=False)
    # nuclei only in the outer ring: the 20 um centre stays blank
    ring = _tissue_windows(rng, 1, side, nuclei=60, pink=False)
    windows[0, :, :8] = ring[0, :, :8]
    windows[0, :8] = ring[0, :8]
    feats = stain_texture_features(windows, work_mpp=1.0, fields_um=(20, 40), verbose=False)
    assert feats.loc[0, "f20um_nuclear_fraction"] < 0.01 < feats.loc[0, "f40um_nuclear_fraction"]


def test_features_scale_with_physical_resolution():
    """The same tissue sampled at 1 and 0.5 um/px gives similar physical features."""
    rng = np.random.default_rng(2)
    coarse = _tissue_windows(rng, 2, 40, nuclei=15, pink=True)
    fine = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)
    f1 = stain_texture_features(coarse, work_mpp=1.0, fields_um=(40,), verbose=False)
    f2 = stain_texture_features(fine, work_mpp=0.5, fields_um=(40,), verbose=False)
    for col in ("f40um_hema_mean", "f40um_nuclear_fraction", "f40um_tissue_fraction"):
        np.testing.assert_allclose(f1[col], f2[col], rtol=0.1, atol=0.01)


def test_feature_input_errors_are_actionable():
    ok = np.zeros((2, 40, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="transpose"):
        stain_texture_features(ok.transpose(0, 3, 1, 2), work_mpp=1.0, fields_um=(40,))
    with pytest.raises(ValueError, match="uint8"):
        stain_texture_features(ok.astype(np.float32), work_mpp=1.0, fields_um=(40,))
    with pytest.raises(ValueError, match="patch_px=80"):
        stain_texture_features(ok, work_mpp=0.5, fields_um=(40,))
    with pytest.raises(ValueError, match="twice"):
        stain_texture_features(ok, work_mpp=1.0, fields_um=(40, 40))


def test_pixel_features_flatten_in_unit_range():
    patches = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    patches[1] = 255
    patches[0, 0, 1, 2] = 51
    feats = pixel_features(patches)
    assert feats.shape == (2, 192)
    assert feats.loc[0, "px_0_1_b"] == pytest.approx(0.2)
    assert feats.loc[1].eq(1.0).all()


# --------------------------------------------------------------------------------------------------------------------
# Targets, metrics, ridge
# --------------------------------------------------------------------------------------------------------------------
def test_log1p_normalised_scales_each_spot_by_its_total():
    counts = ad.AnnData(np.array([[10.0, 30.0, 60.0], [1.0, 0.0, 1.0]], dtype=np.float32))
    out = log1p_normalised(counts)
    np.testing.assert_allclose(np.expm1(out.to_numpy()).sum(axis=1), 1e4, rtol=1e-4)
    cpm = log1p_normalised(counts, target_sum=1e6)
    np.testing.assert_allclose(np.expm1(cpm.to_numpy()), np.expm1(out.to_numpy()) * 100, rtol=1e-4)
    assert out.iloc[1, 1] == 0.0
    with pytest.raises(ValueError, match="no counts"):
        log1p_normalised(ad.AnnData(np.zeros((1, 2), dtype=np.float32)))
    with pytest.raises(ValueError, match="target_sum"):
        log1p_normalised(counts, target_sum=0)


def test_top_hvgs_prefers_spatially_varying_genes_and_skips_rare_ones():
    rng = np.random.default_rng(0)
    n = 400
    base = rng.poisson(20, (n, 40)).astype(float)
    region = np.arange(n) < n // 2
    base[:, 0] = rng.poisson(np.where(region, 80, 2))  # strongly variable
    base[:, 1] = 0.0
    base[:5, 1] = 500.0  # variable, but seen in 5 spots only
    expr = pd.DataFrame(np.log1p(base), columns=[f"g{i}" for i in range(40)])
    top = top_hvgs(expr, n_top=3, min_detected=0.1)
    assert top[0] == "g0"
    assert "g1" not in top
    with pytest.raises(ValueError, match="n_top"):
        top_hvgs(expr, n_top=100)


def test_panel_present_keeps_panel_order():
    assert panel_present(["B", "A", "Z", "B"], ["A", "B", "C"]) == ["B", "A"]


def test_pearson_conventions():
    truth = np.array([[0.0, 1.0, 3.0], [1.0, 1.0, 2.0], [2.0, 1.0, 1.0]])
    pred = np.array([[0.0, 0.0, 5.0], [2.0, 3.0, 5.0], [4.0, 9.0, 5.0]])
    r = pearson_per_gene(truth, pred)
    assert r[0] == pytest.approx(1.0)
    assert np.isnan(r[1])  # constant truth: not scorable
    assert r[2] == 0.0  # constant prediction: no information
    assert pearson_per_gene(truth, -truth)[0] == pytest.approx(-1.0)
    np.testing.assert_allclose(mse_per_gene(truth, truth + 2.0), 4.0)
    with pytest.raises(ValueError, match="one shape"):
        pearson_per_gene(truth, pred[:, :2])


def test_interval_calibration_reads_over_and_under_confident_sds():
    from benchmarks._metrics import interval_calibration

    rng = np.random.default_rng(1)
    truth = rng.normal(scale=2.0, size=(5000, 4))
    mean = np.zeros_like(truth)
    honest = interval_calibration(truth, mean, np.full_like(truth, 2.0))
    assert honest["coverage_95"] == pytest.approx(0.95, abs=0.01) and honest["sd_over_rmse"] == pytest.approx(
        1, abs=0.03
    )
    narrow = interval_calibration(truth, mean, np.full_like(truth, 1.0))  # over-confident: too few values covered
    assert narrow["coverage_95"] < 0.7 and narrow["sd_over_rmse"] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="one shape"):
        interval_calibration(truth, mean, np.ones((3, 4)))


def test_ridge_recovers_signal_and_picks_penalty_from_training_groups():
    rng = np.random.default_rng(0)
    n, p = 240, 30
    x = rng.normal(size=(n, p))
    w = np.zeros((p, 4))
    w[:3] = rng.normal(size=(3, 4))
    y = x @ w + 0.5 * rng.normal(size=(n, 4))
    groups = np.repeat([0, 1, 2], n // 3)
    model, alpha = fit_ridge(x[:180], y[:180], groups[:180], alphas=(0.1, 10.0, 1e4))
    r = pearson_per_gene(y[180:], model.predict(x[180:]))
    assert np.nanmean(r) > 0.8
    assert alpha in (0.1, 10.0, 1e4)
    # pure noise targets: the held-out correlation stays near zero
    noise_model, _ = fit_ridge(x[:180], rng.normal(size=(180, 4)), groups[:180])
    assert abs(np.nanmean(pearson_per_gene(rng.normal(size=(60, 4)), noise_model.predict(x[180:])))) < 0.2
    with pytest.raises(ValueError, match="two distinct"):
        fit_ridge(x, y, np.zeros(n))


def test_prediction_smoothing_mixes_each_spot_with_its_nearest_spots():
    from benchmarks._spatial_smoothing import smooth_over_neighbours

    rng = np.random.default_rng(0)
    xy = np.array([[x * 100.0, y * 100.0] for x in range(5) for y in range(5)])  # index = 5 x + y
    values = rng.normal(size=(25, 3))
    out = smooth_over_neighbours(values, xy, n_neighs=4)
    # the centre spot (2, 2): half its own value, half the mean of its four lattice neighbours
    np.testing.assert_allclose(out[12], 0.5 * values[12] + 0.5 * values[[7, 17, 11, 13]].mean(axis=0))
    np.testing.assert_allclose(smooth_over_neighbours(np.ones((25, 2)), xy), 1.0)  # a constant stays
    np.testing.assert_array_equal(smooth_over_neighbours(values, xy, steps=0), values)
    with pytest.raises(ValueError, match="xy_um"):
        smooth_over_neighbours(values, xy[:, :1])


# --------------------------------------------------------------------------------------------------------------------
# The whole benchmark on generated slides of two patients
# --------------------------------------------------------------------------------------------------------------------
def _write_section(root, section: str, rng: np.random.Generator, *, grid: int = 5, n_genes: int = 60) -> None:
    """A legacy-ST section in the upstream her2st layout: spots on a 200 um grid, 1 um/px H&E, counts whose
    first 20 genes follow the density of nuclei painted around each spot."""
    from PIL import Image

    pitch, margin = 200, 300
    side = margin * 2 + pitch * (grid - 1)
    img = np.empty((side, side, 3), dtype=np.float64)
    img[:] = [235, 170, 205]
    disc = np.add.outer(np.arange(-4, 5) ** 2, np.arange(-4, 5) ** 2) <= 16
    rows, counts = [], []
    for ax in range(grid):
        for ay in range(grid):
            px, py = margin + pitch * ax, margin + pitch * ay
            density = rng.uniform()
            for cx, cy in rng.integers(-90, 91, (int(5 + 120 * density), 2)):
                patch = img[py + cy - 4 : py + cy + 5, px + cx - 4 : px + cx + 5]
                patch[disc] = [70, 50, 140]
            lam = np.full(n_genes, 40.0)
            lam[:20] *= 0.2 + 3.0 * density
            counts.append(rng.poisson(lam))
            rows.append({"x": ax + 1, "y": ay + 1, "new_x": ax + 1.0, "new_y": ay + 1.0,
                         "pixel_x": float(px), "pixel_y": float(py), "selected": 1})  # fmt: skip
    data = root / "her2st" / "data"
    (data / "ST-cnts").mkdir(parents=True, exist_ok=True)
    (data / "ST-spotfiles").mkdir(parents=True, exist_ok=True)
    (data / "ST-imgs" / section[0] / section).mkdir(parents=True)
    index = [f"{r['x']}x{r['y']}" for r in rows]
    pd.DataFrame(counts, index=index, columns=[f"G{i}" for i in range(n_genes)]).to_csv(
        data / "ST-cnts" / f"{section}.tsv.gz", sep="\t"
    )
    pd.DataFrame(rows).to_csv(data / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t", index=False)
    noisy = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(data / "ST-imgs" / section[0] / section / "he.jpg", quality=95)


@pytest.mark.slow
def test_benchmark_runs_both_schemes_on_two_generated_patients(tmp_path, monkeypatch, capsys):
    import storm_sc as st
    from benchmarks.expression_her2st import main, sections_with_images

    rng = np.random.default_rng(0)
    data_dir = tmp_path / "data"
    for section in ("A1", "A2", "B1", "B2"):
        _write_section(data_dir, section, rng)
    # a section without an image is not benchmarked
    (data_dir / "her2st" / "data" / "ST-imgs" / "B" / "B3").mkdir()
    np.save(data_dir / "her2st" / "her_hvg_cut_1000_from_HisToGene.npy", np.array(["G0", "G1", "G30", "NOTMEASURED"]))
    assert sections_with_images(data_dir) == ["A1", "A2", "B1", "B2"]

    monkeypatch.setattr(st.settings, "_data_dir", st.settings._data_dir)  # main() points it at --data-dir
    out = tmp_path / "results" / "r.csv"
    args = ["--data-dir", str(data_dir), "--no-storm", "--fields-um", "55", "110", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "n/a" not in printed
    assert "HisToGene panel: 3 of 4 genes present" in printed
    assert "targets: log1p(counts per 10000)" in printed

    folds = pd.read_csv(out)
    assert set(folds["scheme"]) == {"within_patient", "across_patient"}
    across = folds[folds["scheme"] == "across_patient"]
    assert sorted(across["test_section"].unique()) == ["A1", "A2", "B1", "B2"]
    assert (across.loc[across["split"] == "patient A", "train_sections"] == "B1 B2").all()
    assert (folds.loc[folds["gene_set"] == "histogene", "n_genes"] == 3).all()
    # the image-driven genes are predicted from the right windows; the mean predictor scores 0 by convention
    stain = folds[(folds["method"] == "ridge_stain_texture") & (folds["gene_set"] == "histogene")]
    assert stain["mean_pearson"].mean() > 0.3
    assert (folds.loc[folds["method"] == "mean", "mean_pearson"] == 0).all()
    # the smoothed ridge reuses the ridge's fit (same penalty) and differs only by its spatial smoothing
    smoothed = folds[(folds["method"] == "ridge_stain_texture_smoothed") & (folds["gene_set"] == "histogene")]
    assert len(smoothed) == len(stain)
    np.testing.assert_array_equal(smoothed["ridge_alpha"].to_numpy(), stain["ridge_alpha"].to_numpy())
    assert not np.allclose(smoothed["mean_pearson"].to_numpy(), stain["mean_pearson"].to_numpy())
    with pytest.raises(SystemExit, match="exists"):
        main(args)


def test_storm_patch_size_option_sets_the_architecture_and_is_validated(tmp_path):
    from benchmarks.expression_her2st import StormMethod, _parse_args, main

    # by default the benchmark trains the shipped reference's architecture at its patch size
    defaults = _parse_args([])
    assert (defaults.storm_config, defaults.storm_patch_px) == ("storm-tiny", 64)
    assert _parse_args(["--storm-patch-px", "0"]).storm_patch_px == 0  # 0: the architecture's own size
    method = StormMethod(config="storm-tiny", max_epochs=1, seed=0, patch_px=64)
    assert method.config.image_size == 64 and "64 px patches of 112 um" in method.description
    assert StormMethod(config="storm-tiny", max_epochs=1, seed=0).config.image_size == 32
    (tmp_path / "her2st").mkdir()
    with pytest.raises(SystemExit, match="--storm-patch-px must be at least 8"):
        main(["--data-dir", str(tmp_path), "--storm-config", "storm-tiny", "--storm-patch-px", "4"])


def test_schemes_option_runs_only_the_splits_asked_for(tmp_path, monkeypatch, capsys):
    import storm_sc as st
    from benchmarks.expression_her2st import NA_LEFT_OUT, _parse_args, main

    assert _parse_args([]).schemes == ["within", "across"]
    rng = np.random.default_rng(0)
    data_dir = tmp_path / "data"
    for section in ("A1", "B1", "B2"):
        _write_section(data_dir, section, rng, grid=4)
    np.save(data_dir / "her2st" / "her_hvg_cut_1000_from_HisToGene.npy", np.array(["G0", "G1"]))
    monkeypatch.setattr(st.settings, "_data_dir", st.settings._data_dir)  # main() points it at --data-dir
    # one section per patient: no within-patient split, said before any section is read
    with pytest.raises(SystemExit, match="no within-patient split possible"):
        main(["--data-dir", str(data_dir), "--sections", "A1", "B1", "--schemes", "within", "--no-storm"])
    out = tmp_path / "across.csv"
    args = ["--data-dir", str(data_dir), "--schemes", "across", "--no-storm", "--fields-um", "55", "--out", str(out)]
    assert main(args) == 0
    assert set(pd.read_csv(out)["scheme"]) == {"across_patient"}
    printed = capsys.readouterr().out
    assert "(0 within-patient folds, 2 across-patient folds)" in printed
    assert NA_LEFT_OUT in printed


@pytest.mark.slow
def test_storm_rows_share_one_trained_network_per_split(tmp_path, monkeypatch):
    """STORM trained once per split; its per-gene-set readout and its head reuse that network, and the per-set
    readout is fitted on the scored genes only (one model per gene set, the trained one left as it was)."""
    import storm_sc as st
    from benchmarks import expression_her2st as bench

    rng = np.random.default_rng(1)
    data_dir = tmp_path / "data"
    for section in ("A1", "A2", "A3"):
        _write_section(data_dir, section, rng, grid=4, n_genes=60)
    np.save(data_dir / "her2st" / "her_hvg_cut_1000_from_HisToGene.npy", np.array(["G0", "G1", "G25"]))
    monkeypatch.setattr(st.settings, "_data_dir", st.settings._data_dir)
    st.settings.data_dir = data_dir
    timer = bench.Timer()
    sections = {
        s: bench.load_section(s, data_dir=data_dir, fields_um=(55,), work_mpp=1.0, thumb_um=110, thumb_px=8,
                              keep_sdata=True, timer=timer)
        for s in ("A1", "A2", "A3")
    }  # fmt: skip
    storm = bench.StormMethod(config="storm-tiny", max_epochs=1, seed=0, patch_px=16)
    per_set, head = bench.StormPerSetMethod(storm), bench.StormHeadMethod(storm)
    genes = [f"G{i}" for i in range(60)]
    folds = bench.run_splits(
        bench.within_patient_splits(["A1", "A2", "A3"])[:1], sections, [storm, per_set, head],
        genes=genes, panel=["G0", "G1", "G25"], timer=timer,
    )  # fmt: skip
    assert set(folds["method"]) == {"storm", "storm_readout_per_set", "storm_head"}
    assert head.model is storm.model
    trained_genes = set(storm.model.readout.gene_ids.tolist())
    for set_name, set_genes in storm.gene_sets.items():
        model = per_set.models[set_name]
        assert model is not storm.model and model.readout is not storm.model.readout
        assert set(np.asarray(model.vocabulary.symbols)[model.readout.gene_ids]) <= set(set_genes)
    assert set(storm.model.readout.gene_ids.tolist()) == trained_genes
    assert np.isfinite(folds["mean_pearson"]).all()
