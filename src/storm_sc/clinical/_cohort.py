"""Validating a cohort table against the slide features, before any model is trained."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
import pandas as pd

from storm_sc._settings import logger
from storm_sc.wsi._reader import IMAGE_SUFFIXES, TIFF_SUFFIXES

from ._features import (
    A_COMPLETE,
    A_FINGERPRINT,
    FEATURE_DATASETS,
    FEATURE_KEYS,
    H5_COORDS_UM,
    H5_EXPRESSION,
    H5_GENES,
    PARTIAL_SUFFIX,
    SUFFIX,
)
from ._mil import TASKS

# Files st.tl.slide_features reads: what a slide id may still carry when it was taken from a file name.
SLIDE_SUFFIXES = (*IMAGE_SUFFIXES, *TIFF_SUFFIXES)
# Fewer patients in the smaller response class, or fewer events, than this and the cohort's estimate means little:
# with 10 patients per class an AUROC of 0.75 has a 95% CI of about +-0.22 (Hanley & McNeil 1982), and 10 events is
# the usual floor for estimating even one survival effect (Peduzzi et al. 1995).
MIN_INFORMATIVE = 10
# A test fold needs at least this many patients for its out-of-fold predictions to mean anything.
MIN_PATIENTS_PER_FOLD = 2


@dataclass(frozen=True, eq=False)
class Cohort:
    """A validated cohort: one row per slide and one per patient.

    Attributes
    ----------
    task
        ``"response"`` or ``"survival"``.
    slides
        ``slide_id``, ``patient_id``, ``feature_file``, ``n_tiles`` per slide.
    patients
        Indexed by patient id: ``response`` (0/1) or ``time`` and ``event`` (0/1), and the baseline columns.
    baseline
        Names of the clinical baseline columns.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np, pandas as pd
    >>> from PIL import Image
    >>> import storm_sc as st
    >>> tmp = tempfile.TemporaryDirectory()
    >>> paths = {f"s{i}": f"{tmp.name}/s{i}.png" for i in range(4)}
    >>> for i, path in enumerate(paths.values()):
    ...     rgb = np.full((256, 256, 3), 240, np.uint8)  # glass
    ...     rgb[64:192, 64:192] = (180, 90, 160) if i % 2 else (230, 150, 190)  # purple or pink tissue
    ...     Image.fromarray(rgb).save(path)
    >>> model = st.models.StormModel("storm-tiny", ["GFAP", "MBP"], seed=0)
    >>> feats = st.tl.slide_features(paths, model, out_dir=f"{tmp.name}/features", mpp=1.75, device="cpu",
    ...                              verbose=False)
    >>> cohort = pd.DataFrame({"slide_id": list(paths), "patient_id": ["p1", "p2", "p3", "p4"],
    ...                        "response": [0, 1, 0, 1]})
    >>> c = st.clinical.validate_cohort(cohort, feats, task="response", folds=2)
    >>> c.task, c.slides["n_tiles"].tolist(), c.strata.tolist()
    ('response', [4, 4, 4, 4], [0, 1, 0, 1])
    >>> tmp.cleanup()
    """

    task: str
    slides: pd.DataFrame
    patients: pd.DataFrame
    baseline: list[str]

    @property
    def strata(self) -> np.ndarray:
        """Stratification label per patient: the response, or the event indicator."""
        col = "response" if self.task == "response" else "event"
        return self.patients[col].to_numpy(dtype=np.int64)


def features_table(features: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """``slide_id`` -> ``feature_file`` from the table of :func:`storm_sc.tl.slide_features` or its folder."""
    if isinstance(features, pd.DataFrame):
        columns = {c: column_or_index(features, c) for c in ("slide_id", "feature_file")}
        missing = [c for c, values in columns.items() if values is None]
        if missing:
            raise ValueError(
                f"`features` must be the table returned by st.tl.slide_features (columns 'slide_id', 'feature_file'); "
                f"missing {missing}."
            )
        table = pd.DataFrame({c: values.astype(str).to_numpy() for c, values in columns.items()})
        if table.empty:
            raise ValueError("`features` is an empty table; pass the table returned by st.tl.slide_features.")
    elif isinstance(features, str | os.PathLike):
        folder = Path(features)
        if not folder.is_dir():
            raise FileNotFoundError(f"`features` folder {folder} does not exist.")
        files = sorted(folder.glob(f"*{SUFFIX}"))
        if not files:
            raise ValueError(
                f"`features` folder {folder} holds no slide feature files (*{SUFFIX}){_folder_hint(folder)}"
            )
        table = pd.DataFrame({"slide_id": [f.name[: -len(SUFFIX)] for f in files],
                              "feature_file": [str(f) for f in files]})  # fmt: skip
    else:
        raise TypeError(
            f"`features` must be the DataFrame returned by st.tl.slide_features or its out_dir; got {type(features).__name__}."
        )
    dup = sorted(table.loc[table["slide_id"].duplicated(), "slide_id"].unique())
    if dup:
        raise ValueError(f"`features` lists slide ids more than once: {dup[:10]}.")
    return table


def _folder_hint(folder: Path) -> str:
    """The end of the error for a folder without feature files: what it holds instead, and what to pass."""
    partial = sorted(f.name for f in folder.glob(f"*{PARTIAL_SUFFIX}"))
    if partial:
        return (
            f", only {len(partial)} unfinished one(s) ({partial[:3]}): rerun st.tl.slide_features on the same "
            "slides and `out_dir` to complete them."
        )
    slides = sorted(f.name for f in folder.iterdir() if f.suffix.lower() in SLIDE_SUFFIXES)
    if slides:
        return (
            f", but {len(slides)} slide image(s) ({slides[:3]}): is it the slides' folder? Pass the `out_dir` given "
            "to st.tl.slide_features."
        )
    return "; pass the `out_dir` given to st.tl.slide_features."


def column_or_index(df: pd.DataFrame, key: str) -> pd.Series | None:
    """``df[key]``, else the index level named ``key`` (a Series on ``df``'s rows), else ``None``.

    scanpy-style tables keep their ids in the index (``cohort.set_index("slide_id")``): an index named like the
    column stands for it.
    """
    if key in df.columns:
        return df[key]
    if key in df.index.names:
        return pd.Series(df.index.get_level_values(key), index=df.index, name=key)
    return None


def describe_columns(df: pd.DataFrame) -> str:
    """``"columns: [...]"``, plus the index's name(s) when it has any: where a user may have put a column."""
    named = [n for n in df.index.names if n is not None]
    return f"columns: {list(df.columns)}" + (f"; index: {named}" if named else "")


def _column(df: pd.DataFrame, key: str, role: str, argument: str | None = None) -> pd.Series:
    """``df[key]`` (or the index named ``key``), or an error naming the argument that chooses the column."""
    values = column_or_index(df, key)
    if values is None:
        raise ValueError(
            f"The cohort has no {role} column {key!r} ({describe_columns(df)}); pass "
            f"`{argument or role + '_key'}=` naming it."
        )
    return values


def _binary(values: pd.Series, name: str) -> pd.Series:
    """0/1 integers from bool or 0/1 numbers; anything else is an error naming the offending values."""
    if values.isna().any():
        bad = values.index[values.isna()].tolist()[:5]
        raise ValueError(
            f"Column {name!r} has missing values (rows {bad} of the cohort); drop those patients or fill them."
        )
    if values.dtype == bool:
        return values.astype(np.int64)
    numeric = pd.to_numeric(values, errors="coerce")
    ok = numeric.isin([0, 1])
    if not ok.all():
        raise ValueError(
            f"Column {name!r} must be binary (0/1 or True/False); found {sorted(map(str, values[~ok].unique()))[:5]}. "
            "Encode it as 0/1 first."
        )
    return numeric.astype(np.int64)


def validate_cohort(
    cohort: pd.DataFrame,
    features: pd.DataFrame | str | os.PathLike,
    *,
    task: str,
    folds: int,
    slide_key: str = "slide_id",
    patient_key: str = "patient_id",
    response_key: str = "response",
    time_key: str = "time",
    event_key: str = "event",
    baseline: str | list[str] | None = None,
    features_key: str | None = None,
) -> Cohort:
    """Check a cohort table and its slide features; every problem is reported before any work starts.

    Parameters
    ----------
    cohort
        One row per slide: slide id, patient id, and the outcome (``response``, or ``time`` and ``event``),
        plus any baseline columns. Outcomes and baselines must agree across a patient's slides.
    features
        The table returned by :func:`storm_sc.tl.slide_features`, or its ``out_dir``.
    task
        ``"response"`` or ``"survival"``.
    folds
        Number of cross-validation folds (decides the minimum patients per class).
    slide_key, patient_key, response_key, time_key, event_key
        Column names in ``cohort`` (an index named so counts as a column).
    baseline
        Clinical baseline column(s), numeric.
    features_key
        The tile features the outcome model will read (see :func:`storm_sc.tl.fit_outcome`): the files must hold at
        least one such feature. ``None`` skips that check.

    Returns
    -------
    The :class:`Cohort`.

    Examples
    --------
    >>> c = validate_cohort(table, feats, task="response", folds=5)  # doctest: +SKIP
    """
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}; got {task!r}.")
    if features_key is not None and features_key not in FEATURE_KEYS:
        raise ValueError(f"`features_key` must be one of {FEATURE_KEYS}; got {features_key!r}.")
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise ValueError(f"`folds` must be an integer >= 2; got {folds!r}.")
    if not isinstance(cohort, pd.DataFrame):
        raise TypeError(f"`cohort` must be a pandas DataFrame with one row per slide; got {type(cohort).__name__}.")
    if cohort.empty:
        raise ValueError("`cohort` is empty.")
    baseline_cols = [] if baseline is None else [baseline] if isinstance(baseline, str) else list(baseline)
    slides = _column(cohort, slide_key, "slide").astype(str)
    patients = _column(cohort, patient_key, "patient")
    if patients.isna().any() or _column(cohort, slide_key, "slide").isna().any():
        raise ValueError(f"Columns {slide_key!r} and {patient_key!r} must not have missing values.")
    patients = patients.astype(str)
    dup = sorted(slides[slides.duplicated()].unique())
    if dup:
        raise ValueError(
            f"Slide id(s) listed more than once in the cohort: {dup[:10]}. Each slide belongs to exactly one "
            "patient: keep one row per slide."
        )

    outcome_cols = {"response": response_key} if task == "response" else {"time": time_key, "event": event_key}
    not_covariates = [*outcome_cols.values(), slide_key, patient_key]
    clash = [c for c in baseline_cols if c in not_covariates]
    if clash:
        raise ValueError(
            f"`baseline` {clash} names the outcome or id column(s) {not_covariates} of this {task} task: a baseline is "
            "a clinical covariate known before the outcome (e.g. 'TMB'). Pass other columns, or none."
        )
    # The cohort's own row labels, so that a problem row is named as the user knows it; without their names, which
    # (an index named "slide_id") pandas would not tell apart from the column when merging.
    rows = cohort.index.set_names([None] * cohort.index.nlevels)
    table = pd.DataFrame({"slide_id": slides.to_numpy(), "patient_id": patients.to_numpy()}, index=rows)
    for name, key in outcome_cols.items():
        table[name] = _column(cohort, key, name).to_numpy()
    for col in baseline_cols:
        values = _column(cohort, col, "baseline", argument="baseline")
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.isna().any():
            bad = values[numeric.isna()].unique()[:5].tolist()
            raise ValueError(
                f"Baseline column {col!r} must be numeric without missing values; found {bad}. Encode categories "
                "(e.g. one column per level) and drop or impute missing values first."
            )
        table[f"baseline:{col}"] = numeric.to_numpy(dtype=np.float64)

    if task == "response":
        table["response"] = _binary(table["response"], response_key).to_numpy()
    else:
        time = pd.to_numeric(table["time"], errors="coerce")
        if time.isna().any() or not np.isfinite(time).all() or (time <= 0).any():
            raise ValueError(f"Column {time_key!r} must hold positive, finite follow-up times for every slide.")
        table["time"] = time.to_numpy(dtype=np.float64)
        table["event"] = _binary(table["event"], event_key).to_numpy()

    # Patient-level values must agree across a patient's slides: they describe the patient, not the slide.
    per_patient = [c for c in table.columns if c not in ("slide_id", "patient_id")]
    conflicting = table.groupby("patient_id")[per_patient].nunique()
    bad = conflicting[(conflicting > 1).any(axis=1)]
    if len(bad):
        user_name = {**outcome_cols, **{f"baseline:{c}": c for c in baseline_cols}}
        cols = sorted({user_name[c] for c in per_patient if (bad[c] > 1).any()})
        raise ValueError(
            f"Patients {bad.index.tolist()[:5]} have different {cols} on different slides; outcomes and baselines "
            "are per patient."
        )
    patient_table = table.groupby("patient_id", sort=True)[per_patient].first()
    _check_counts(patient_table, task, folds, response_key, event_key)
    for col in baseline_cols:
        values = patient_table[f"baseline:{col}"]
        if values.nunique() == 1:
            raise ValueError(
                f"Baseline column {col!r} has the same value ({values.iloc[0]:g}) for all {len(values)} patients: it "
                "cannot predict the outcome. Leave it out of `baseline`."
            )

    feats = features_table(features)
    merged = table[["slide_id", "patient_id"]].merge(feats, on="slide_id", how="left")
    missing = merged.loc[merged["feature_file"].isna(), "slide_id"].tolist()
    if missing:
        raise ValueError(_unmatched_ids(missing, feats["slide_id"].tolist(), slide_key))
    merged["n_tiles"] = _check_feature_files(merged, features_key)
    merged = _without_empty_slides(merged)
    return Cohort(task=task, slides=merged, patients=patient_table, baseline=baseline_cols)


