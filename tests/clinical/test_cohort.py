"""Bad cohort tables are refused with a clear message before any model is trained."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from storm_sc.clinical import patient_folds, validate_cohort
from storm_sc.tl._clinical import fit_outcome


@pytest.fixture
def cohort(generated_cohort):
    return generated_cohort[0].copy()


@pytest.fixture
def feats(generated_cohort):
    return generated_cohort[1]


def _fit(cohort, feats, **kw):
    kw.setdefault("folds", 3)
    kw.setdefault("verbose", False)
    return fit_outcome(cohort, feats, **kw)


def test_valid_cohort_has_one_row_per_patient(cohort, feats):
    c = validate_cohort(cohort, feats, task="survival", folds=3, baseline="TMB")
    assert len(c.patients) == 12
    assert len(c.slides) == 16
    assert list(c.patients.columns) == ["time", "event", "baseline:TMB"]
    assert (c.slides["n_tiles"] == 36).all()
    # The features folder works as well as the table.
    c2 = validate_cohort(cohort, feats["feature_file"].map(lambda p: str(p).rsplit("/", 1)[0]).iloc[0],
                         task="response", folds=3)  # fmt: skip
    assert len(c2.slides) == 16


def test_slide_listed_twice(cohort, feats):
    bad = pd.concat([cohort, cohort.iloc[[0]].assign(patient_id="G11")])
    with pytest.raises(ValueError, match=r"listed more than once.*G00_0"):
        _fit(bad, feats)


def test_missing_features_and_missing_files(cohort, feats, tmp_path):
    with pytest.raises(ValueError, match=r"have no features: \['G03_0'\].*slide_features"):
        _fit(cohort, feats[feats["slide_id"] != "G03_0"])
    moved = feats.copy()
    gone = tmp_path / "gone.h5"
    moved.loc[moved["slide_id"] == "G05_0", "feature_file"] = str(gone)
    with pytest.raises(ValueError, match="G05_0: file .*gone.h5 does not exist"):
        _fit(cohort, moved)
    partial = tmp_path / "G05_0.h5"
    shutil.copy(feats.loc[feats["slide_id"] == "G05_0", "feature_file"].iloc[0], partial)
    import h5py

    with h5py.File(partial, "a") as f:
        f.attrs["complete"] = False
    moved.loc[moved["slide_id"] == "G05_0", "feature_file"] = str(partial)
    with pytest.raises(ValueError, match="incomplete"):
        _fit(cohort, moved)


def test_patients_are_never_split_across_folds(cohort, feats):
    result = _fit(cohort, feats, task="response", epochs=2, n_bootstrap=20)
    per_patient = result.slides.groupby("patient_id")["fold"].nunique()
    assert (per_patient == 1).all()
    assert result.slides.groupby("patient_id").size().max() == 2  # multi-slide patients exist
    # Stratified: every fold holds both classes.
    assert (result.predictions.groupby("fold")["response"].nunique() == 2).all()
    # The patient's outcome may not differ between its slides.
    bad = cohort.copy()
    bad.loc[bad["slide_id"] == "G00_1", "response"] = 1 - bad.loc[bad["slide_id"] == "G00_0", "response"].iloc[0]
    with pytest.raises(ValueError, match=r"different \['response'\] on different slides"):
        _fit(bad, feats)


def test_fold_assignment_is_stratified_and_seeded():
    strata = np.array([0] * 12 + [1] * 8)
    a = patient_folds(strata, 4, 0)
    assert (np.bincount(a) == 5).all()
    for k in range(4):
        assert np.bincount(strata[a == k]).tolist() == [3, 2]
    np.testing.assert_array_equal(a, patient_folds(strata, 4, 0))
    assert not np.array_equal(a, patient_folds(strata, 4, 1))


def test_outcome_problems(cohort, feats):
    with pytest.raises(ValueError, match="Every patient is censored"):
        _fit(cohort.assign(event=0), feats, task="survival")
    with pytest.raises(ValueError, match="single class"):
        _fit(cohort.assign(response=1), feats, task="response")
    with pytest.raises(ValueError, match="must be binary"):
        _fit(cohort.assign(response=cohort["response"] * 2), feats, task="response")
    with pytest.raises(ValueError, match="missing values"):
        _fit(cohort.assign(response=cohort["response"].where(cohort.index != 3)), feats, task="response")
    labelled = cohort.set_index("slide_id", drop=False)
    with pytest.raises(ValueError, match=r"'response' has missing values \(rows \['G02_0'\] of the cohort\)"):
        _fit(labelled.assign(response=labelled["response"].where(labelled["slide_id"] != "G02_0")), feats)
    for task, column in (("response", "response"), ("survival", "time"), ("survival", "event")):
        with pytest.raises(ValueError, match=rf"`baseline` \['{column}'\] names the outcome"):
            _fit(cohort, feats, task=task, baseline=["TMB", column])
    with pytest.raises(ValueError, match="positive, finite follow-up"):
        _fit(cohort.assign(time=-cohort["time"]), feats, task="survival")
    with pytest.raises(ValueError, match="no response column 'responder'.*`response_key=`"):
        _fit(cohort, feats, response_key="responder")
    with pytest.raises(ValueError, match="no baseline column 'tmb'.*pass `baseline=`"):
        _fit(cohort, feats, baseline="tmb")
    with pytest.raises(ValueError, match="`task`"):
        _fit(cohort, feats, task="grade")
    with pytest.raises(ValueError, match="Baseline column 'stage' must be numeric"):
        _fit(cohort.assign(stage="II"), feats, baseline="stage")


def test_too_few_patients(cohort, feats):
    with pytest.raises(ValueError, match=r"12 patients are too few for 10-fold"):
        _fit(cohort, feats, folds=10)
    # Response 1 for only two patients: every fold needs both classes.
    few = cohort.assign(response=cohort["patient_id"].isin(["G00", "G01"]).astype(int))
    with pytest.raises(ValueError, match=r"Only 2 patient\(s\) have response=1, fewer than folds=3"):
        _fit(few, feats)
    rare = cohort.assign(event=cohort["patient_id"].isin(["G02"]).astype(int))
    with pytest.raises(ValueError, match=r"Only 1 event\(s\)"):
        _fit(rare, feats, task="survival")
    for folds in (1, 2.7, "2", True, np.float64(3)):
        with pytest.raises(ValueError, match="`folds` must be an integer >= 2"):
            _fit(cohort, feats, folds=folds)
    assert validate_cohort(cohort, feats, task="response", folds=np.int64(3)).task == "response"


def test_option_checks(cohort, feats):
    with pytest.raises(ValueError, match="`aggregator`"):
        _fit(cohort, feats, aggregator="max")
    with pytest.raises(ValueError, match="`features_key`"):
        _fit(cohort, feats, features_key="pixels")
    with pytest.raises(ValueError, match="`epochs`"):
        _fit(cohort, feats, epochs=0)
    # Fewer resamples gave NaN confidence intervals after the whole training.
    with pytest.raises(ValueError, match="`n_bootstrap` must be an integer >= 10, got 5"):
        _fit(cohort, feats, n_bootstrap=5)
    with pytest.raises(TypeError, match="DataFrame"):
        _fit(cohort.to_dict(), feats)
    with pytest.raises(ValueError, match="'feature_file'"):
        _fit(cohort, feats.drop(columns="feature_file"))


def test_a_slide_without_tissue_is_left_out_when_its_patient_has_others(cohort, feats, tmp_path, caplog):
    import h5py

    from storm_sc.clinical._features import H5_COORDS_UM

    def blank(slide_id):
        out = feats.copy()
        path = tmp_path / f"{slide_id}.h5"
        shutil.copy(out.loc[out["slide_id"] == slide_id, "feature_file"].iloc[0], path)
        with h5py.File(path, "a") as f:  # what slide_features writes for a slide where no tile holds tissue
            del f[H5_COORDS_UM]
            f.create_dataset(H5_COORDS_UM, shape=(0, 2), dtype="float64")
        out.loc[out["slide_id"] == slide_id, "feature_file"] = str(path)
        return out

    per_patient = cohort.groupby("patient_id")["slide_id"].agg(list)
    shared = next(s[0] for s in per_patient if len(s) > 1)
    alone = next(s[0] for s in per_patient if len(s) == 1)
    c = validate_cohort(cohort, blank(shared), task="response", folds=3)
    assert shared not in set(c.slides["slide_id"]) and len(c.slides) == len(cohort) - 1
    assert len(c.patients) == cohort["patient_id"].nunique()
    assert "no tissue tiles and are left out" in caplog.text
    with pytest.raises(ValueError, match=rf"no tissue tiles and are their patient's only slides: \['{alone}'\]"):
        validate_cohort(cohort, blank(alone), task="response", folds=3)


def test_features_without_predicted_genes_are_refused_for_expression(cohort, generated_features_without_genes):
    feats = generated_features_without_genes
    with pytest.raises(ValueError, match=r"features_key='expression' has no features.*genes=\[\]"):
        _fit(cohort, feats, features_key="expression")
    # The embedding (also with the empty expression appended) is still there to train on.
    c = validate_cohort(cohort, feats, task="response", folds=3, features_key="embedding+expression")
    assert len(c.slides) == 16


def test_mixed_feature_settings_name_what_differs(cohort, feats, generated_features_without_genes):
    # Half of the slides from a run with 12 predicted genes, half from one with none.
    odd = cohort["slide_id"].isin(["G00_0", "G01_0", "G02_0", "G03_0"])
    without = generated_features_without_genes.set_index("slide_id")["feature_file"]
    mixed = feats.assign(feature_file=np.where(odd, feats["slide_id"].map(without), feats["feature_file"]))
    with pytest.raises(ValueError, match=r"genes differ: 0 genes \(G00_0, G01_0, G02_0, \.\.\.\) vs 12 genes \(G00_1"):
        validate_cohort(cohort, mixed, task="response", folds=3, features_key="embedding+expression")
    # The embedding does not depend on the genes predicted next to it.
    c = validate_cohort(cohort, mixed, task="response", folds=3, features_key="embedding")
    assert len(c.slides) == 16


def test_ids_held_in_a_named_index_are_read_from_it(cohort, feats):
    # scanpy-style tables keep their ids in the index; "no slide column 'slide_id'" was all the user heard.
    c = validate_cohort(cohort.set_index("slide_id"), feats.set_index("slide_id"), task="response", folds=3)
    assert sorted(c.slides["slide_id"]) == sorted(cohort["slide_id"])
    by_both = cohort.set_index(["patient_id", "slide_id"])
    assert len(validate_cohort(by_both, feats, task="response", folds=3).patients) == 12
    # a missing value is named by the row label the user knows, here the slide id
    labelled = cohort.set_index("slide_id")
    with pytest.raises(ValueError, match=r"'response' has missing values \(rows \['G02_0'\] of the cohort\)"):
        validate_cohort(labelled.assign(response=labelled["response"].where(labelled.index != "G02_0")), feats,
                        task="response", folds=3)  # fmt: skip
    # an index named otherwise is shown next to the columns, where the user will look for it
    with pytest.raises(ValueError, match=r"no slide column 'slide_id' \(columns: \[.*\]; index: \['Slide'\]\)"):
        validate_cohort(cohort.rename(columns={"slide_id": "Slide"}).set_index("Slide"), feats, task="response",
                        folds=3)  # fmt: skip


def test_slide_ids_that_nearly_match_the_features_are_named_with_the_fix(cohort, feats, tmp_path):
    # Every one of these said only "32 cohort slide(s) have no features ... Run st.tl.slide_features on them first."
    paths = cohort["path"]
    cases = {
        "a file suffix": (cohort.assign(slide_id=paths.map(lambda p: p.rsplit("/", 1)[1])), r"'G00_0.tif' ~ 'G00_0'"),
        "a folder and a file suffix": (cohort.assign(slide_id=paths), r"'.*/G00_0.tif' ~ 'G00_0'.*without their folder"),
        "spaces around it and letter case": (cohort.assign(slide_id=cohort["slide_id"].str.lower() + " "),
                                             r"'g00_0 ' ~ 'G00_0'.*str.strip"),
    }  # fmt: skip
    for reason, (bad, example) in cases.items():
        with pytest.raises(ValueError, match=rf"16 cohort slide\(s\) have no features.*16 of them differ from a "
                                             rf"feature id only by {reason} \(e.g. {example}"):  # fmt: skip
            validate_cohort(bad, feats, task="response", folds=3)
    # "001" read back by pd.read_csv as the number 1
    numbered = feats.assign(slide_id=[f"{i:03d}" for i in range(len(feats))])
    as_read = cohort.assign(slide_id=np.arange(len(cohort)))
    with pytest.raises(ValueError, match=r"only by leading zeros \(e.g. '0' ~ '000'.*dtype=\{'slide_id': str\}"):
        validate_cohort(as_read, numbered, task="response", folds=3)
    # one near-match, one slide that really has no features: both are said
    mixed = cohort.assign(slide_id=cohort["slide_id"].replace({"G00_0": "G00_0.tif", "G01_0": "NEW"}))
    with pytest.raises(ValueError, match=r"1 of them differs.*Run st.tl.slide_features on the others first. The "
                                         r"features hold 16 slide\(s\), e.g. \['G00_0'"):  # fmt: skip
        validate_cohort(mixed, feats, task="response", folds=3)


def test_a_folder_without_feature_files_says_what_it_holds(cohort, feats, tmp_path):
    slides_folder = cohort["path"].map(lambda p: p.rsplit("/", 1)[0]).iloc[0]
    with pytest.raises(ValueError, match=r"holds no slide feature files \(\*.h5\), but 16 slide image\(s\) "
                                         r"\(\['G00_0.tif'.*is it the slides' folder\?"):  # fmt: skip
        validate_cohort(cohort, slides_folder, task="response", folds=3)
    with pytest.raises(ValueError, match=r"holds no slide feature files.*pass the `out_dir` given to"):
        validate_cohort(cohort, tmp_path, task="response", folds=3)
    (tmp_path / "G00_0.h5.partial").write_bytes(b"")
    with pytest.raises(ValueError, match=r"only 1 unfinished one\(s\) \(\['G00_0.h5.partial'\]\): rerun"):
        validate_cohort(cohort, tmp_path, task="response", folds=3)
    with pytest.raises(ValueError, match="`features` is an empty table"):
        validate_cohort(cohort, feats.iloc[:0], task="response", folds=3)
