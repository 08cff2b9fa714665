"""The gene-draw spread benchmark: averaging draws brings an embedding closer to the many-draw mean."""

from __future__ import annotations

import pandas as pd
import pytest

import storm_sc as st
from benchmarks import embedding_draws as bench
from tests._paths import real_data


def test_more_draws_lie_closer_to_the_many_draw_mean():
    sdata = st.datasets.toy(n_obs=150, n_genes=150, n_domains=3, image=False, seed=2)
    model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    assert sdata["table"].n_vars > model.config.max_genes  # random tokens to average
    table = bench.draw_spread(model, model.prepare(sdata), [1, 4, 16], 16)
    spread = table.set_index("n_draws")["median_rel_distance"]
    assert spread[1] > spread[4] > spread[16] == pytest.approx(0.0, abs=1e-6)


def test_smoke_on_the_bulb(tmp_path, capsys):
    real_data("mob")
    out = tmp_path / "draws.csv"
    argv = ["--datasets", "mob", "--draws", "1", "2", "--reference-draws", "4"]
    assert bench.main([*argv, "--data-dir", str(real_data("mob").parent), "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert rows["n_draws"].tolist() == [1, 2] and rows["dataset"].str.startswith("mob").all()
    assert rows["median_rel_distance"].iloc[0] > rows["median_rel_distance"].iloc[1] > 0
    assert "Embedding spread" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="overwrite"):
        bench.main([*argv, "--data-dir", str(real_data("mob").parent), "--out", str(out)])
