"""Expression from H&E on the Visium FFPE sections the reference never saw, next to baselines of the same tissue.

The three Visium FFPE sections of Gracia Villacampa et al. 2021 that ``configs/storm-tiny.yaml`` leaves out of the
corpus (a kidney organoid and two lung organoids; the corpus holds two sections of each kind) are predicted by:

* ``readout``: ``st.tl.predict_expression`` with the checkpoint as it is (default: the bundled reference), zero-shot;
* ``head``: the same model's network head (``source="head"``);
* ``readout_refit``: the same network with its readout refitted on the corpus' two sections of the same kind
  (``model.fit_expression_readout``, what the model card tells users with paired slides to do);
* ``ridge_stain_texture``: the hand-crafted stain/texture ridge of ``expression_her2st.py``, trained on the same two
  sections (penalty chosen by leave-one-section-out);
* ``ridge_stain_texture_smoothed``: the same ridge, each spot's prediction mixed once with its 6 nearest spots' mean
  (``storm_domains``' smoothing rule; the spatial context STORM's readout reads through its niche inputs);
* ``storm_scratch``: STORM with the reference's architecture (``storm-tiny``, 64 px patches of 112 um) trained from
  scratch on the same two sections (``st.training.pretrain``; ``--no-storm-scratch`` leaves it out);
* ``mean``: the training mean of each gene (scored 0).

Per section, the Pearson r per gene between prediction and the measured log1p counts per 1e4 (each spot normalised
over all its genes, the scale storm_sc predicts on), over the genes detected in at least 5% of the section's spots
that every readout covers; and the head's r on the detected genes the reference readout does not cover.

```bash
python benchmarks/expression_heldout_ffpe.py --out heldout_ffpe.md --out heldout_ffpe.csv
```
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

import storm_sc as st  # noqa: E402
from benchmarks._baseline_features import stain_texture_features, window_side_px  # noqa: E402
from benchmarks._data_dir import default_data_dir, offline_data  # noqa: E402
from benchmarks._metrics import interval_calibration, pearson_per_gene  # noqa: E402
from benchmarks._report import outputs_in_the_way, publish  # noqa: E402
from benchmarks._ridge import fit_ridge  # noqa: E402
from benchmarks._spatial_smoothing import smooth_over_neighbours  # noqa: E402
from benchmarks._splits import inner_groups  # noqa: E402
from benchmarks._targets import log1p_normalised  # noqa: E402
from storm_sc.pp._expression import TARGET_SUM  # noqa: E402

# Visium FFPE sections outside the reference's corpus (checked against the recipe below before any work), each with
# the corpus sections of the same kind that the per-tissue methods are trained on.
SAME_KIND = {
    "V19D02-085_D1": ("V19D02-085_B1", "V19D02-085_C1"),
    "V19D02-088_C1": ("V19D02-088_A1", "V19D02-088_B1"),
    "V19D02-088_D1": ("V19D02-088_A1", "V19D02-088_B1"),
}
HELD_OUT = tuple(SAME_KIND)
RECIPE = REPO_ROOT / "configs" / "storm-tiny.yaml"
DATA_PREFIX = "visium_ffpe_villacampa2021/"
MIN_DETECTION = 0.05
# The stain/texture ridge as in expression_her2st.py: fields of 55, 110 and 220 um, filters at 1 um/px.
FIELDS_UM = (55.0, 110.0, 220.0)
WORK_MPP = 1.0
METHODS = (
    "readout",
    "readout_refit",
    "storm_scratch",
    "ridge_stain_texture",
    "ridge_stain_texture_smoothed",
    "mean",
    "head",
)
CALIBRATION = ("coverage_95", "within_1sd", "sd_over_rmse")

logger = logging.getLogger("storm_sc.benchmarks")


def corpus_sections(recipe: Path = RECIPE) -> set[str]:
    """Visium FFPE sections a training recipe reads.

    Examples
    --------
    >>> "V10F24-078_A1" in corpus_sections()
    True
    """
    datasets = yaml.safe_load(recipe.read_text())["datasets"]
    return {d["args"]["section"] for d in datasets if d["loader"] == "visium_ffpe"}


@dataclass
class FfpeSection:
    """One section: its SpatialData, measured targets, detection rates and stain/texture features."""

    name: str
    sdata: Any
    expr: pd.DataFrame
    detection: pd.Series
    features: pd.DataFrame
    xy_um: np.ndarray


def load_section(name: str) -> FfpeSection:
    """Read a Visium FFPE section through storm_sc (see :func:`prepare_section`)."""
    return prepare_section(name, st.datasets.visium_ffpe(section=name, verbose=False))


def prepare_section(name: str, sdata: Any) -> FfpeSection:
    """A slide's measured targets, detection rates and the ridge's features (computed from its H&E only)."""
    si = st.io.resolve(sdata)
    table = si.table.copy()
    table.var_names_make_unique()
    expr = log1p_normalised(table, target_sum=TARGET_SUM)
    detection = pd.Series(np.asarray((table.X > 0).mean(axis=0)).ravel(), index=table.var_names)
    side = window_side_px(max(FIELDS_UM), WORK_MPP)
    windows = st.pp.patch_dataset(si, patch_um=max(FIELDS_UM), patch_px=side).to_numpy(batch_size=256, verbose=False)
    features = stain_texture_features(
        windows.transpose(0, 2, 3, 1), work_mpp=max(FIELDS_UM) / side, fields_um=FIELDS_UM, verbose=False
    )
    logger.info("%s: %d spots, %d genes", name, table.n_obs, table.n_vars)
    return FfpeSection(name, sdata, expr, detection, features, np.asarray(si.centers_um))


def readout_genes(model: st.models.StormModel) -> set[str]:
    """Symbols of the genes a model's readout predicts."""
    symbols = np.asarray(model.vocabulary.symbols)
    return set(symbols[model.readout.gene_ids].tolist())