# How a cohort's slide id can differ from the id its features were saved under, each with what to do about it.
_ID_MISMATCHES = {
    "spaces around it": "strip the spaces (`.str.strip()`) where they are",
    "a folder": "use file names without their folder on both sides",
    "a file suffix": "use ids without the file suffix on both sides (`Path(p).stem`)",
    "letter case": "write the ids in one case on both sides",
    "leading zeros": "read the table that lost them with `pd.read_csv(..., dtype={{{key!r}: str}})`, which keeps them",
}


def _without_slide_suffix(name: str) -> str:
    suffix = PureWindowsPath(name).suffix
    return name[: -len(suffix)] if suffix and suffix.lower() in (*SLIDE_SUFFIXES, SUFFIX) else name


# The steps that make two spellings of one slide id equal, named as in _ID_MISMATCHES, in the order applied.
_LOOSENING = (
    ("spaces around it", str.strip),
    ("a folder", lambda s: PureWindowsPath(s).name),  # splits at "/" and "\\" alike
    ("a file suffix", _without_slide_suffix),
    ("letter case", str.casefold),
    ("leading zeros", lambda s: (s.lstrip("0") or "0") if s.isdigit() else s),
)


def _loosen(slide_id: str) -> list[str]:
    """The id after each step of :data:`_LOOSENING`; the last has no spaces, folder, suffix, case or leading zeros."""
    stages = [slide_id]
    for _, step in _LOOSENING:
        stages.append(step(stages[-1]))
    return stages


