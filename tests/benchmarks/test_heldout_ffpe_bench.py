"""The held-out Visium FFPE benchmark's pieces: its sections really are outside the corpus, and bad calls stop early."""

from __future__ import annotations

import numpy as np
import pandas as pd

import storm_sc as st
from benchmarks import expression_heldout_ffpe as bench


def test_held_out_sections_are_not_in_the_reference_recipe():
    corpus = bench.corpus_sections()
    assert len(corpus) == 9 and "V19D02-085_B1" in corpus  # the same kinds of organoid are in it
    assert not corpus & set(bench.HELD_OUT)
    # the per-tissue methods learn from corpus sections of the held-out section's own kind (same slide series)
    for held, train in bench.SAME_KIND.items():
        assert set(train) <= corpus and all(t.split("_")[0] == held.split("_")[0] for t in train)


def test_summary_table_puts_methods_in_rows_and_sections_in_columns():
    rows = pd.DataFrame(
        [
            {"section": s, "genes": g, "method": m, "n_genes": n, "mean_r": r}
            for s, n in (("A", 10), ("B", 20))
            for m, r in zip(bench.METHODS, (0.1, 0.2, 0.25, 0.3, 0.35, 0.0, -0.1), strict=True)
            for g in ("every readout's genes", "other detected genes")
            if g.startswith("every") or m == "head"
        ]
    )
    table = bench.summary_table(rows)
    assert table["method"].tolist() == list(bench.METHODS)
    assert list(table.columns) == ["method", "A (10 genes)", "B (20 genes)", "mean over sections"]
    assert table.set_index("method").loc["ridge_stain_texture", "mean over sections"] == 0.3


def test_bad_calls_stop_before_any_work(tmp_path, capsys):
    assert bench.main(["--data-dir", str(tmp_path)]) == 2
    assert "visium_ffpe_villacampa2021" in capsys.readouterr().err
    (tmp_path / "visium_ffpe_villacampa2021").mkdir()
    out = tmp_path / "report.md"
    out.write_text("earlier results")
    assert bench.main(["--data-dir", str(tmp_path), "--out", str(out)]) == 2
    assert out.read_text() == "earlier results"


def test_every_method_is_scored_on_the_same_genes_of_a_generated_slide():
    slides = [st.datasets.toy(n_obs=120, n_genes=40, n_domains=3, seed=s) for s in (1, 2, 3)]
    sections = [bench.prepare_section(f"s{i}", sd) for i, sd in enumerate(slides)]
    model = st.models.StormModel("storm-tiny", slides[0]["table"].var_names, seed=0)
    model.fit_expression_readout(
        [sd for sd in slides[:2]], genes=list(slides[0]["table"].var_names[:30]), verbose=False
    )
    refit = st.models.StormModel("storm-tiny", slides[0]["table"].var_names, seed=0)
    refit.fit_expression_readout([sd for sd in slides[:2]], verbose=False)
    rows = pd.DataFrame(bench.score_section(sections[2], sections[:2], model, refit))
    shared = rows[rows["genes"] == "every readout's genes"]
    assert shared["method"].tolist() == [m for m in bench.METHODS if m != "storm_scratch"]
    assert shared["n_genes"].nunique() == 1 and 0 < shared["n_genes"].iloc[0] <= 30
    assert np.isfinite(shared["mean_r"]).all() and shared.set_index("method").loc["mean", "mean_r"] == 0.0
    other = rows[rows["genes"] == "other detected genes"]
    assert other["method"].tolist() == ["head"]  # the 10 genes the first readout leaves out
    assert other["n_genes"].iloc[0] <= 10


def test_storm_from_scratch_is_scored_beside_the_others():
    slides = [st.datasets.toy(n_obs=120, n_genes=40, n_domains=3, seed=s) for s in (1, 2, 3)]
    sections = [bench.prepare_section(f"s{i}", sd) for i, sd in enumerate(slides)]
    scratch = bench.train_from_scratch(sections[:2], epochs=1)
    assert scratch.config.image_size == 64 and scratch.readout is not None
    rows = pd.DataFrame(bench.score_section(sections[2], sections[:2], scratch, scratch, scratch))
    shared = rows[rows["genes"] == "every readout's genes"]
    assert shared["method"].tolist() == list(bench.METHODS)
    assert shared.loc[shared["method"] == "storm_scratch", "storm_epochs"].iloc[0] >= 1
    # every STORM prediction carries its standard deviation, scored against its errors; the others have none
    calibration = bench.calibration_table(rows).set_index("method")
    assert calibration.index.tolist() == ["readout", "readout_refit", "storm_scratch", "head"]
    assert calibration["coverage_95"].between(0, 1).all() and (calibration["sd_over_rmse"] > 0).all()
