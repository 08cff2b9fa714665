"""Benchmark: patient outcomes from whole-slide H&E on semi-synthetic cohorts with a planted property.

No real clinical cohort (slides + response or survival) is available here, so the cohorts are assembled from real
H&E (her2st breast cancer, Visium FFPE mouse brain and human lung crops, read in place from the data folder) by
the builders the tests use (``tests/clinical/_synthetic.py``), each with a known property that decides the outcome:

* ``fraction``: each slide is a mosaic of breast-cancer and brain tiles; the response follows the patient's
  breast-cancer fraction (a diffuse, slide-wide property); a noisy clinical baseline (``TMB``) is fitted on the
  same folds;
* ``focal``: slides of brain and lung in a per-patient mix; responders carry one focus of 1-4 breast-cancer tiles
  (a few percent of the tissue); slides of about 20-130 tiles. Attention should find the focus, a mean dilutes it.

Each cohort (``--cohort-seeds``) gets slide features from the model once (``st.tl.slide_features``), then
``st.tl.fit_outcome`` with gated-attention MIL (ABMIL) and with mean pooling, patient-level stratified
cross-validation, for each training seed (``--train-seeds``). Reported per run: AUROC with its bootstrap 95% CI; for
the focal cohort the median attention of the focus tiles relative to a uniform share (in responders, out-of-fold
models); and a negative control, ABMIL on the same features with responses permuted across patients
(``--shuffles`` permutations). Run from the repository root::

    python benchmarks/clinical_cohorts.py --out results/clinical.md --out results/clinical.csv

See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

import storm_sc as st  # noqa: E402
from benchmarks._data_dir import default_data_dir  # noqa: E402
from benchmarks._report import mean_sd, outputs_in_the_way, publish  # noqa: E402

logger = logging.getLogger("storm_sc.benchmarks")

COHORTS = ("fraction", "focal")
NEEDED = ("her2st", "visium_ffpe_villacampa2021")


def build_cohort(kind: str, data_dir: Path, out: Path, *, n_patients: int, seed: int) -> pd.DataFrame:
    """Write one cohort's slides under ``out`` and return its table (see ``tests/clinical/_synthetic.py``).

    Parameters
    ----------
    kind
        ``"fraction"`` or ``"focal"``.
    data_dir
        The real data folder (read only).
    out
        Folder for the generated slides.
    n_patients
        Patients (one slide each; the fraction cohort gives a fifth of them a second slide).
    seed
        Seed of the cohort.

    Returns
    -------
    One row per slide: ``slide_id``, ``patient_id``, ``path``, ``response`` and the planted property.
    """
    from tests.clinical._synthetic import make_cohort, make_focal_cohort

    if kind == "fraction":
        return make_cohort(data_dir, out, n_patients=n_patients, n_double=n_patients // 5, seed=seed)
    return make_focal_cohort(data_dir, out, n_patients=n_patients, focus=(1, 4), cells=(6, 14), seed=seed)


def focus_attention(cohort: pd.DataFrame, result: Any) -> float:
    """Median attention of the focus tiles relative to a uniform share, over responders (out-of-fold models).

    Parameters
    ----------
    cohort
        The focal cohort (``focus_xy_um`` per slide).
    result
        ABMIL :class:`~storm_sc.clinical.OutcomeResult`.

    Returns
    -------
    The median ratio (1: no preference for the focus).
    """
    relative = []
    for _, row in cohort[cohort["response"] == 1].iterrows():
        table = result.attention_table(row["slide_id"])
        xy = table[["x_um", "y_um"]].to_numpy()
        for centre in row["focus_xy_um"]:
            relative.append(table["relative_attention"].iloc[np.abs(xy - np.asarray(centre)).max(axis=1).argmin()])
    return float(np.median(relative))


def shuffled(cohort: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same slides with responses permuted across patients (the negative control).

    Parameters
    ----------
    cohort
        The cohort table.
    seed
        Seed of the permutation.

    Returns
    -------
    A copy with permuted ``response``.

    Examples
    --------
    >>> c = pd.DataFrame({"patient_id": ["a", "b", "b"], "response": [1, 0, 0]})
    >>> sorted(shuffled(c, 0).drop_duplicates("patient_id")["response"].tolist())
    [0, 1]
    """
    patients = cohort.drop_duplicates("patient_id")[["patient_id", "response"]].reset_index(drop=True)
    patients["response"] = patients["response"].to_numpy()[np.random.default_rng(seed).permutation(len(patients))]
    return cohort.drop(columns="response").merge(patients, on="patient_id")