def _how_ids_differ(cohort_id: str, feature_id: str) -> list[str]:
    """The steps of :data:`_LOOSENING` that took away a difference between two spellings of one id."""
    c, f = _loosen(cohort_id), _loosen(feature_id)
    return [name for i, (name, _) in enumerate(_LOOSENING) if c[i] != f[i] and (c[i + 1] != c[i] or f[i + 1] != f[i])]


def _unmatched_ids(missing: list[str], available: list[str], slide_key: str) -> str:
    """The error for cohort slides without features: near-matches among the feature ids and how they differ."""
    by_loose: dict[str, list[str]] = {}
    for feature_id in available:
        by_loose.setdefault(_loosen(feature_id)[-1], []).append(feature_id)
    near = {}
    for cohort_id in missing:
        candidates = by_loose.get(_loosen(cohort_id)[-1], [])
        if len(candidates) == 1:  # an ambiguous near-match suggests nothing
            near[cohort_id] = candidates[0]
    message = f"{len(missing)} cohort slide(s) have no features: {missing[:10]}."
    if near:
        differences = {d for c, f in near.items() for d in _how_ids_differ(c, f)}
        reasons = [name for name, _ in _LOOSENING if name in differences]
        examples = ", ".join(f"{c!r} ~ {f!r}" for c, f in list(near.items())[:3])
        fixes = "; ".join(_ID_MISMATCHES[r].format(key=slide_key) for r in reasons)
        message += (
            f" {len(near)} of them {'differs' if len(near) == 1 else 'differ'} from a feature id only by "
            f"{' and '.join(reasons)} (e.g. {examples}): {fixes}. "
            f"The cohort's {slide_key!r} must be the slide ids given to st.tl.slide_features (its feature files' "
            f"names without {SUFFIX!r})."
        )
    if len(near) < len(missing):
        message += f" Run st.tl.slide_features on {'the others' if near else 'them'} first."
    return message + f" The features hold {len(available)} slide(s), e.g. {available[:5]}."


