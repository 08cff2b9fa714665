"""Benchmark: how much a STORM embedding depends on its random gene tokens, and what averaging draws costs.

A panel larger than the model's gene tokens is read as each observation's most expressed genes plus genes drawn at
random; ``st.tl.storm_embed(n_draws=K)`` averages K such draws. For each slide and each K this prints the median
(and 90th percentile) distance of an observation's embedding from the average of ``--reference-draws`` draws,
relative to that average's norm, and the process CPU seconds of the embedding. The reference shares its first K
draws with the K-draw embedding (draws are numbered from 0), so the distances slightly understate the spread for K
close to the reference's count.

Run from the repository root::

    python benchmarks/embedding_draws.py --datasets dlpfc_151675 mob --draws 1 2 4 8 --out draws.md

See ``benchmarks/README.md`` (spatial domains, "Four gene draws by default").
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._data_dir import default_data_dir, offline_data  # noqa: E402
from benchmarks._report import markdown_table, outputs_in_the_way, write_outputs  # noqa: E402
from benchmarks.domains import DATASETS  # noqa: E402


def draw_spread(model: Any, inputs: Any, draws: Sequence[int], reference_draws: int) -> pd.DataFrame:
    """Distances of ``model``'s embeddings of ``inputs`` with each count of ``draws`` from a many-draw average.

    Parameters
    ----------
    model
        A :class:`storm_sc.models.StormModel`.
    inputs
        The slide, prepared by ``model.prepare``.
    draws
        Draw counts to measure.
    reference_draws
        Draws averaged into the reference embedding.

    Returns
    -------
    One row per draw count: ``n_draws``, ``median_rel_distance``, ``p90_rel_distance``, ``cpu_s``.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=60, n_genes=100, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> table = draw_spread(model, model.prepare(sdata), [1, 2], 4)
    >>> table["n_draws"].tolist(), bool((table["median_rel_distance"] > 0).all())
    ([1, 2], True)
    """
    reference = model.embed(inputs, n_draws=reference_draws, verbose=False)
    norm = np.linalg.norm(reference, axis=1)
    rows = []
    for k in draws:
        start = time.process_time()
        embedding = model.embed(inputs, n_draws=k, verbose=False)
        cpu = time.process_time() - start
        distance = np.linalg.norm(embedding - reference, axis=1) / np.maximum(norm, 1e-12)
        rows.append(
            {
                "n_draws": int(k),
                "median_rel_distance": float(np.median(distance)),
                "p90_rel_distance": float(np.quantile(distance, 0.9)),
                "cpu_s": cpu,
            }
        )
    return pd.DataFrame(rows)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $STORM_SC_DATA_DIR or ../shared/data")
    parser.add_argument("--datasets", nargs="+", default=["dlpfc_151675", "mob"], choices=sorted(DATASETS))
    parser.add_argument("--model", default=None, help="checkpoint path or registered name (default: the reference)")
    parser.add_argument("--draws", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--reference-draws", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, action="append", default=[], help=".md (table) or .csv; repeatable")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out files")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; returns the exit status."""
    args = _parse_args(argv)
    if any(k < 1 for k in args.draws) or args.reference_draws < max(args.draws):
        raise SystemExit("--draws must be positive and at most --reference-draws.")
    problem = outputs_in_the_way(args.out, args.overwrite)
    if problem:
        raise SystemExit(problem)
    import torch

    import storm_sc as st

    torch.set_num_threads(args.threads)
    data_dir = (args.data_dir or default_data_dir()).expanduser()
    parts = []
    with offline_data(data_dir, {d: DATASETS[d].files for d in args.datasets}, prefix="storm_draws_bench_"):
        model = st.models.StormModel.from_pretrained(args.model)
        for name in args.datasets:
            inputs = model.prepare(DATASETS[name].load())
            n_panel = 0 if inputs.expression is None else inputs.expression.shape[1]
            table = draw_spread(model, inputs, args.draws, args.reference_draws)
            table.insert(0, "dataset", f"{name} ({inputs.n_obs} obs, {n_panel} genes)")
            parts.append(table)
    results = pd.concat(parts, ignore_index=True)
    shown = results.assign(
        median_rel_distance=results["median_rel_distance"].map("{:.3f}".format),
        p90_rel_distance=results["p90_rel_distance"].map("{:.3f}".format),
        cpu_s=results["cpu_s"].map("{:.1f}".format),
    )
    text = "\n".join(
        [
            f"Embedding spread over random gene draws — model {model}; reference: the mean of "
            f"{args.reference_draws} draws; torch threads {args.threads}",
            "",
            markdown_table(shown),
            "",
            "rel_distance: |embedding - reference| / |reference| per observation (median, 90th percentile); "
            "cpu_s: process CPU seconds of the embedding with that many draws.",
        ]
    )
    print(text)
    write_outputs(args.out, text, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
