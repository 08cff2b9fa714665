"""The clinical-cohort benchmark's pieces, and a smoke run of the whole script on small real-data cohorts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks import clinical_cohorts as bench
from tests._paths import DATA_DIR


def test_shuffled_permutes_responses_across_patients_and_keeps_slides_together():
    cohort = pd.DataFrame({
        "slide_id": [f"s{i}" for i in range(8)],
        "patient_id": ["a", "a", "b", "c", "d", "e", "f", "g"],
        "response": [1, 1, 0, 1, 0, 1, 0, 0],
    })  # fmt: skip
    out = bench.shuffled(cohort, seed=3)
    assert sorted(out["slide_id"]) == sorted(cohort["slide_id"])
    per_patient = out.groupby("patient_id")["response"].nunique()
    assert (per_patient == 1).all()  # a patient's slides share the permuted response
    assert out.drop_duplicates("patient_id")["response"].sum() == 3  # same responders count
    assert not out.equals(bench.shuffled(cohort, seed=4))


def test_summary_table_aggregates_over_seeds():
    rows = pd.DataFrame([
        {"cohort": "focal", "method": "abmil", "auroc": 0.9, "auroc_ci_low": 0.8, "focus_attention": 5.0},
        {"cohort": "focal", "method": "abmil", "auroc": 0.7, "auroc_ci_low": 0.6, "focus_attention": 3.0},
        {"cohort": "focal", "method": "mean", "auroc": 0.6, "auroc_ci_low": 0.4, "focus_attention": np.nan},
    ])  # fmt: skip
    table = bench.summary_table(rows).set_index("method")
    assert table.loc["abmil", "AUROC"] == "0.800 ± 0.141"
    assert table.loc["abmil", "min-max"] == "0.700-0.900"
    assert table.loc["abmil", "focus attention (median, x uniform)"] == "4.000 ± 1.414"
    assert table.loc["mean", "focus attention (median, x uniform)"] == "n/a"


@pytest.mark.realdata
def test_script_runs_end_to_end_on_small_cohorts(tmp_path, capsys):
    if not all((DATA_DIR / d).exists() for d in bench.NEEDED):
        pytest.skip(f"real data not available under {DATA_DIR} ({', '.join(bench.NEEDED)})")
    csv = tmp_path / "clinical.csv"
    code = bench.main([
        "--data-dir", str(DATA_DIR), "--cohort-seeds", "0", "--train-seeds", "0", "--n-patients", "12",
        "--shuffles", "1", "--n-bootstrap", "10", "--out", str(csv), "--out", str(tmp_path / "clinical.md"),
    ])  # fmt: skip
    assert code == 0
    rows = pd.read_csv(csv)
    assert set(rows["method"]) == {"abmil", "mean", "abmil_shuffled", "baseline_TMB"}
    assert set(rows["cohort"]) == {"fraction", "focal"}
    assert rows["auroc"].between(0, 1).all()
    assert rows.loc[(rows["cohort"] == "focal") & (rows["method"] == "abmil"), "focus_attention"].notna().all()
    assert "| cohort | method |" in capsys.readouterr().out
    # Refuses to replace its outputs unless asked.
    assert bench.main(["--data-dir", str(DATA_DIR), "--out", str(csv)]) == 2