def _without_empty_slides(slides: pd.DataFrame) -> pd.DataFrame:
    """Drop slides without a tissue tile (with a warning) where their patient has others; refuse a patient with none.

    A patient's outcome is predicted from all of their slides: one blank or failed scan need not drop the cohort.
    """
    empty = slides["n_tiles"] == 0
    if not empty.any():
        return slides
    usable = set(slides.loc[~empty, "patient_id"])
    lost = slides.loc[empty & ~slides["patient_id"].isin(usable), "slide_id"].tolist()
    if lost:
        raise ValueError(
            f"{len(lost)} slide(s) have no tissue tiles and are their patient's only slides: {lost[:10]}. Check the "
            "slides (or lower `tissue_threshold` in st.tl.slide_features), or leave those patients out of the cohort."
        )
    dropped = slides.loc[empty, "slide_id"].tolist()
    logger.warning(
        "%d slide(s) have no tissue tiles and are left out; their patients keep their other slides: %s",
        len(dropped),
        dropped[:10],
    )
    return slides.loc[~empty].reset_index(drop=True)


def _check_counts(patients: pd.DataFrame, task: str, folds: int, response_key: str, event_key: str) -> None:
    n = len(patients)
    if n < MIN_PATIENTS_PER_FOLD * folds:
        raise ValueError(
            f"{n} patients are too few for {folds}-fold cross-validation (at least {MIN_PATIENTS_PER_FOLD * folds} "
            f"are needed, {MIN_PATIENTS_PER_FOLD} per test fold); use fewer `folds`."
        )
    if task == "response":
        counts = patients["response"].value_counts()
        if len(counts) < 2:
            raise ValueError(
                f"Column {response_key!r} has a single class ({counts.index[0]}) across all {n} patients; a response "
                "model needs responders and non-responders."
            )
        if counts.min() < folds:
            raise ValueError(
                f"Only {counts.min()} patient(s) have response={counts.idxmin()}, fewer than folds={folds}: every "
                f"fold needs both classes. Use folds <= {counts.min()} or more patients."
            )
        if counts.min() < MIN_INFORMATIVE:
            logger.warning(
                "Only %d of %d patients have response=%s: with fewer than %d patients per class the AUROC and its "
                "bootstrap CI mean little (even with %d per class an AUROC of 0.75 is +-0.22), and a perfect score "
                "can come by chance. Read the result as a check that the pipeline runs, not as evidence.",
                int(counts.min()), n, counts.idxmin(), MIN_INFORMATIVE, MIN_INFORMATIVE,
            )  # fmt: skip
    else:
        n_events = int(patients["event"].sum())
        if n_events == 0:
            raise ValueError(
                f"Every patient is censored (column {event_key!r} is all 0): survival cannot be modelled without "
                "events."
            )
        if n_events < folds:
            raise ValueError(
                f"Only {n_events} event(s) among {n} patients, fewer than folds={folds}: every fold needs an event. "
                f"Use folds <= {n_events}."
            )
        if n_events < MIN_INFORMATIVE:
            logger.warning(
                "Only %d event(s) among %d patients: with fewer than %d events the C-index, hazard ratio and their "
                "CIs mean little, and a striking value can come by chance. Read the result as a check that the "
                "pipeline runs, not as evidence.", n_events, n, MIN_INFORMATIVE,
            )  # fmt: skip


