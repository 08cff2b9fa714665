"""The held-out Visium FFPE benchmark's pieces: its sections really are outside the corpus, and bad calls stop early."""

from __future__ import annotations

import numpy as np

from benchmarks import expression_heldout_ffpe as bench


def test_held_out_sections_are_not_in_the_reference_recipe():
    corpus = bench.corpus_sections()
    assert len(corpus) == 9 and "V19D02-085_B1" in corpus  # the same kinds of organoid are in it
    assert not corpus & set(bench.HELD_OUT)


def test_pearson_columns():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 3))
    b = np.c_[2 * a[:, 0] + 1, -a[:, 1], np.ones(50)]
    r = bench.pearson_columns(a, b)
    np.testing.assert_allclose(r[:2], [1.0, -1.0])
    assert np.isnan(r[2])


def test_bad_calls_stop_before_any_work(tmp_path, capsys):
    assert bench.main(["--data-dir", str(tmp_path)]) == 2
    assert "visium_ffpe_villacampa2021" in capsys.readouterr().err
    (tmp_path / "visium_ffpe_villacampa2021").mkdir()
    out = tmp_path / "report.md"
    out.write_text("earlier results")
    assert bench.main(["--data-dir", str(tmp_path), "--out", str(out)]) == 2
    assert out.read_text() == "earlier results"
