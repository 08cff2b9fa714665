"""Zero-shot expression from H&E on the Visium FFPE sections the reference never saw: its readout against its head.

``st.tl.predict_expression`` with a checkpoint (default: the bundled reference) on the three Visium FFPE sections of
Gracia Villacampa et al. 2021 that ``configs/storm-tiny.yaml`` leaves out of the corpus (organoids of the corpus'
kinds). Per section, the Pearson r per gene between the prediction and the measured log1p counts per 1e4, over the
genes detected in at least 5% of the spots: the readout's predictions of the genes it covers, the network head's of
the same genes (``source="head"``), and the head's of the detected genes the readout does not cover.

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
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

import storm_sc as st  # noqa: E402
from benchmarks._data_dir import default_data_dir  # noqa: E402
from benchmarks._report import outputs_in_the_way, publish  # noqa: E402

# Visium FFPE sections outside the reference's corpus (checked against the recipe below before any work).
HELD_OUT = ("V19D02-085_D1", "V19D02-088_C1", "V19D02-088_D1")
RECIPE = REPO_ROOT / "configs" / "storm-tiny.yaml"
MIN_DETECTION = 0.05


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each column pair of two ``(n, g)`` arrays; NaN where either column is constant.

    Examples
    --------
    >>> pearson_columns(np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]]), np.array([[2.0, 0.0], [4.0, 1.0], [6.0, 2.0]]))
    array([ 1., nan])
    """
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=0) / denom, np.nan)


def corpus_sections(recipe: Path = RECIPE) -> set[str]:
    """Visium FFPE sections a training recipe reads.

    Examples
    --------
    >>> "V10F24-078_A1" in corpus_sections()
    True
    """
    datasets = yaml.safe_load(recipe.read_text())["datasets"]
    return {d["args"]["section"] for d in datasets if d["loader"] == "visium_ffpe"}


def score_section(section: str, model: st.models.StormModel) -> list[dict]:
    """Rows of one section: readout on its genes, head on the same genes, head on the other detected genes."""
    import scanpy as sc

    sdata = st.datasets.visium_ffpe(section=section, verbose=False)
    measured = sdata.tables[next(iter(sdata.tables))].copy()
    sc.pp.filter_genes(measured, min_cells=int(MIN_DETECTION * measured.n_obs))
    sc.pp.normalize_total(measured, target_sum=1e4)
    sc.pp.log1p(measured)
    vocabulary = np.asarray(model.vocabulary.symbols)
    in_readout = set(vocabulary[model.readout.gene_ids].tolist())
    genes = [g for g in measured.var_names if g in set(vocabulary.tolist())]
    truth = measured[:, genes].X
    truth = truth.toarray() if hasattr(truth, "toarray") else np.asarray(truth)
    r = {}
    for source in ("auto", "head"):
        pred = st.tl.predict_expression(
            sdata, model, genes=genes, source=source, key_added=f"p_{source}", verbose=False
        )
        r[source] = pearson_columns(np.asarray(pred[measured.obs_names, genes].X, dtype=np.float64), truth)
    covered = np.array([g in in_readout for g in genes])
    rows = []
    for what, source, mask in (
        ("readout genes", "readout", covered),
        ("readout genes", "head", covered),
        ("other detected genes", "head", ~covered),
    ):
        values = r["auto" if source == "readout" else "head"][mask]
        rows.append({
            "section": section, "genes": what, "source": source, "n_genes": int(mask.sum()),
            "mean_r": float(np.nanmean(values)), "median_r": float(np.nanmedian(values)),
        })  # fmt: skip
    return rows


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--model", default=None, help="checkpoint path or registered name (default: the reference)")
    p.add_argument("--threads", type=int, default=1)
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
    if not (args.data_dir / "visium_ffpe_villacampa2021").exists():
        print(f"No visium_ffpe_villacampa2021/ under {args.data_dir}.", file=sys.stderr)
        return 2
    refusal = outputs_in_the_way(args.out, args.overwrite)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    st.settings.data_dir = args.data_dir
    st.settings.verbosity = "warning"
    warnings.filterwarnings("ignore", category=FutureWarning)
    model = st.models.StormModel.from_pretrained(args.model) if args.model else st.models.StormModel.from_pretrained()
    if model.readout is None:
        print("The model has no expression readout to compare with its head.", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = pd.DataFrame([row for section in HELD_OUT for row in score_section(section, model)])
    table = rows.assign(mean_r=rows["mean_r"].round(3), median_r=rows["median_r"].round(3))
    publish(
        args.out,
        [
            f"Zero-shot expression from H&E on Visium FFPE sections outside the corpus: {', '.join(HELD_OUT)}",
            f"model: {model!r}; genes detected in >= {MIN_DETECTION:.0%} of the spots; log1p counts per 1e4",
            f"total wall {time.perf_counter() - start:.0f} s; torch threads {args.threads}",
        ],
        [(None, table)],
        "Pearson r per gene across the spots of each section, then the mean and median over the genes.",
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