def _check_feature_files(slides: pd.DataFrame, features_key: str | None) -> list[int]:
    import h5py

    problems, n_tiles, featureless, settings = [], [], [], []
    for slide_id, path in zip(slides["slide_id"], slides["feature_file"], strict=True):
        if not Path(path).is_file():
            problems.append(f"{slide_id}: file {path} does not exist")
            n_tiles.append(0)
            continue
        try:
            with h5py.File(path, "r") as f:
                complete = bool(f.attrs.get(A_COMPLETE, False))
                n = int(f[H5_COORDS_UM].shape[0]) if H5_COORDS_UM in f else 0
                fingerprint = str(f.attrs.get(A_FINGERPRINT, ""))
                n_genes = int(f[H5_GENES].shape[0]) if H5_GENES in f else 0
                if features_key is not None:
                    width = sum(f[d].shape[1] for d in FEATURE_DATASETS[features_key] if d in f)
                    if width == 0:
                        featureless.append(slide_id)
        except OSError as err:
            problems.append(f"{slide_id}: {path} cannot be read ({err})")
            n_tiles.append(0)
            continue
        if not complete:
            problems.append(f"{slide_id}: {path} is incomplete (rerun st.tl.slide_features)")
        n_tiles.append(n)
        settings.append((slide_id, _cohort_settings(fingerprint, n_genes)))
    if problems:
        raise ValueError(f"{len(problems)} slide feature file(s) cannot be used: " + "; ".join(problems[:10]) + ".")
    if featureless:
        # Only the predicted expression can be empty: slide_features(genes=[]) stores none.
        raise ValueError(
            f"features_key={features_key!r} has no features to train on: the feature files of {len(featureless)} "
            f"slide(s) hold no predicted genes ({featureless[:5]}; computed with `genes=[]`). Recompute them with "
            "st.tl.slide_features(..., genes=[...]) or use another `features_key` (e.g. 'embedding')."
        )
    # The gene panel only matters to features that read the predicted expression.
    uses_genes = features_key is None or H5_EXPRESSION in FEATURE_DATASETS[features_key]
    compared = [name for name in _COHORT_SETTINGS if name != "genes" or uses_genes]
    differences = [d for d in (_difference(name, settings) for name in compared) if d]
    if differences:
        raise ValueError(
            f"The slides' features were made with different settings: {'; '.join(differences)}. Features of one "
            f"cohort must be made with one model and the same patch size{' and genes' if uses_genes else ''}: "
            "recompute the odd ones with st.tl.slide_features."
        )
    return n_tiles


