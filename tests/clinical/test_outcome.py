"""Outcome models on a semi-synthetic cohort of real H&E: the planted signal is recovered, shuffled labels are not."""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from storm_sc.clinical import OutcomeResult
from storm_sc.tl._clinical import fit_outcome

N_BOOT = 300
SHUFFLES = range(10)


def shuffled(cohort: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same slides with patient outcomes permuted across patients (the negative control)."""
    cols = ["response", "time", "event"]
    pat = cohort.drop_duplicates("patient_id")[["patient_id", *cols]].reset_index(drop=True)
    pat[cols] = pat[cols].to_numpy()[np.random.default_rng(seed).permutation(len(pat))]
    return cohort.drop(columns=cols).merge(pat, on="patient_id")


@pytest.fixture(scope="module")
def response_results(semi_synthetic):
    cohort, feats = semi_synthetic
    return {agg: fit_outcome(cohort, feats, task="response", aggregator=agg, baseline="TMB", n_bootstrap=N_BOOT,
                             verbose=False) for agg in ("abmil", "mean")}  # fmt: skip


@pytest.mark.realdata
def test_response_signal_is_recovered_by_both_aggregators(response_results, semi_synthetic):
    cohort, _ = semi_synthetic
    for agg, res in response_results.items():
        row = res.metrics.loc[f"storm_{agg}"]
        assert row["auroc"] >= 0.8, (agg, row["auroc"])
        assert row["auroc_ci_low"] > 0.5, (agg, row["auroc_ci_low"])
        assert row["n_patients"] == cohort["patient_id"].nunique() == len(res.predictions)
    res = response_results["abmil"]
    # The weak clinical baseline is evaluated on the same folds and compared with a paired bootstrap.
    assert list(res.metrics.index) == ["storm_abmil", "baseline: TMB"]
    assert 0.5 < res.metrics.loc["baseline: TMB", "auroc"] < res.metrics.loc["storm_abmil", "auroc"]
    cmp = res.comparison.iloc[0]
    assert cmp["difference"] == pytest.approx(res.metrics["auroc"].iloc[0] - res.metrics["auroc"].iloc[1])
    assert cmp["ci_low"] < cmp["difference"] < cmp["ci_high"]
    # a bootstrap of N_BOOT resamples can say p <= 2 / (N_BOOT + 1), never p = 0
    assert 2 / (N_BOOT + 1) <= cmp["p_bootstrap"] <= 1
    # Out-of-fold scores follow the planted property (fraction of breast-cancer tiles).
    frac = cohort.drop_duplicates("patient_id").set_index("patient_id")["fraction"]
    assert np.corrcoef(frac.loc[res.predictions.index], res.predictions["score"])[0, 1] > 0.5


@pytest.mark.realdata
def test_survival_signal_is_recovered(semi_synthetic):
    cohort, feats = semi_synthetic
    for agg in ("abmil", "mean"):
        res = fit_outcome(cohort, feats, task="survival", aggregator=agg, baseline="TMB", n_bootstrap=N_BOOT,
                          verbose=False)  # fmt: skip
        row = res.metrics.loc[f"storm_{agg}"]
        assert row["c_index"] >= 0.65, (agg, row["c_index"])
        assert row["c_index_ci_low"] > 0.5, (agg, row["c_index_ci_low"])
        assert row["hr_per_sd"] > 1.0
        assert row["hr_p"] < 0.05
        assert row["logrank_p"] < 0.05
        assert row["n_high"] + row["n_low"] == len(res.predictions)
        assert set(res.predictions["risk_group"]) == {"high", "low"}


@pytest.mark.realdata
def test_shuffled_labels_give_chance_performance(semi_synthetic, response_results):
    cohort, feats = semi_synthetic
    real_auc = response_results["abmil"].metrics.loc["storm_abmil", "auroc"]
    aucs, cidx = [], []
    for seed in SHUFFLES:
        control = shuffled(cohort, seed)
        aucs.append(fit_outcome(control, feats, task="response", n_bootstrap=50, verbose=False)
                    .metrics.loc["storm_abmil", "auroc"])  # fmt: skip
        cidx.append(fit_outcome(control, feats, task="survival", n_bootstrap=50, verbose=False)
                    .metrics.loc["storm_abmil", "c_index"])  # fmt: skip
    # One shuffle of 40 patients varies by about +-0.1 around 0.5; the mean of ten (sd ~0.03) must sit at chance.
    assert abs(np.mean(aucs) - 0.5) < 0.1, aucs
    assert abs(np.mean(cidx) - 0.5) < 0.1, cidx
    assert max(aucs) < real_auc


def test_result_tables_attention_and_figures(generated_cohort, tmp_path):
    cohort, feats = generated_cohort
    res = fit_outcome(cohort, feats, task="response", folds=3, epochs=15, baseline="TMB", n_bootstrap=50,
                      verbose=False)  # fmt: skip
    assert isinstance(res, OutcomeResult)
    assert "storm_abmil: auroc=" in repr(res)
    assert set(res.predictions.columns) >= {"fold", "response", "score", "baseline_score"}
    assert len(res.fold_metrics) == 3
    assert set(res.fold_metrics.columns) >= {"fold", "auroc"}
    # Attention: one weight per tile, summing to one over each patient's slides.
    for patient, slides in res.slides.groupby("patient_id"):
        total = sum(res.attention[s].sum() for s in slides["slide_id"])
        assert total == pytest.approx(1.0, abs=1e-5), patient
    table = res.attention_table("G00_1")
    assert len(table) == 36
    assert table["relative_attention"].sum() == pytest.approx(72 * table["attention"].sum())
    heat, thumb = res.attention_heatmap("G00_1")
    assert heat.shape == thumb.shape[:2]
    assert np.isfinite(heat).mean() == pytest.approx(36 / 64, abs=0.05)  # 6x6 tissue tiles on an 8x8 slide
    assert np.isnan(heat[0, 0])
    assert np.isfinite(heat[heat.shape[0] // 2, heat.shape[1] // 2])
    for draw in (res.plot, res.plot_roc, lambda: res.plot_attention("G00_1")):
        ax = draw()
        assert ax.get_title()
        ax.figure.savefig(tmp_path / "fig.png")
        plt.close(ax.figure)
    with pytest.raises(ValueError, match="plot_roc"):
        res.plot_km()
    with pytest.raises(KeyError, match="No slide 'nope'"):
        res.plot_attention("nope")


def test_survival_result_km_plot_and_reproducibility(generated_cohort):
    cohort, feats = generated_cohort
    kw = {"task": "survival", "folds": 3, "epochs": 10, "n_bootstrap": 30, "verbose": False, "random_state": 3}
    a = fit_outcome(cohort, feats, aggregator="mean", **kw)
    b = fit_outcome(cohort, feats, aggregator="mean", **kw)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    ax = a.plot()
    assert "log-rank p=" in ax.get_title()
    assert len(ax.get_lines()) >= 2
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="plot_km"):
        a.plot_roc()
    # Mean pooling attends uniformly.
    att = a.attention["G05_0"]
    np.testing.assert_allclose(att, 1.0 / len(att))
    c = fit_outcome(cohort, feats, aggregator="mean", **{**kw, "random_state": 4})
    assert not np.array_equal(c.predictions["fold"], a.predictions["fold"])


def test_a_baseline_constant_in_a_training_fold_gives_that_fold_a_constant_score(generated_cohort, caplog):
    from storm_sc.clinical import patient_folds, validate_cohort

    cohort, feats = generated_cohort
    c = validate_cohort(cohort, feats, task="survival", folds=3)
    fold = patient_folds(c.strata, 3, 0)
    # A mutation carried only by fold 0's patients: the training patients of fold 0 are all wild-type.
    carriers = c.patients.index[fold == 0]
    mutated = cohort.assign(mutation=cohort["patient_id"].isin(carriers).astype(int))
    res = fit_outcome(mutated, feats, task="survival", folds=3, epochs=2, baseline="mutation", n_bootstrap=20,
                      verbose=False)  # fmt: skip
    scores = res.predictions["baseline_score"]
    assert scores[res.predictions["fold"] == 0].nunique() == 1
    assert scores[res.predictions["fold"] != 0].nunique() == 2  # the other folds learnt from the carriers
    assert "single value among the training patients of fold 0" in caplog.text
    with pytest.raises(ValueError, match="Baseline column 'TMB' has the same value .* for all 12 patients"):
        fit_outcome(cohort.assign(TMB=3.0), feats, task="survival", folds=3, baseline="TMB", verbose=False)


def test_fit_outcome_checks_the_aggregator_settings_before_reading_the_cohort(generated_cohort):
    # one set of rules with MILSettings: learning_rate=0 was accepted here, then refused after the cohort was read
    cohort, feats = generated_cohort
    for bad, message in (({"learning_rate": 0.0}, "`learning_rate` must be a positive number"),
                         ({"dropout": 1.0}, r"`dropout` must be in \[0, 1\)"),
                         ({"epochs": 0}, "`epochs` must be a positive integer")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            fit_outcome(cohort, "no/such/features.h5", task="survival", folds=3, verbose=False, **bad)


def test_a_tiny_cohort_is_warned_about_and_gets_no_certain_looking_interval(generated_cohort, caplog):
    # 4 patients, folds=2 printed "auroc=1.000 [1.000, 1.000]" without a word.
    cohort, feats = generated_cohort
    per_class = cohort.drop_duplicates("patient_id").groupby("response")["patient_id"].apply(lambda p: list(p)[:2])
    tiny = cohort[cohort["patient_id"].isin(sum(per_class, []))]
    with caplog.at_level(logging.WARNING, logger="storm_sc"):
        res = fit_outcome(tiny, feats, folds=2, epochs=2, n_bootstrap=200, verbose=False)
    assert "Only 2 of 4 patients have response=" in caplog.text
    assert "not as evidence" in caplog.text
    row = res.metrics.iloc[0]
    lo, hi = row["auroc_ci_low"], row["auroc_ci_high"]
    assert (np.isnan(lo) and np.isnan(hi)) or lo < hi  # never a zero-width interval
    survival = fit_outcome(tiny, feats, task="survival", folds=2, epochs=2, n_bootstrap=50, verbose=False)
    assert "event(s) among 4 patients: with fewer than 10 events" in caplog.text
    assert len(survival.predictions) == 4


def test_a_degenerate_bootstrap_reports_nan_not_a_zero_width_interval(caplog):
    from storm_sc.clinical._evaluation import bootstrap_indices, response_metrics

    y = np.array([0, 0, 1, 1])
    boots = bootstrap_indices(len(y), 200, 0)
    with caplog.at_level(logging.WARNING, logger="storm_sc"):
        perfect = response_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]), boots, "storm_abmil")
    assert perfect["auroc"] == 1.0
    assert np.isnan(perfect["auroc_ci_low"]) and np.isnan(perfect["auroc_ci_high"])
    assert "AUROC of storm_abmil: every bootstrap resample gives 1.000" in caplog.text
    caplog.clear()
    # most resamples without a value (a class missing): the few left are no interval either
    one_positive = np.array([0] * 9 + [1])
    boots = bootstrap_indices(len(one_positive), 1000, 0)
    boots = boots[~(boots == 9).any(axis=1)][:150].tolist() + boots[(boots == 9).any(axis=1)][:50].tolist()
    with caplog.at_level(logging.WARNING, logger="storm_sc"):
        few = response_metrics(one_positive, np.arange(10.0), np.array(boots), "m")
    assert np.isnan(few["auroc_ci_low"])
    assert "only 50 of 200 bootstrap resamples" in caplog.text


def test_the_attention_colour_bar_keeps_its_label_and_ticks_in_a_saved_figure(generated_cohort, tmp_path):
    # saved with the default layout, "attention / uniform" was cut off and log ticks read "3 x 10"
    cohort, feats = generated_cohort
    res = fit_outcome(cohort, feats, folds=3, epochs=3, n_bootstrap=20, verbose=False)
    slide = max(res.attention, key=lambda s: np.ptp(res.attention[s]))
    ax = res.plot_attention(slide)
    fig = ax.figure
    fig.savefig(tmp_path / "attention.png")
    bar = fig.axes[-1]
    renderer = fig.canvas.get_renderer()
    texts = [bar.yaxis.label, *bar.get_yticklabels(which="both")]
    shown = [t for t in texts if t.get_visible() and t.get_text()]
    assert bar.yaxis.label.get_text() == "attention / uniform"
    assert any(t.get_text() for t in bar.get_yticklabels(which="both"))
    for text in shown:
        box = text.get_window_extent(renderer)
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, (text.get_text(), box, fig.bbox)
        assert "times" not in text.get_text() and "^" not in text.get_text()  # plain numbers, not 3 x 10^0
    plt.close(fig)
