"""Benchmark: ``storm_embed`` and ``predict_expression`` on one GPU, by model size and batch size, in a few minutes.

The same tool calls a user makes, with ``device="cuda"``: on a GPU storm_sc runs the networks under bfloat16
autocast, and the batch size sets how many observations go through one forward pass. For each generated Xenium-like slide (``benchmarks/throughput.py``'s generator, written to zarr and
read back lazily) and each model config (initialised with a fixed seed: speed does not depend on the weights), one
warm-up call, then one timed call per batch size: observations per second of the whole call (reading and resizing
patches on the CPU included) and the peak GPU memory allocated by torch. Runs that would start after
``--budget-s`` seconds are skipped and reported as such, so that the script stays within one short device session.

Run from the repository root, on a machine with a CUDA GPU::

    python benchmarks/gpu_throughput.py --out gpu_throughput.md

After the timings, the bundled reference's embeddings and predictions on the device are compared with the same
calls on the CPU in float32 (``--agreement-obs``; what bf16 autocast changes). ``--device cpu`` runs the same code
on the CPU (a smoke test of the script, not a GPU number). See
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

import storm_sc as st  # noqa: E402
from benchmarks._metrics import pearson_per_gene  # noqa: E402
from benchmarks._report import outputs_in_the_way, publish  # noqa: E402
from benchmarks.throughput import EMBED_KEY, PREDICT_KEY, PROFILES, generate_slide, on_disk  # noqa: E402

logger = logging.getLogger("storm_sc.benchmarks")


def precision_of(device: Any) -> str:
    """The precision storm_sc's inference uses on ``device`` (what its autocast picks).

    Parameters
    ----------
    device
        A torch device.

    Returns
    -------
    ``"bf16 autocast"``, ``"fp16 autocast"`` or ``"fp32"``.

    Examples
    --------
    >>> import torch
    >>> precision_of(torch.device("cpu"))
    'fp32'
    """
    import torch

    from storm_sc.models._inference import autocast

    probe = torch.nn.Linear(2, 2).to(device)
    with torch.no_grad(), autocast(device):
        dtype = probe(torch.ones(1, 2, device=device)).dtype
    return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(dtype, "fp32")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(tool: str, sdata: Any, model: Any, genes: list[str], *, device: Any, batch_size: int) -> dict:
    """Run one tool once on ``device``; wall seconds and torch's peak GPU memory (GiB, ``nan`` on the CPU).

    Parameters
    ----------
    tool
        ``"storm_embed"`` or ``"predict_expression"``.
    sdata
        The slide.
    model
        The model.
    genes
        Genes predicted by ``predict_expression``.
    device
        A torch device.
    batch_size
        Observations per forward pass.

    Returns
    -------
    ``{"wall_s", "gpu_peak_gib"}``.
    """
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    if tool == "storm_embed":
        st.tl.storm_embed(sdata, model, key_added=EMBED_KEY, batch_size=batch_size, device=str(device),
                          overwrite=True, verbose=False)  # fmt: skip
    else:
        st.tl.predict_expression(sdata, model, genes=genes, key_added=PREDICT_KEY, batch_size=batch_size,
                                 device=str(device), overwrite=True, verbose=False)  # fmt: skip
    _sync(device)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"wall_s": wall, "gpu_peak_gib": peak}


def run(args: argparse.Namespace, device: Any) -> pd.DataFrame:
    """Every size x config x batch size within the time budget.

    Parameters
    ----------
    args
        Parsed options.
    device
        A torch device.

    Returns
    -------
    One row per timed call (skipped ones with ``status="skipped (budget)"``).
    """
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="storm_sc_gpu_bench_") as tmp:
        for n_obs in args.sizes:
            sdata = on_disk(
                generate_slide(n_obs, profile=PROFILES["xenium"], n_genes=args.n_genes, seed=0, gene_names=None),
                Path(tmp) / f"slide_{n_obs}.zarr",
            )
            genes = list(sdata["table"].var_names)
            for config in args.configs:
                model = st.models.StormModel(config, genes, seed=0)
                warm = False
                for batch_size in args.batch_sizes:
                    for tool in ("storm_embed", "predict_expression"):
                        row = {"n_obs": n_obs, "config": config, "batch_size": batch_size, "tool": tool}
                        if time.perf_counter() - start > args.budget_s:
                            rows.append({**row, "status": "skipped (budget)"})
                            continue
                        if not warm:  # CUDA context, kernels and the slide's first reads are not throughput
                            timed_call(tool, sdata, model, genes, device=device, batch_size=batch_size)
                            warm = True
                        m = timed_call(tool, sdata, model, genes, device=device, batch_size=batch_size)
                        rows.append({**row, **m, "obs_per_s": n_obs / m["wall_s"], "status": "ok"})
                        logger.info("%d obs %s batch %d %s: %.0f obs/s", n_obs, config, batch_size, tool,
                                    n_obs / m["wall_s"])  # fmt: skip
    return pd.DataFrame(rows)


def agreement_with_cpu(device: Any, *, n_obs: int, n_genes: int = 50) -> pd.DataFrame:
    """The bundled reference's results on ``device`` against the same calls on the CPU in float32.

    On a GPU the networks run under bf16 autocast; this says how far that moves what users get. One generated
    Xenium-like slide whose genes are the first of the reference's vocabulary (so its expression encoder and
    readout see known genes): ``storm_embed`` and ``predict_expression`` once on each device.

    Parameters
    ----------
    device
        A torch device (``cpu``: a smoke run, identical by construction).
    n_obs
        Observations of the slide.
    n_genes
        Genes of the slide, all of them predicted.

    Returns
    -------
    One row per tool: the median over columns (embedding dimensions, genes) of the Pearson r between the two
    devices' values across observations, its minimum, and the largest absolute difference over the column's sd.

    Examples
    --------
    >>> import torch
    >>> rows = agreement_with_cpu(torch.device("cpu"), n_obs=200, n_genes=10)
    >>> rows["median r"].tolist(), rows["max |diff| / sd"].tolist()
    ([1.0, 1.0], [0.0, 0.0])
    """
    import numpy as np
    import torch

    model = st.models.StormModel.from_pretrained(None)
    symbols = list(model.vocabulary.symbols[:n_genes])
    sdata = generate_slide(n_obs, profile=PROFILES["xenium"], n_genes=n_genes, seed=0, gene_names=symbols)
    values: dict[str, dict[str, np.ndarray]] = {"storm_embed": {}, "predict_expression": {}}
    for name, dev in (("device", device), ("cpu", torch.device("cpu"))):
        st.tl.storm_embed(sdata, model, key_added=f"X_{name}", device=str(dev), verbose=False)
        values["storm_embed"][name] = np.asarray(sdata["table"].obsm[f"X_{name}"], dtype=np.float64)
        pred = st.tl.predict_expression(sdata, model, genes=symbols, key_added=f"pred_{name}", device=str(dev),
                                        verbose=False)  # fmt: skip
        values["predict_expression"][name] = np.asarray(pred.X, dtype=np.float64)
    rows = []
    for tool, pair in values.items():
        a, b = pair["device"], pair["cpu"]
        sd = b.std(axis=0)
        keep = sd > 0
        r = pearson_per_gene(b[:, keep], a[:, keep])
        rows.append({
            "tool": tool, "columns": int(keep.sum()), "median r": round(float(np.median(r)), 4),
            "min r": round(float(r.min()), 4),
            "max |diff| / sd": round(float((np.abs(a - b)[:, keep] / sd[keep]).max()), 4),
        })  # fmt: skip
    return pd.DataFrame(rows)


def table(results: pd.DataFrame) -> pd.DataFrame:
    """The printed table: one row per size x config x batch size, both tools side by side.

    Parameters
    ----------
    results
        Rows of :func:`run`.

    Returns
    -------
    The table.
    """
    out = []
    for (n_obs, config, batch), group in results.groupby(["n_obs", "config", "batch_size"], sort=False):
        row: dict[str, Any] = {"observations": n_obs, "config": config, "batch": batch}
        for tool, short in (("storm_embed", "embed"), ("predict_expression", "predict")):
            r = group[group["tool"] == tool]
            ok = not r.empty and r.iloc[0]["status"] == "ok"
            row[f"{short} obs/s"] = f"{r.iloc[0]['obs_per_s']:.0f}" if ok else "skipped"
            row[f"{short} s"] = f"{r.iloc[0]['wall_s']:.1f}" if ok else "-"
            peak = r.iloc[0].get("gpu_peak_gib") if ok else None
            row[f"{short} GPU GiB"] = "-" if peak is None or pd.isna(peak) else f"{peak:.2f}"
        out.append(row)
    return pd.DataFrame(out)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    p.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    p.add_argument("--configs", nargs="+", default=["storm-small", "storm-base"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 1024, 4096])
    p.add_argument("--n-genes", type=int, default=300)
    p.add_argument("--budget-s", type=float, default=240.0, help="start no timed call after this many seconds")
    p.add_argument(
        "--agreement-obs",
        type=int,
        default=5_000,
        help="observations of the slide on which the device's results are compared with the CPU's (0: skip)",
    )
    p.add_argument("--out", type=Path, action="append", default=[])
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    import torch

    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    unknown = sorted(set(args.configs) - set(st.models.list_configs()))
    if unknown:
        print(f"Unknown configs {unknown}; registered: {st.models.list_configs()}.", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("No CUDA device here; run this on a GPU machine, or pass --device cpu for a smoke run.", file=sys.stderr)
        return 2
    refusal = outputs_in_the_way(args.out, args.overwrite)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    st.settings.verbosity = "warning"
    wall = time.perf_counter()
    results = run(args, device)
    tables = [(None, table(results))]
    if args.agreement_obs > 0:
        tables.append(
            (
                f"The bundled reference on {device} against the CPU (float32), {args.agreement_obs} observations",
                agreement_with_cpu(device, n_obs=args.agreement_obs),
            )
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    header = [
        f"storm_sc tools on {device} ({name}), {precision_of(device)}, torch {torch.__version__}",
        f"Xenium-like generated slides ({PROFILES['xenium'].description}), {args.n_genes} genes; untrained models "
        f"(seed 0); one warm-up call per size x config; budget {args.budget_s:.0f} s; total wall "
        f"{time.perf_counter() - wall:.0f} s",
    ]
    notes = (
        "obs/s = observations / wall seconds of the whole call (patch reading on the CPU included); GPU GiB = "
        "torch's peak allocated GPU memory during the call. Agreement: per embedding dimension or gene, the Pearson "
        "r between the device's and the CPU's values across observations (median, minimum over columns), and the "
        "largest absolute difference in units of the column's sd."
    )
    publish(args.out, header, tables, notes, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
