"""The GPU throughput benchmark runs end to end (on the CPU here), respects its budget and refuses a missing GPU."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from benchmarks import gpu_throughput as bench


def test_smoke_run_on_the_cpu_times_both_tools_per_batch_size(tmp_path, capsys):
    csv = tmp_path / "gpu.csv"
    args = ["--device", "cpu", "--sizes", "300", "--configs", "storm-tiny", "--batch-sizes", "32", "128",
            "--n-genes", "40", "--agreement-obs", "300", "--out", str(csv)]  # fmt: skip
    assert bench.main(args) == 0
    rows = pd.read_csv(csv)
    assert len(rows) == 4 and (rows["status"] == "ok").all()
    assert set(rows["tool"]) == {"storm_embed", "predict_expression"}
    assert (rows["obs_per_s"] > 0).all()
    printed = capsys.readouterr().out
    assert "fp32" in printed and "| observations | config | batch |" in printed
    # the device's results against the CPU's: identical when the device is the CPU
    assert "The bundled reference on cpu against the CPU (float32), 300 observations" in printed
    assert "| storm_embed | 96 | 1.0 | 1.0 | 0.0 |" in printed
    assert bench.main(args) == 2  # its output exists: not replaced without --overwrite


def test_budget_skips_the_remaining_calls(tmp_path):
    args = bench._parse_args(["--device", "cpu", "--sizes", "200", "--configs", "storm-tiny", "--batch-sizes", "64",
                              "--n-genes", "20", "--budget-s", "0"])  # fmt: skip
    rows = bench.run(args, torch.device("cpu"))
    assert (rows["status"] == "skipped (budget)").all()
    assert (bench.table(rows)["embed obs/s"] == "skipped").all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_asking_for_a_missing_gpu_fails_clearly(capsys):
    assert bench.main(["--sizes", "100"]) == 2
    assert "No CUDA device" in capsys.readouterr().err
