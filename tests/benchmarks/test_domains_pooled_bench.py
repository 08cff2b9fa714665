"""The several-slides domain benchmark's pieces on generated slides, and a smoke run on the real bulb replicates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import storm_sc as st
from benchmarks import domains_pooled as bench
from tests._paths import real_data
from tests.benchmarks._dlpfc import dlpfc_sections


@pytest.fixture(scope="module")
def two_slides():
    """Two sections of one generated tissue: the same domains and marker genes, different counts (a replicate's
    reads thinned to 60%)."""
    import spatialdata as sd
    from scipy import sparse

    first = st.datasets.toy(n_obs=300, n_genes=100, n_domains=3, image=False, seed=3)
    second = sd.deepcopy(first)
    counts = sparse.csr_matrix(second["table"].X)
    counts.data = np.random.default_rng(0).binomial(counts.data.astype(np.int64), 0.6).astype(np.float32)
    second["table"].X = counts
    labels = [s["table"].obs["true_domain"].astype(str).astype(object) for s in (first, second)]
    return [bench.PoolSlide("a", first, labels[0], 3), bench.PoolSlide("b", second, labels[1], 3)]


def test_slide_mixing_bounds_and_invariance():
    rng = np.random.default_rng(0)
    slides = np.repeat(["a", "b", "c"], [50, 100, 150])
    assert bench.slide_mixing(slides, slides) == pytest.approx(0.0)
    # a domain drawing on the slides in their overall proportions is fully mixed
    assert bench.slide_mixing(slides, np.zeros(len(slides))) == pytest.approx(1.0)
    domains = rng.integers(0, 4, len(slides))
    perm = rng.permutation(len(slides))
    assert bench.slide_mixing(slides[perm], domains[perm]) == pytest.approx(bench.slide_mixing(slides, domains))
    renamed = np.array(["x", "y", "z", "w"])[domains]
    assert bench.slide_mixing(slides, renamed) == pytest.approx(bench.slide_mixing(slides, domains))
    assert 0.0 < bench.slide_mixing(slides, domains) <= 1.0
    assert np.isnan(bench.slide_mixing(np.array(["a", "a"]), np.array([0, 1])))


def test_scores_count_slide_specific_domains_as_wrong(two_slides):
    truth = [s.labels.to_numpy() for s in two_slides]
    shared = bench.score_pool("toy", two_slides, truth, {s.name: t for s, t in zip(two_slides, truth, strict=True)})
    assert shared["pooled_ari"] == pytest.approx(1.0) and shared["per_slide_ari"] == pytest.approx(1.0)
    assert shared["slide_mixing"] > 0.9
    # the same domains, named apart on each slide: each slide is cut right, the pool is not
    apart = [np.char.add(f"{s.name}_", t.astype(str)) for s, t in zip(two_slides, truth, strict=True)]
    split = bench.score_pool("toy", two_slides, apart, {s.name: t for s, t in zip(two_slides, truth, strict=True)})
    assert split["per_slide_ari"] == pytest.approx(1.0)
    assert split["pooled_ari"] < 0.8 and split["slide_mixing"] == pytest.approx(0.0)
    # unlabelled slides take part in the call and are left out of the scores
    blank = bench.PoolSlide("u", two_slides[1].sdata, pd.Series([None] * 300, dtype=object), 0)
    one = bench.score_pool("toy", [two_slides[0], blank], truth, {"a": truth[0]})
    assert one["n_scored"] == 300 and one["pooled_ari"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no labelled slide"):
        bench.score_pool("toy", [blank], [truth[1]], {})


@pytest.mark.parametrize("method", ["components_storm_domains", "pca_kmeans", "pca_leiden", "pca_smooth_kmeans"])
def test_baselines_find_shared_domains_on_two_slides(two_slides, method):
    labels = bench.pool_labels(two_slides, method, 3, 0, n_hvg=60, n_pcs=10)
    assert [len(x) for x in labels] == [300, 300]
    truth = [s.labels.to_numpy() for s in two_slides]
    scores = bench.score_pool("toy", two_slides, labels, {s.name: t for s, t in zip(two_slides, truth, strict=True)})
    assert scores["pooled_ari"] > 0.5
    assert "X_benchmark_components" not in two_slides[0].sdata["table"].obsm  # the slides are left as they were


def test_pooled_pcs_use_the_shared_genes(two_slides):
    first = two_slides[0].sdata["table"]
    narrower = bench.PoolSlide("n", st.datasets.toy(n_obs=200, n_genes=100, image=False, seed=9), None, 0)
    narrower.sdata.tables["table"] = narrower.sdata["table"][:, 20:].copy()
    pcs = bench.pooled_pcs([two_slides[0], narrower], n_hvg=50, n_pcs=5, random_state=0)
    assert [p.shape for p in pcs] == [(first.n_obs, 5), (200, 5)]


def test_smoke_on_the_bulb_replicates(tmp_path, capsys):
    data_dir = real_data("mob_he_stahl2016").parent
    real_data("mob")
    out = tmp_path / "pooled.csv"
    argv = ["--pools", "mob", "--seeds", "0", "--no-storm", "--n-hvg", "500", "--data-dir", str(data_dir)]
    assert bench.main([*argv, "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert set(rows["method"]) == set(bench.METHODS) - {"storm"}
    assert (rows["n_domains"] == 5).all() and (rows["n_scored"] == 260).all()
    # only the labelled section is scored: pooled and per-slide scores are the same number
    np.testing.assert_allclose(rows["pooled_ari"], rows["per_slide_ari"])
    # the slides' own components, standardised per slide, share their domains across the replicates
    comp = rows.set_index("method").loc["components_storm_domains"]
    assert comp["pooled_ari"] > 0.3 and comp["slide_mixing"] > 0.8
    assert "mob pooled ARI" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="overwrite"):
        bench.main([*argv, "--out", str(out)])


def test_dlpfc_sections_pool_when_the_folder_holds_several(tmp_path, capsys):
    one = dlpfc_sections(tmp_path / "one", ("151675",))
    with pytest.raises(SystemExit, match="at least two DLPFC sections"):
        bench.main(["--no-storm", "--pools", "dlpfc", "--data-dir", str(one)])
    data_dir = dlpfc_sections(tmp_path / "two", ("151673", "151675"))
    out = tmp_path / "dlpfc.csv"
    argv = ["--no-storm", "--pools", "dlpfc", "--seeds", "0", "--n-hvg", "500", "--data-dir", str(data_dir)]
    assert bench.main([*argv, "--out", str(out)]) == 0
    rows = pd.read_csv(out).set_index("method")
    assert (rows["pool"] == "dlpfc").all() and (rows["n_domains"] == 7).all()
    # two copies of one section: the classical recipe gives each domain both copies in equal shares
    assert rows.loc["pca_kmeans", "slide_mixing"] == pytest.approx(1.0)
    assert "dlpfc: 2 slides (2 labelled), k = 7" in capsys.readouterr().out
