"""A real two-process data-parallel run on CPU (gloo), launched the way users launch it: torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from storm_sc.models import StormModel

DRIVER = Path(__file__).with_name("_ddp_driver.py")


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch built without gloo")
def test_torchrun_two_processes_synchronise_and_write_one_checkpoint(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(DRIVER),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    records = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}
    r0, r1 = records[0], records[1]
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["backend"] == "gloo"
    assert r0["strategy"] == "DDPStrategy"
    # each rank trained on its own shard of the data ...
    assert r0["first_batch"] != r1["first_batch"]
    # ... from the same initial weights, and gradients were averaged: identical weights after every step
    assert r0["weights_before"] == r1["weights_before"]
    assert r0["weights_after_step"] == r1["weights_after_step"] != r0["weights_before"]
    assert r0["weights_final"] == r1["weights_final"]
    assert r0["steps"] == r1["steps"] > 1

    checkpoints = sorted(p.name for p in tmp_path.rglob("*.safetensors"))
    assert checkpoints == ["model.safetensors"]
    model = StormModel.load(tmp_path / "model.safetensors")
    assert model.manifest["run"]["world_size"] == 2
    assert model.weights_digest() == r0["weights_final_storm"]
