"""Patient-level cross-validation of outcome models and their metrics (AUROC, C-index, hazard ratio, log-rank)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from storm_sc._settings import logger, settings

from ._cohort import Cohort
from ._features import read_slide_features
from ._mil import MILSettings, Standardiser, cpu_threads, predict_mil, train_mil

STORM = "storm"
# Fewer resamples than this give no percentile confidence interval (its 2.5% and 97.5% points are not resolved).
MIN_BOOTSTRAP = 10


def patient_folds(strata: np.ndarray, folds: int, random_state: int) -> np.ndarray:
    """Fold (0 .. folds-1) of each patient, stratified by ``strata``; patients, not slides, are assigned.

    Parameters
    ----------
    strata
        ``(n_patients,)`` stratification labels (response, or event indicator).
    folds
        Number of folds.
    random_state
        Seed of the shuffle.

    Returns
    -------
    ``(n_patients,)`` int fold indices.

    Examples
    --------
    >>> import numpy as np
    >>> from storm_sc.clinical import patient_folds
    >>> f = patient_folds(np.array([0, 1] * 10), 5, 0)
    >>> sorted(np.bincount(f).tolist())
    [4, 4, 4, 4, 4]
    """
    from sklearn.model_selection import StratifiedKFold

    out = np.full(len(strata), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # A stratum smaller than `folds` (e.g. few censored patients) is spread as evenly as it can be; the cohort
        # checks already guarantee what matters (both classes or an event in every fold).
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
        for k, (_, test) in enumerate(splitter.split(np.zeros(len(strata)), strata)):
            out[test] = k
    return out


# -- metrics ---------------------------------------------------------------------------------------------------------
def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """``(n_bootstrap, n)`` patient resamples, shared by every model so that their comparison is paired."""
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def _ci(values: list[float], what: str) -> tuple[float, float]:
    """95% percentile interval of bootstrap ``values``; NaN, with a warning, where the bootstrap cannot resolve one.

    A resample without both classes (or without an event) has no value: when that is most of them, the rest are a
    biased few. When every resample gives the same value (a handful of patients, or scores that separate the
    classes perfectly) the percentile interval has zero width, which is not certainty: the bootstrap can only echo
    the one value the sample shows.
    """
    v = np.asarray([x for x in values if np.isfinite(x)])
    nan = float("nan"), float("nan")
    if len(v) < max(MIN_BOOTSTRAP, len(values) / 2):
        logger.warning("%s: only %d of %d bootstrap resamples of the patients give a value (the others lack a class or "
                       "an event); too few patients for a confidence interval, reported as NaN.", what, len(v),
                       len(values))  # fmt: skip
        return nan
    if v.min() == v.max():
        logger.warning("%s: every bootstrap resample gives %.3f, so the percentile interval has zero width; that is "
                       "too few patients (or a perfect separation), not certainty: the interval is reported as NaN.",
                       what, float(v[0]))  # fmt: skip
        return nan
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def _survival_arrays(time: Any, event: Any, risk: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(time, event, risk)`` as float, bool and float arrays of one length (lists and Series accepted)."""
    time, event, risk = (np.asarray(v) for v in (time, event, risk))
    if not (time.ndim == event.ndim == risk.ndim == 1 and len(time) == len(event) == len(risk)):
        raise ValueError(
            f"`time`, `event` and `risk` must be 1-D and of one length; got shapes {time.shape}, {event.shape}, "
            f"{risk.shape}."
        )
    if event.dtype != bool and not np.isin(event, (0, 1)).all():
        raise ValueError(f"`event` must be bool or 0/1 (1 = event observed); found {np.unique(event)[:5].tolist()}.")
    return time.astype(np.float64), event.astype(bool), risk.astype(np.float64)


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance of a risk score (higher = shorter survival); NaN without comparable pairs.

    Parameters
    ----------
    time
        ``(n,)`` follow-up times (any array-like).
    event
        ``(n,)`` bool or 0/1, True where the event was observed.
    risk
        ``(n,)`` risk scores.

    Returns
    -------
    The C-index (0.5 = chance, 1 = perfect ranking).

    Examples
    --------
    >>> import numpy as np
    >>> from storm_sc.clinical import c_index
    >>> c_index(np.array([1.0, 2.0, 3.0]), np.array([True, True, False]), np.array([3.0, 2.0, 1.0]))
    1.0
    """
    from lifelines.utils import concordance_index

    time, event, risk = _survival_arrays(time, event, risk)
    if not event.any():
        return float("nan")
    try:
        return float(concordance_index(time, -risk, event))
    except ZeroDivisionError:
        return float("nan")


def response_metrics(y: np.ndarray, score: np.ndarray, boots: np.ndarray, name: str = "score") -> dict[str, float]:
    """AUROC with a percentile bootstrap 95% CI over patients (``name`` is the model's, for warnings)."""
    value = auroc(y, score)
    lo, hi = _ci([auroc(y[b], score[b]) for b in boots], f"AUROC of {name}")
    return {"auroc": value, "auroc_ci_low": lo, "auroc_ci_high": hi, "n_patients": len(y), "n_positive": int(y.sum())}


def survival_metrics(time: np.ndarray, event: np.ndarray, risk: np.ndarray, boots: np.ndarray,
                     name: str = "score") -> dict[str, float]:  # fmt: skip
    """C-index (bootstrap CI), per-SD Cox hazard ratio of the score, and a median split with its log-rank p."""
    from lifelines.statistics import logrank_test

    value = c_index(time, event, risk)
    lo, hi = _ci([c_index(time[b], event[b], risk[b]) for b in boots], f"C-index of {name}")
    out = {"c_index": value, "c_index_ci_low": lo, "c_index_ci_high": hi}
    out.update(hazard_ratio_per_sd(time, event, risk))
    high = risk_groups(risk)
    if high.all() or not high.any():
        p = float("nan")
    else:
        p = float(logrank_test(time[high], time[~high], event_observed_A=event[high],
                               event_observed_B=event[~high]).p_value)  # fmt: skip
    out.update({"logrank_p": p, "n_high": int(high.sum()), "n_low": int((~high).sum()), "n_patients": len(time),
                "n_events": int(event.sum())})  # fmt: skip
    return out


def risk_groups(risk: np.ndarray) -> np.ndarray:
    """High-risk flag: score above the median of the out-of-fold scores (ties at the median are low)."""
    return risk > np.median(risk)


def hazard_ratio_per_sd(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> dict[str, float]:
    """Cox hazard ratio per standard deviation of a score, with its 95% CI and Wald p-value.

    Parameters
    ----------
    time
        ``(n,)`` follow-up times (any array-like).
    event
        ``(n,)`` bool or 0/1, True where the event was observed.
    risk
        ``(n,)`` scores; standardised before the fit.

    Returns
    -------
    ``{"hr_per_sd", "hr_ci_low", "hr_ci_high", "hr_p"}`` (NaN when the score is constant or there are no events).

    Examples
    --------
    >>> import numpy as np
    >>> from storm_sc.clinical import hazard_ratio_per_sd
    >>> rng = np.random.default_rng(0)
    >>> score = rng.normal(size=100)
    >>> hazard_ratio_per_sd(rng.exponential(np.exp(-score)), np.ones(100, bool), score)["hr_per_sd"] > 1
    True
    """
    from lifelines import CoxPHFitter

    time, event, risk = _survival_arrays(time, event, risk)
    nan = {"hr_per_sd": float("nan"), "hr_ci_low": float("nan"), "hr_ci_high": float("nan"), "hr_p": float("nan")}
    sd = float(np.std(risk))
    if not np.isfinite(sd) or sd == 0 or not event.any():
        return nan
    df = pd.DataFrame({"time": time, "event": event, "score": (risk - np.mean(risk)) / sd})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cph = CoxPHFitter().fit(df, duration_col="time", event_col="event")
    except Exception as err:  # lifelines raises its own convergence errors  # noqa: BLE001
        logger.warning("Cox fit of the score did not converge (%s); hazard ratio not reported.", err)
        return nan
    s = cph.summary.loc["score"]
    return {"hr_per_sd": float(s["exp(coef)"]), "hr_ci_low": float(s["exp(coef) lower 95%"]),
            "hr_ci_high": float(s["exp(coef) upper 95%"]), "hr_p": float(s["p"])}  # fmt: skip


# -- clinical baseline -----------------------------------------------------------------------------------------------
def baseline_scores(cohort: Cohort, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold scores of the clinical baseline, fitted on each training fold (logistic or Cox regression).

    A baseline column that takes a single value among a fold's training patients carries no information there: its
    coefficient is undetermined, and lifelines' Cox fit diverges on it. The fold is fitted on the columns that do
    vary, and where none does its held-out patients all get the same score (0): the honest prediction of a model
    that has learnt nothing, which ranks them at chance, as the logistic fit does for a response.

    Parameters
    ----------
    cohort
        The validated cohort (``cohort.baseline`` names the columns).
    folds
        ``(n_patients,)`` fold of each patient.

    Returns
    -------
    ``(n_patients,)`` out-of-fold baseline scores (response logit or Cox log partial hazard).
    """
    cols = [f"baseline:{c}" for c in cohort.baseline]
    x = cohort.patients[cols].to_numpy(dtype=np.float64)
    out = np.zeros(len(x))
    for k in range(folds.max() + 1):
        train, test = folds != k, folds == k
        mu, sd = x[train].mean(axis=0), x[train].std(axis=0)
        varying = sd > 0
        if not varying.all():
            logger.warning(
                "Baseline column(s) %s take a single value among the training patients of fold %d and are left out "
                "of its baseline fit%s.", [c for c, v in zip(cohort.baseline, varying, strict=True) if not v], k,
                "" if varying.any() else "; its held-out patients all get the same baseline score",
            )  # fmt: skip
        if not varying.any():
            continue
        names = [c for c, v in zip(cols, varying, strict=True) if v]
        xt = (x[train][:, varying] - mu[varying]) / sd[varying]
        xs = (x[test][:, varying] - mu[varying]) / sd[varying]
        if cohort.task == "response":
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression().fit(xt, cohort.patients["response"].to_numpy()[train])
            out[test] = model.decision_function(xs)
        else:
            from lifelines import CoxPHFitter

            df = pd.DataFrame(xt, columns=names)
            df["time"] = cohort.patients["time"].to_numpy()[train]
            df["event"] = cohort.patients["event"].to_numpy()[train]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # A small ridge keeps the fit finite when a baseline separates the events perfectly in a fold.
                cph = CoxPHFitter(penalizer=0.01).fit(df, duration_col="time", event_col="event")
            out[test] = cph.predict_log_partial_hazard(pd.DataFrame(xs, columns=names)).to_numpy()
    return out


# -- cross-validation ------------------------------------------------------------------------------------------------
@dataclass
class CrossValidation:
    """Out-of-fold predictions of one cohort (internal result of :func:`cross_validate`)."""

    folds: np.ndarray
    scores: dict[str, np.ndarray]
    attention: dict[str, np.ndarray]
    fold_metrics: pd.DataFrame


def load_bags(cohort: Cohort, key: str) -> tuple[list[np.ndarray], list[list[tuple[str, int]]], dict[str, Any]]:
    """Per patient (in ``cohort.patients`` order): its tiles' features, and ``(slide_id, n_tiles)`` per slide."""
    by_patient: dict[str, list[tuple[str, np.ndarray]]] = {p: [] for p in cohort.patients.index}
    meta: dict[str, Any] = {}
    for slide_id, patient, path in zip(cohort.slides["slide_id"], cohort.slides["patient_id"],
                                       cohort.slides["feature_file"], strict=True):  # fmt: skip
        sf = read_slide_features(path, key=key, thumbnail=False)
        by_patient[patient].append((slide_id, sf.features))
        meta.setdefault("dim", sf.features.shape[1])
    bags, layout = [], []
    for patient in cohort.patients.index:
        parts = sorted(by_patient[patient], key=lambda t: t[0])
        bags.append(np.concatenate([f for _, f in parts], axis=0))
        layout.append([(s, len(f)) for s, f in parts])
    return bags, layout, meta


def cross_validate(
    cohort: Cohort,
    *,
    folds: int,
    key: str,
    mil: MILSettings,
    random_state: int,
    device: torch.device,
    verbose: bool | None,
) -> CrossValidation:
    """Train one aggregator per fold on the other folds' patients; predict the held-out patients."""
    from tqdm.auto import tqdm

    fold_of = patient_folds(cohort.strata, folds, random_state)
    bags, layout, _ = load_bags(cohort, key)
    p = cohort.patients
    y = p["response"].to_numpy() if cohort.task == "response" else None
    time = p["time"].to_numpy() if cohort.task == "survival" else None
    event = p["event"].to_numpy() if cohort.task == "survival" else None
    scores = np.full(len(bags), np.nan)
    attention: dict[str, np.ndarray] = {}
    fold_rows = []
    step_rows = mil.batch_size * int(np.median([min(len(b), mil.max_tiles or len(b)) for b in bags]))
    with cpu_threads(device, step_rows), tqdm(total=folds, desc=f"{mil.aggregator} folds", unit="fold",
                                              disable=not settings.show_progress(verbose)) as bar:  # fmt: skip
        for k in range(folds):
            train, test = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
            # Standardised with the training patients' tiles only: nothing of the held-out fold leaks in.
            scale = Standardiser([bags[i] for i in train])
            net = train_mil(
                [scale(bags[i]) for i in train], task=cohort.task, y=None if y is None else y[train],
                time=None if time is None else time[train], event=None if event is None else event[train],
                settings=mil, seed=random_state * 1000 + k, device=device,
            )  # fmt: skip
            s, att = predict_mil(net, [scale(bags[i]) for i in test], device)
            scores[test] = s
            for i, a in zip(test, att, strict=True):
                start = 0
                for slide_id, n in layout[i]:
                    attention[slide_id] = a[start : start + n]
                    start += n
            row: dict[str, Any] = {"fold": k, "n_train": len(train), "n_test": len(test)}
            if cohort.task == "response":
                row["auroc"] = auroc(y[test], s)
            else:
                row["c_index"] = c_index(time[test], event[test].astype(bool), s)
            fold_rows.append(row)
            logger.debug("fold %d: %s", k, row)
            bar.update()
    out = {STORM: scores}
    if cohort.baseline:
        out["baseline"] = baseline_scores(cohort, fold_of)
    return CrossValidation(folds=fold_of, scores=out, attention=attention, fold_metrics=pd.DataFrame(fold_rows))


def evaluate(cohort: Cohort, cv: CrossValidation, *, n_bootstrap: int, random_state: int,
             names: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:  # fmt: skip
    """Metrics of every model's out-of-fold scores, and the paired difference STORM - baseline."""
    p = cohort.patients
    boots = bootstrap_indices(len(p), n_bootstrap, random_state)
    metric: Callable[[np.ndarray, str], dict[str, float]]
    if cohort.task == "response":
        y = p["response"].to_numpy()
        main = "auroc"

        def metric(s: np.ndarray, name: str) -> dict[str, float]:
            return response_metrics(y, s, boots, name)

        def point(s: np.ndarray, b: np.ndarray) -> float:
            return auroc(y[b], s[b])
    else:
        t, e = p["time"].to_numpy(), p["event"].to_numpy().astype(bool)
        main = "c_index"

        def metric(s: np.ndarray, name: str) -> dict[str, float]:
            return survival_metrics(t, e, s, boots, name)

        def point(s: np.ndarray, b: np.ndarray) -> float:
            return c_index(t[b], e[b], s[b])

    rows = {names[k]: metric(s, names[k]) for k, s in cv.scores.items()}
    metrics = pd.DataFrame.from_dict(rows, orient="index")
    metrics.index.name = "model"
    comparison = None
    if "baseline" in cv.scores:
        a, b = cv.scores[STORM], cv.scores["baseline"]
        full = np.arange(len(p))
        delta = point(a, full) - point(b, full)
        diffs = [point(a, idx) - point(b, idx) for idx in boots]
        lo, hi = _ci(diffs, f"{main} difference {names[STORM]} - {names['baseline']}")
        finite = np.asarray([d for d in diffs if np.isfinite(d)])
        # Two-sided bootstrap p-value of "no difference": how often the resampled difference crosses zero, counted
        # with the observed sample (+1 over n + 1), so that n resamples never claim p = 0, only p <= 2 / (n + 1).
        n_finite = len(finite)
        crossing = min((finite <= 0).sum(), (finite >= 0).sum())
        # as unresolved as the interval where most resamples give no difference (see _ci)
        resolved = n_finite >= max(MIN_BOOTSTRAP, len(diffs) / 2)
        p_value = float(min(1.0, 2 * (crossing + 1) / (n_finite + 1))) if resolved else np.nan
        comparison = pd.DataFrame([{"metric": main, "model": names[STORM], "versus": names["baseline"],
                                    "difference": delta, "ci_low": lo, "ci_high": hi, "p_bootstrap": p_value}])  # fmt: skip
    return metrics, comparison