# Settings of the feature files that must agree across a cohort.
_COHORT_SETTINGS = ("model", "patch_um", "tile_px", "genes")


def _cohort_settings(fingerprint: str, n_genes: int) -> dict[str, tuple[object, str]]:
    """``setting -> (value, how to print it)`` of a feature file, for :data:`_COHORT_SETTINGS`."""
    import json

    try:
        fp = json.loads(fingerprint)
    except ValueError:
        fp = {}
    if not isinstance(fp, dict):
        fp = {}
    digest = str(fp.get("model_digest"))
    return {
        "model": (fp.get("model_digest"), f"{fp.get('model_config')} (weights {digest[:8]})"),
        "patch_um": (fp.get("patch_um"), f"{fp.get('patch_um')} um"),
        "tile_px": (fp.get("tile_px"), f"{fp.get('tile_px')} px"),
        "genes": (fp.get("genes_sha"), f"{n_genes} genes"),
    }


def _difference(name: str, settings: list[tuple[str, dict[str, tuple[object, str]]]]) -> str | None:
    """``"<name> differ(s): A (slides) vs B (slides)"`` when the slides disagree on a setting, else ``None``."""
    groups: dict[object, tuple[str, list[str]]] = {}
    for slide_id, values in settings:
        value, label = values[name]
        groups.setdefault(value, (label, []))[1].append(slide_id)
    if len(groups) < 2:
        return None
    labels = [label for label, _ in groups.values()]
    if len(set(labels)) < len(labels):  # e.g. two panels of as many genes: tell them apart by their hash
        labels = [f"{label} [{str(value)[:8]}]" for label, value in zip(labels, groups, strict=True)]
    parts = [f"{label} ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
             for label, (_, ids) in zip(labels, groups.values(), strict=True)]  # fmt: skip
    return f"{name} {'differ' if name == 'genes' else 'differs'}: {' vs '.join(parts)}"