def run_cohort(
    kind: str,
    cohort: pd.DataFrame,
    features: pd.DataFrame,
    *,
    cohort_seed: int,
    train_seeds: Sequence[int],
    shuffles: int,
    n_bootstrap: int,
) -> list[dict[str, Any]]:
    """ABMIL and mean pooling (and the shuffled control) on one cohort for every training seed.

    Parameters
    ----------
    kind
        Cohort kind.
    cohort, features
        The cohort table and its ``slide_features`` table.
    cohort_seed
        Seed the cohort was built with (reported).
    train_seeds
        Seeds of ``fit_outcome`` (initialisation, folds, bootstrap).
    shuffles
        Permutations of the negative control per training seed.
    n_bootstrap
        Bootstrap resamples of the AUROC confidence intervals.

    Returns
    -------
    One row per aggregator (and control) x training seed.
    """
    rows = []
    baseline = "TMB" if "TMB" in cohort else None
    for seed in train_seeds:
        for aggregator in ("abmil", "mean"):
            c0 = time.process_time()
            res = st.tl.fit_outcome(cohort, features, task="response", aggregator=aggregator, baseline=baseline,
                                    n_bootstrap=n_bootstrap, random_state=seed, verbose=False)  # fmt: skip
            m = res.metrics.loc[f"storm_{aggregator}"]
            row = {"cohort": kind, "cohort_seed": cohort_seed, "train_seed": seed, "method": aggregator,
                   "auroc": m["auroc"], "auroc_ci_low": m["auroc_ci_low"], "auroc_ci_high": m["auroc_ci_high"],
                   "cpu_s": time.process_time() - c0}  # fmt: skip
            if kind == "focal" and aggregator == "abmil":
                row["focus_attention"] = focus_attention(cohort, res)
            if baseline is not None and aggregator == "abmil":
                b = res.metrics.loc[f"baseline: {baseline}"]
                rows.append({**row, "method": f"baseline_{baseline}", "auroc": b["auroc"],
                             "auroc_ci_low": b["auroc_ci_low"], "auroc_ci_high": b["auroc_ci_high"],
                             "focus_attention": np.nan, "cpu_s": np.nan})  # fmt: skip
            rows.append(row)
            logger.info("%s seed %d/%d %s: AUROC %.3f", kind, cohort_seed, seed, aggregator, m["auroc"])
        aucs = [
            st.tl.fit_outcome(shuffled(cohort, 1000 * seed + k), features, task="response", n_bootstrap=20,
                              random_state=seed, verbose=False).metrics.loc["storm_abmil", "auroc"]
            for k in range(shuffles)
        ]  # fmt: skip
        rows.append({"cohort": kind, "cohort_seed": cohort_seed, "train_seed": seed, "method": "abmil_shuffled",
                     "auroc": float(np.mean(aucs)), "auroc_ci_low": float(np.min(aucs)),
                     "auroc_ci_high": float(np.max(aucs))})  # fmt: skip
    return rows


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over cohort and training seeds, per cohort and method.

    Parameters
    ----------
    rows
        The per-run rows.

    Returns
    -------
    The table printed by the script.
    """
    out = []
    for (kind, method), group in rows.groupby(["cohort", "method"], sort=False):
        out.append({
            "cohort": kind, "method": method, "runs": len(group), "AUROC": mean_sd(group["auroc"]),
            "min-max": f"{group['auroc'].min():.3f}-{group['auroc'].max():.3f}",
            # a CI the bootstrap cannot resolve (every resample 1.0, say) is NaN: counted, not silently left out
            "CI low (mean)": f"{group['auroc_ci_low'].mean():.3f}"
            + (f" ({n_nan} unresolved)" if (n_nan := int(group["auroc_ci_low"].isna().sum())) else ""),
            "focus attention (median, x uniform)": mean_sd(group["focus_attention"])
            if "focus_attention" in group else "n/a",
        })  # fmt: skip
    return pd.DataFrame(out)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--cohorts", nargs="+", choices=COHORTS, default=list(COHORTS))
    p.add_argument("--cohort-seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--train-seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n-patients", type=int, default=60)
    p.add_argument("--shuffles", type=int, default=3, help="permutations of the negative control per training seed")
    p.add_argument("--n-bootstrap", type=int, default=200)
    p.add_argument("--model", default=None, help="checkpoint path or registered name (default: the reference)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, action="append", default=[])
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    missing = [d for d in NEEDED if not (args.data_dir / d).exists()]
    if missing:
        print(f"The cohorts are built from {list(NEEDED)} under {args.data_dir}; missing: {missing}.", file=sys.stderr)
        return 2
    refusal = outputs_in_the_way(args.out, args.overwrite)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    st.settings.verbosity = "warning"
    warnings.filterwarnings("ignore", category=FutureWarning)
    model = st.models.StormModel.from_pretrained(args.model) if args.model else st.models.StormModel.from_pretrained()
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    sizes = []
    with tempfile.TemporaryDirectory(prefix="storm_sc_clinical_") as tmp:
        for kind in args.cohorts:
            for cohort_seed in args.cohort_seeds:
                root = Path(tmp) / f"{kind}_{cohort_seed}"
                cohort = build_cohort(kind, args.data_dir, root / "slides", n_patients=args.n_patients,
                                      seed=cohort_seed)  # fmt: skip
                c0 = time.process_time()
                features = st.tl.slide_features(cohort[["slide_id", "path"]], model, out_dir=root / "features",
                                                device="cpu", verbose=False)  # fmt: skip
                sizes.append((kind, cohort_seed, len(cohort), features["n_tiles"].median(), time.process_time() - c0))
                rows += run_cohort(kind, cohort, features, cohort_seed=cohort_seed, train_seeds=args.train_seeds,
                                   shuffles=args.shuffles, n_bootstrap=args.n_bootstrap)  # fmt: skip
    per_run = pd.DataFrame(rows)
    header = [
        f"Outcomes from whole-slide H&E, semi-synthetic cohorts ({', '.join(args.cohorts)}), {args.n_patients} patients",
        f"model: {model!r}; cohort seeds {args.cohort_seeds}, training seeds {args.train_seeds}; "
        f"bootstrap {args.n_bootstrap}; {args.shuffles} permutation(s) per seed for the shuffled control",
        *[
            f"{k} cohort seed {s}: {n} slides, median {t:.0f} tiles per slide, features {c:.0f} CPU s"
            for k, s, n, t, c in sizes
        ],  # fmt: skip
        f"total wall {time.perf_counter() - start:.0f} s; {platform.machine()}, torch threads {args.threads}",
    ]
    notes = (
        "AUROC of out-of-fold predictions (patient-level stratified folds), mean ± sd over cohort seeds x "
        "training seeds; CI low = mean lower bound of the bootstrap 95% intervals; abmil_shuffled = ABMIL with "
        "responses permuted across patients (its min-max columns span the permutations' means); focus attention "
        "= median attention of the focus tiles in responders relative to a uniform share."
    )
    publish(args.out, header, [(None, summary_table(per_run))], notes, per_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