def _predict(
    section: FfpeSection, model: st.models.StormModel, genes: list[str], source: str, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted means and standard deviations of ``genes``, in the rows of the section's targets."""
    pred = st.tl.predict_expression(section.sdata, model, genes=genes, source=source, key_added=key, verbose=False)
    pred = pred[section.expr.index, genes]
    return np.asarray(pred.X, dtype=np.float64), np.asarray(pred.layers["predicted_std"], dtype=np.float64)


def train_from_scratch(train: Sequence[FfpeSection], *, epochs: int, seed: int = 0) -> st.models.StormModel:
    """STORM with the reference's architecture trained from scratch on ``train`` (its genes: those detected there)."""
    from storm_sc.training import TrainingSlide, pretrain

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    config = st.models.get_config("storm-tiny", image_size=64)
    detected = sorted(set().union(*(s.detection.index[s.detection >= MIN_DETECTION] for s in train)))
    slides = [TrainingSlide(s.sdata, name=s.name, group=s.name) for s in train]
    return pretrain(slides, model=config, vocabulary=detected, max_epochs=epochs, seed=seed, verbose=False)


def score_section(
    held: FfpeSection,
    train: Sequence[FfpeSection],
    model: st.models.StormModel,
    refit: st.models.StormModel,
    scratch: st.models.StormModel | None = None,
) -> list[dict]:
    """Rows of one held-out section: every method on the genes every readout covers, the head on the others.

    Parameters
    ----------
    held
        The held-out section.
    train
        The corpus sections of its kind (for ``ridge_stain_texture`` and ``mean``).
    model
        The checkpoint as it is.
    refit
        The same checkpoint with its readout refitted on ``train``.
    scratch
        STORM trained from scratch on ``train`` (``None``: left out).

    Returns
    -------
    One row per method and gene set.
    """
    vocabulary = set(model.vocabulary.symbols)
    detected = [g for g in held.expr.columns if held.detection[g] >= MIN_DETECTION and g in vocabulary]
    covers = [readout_genes(m) for m in (model, refit, scratch) if m is not None]
    genes = [g for g in detected if all(g in c for c in covers)]
    reference_covers = covers[0]
    others = [g for g in detected if g not in reference_covers]
    truth = held.expr[genes].to_numpy(dtype=np.float64)
    y_train = np.vstack([s.expr[genes].to_numpy(dtype=np.float64) for s in train])
    x_train = np.vstack([s.features.to_numpy() for s in train])
    groups = inner_groups(
        np.concatenate([[s.name] * len(s.expr) for s in train]), np.concatenate([s.xy_um[:, 0] for s in train])
    )
    ridge, alpha = fit_ridge(x_train, y_train, groups)
    # One head prediction for both gene sets: each call embeds the whole section again.
    head, head_sd = _predict(held, model, genes + others, "head", "p_head")
    storm = {
        "readout": _predict(held, model, genes, "auto", "p_readout"),
        "readout_refit": _predict(held, refit, genes, "auto", "p_refit"),
        **({} if scratch is None else {"storm_scratch": _predict(held, scratch, genes, "auto", "p_scratch")}),
    }
    ridge_pred = ridge.predict(held.features.to_numpy())
    predictions = {
        **{method: mean for method, (mean, _) in storm.items()},
        "ridge_stain_texture": ridge_pred,
        "ridge_stain_texture_smoothed": smooth_over_neighbours(ridge_pred, held.xy_um),
        "mean": np.broadcast_to(y_train.mean(axis=0), truth.shape),
        "head": head[:, : len(genes)],
    }
    # The predicted standard deviations (storm_sc's per-gene uncertainty layer) against the errors they describe.
    sds = {**{method: sd for method, (_, sd) in storm.items()}, "head": head_sd[:, : len(genes)]}
    rows = []
    for method, pred in predictions.items():
        r = pearson_per_gene(truth, pred)
        calibration = interval_calibration(truth, pred, sds[method]) if method in sds else {}
        rows.append({
            "section": held.name, "genes": "every readout's genes", "method": method, "n_genes": len(genes),
            "mean_r": float(np.nanmean(r)), "median_r": float(np.nanmedian(r)),
            "trained_on": "corpus" if method in ("readout", "head") else "+".join(s.name for s in train),
            "storm_epochs": scratch.manifest.get("run", {}).get("epochs") if method == "storm_scratch" else np.nan,
            "ridge_alpha": alpha if method.startswith("ridge_stain_texture") else np.nan,
            **{k: calibration.get(k, np.nan) for k in CALIBRATION},
        })  # fmt: skip
    if others:
        r = pearson_per_gene(held.expr[others].to_numpy(dtype=np.float64), head[:, len(genes) :])
        rows.append({
            "section": held.name, "genes": "other detected genes", "method": "head", "n_genes": len(others),
            "mean_r": float(np.nanmean(r)), "median_r": float(np.nanmedian(r)), "trained_on": "corpus",
            "ridge_alpha": np.nan,
        })  # fmt: skip
    return rows


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean r per method (rows) and section (columns) on the genes every readout covers, and the mean over sections."""
    shared = rows[rows["genes"] == "every readout's genes"]
    present = [m for m in METHODS if m in set(shared["method"])]
    table = shared.pivot(index="method", columns="section", values="mean_r").reindex(present)
    table["mean over sections"] = table.mean(axis=1)
    table = table.round(3).reset_index()
    counts = shared.groupby("section")["n_genes"].first()
    table.columns = ["method", *(f"{c} ({counts[c]} genes)" for c in table.columns[1:-1]), "mean over sections"]
    return table


def calibration_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per method that predicts a standard deviation: its interval coverage and spread, mean over sections."""
    shared = rows[(rows["genes"] == "every readout's genes") & rows["coverage_95"].notna()]
    present = [m for m in METHODS if m in set(shared["method"])]
    return shared.groupby("method")[list(CALIBRATION)].mean().reindex(present).round(3).reset_index()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--model", default=None, help="checkpoint path or registered name (default: the reference)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--storm-epochs", type=int, default=20, help="epochs of storm_scratch")
    p.add_argument("--no-storm-scratch", action="store_true", help="leave STORM trained from scratch out")
    p.add_argument("--out", type=Path, action="append", default=[])
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    leaked = sorted(set(HELD_OUT) & corpus_sections())
    if leaked:
        print(f"{leaked} are in {RECIPE.name}'s corpus: not held out.", file=sys.stderr)
        return 2
    if not (args.data_dir / DATA_PREFIX).exists():
        print(f"No {DATA_PREFIX} under {args.data_dir}.", file=sys.stderr)
        return 2
    refusal = outputs_in_the_way(args.out, args.overwrite)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    st.settings.verbosity = "warning"
    warnings.filterwarnings("ignore", category=FutureWarning)
    start = time.perf_counter()
    with offline_data(args.data_dir, {"visium_ffpe": (DATA_PREFIX,)}, prefix="storm_heldout_ffpe_"):
        model = st.models.StormModel.from_pretrained(args.model)
        if model.readout is None:
            print("The model has no expression readout to compare with its head.", file=sys.stderr)
            return 2
        sections = {n: load_section(n) for n in sorted({*HELD_OUT, *(t for ts in SAME_KIND.values() for t in ts)})}
        rows = []
        for kind in sorted(set(SAME_KIND.values())):
            train = [sections[n] for n in kind]
            # A fresh copy of the checkpoint, its readout refitted on this kind's corpus sections.
            refit = st.models.StormModel.from_pretrained(args.model)
            refit.fit_expression_readout([s.sdata for s in train], verbose=False)
            scratch = None if args.no_storm_scratch else train_from_scratch(train, epochs=args.storm_epochs)
            for held in (n for n, k in SAME_KIND.items() if k == kind):
                rows += score_section(sections[held], train, model, refit, scratch)
    rows = pd.DataFrame(rows)
    detail = rows.round({"mean_r": 3, "median_r": 3, **dict.fromkeys(CALIBRATION, 3)})
    publish(
        args.out,
        [
            f"Expression from H&E on Visium FFPE sections outside the corpus: {', '.join(HELD_OUT)}",
            f"model: {model!r}; per-tissue methods trained on the corpus' two sections of the held-out section's kind"
            + ("" if args.no_storm_scratch else f"; storm_scratch: storm-tiny, 64 px, <= {args.storm_epochs} epochs"),
            f"genes detected in >= {MIN_DETECTION:.0%} of the spots; log1p counts per {TARGET_SUM:g}; total wall "
            f"{time.perf_counter() - start:.0f} s; torch threads {args.threads}",
        ],
        [
            ("Mean r per gene, the genes every readout covers", summary_table(rows)),
            (
                "The predicted standard deviation (`predicted_std`) against the errors, mean over sections",
                calibration_table(rows),
            ),
            ("Per section", detail),
        ],
        "Pearson r per gene across the spots of each section, then the mean (and median) over the genes. "
        "coverage_95: measured values within the predicted mean +- 1.96 sd (0.95 for calibrated Gaussian errors); "
        "within_1sd: within +- 1 sd (0.68); sd_over_rmse: median over genes of the mean predicted sd over the "
        "gene's root mean squared error (1: the right spread on average).",
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
