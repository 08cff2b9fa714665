"""The domain and throughput benchmarks' pieces on generated data, and a smoke run on the real olfactory bulb."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import storm_sc as st
from benchmarks import domains as bench
from benchmarks._domain_baselines import (
    clustering_scores,
    hvg_pca,
    kmeans_domains,
    leiden_domains,
    smooth_like_storm,
)
from tests._paths import real_data
from tests.benchmarks._dlpfc import dlpfc_sections


# --------------------------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------------------------
def test_scores_match_sklearn_on_labelled_spots_only():
    rng = np.random.default_rng(0)
    truth = rng.choice(["L1", "L2", "L3"], size=300).astype(object)
    pred = rng.integers(0, 4, size=300)
    pred[:100] = pd.Series(truth[:100]).map({"L1": 0, "L2": 1, "L3": 2}).to_numpy()  # partly right
    truth[::7] = None
    keep = np.array([t is not None for t in truth])
    got = clustering_scores(truth, pred)
    assert got["n_scored"] == keep.sum()
    assert got["ari"] == pytest.approx(adjusted_rand_score(truth[keep].astype(str), pred[keep]))
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(truth[keep].astype(str), pred[keep]))
    # unlabelled spots do not count, whatever they are assigned to
    moved = pred.copy()
    moved[~keep] = 99
    assert clustering_scores(truth, moved) == got


def test_scores_are_label_permutation_invariant_and_refuse_bad_input():
    truth = pd.Series(["a", "a", "b", "b", np.nan], dtype="category")
    assert clustering_scores(truth, np.array(["x", "x", "y", "y", "y"]))["ari"] == 1.0
    assert clustering_scores(truth, np.array([1, 0, 1, 0, 0]))["ari"] < 0
    with pytest.raises(ValueError, match="length"):
        clustering_scores(truth, np.array([0, 1]))
    with pytest.raises(ValueError, match="labelled"):
        clustering_scores(pd.Series([np.nan, np.nan, "a"]), np.array([0, 1, 2]))


# --------------------------------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------------------------------
def _blobs(n_per: int = 60, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(k, 5))
    truth = np.repeat(np.arange(k), n_per)
    return centres[truth] + rng.normal(size=(len(truth), 5)), truth


def test_kmeans_and_leiden_give_exactly_k_and_recover_blobs():
    z, truth = _blobs()
    assert adjusted_rand_score(truth, kmeans_domains(z, 4, random_state=0)) > 0.95
    labels, res = leiden_domains(z, 4, random_state=0)
    assert len(np.unique(labels)) == 4 and res > 0
    assert adjusted_rand_score(truth, labels) > 0.95
    again, _ = leiden_domains(z, 4, random_state=0)
    assert (again == labels).all()
    with pytest.raises(ValueError, match="n_domains"):
        leiden_domains(z, 0)


@pytest.fixture(scope="module")
def toy_slide():
    return st.datasets.toy(n_obs=400, n_genes=120, n_domains=3, image=False, seed=3)


def test_hvg_pca_recovers_planted_domains_and_is_reproducible(toy_slide):
    table = toy_slide["table"]
    before = table.X.copy()
    pcs, genes = hvg_pca(table, n_hvg=60, n_pcs=10, random_state=0)
    assert pcs.shape == (400, 10) and len(genes) == 60
    assert (table.X != before).nnz == 0  # the counts are left as they were
    again, _ = hvg_pca(table, n_hvg=60, n_pcs=10, random_state=0)
    np.testing.assert_allclose(np.abs(again), np.abs(pcs), rtol=1e-5, atol=1e-6)
    truth = table.obs["true_domain"]
    assert clustering_scores(truth, kmeans_domains(pcs, 3))["ari"] > 0.8
    assert clustering_scores(truth, leiden_domains(pcs, 3)[0])["ari"] > 0.8
    # planted marker genes are among the highly variable ones
    markers = set(table.var_names[table.var["marker_of"] != ""])
    assert len(markers & set(genes)) >= 0.8 * len(markers)


def test_smoothing_is_storm_domains_rule_and_helps_noisy_domains(toy_slide):
    table = toy_slide["table"]
    truth = table.obs["true_domain"].cat.codes.to_numpy()
    rng = np.random.default_rng(1)
    noisy = np.eye(3)[truth] + rng.normal(scale=1.3, size=(table.n_obs, 3))
    graph = st.pp.spatial_graph(toy_slide, n_neighs=6)
    smooth = smooth_like_storm(noisy, graph, steps=2, weight=0.5)
    raw_ari = adjusted_rand_score(truth, kmeans_domains(noisy, 3))
    assert adjusted_rand_score(truth, kmeans_domains(smooth, 3)) > raw_ari + 0.1
    # zero steps or zero weight change nothing
    np.testing.assert_array_equal(smooth_like_storm(noisy, graph, steps=0, weight=0.5), noisy)
    np.testing.assert_allclose(smooth_like_storm(noisy, graph, steps=3, weight=0.0), noisy)
    # one step on a 3-node path: each node moves half-way to its neighbours' mean
    path = sparse.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=float))
    out = smooth_like_storm(np.array([[0.0], [3.0], [9.0]]), path, steps=1, weight=0.5).ravel()
    np.testing.assert_allclose(out, [1.5, 3.75, 6.0])


def test_baseline_rows_on_a_generated_slide(toy_slide):
    table = toy_slide["table"]
    pcs, hvgs = hvg_pca(table, n_hvg=60, n_pcs=10)
    labels = table.obs["true_domain"].astype(object)
    slide = bench.Slide("toy", toy_slide, labels, 3, {0: pcs}, hvgs)
    for method in bench.BASELINE_METHODS:
        pred, details = bench.baseline_labels(slide, method, 0)
        assert len(np.unique(pred)) == 3
        assert clustering_scores(labels, pred)["ari"] > 0.6, method
        assert ("smooth_steps" in details) == ("smooth" in method)


def test_linked_data_dir_links_registered_files_without_copying(tmp_path):
    from benchmarks._data_dir import linked_data_dir

    source = tmp_path / "src"
    (source / "mob").mkdir(parents=True)
    (source / "mob" / "mOB_annot.csv").write_text("spot,layer\n")
    (source / "mob" / "unregistered.txt").write_text("x")
    target = tmp_path / "cache"
    linked = linked_data_dir(source, ["mob/"], target)
    assert linked == ["mob/mOB_annot.csv"]
    link = target / "mob" / "mOB_annot.csv"
    assert link.is_symlink() and link.resolve() == (source / "mob" / "mOB_annot.csv").resolve()
    assert not (target / "mob" / "unregistered.txt").exists()
    assert linked_data_dir(source, ["mob/"], target) == linked  # idempotent


def test_offline_data_points_the_loaders_at_links_and_restores_the_settings(tmp_path):
    from benchmarks._data_dir import offline_data

    source = tmp_path / "src"
    (source / "mob").mkdir(parents=True)
    (source / "mob" / "mOB_annot.csv").write_text("spot,layer\n")
    before = st.settings._data_dir
    with offline_data(source, {"mob": ("mob/",)}, prefix="t_") as work:
        assert st.settings.data_dir == work / "data"
        assert (work / "data" / "mob" / "mOB_annot.csv").is_symlink()
    assert st.settings._data_dir == before and not work.exists()
    with pytest.raises(SystemExit, match="no files of \\['dlpfc'\\]"):
        with offline_data(source, {"mob": ("mob/",), "dlpfc": ("dlpfc_151675/",)}, prefix="t_"):
            pass
    assert st.settings._data_dir == before


def test_dlpfc_group_is_every_section_in_the_data_folder(tmp_path):
    assert bench.groups(tmp_path)["dlpfc"] == ("dlpfc_151675",)  # none here: the section of the published tables
    for sample in ("151676", "151507"):
        (tmp_path / f"dlpfc_{sample}").mkdir()
        (tmp_path / f"dlpfc_{sample}" / "filtered_feature_bc_matrix.h5").touch()
    assert bench.groups(tmp_path)["dlpfc"] == ("dlpfc_151507", "dlpfc_151676")
    assert bench.expand(["dlpfc", "mob"], bench.groups(tmp_path)) == ["dlpfc_151507", "dlpfc_151676", "mob"]
    assert len(bench.DLPFC_SAMPLES) == 12 and all(f"dlpfc_{s}" in bench.DATASETS for s in bench.DLPFC_SAMPLES)


def test_command_line_refuses_bad_options(tmp_path):
    with pytest.raises(SystemExit, match="adapt-epochs"):
        bench.main(["--init-config", "storm-tiny", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="not one of"):
        bench.main(["--init-config", "storm-huge", "--adapt-epochs", "1", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="no files"):
        bench.main(["--no-storm", "--datasets", "mob", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="smooth-steps"):
        bench.main(["--no-storm", "--smooth-steps", "-1", "--data-dir", str(tmp_path)])


# --------------------------------------------------------------------------------------------------------------------
# Throughput helpers
# --------------------------------------------------------------------------------------------------------------------
def test_throughput_measures_and_runs_small(tmp_path, capsys):
    from benchmarks import throughput

    m = throughput.measure(lambda: np.ones(2_000_000), trace_python=True)
    assert m.wall_s > 0 and m.python_peak_mib >= 15  # 16 MB of float64
    out = tmp_path / "t.csv"
    assert throughput.main(["--sizes", "150", "--configs", "storm-tiny", "--n-genes", "30", "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert set(rows["tool"]) == {"storm_embed", "predict_expression"}
    assert (rows["obs_per_s"] > 0).all() and (rows["n_obs"] == 150).all()
    assert "obs/s" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------------------------------
def test_smoke_on_the_olfactory_bulb(tmp_path, capsys):
    data_dir = real_data("mob").parent
    out = tmp_path / "mob.csv"
    argv = ["--quick", "--datasets", "mob", "--data-dir", str(data_dir), "--out", str(out)]
    argv += ["--init-config", "storm-tiny", "--adapt-epochs", "1", "--n-hvg", "500"]
    assert bench.main(argv) == 0
    rows = pd.read_csv(out)
    assert set(rows["method"]) == {
        "storm",
        *(f"pca_{m}" for m in ("leiden", "kmeans", "smooth_leiden", "smooth_kmeans", "storm_domains")),
        "components_storm_domains",
    }
    assert (rows["status"] == "ok").all() and (rows["n_domains"] == 5).all()
    assert rows["ari"].between(-0.5, 1).all()
    # the unsmoothed expression baselines find the bulb's layers far above chance
    assert rows.loc[rows["method"] == "pca_leiden", "ari"].iloc[0] > 0.3
    text = capsys.readouterr().out
    assert "mob ARI" in text and "storm-tiny trained from scratch" in text
    # nothing was written into the data folder
    assert not any(p.is_symlink() for p in data_dir.joinpath("mob").iterdir())


def test_smoothing_steps_option_reaches_every_smoothed_row(tmp_path, capsys):
    data_dir = real_data("mob").parent
    out = tmp_path / "mob.csv"
    argv = ["--no-storm", "--seeds", "0", "--datasets", "mob", "--n-hvg", "500", "--smooth-steps", "0"]
    assert bench.main([*argv, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    rows = pd.read_csv(out).set_index("method")
    # no smoothing: the "smoothed" PCs are the PCs themselves
    assert rows.loc["pca_smooth_kmeans", "ari"] == pytest.approx(rows.loc["pca_kmeans", "ari"])
    assert (rows.loc[["pca_smooth_kmeans", "pca_smooth_leiden"], "smooth_steps"] == 0).all()
    assert "0 steps" in capsys.readouterr().out


def test_several_dlpfc_sections_make_one_column(tmp_path, capsys):
    # A second section (151675's files linked under 151673's name, in a scratch folder) joins the "dlpfc" column.
    data_dir = dlpfc_sections(tmp_path / "data", ("151673", "151675"))
    out = tmp_path / "dlpfc.csv"
    argv = ["--no-storm", "--seeds", "0", "--datasets", "dlpfc", "--n-hvg", "500", "--data-dir", str(data_dir)]
    assert bench.main([*argv, "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert set(rows["dataset"]) == {"dlpfc_151673", "dlpfc_151675"} and (rows["n_domains"] == 7).all()
    same = rows.pivot(index="method", columns="dataset", values="ari")
    assert np.allclose(same["dlpfc_151673"], same["dlpfc_151675"])  # the same spots give the same domains
    text = capsys.readouterr().out
    assert "dlpfc ARI" in text and "dlpfc_151673: 3566 labelled spots, k = 7" in text
