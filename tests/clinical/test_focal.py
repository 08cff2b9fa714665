"""A focal outcome: a few tiles of breast cancer among brain and lung decide the response.

The planted property is local: responders carry one compact focus of 1-4 breast-cancer tiles (a few percent of
their tissue), the mix of the two background tissues, drawn per patient, moves the slide mean far more than the
focus does, and the slides differ in size (about 20 to 130 tiles), as whole slides do, so the focus's share of
the mean varies too. Attention over tiles should find the focus; a mean over all tiles dilutes it. (With slides
of one size, mean pooling over a non-linear tile encoder can count the focus tiles and comes close to attention:
AUROC 0.86-0.94 against 0.92-0.95 here, over three training seeds.)
"""

from __future__ import annotations

import numpy as np
import pytest

import storm_sc as st
from storm_sc.tl._clinical import fit_outcome, slide_features
from tests._paths import DATA_DIR
from tests.clinical.test_outcome import shuffled

N_PATIENTS = 60


@pytest.fixture(scope="module")
def focal(tmp_path_factory):
    """The focal cohort and its slide features from the bundled reference checkpoint (the default model)."""
    if not (DATA_DIR / "her2st").exists() or not (DATA_DIR / "visium_ffpe_villacampa2021").exists():
        pytest.skip(f"real data not available under {DATA_DIR} (her2st, visium_ffpe_villacampa2021)")
    from tests.clinical._synthetic import make_focal_cohort

    root = tmp_path_factory.mktemp("focal")
    cohort = make_focal_cohort(DATA_DIR, root / "slides", n_patients=N_PATIENTS, focus=(1, 4), cells=(6, 14), seed=0)
    feats = slide_features(cohort[["slide_id", "path"]], st.models.StormModel.from_pretrained(),
                           out_dir=root / "features", device="cpu", verbose=False)  # fmt: skip
    return cohort, feats


@pytest.mark.realdata
def test_the_focus_is_a_small_share_of_the_tissue(focal):
    cohort, _ = focal
    responders = cohort[cohort["response"] == 1]
    assert cohort["response"].sum() == N_PATIENTS // 2
    assert (cohort.loc[cohort["response"] == 0, "focus"] == 0).all()
    assert responders["focus"].between(1, 4).all()
    assert responders["fraction"].max() <= 0.2 and responders["fraction"].median() < 0.08
    # The background mix varies far more between patients than the focus share does.
    assert cohort["background"].std() > 3 * responders["fraction"].std()


@pytest.mark.realdata
def test_attention_finds_the_focus_and_mean_pooling_does_not_beat_it(focal):
    cohort, feats = focal
    res = {agg: fit_outcome(cohort, feats, task="response", aggregator=agg, n_bootstrap=200, verbose=False)
           for agg in ("abmil", "mean")}  # fmt: skip
    abmil = res["abmil"].metrics.loc["storm_abmil"]
    mean = res["mean"].metrics.loc["storm_mean"]
    assert abmil["auroc"] >= 0.9, abmil["auroc"]
    assert abmil["auroc_ci_low"] > 0.8, abmil["auroc_ci_low"]
    assert mean["auroc"] <= abmil["auroc"], (mean["auroc"], abmil["auroc"])
    # The held-out models attend to the focus: in responders, its tiles get several times a uniform share.
    relative = []
    for _, row in cohort[cohort["response"] == 1].iterrows():
        table = res["abmil"].attention_table(row["slide_id"])
        xy = table[["x_um", "y_um"]].to_numpy()
        for centre in row["focus_xy_um"]:
            nearest = np.abs(xy - np.asarray(centre)).max(axis=1).argmin()
            relative.append(table["relative_attention"].iloc[nearest])
    assert np.median(relative) > 3.0, np.median(relative)


@pytest.mark.realdata
def test_shuffled_focal_labels_sit_at_chance(focal):
    cohort, feats = focal
    aucs = [fit_outcome(shuffled(cohort.assign(time=1.0, event=1), seed), feats, task="response", n_bootstrap=20,
                        verbose=False).metrics.loc["storm_abmil", "auroc"] for seed in range(5)]  # fmt: skip
    assert abs(np.mean(aucs) - 0.5) < 0.12, aucs
