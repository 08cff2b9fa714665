"""Benchmark: throughput and peak memory of ``st.tl.storm_embed`` and ``st.tl.predict_expression``.

Generated slides (``st.datasets.toy``: planted domains, negative-binomial counts over a few hundred genes and an
H&E-like image covering the tissue) of 1k, 10k and 100k observations, written to zarr and read back lazily as a
user's slide would be, are embedded and predicted by STORM models initialised with a fixed seed (speed does not
depend on training) or by a given checkpoint. For each call:
observations per second (wall clock), process CPU seconds, the peak resident memory during the call above the
resident memory before it (psutil, sampled every 20 ms), and optionally the peak of Python-tracked
allocations (``tracemalloc``, in a second, separate call, because tracing slows Python down).

Run from the repository root::

    python benchmarks/throughput.py --sizes 1000 10000 100000 --out results/throughput.md

See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

import storm_sc as st  # noqa: E402
from benchmarks._report import publish  # noqa: E402

logger = logging.getLogger("storm_sc.benchmarks")

DEFAULT_SIZES = (1000, 10000, 100000)
DEFAULT_CONFIGS = ("storm-tiny", "storm-small")
EMBED_KEY = "X_storm_throughput"
PREDICT_KEY = "storm_throughput_predicted"
_SAMPLE_S = 0.02


@dataclass(frozen=True)
class Profile:
    """Geometry of a generated slide: observation spacing, spot size and image resolution."""

    name: str
    pitch_um: float
    spot_diameter_um: float
    mpp: float
    description: str


PROFILES = {
    "xenium": Profile("xenium", 12.0, 10.0, 0.5, "cells 12 um apart (10 um), H&E at 0.5 um/px"),
    "visium": Profile("visium", 100.0, 55.0, 4.0, "55 um spots 100 um apart, H&E at 4 um/px (hires-like)"),
}


@dataclass
class Measurement:
    """One timed call."""

    wall_s: float
    cpu_s: float
    rss_before_mib: float
    rss_peak_mib: float
    python_peak_mib: float | None = None

    @property
    def rss_extra_mib(self) -> float:
        return self.rss_peak_mib - self.rss_before_mib


class _RssSampler:
    """Samples the resident memory of this process in a background thread and keeps the maximum."""

    def __init__(self, interval_s: float = _SAMPLE_S) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def measure(fn: Callable[[], Any], *, trace_python: bool) -> Measurement:
    """Time one call and record its peak memory.

    Parameters
    ----------
    fn
        The call.
    trace_python
        Also run it a second time under ``tracemalloc`` for the peak of Python-tracked allocations (numpy arrays
        included; torch's own allocator is not seen by tracemalloc). The timing comes from the untraced call.

    Returns
    -------
    The :class:`Measurement`.

    Examples
    --------
    >>> import numpy as np
    >>> m = measure(lambda: np.ones(10**6), trace_python=True)
    >>> m.python_peak_mib > 7
    True
    """
    gc.collect()
    before = _rss_mib()
    c0, w0 = time.process_time(), time.perf_counter()
    with _RssSampler() as sampler:
        fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    result = Measurement(wall, cpu, before, sampler.peak / 2**20)
    if trace_python:
        gc.collect()
        tracemalloc.start()
        try:
            fn()
            result.python_peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
    return result


def generate_slide(n_obs: int, *, profile: Profile, n_genes: int, seed: int, gene_names: Sequence[str] | None) -> Any:
    """A generated slide of ``n_obs`` observations (``st.datasets.toy``), optionally with real gene symbols.

    Parameters
    ----------
    n_obs
        Observations.
    profile
        Geometry (see :data:`PROFILES`).
    n_genes
        Genes of the panel.
    seed
        Seed of the generator.
    gene_names
        Replace the generated gene names by these (e.g. the first genes of a checkpoint's vocabulary, so that its
        expression encoder sees a known panel).

    Returns
    -------
    The SpatialData.

    Examples
    --------
    >>> sdata = generate_slide(100, profile=PROFILES["visium"], n_genes=20, seed=0, gene_names=None)
    >>> sdata["table"].shape
    (100, 20)
    """
    sdata = st.datasets.toy(
        n_obs=n_obs,
        n_genes=n_genes,
        n_domains=5,
        mpp=profile.mpp,
        pitch_um=profile.pitch_um,
        spot_diameter_um=profile.spot_diameter_um,
        seed=seed,
    )
    if gene_names is not None:
        table = sdata["table"]
        table.var_names = pd.Index([str(g) for g in gene_names[:n_genes]])
    return sdata


def on_disk(sdata: Any, path: Path) -> Any:
    """Write a SpatialData to zarr and read it back, as a user's slide is read: image pyramid levels stored, lazy.

    A freshly built SpatialData holds its coarser pyramid levels as lazy dask reductions of the full-resolution
    image, so every patch read would recompute them; a slide read from disk has them stored.

    Parameters
    ----------
    sdata
        The generated slide.
    path
        A new ``.zarr`` folder.

    Returns
    -------
    The SpatialData read back from ``path``.
    """
    import spatialdata as sd

    sdata.write(path)
    return sd.read_zarr(path)


def _image_side(sdata: Any) -> tuple[int, int]:
    si = st.io.resolve(sdata)
    from spatialdata import get_pyramid_levels
    from xarray import DataTree

    level0 = get_pyramid_levels(si.image, n=0) if isinstance(si.image, DataTree) else si.image
    return int(level0.sizes["y"]), int(level0.sizes["x"])


def _models(args: argparse.Namespace, genes: Sequence[str]) -> list[tuple[str, Any]]:
    if args.model is not None:
        model = st.models.StormModel.from_pretrained(args.model)
        return [(f"{args.model} ({model.config.name})", model)]
    return [
        (f"{cfg} (untrained, seed {args.seed})", st.models.StormModel(cfg, genes, seed=args.seed))
        for cfg in args.configs
    ]


def _calls(
    sdata: Any, model: Any, genes: list[str], *, batch_size: int, n_draws: list[int] | None = None
) -> dict[str, Callable[[], Any]]:
    """The two timed tools on one slide; results overwrite the previous call's (their keys are the benchmark's).

    ``n_draws``: time ``storm_embed`` once per value (``None``: once, at its default).
    """

    def embed(**options: Any) -> Callable[[], Any]:
        return lambda: st.tl.storm_embed(
            sdata,
            model,
            key_added=EMBED_KEY,
            batch_size=batch_size,
            device="cpu",
            overwrite=True,
            verbose=False,
            **options,
        )

    embeds = (
        {"storm_embed": embed()} if n_draws is None else {f"storm_embed n_draws={k}": embed(n_draws=k) for k in n_draws}
    )
    return {
        **embeds,
        "predict_expression": lambda: st.tl.predict_expression(
            sdata,
            model,
            genes=genes,
            key_added=PREDICT_KEY,
            batch_size=batch_size,
            device="cpu",
            overwrite=True,
            verbose=False,
        ),
    }


def run(args: argparse.Namespace) -> pd.DataFrame:
    """Generate each size, then time ``storm_embed`` and ``predict_expression`` for each model.

    Parameters
    ----------
    args
        Parsed command line.

    Returns
    -------
    One row per size x model x tool.
    """
    import torch

    profile = PROFILES[args.profile]
    vocab_genes = None
    if args.model is not None:
        vocab = st.models.StormModel.from_pretrained(args.model).vocabulary.symbols
        if len(vocab) < args.n_genes:
            raise SystemExit(f"--model has {len(vocab)} genes in its vocabulary, fewer than --n-genes {args.n_genes}.")
        vocab_genes = list(vocab)
    rows = []
    for n_obs in args.sizes:
        t0 = time.perf_counter()
        generated = generate_slide(n_obs, profile=profile, n_genes=args.n_genes, seed=args.seed, gene_names=vocab_genes)
        work = Path(tempfile.mkdtemp(prefix="storm_throughput_", dir=args.work_dir))
        sdata = on_disk(generated, work / "slide.zarr")
        del generated
        gen_s = time.perf_counter() - t0
        side = _image_side(sdata)
        genes = list(sdata["table"].var_names)
        logger.info("generated %d observations, image %d x %d px, in %.1f s", n_obs, *side, gen_s)
        trace = args.tracemalloc and n_obs <= args.trace_max_size
        for label, model in _models(args, genes):
            calls = _calls(sdata, model, genes, batch_size=args.batch_size, n_draws=args.n_draws)
            for tool, call in calls.items():
                # Libraries that limit thread pools (scanpy, scikit-learn) reset OpenMP on exit: pin torch again.
                torch.set_num_threads(args.threads)
                m = measure(call, trace_python=trace)
                rows.append(
                    {
                        "n_obs": n_obs,
                        "model": label,
                        "parameters": model.n_parameters,
                        "tool": tool,
                        "obs_per_s": n_obs / m.wall_s,
                        "wall_s": m.wall_s,
                        "cpu_s": m.cpu_s,
                        "rss_before_mib": m.rss_before_mib,
                        "rss_peak_mib": m.rss_peak_mib,
                        "rss_extra_mib": m.rss_extra_mib,
                        "python_peak_mib": m.python_peak_mib,
                        "image_px": f"{side[1]} x {side[0]}",
                        "generate_s": gen_s,
                    }
                )
                logger.info(
                    "%d obs, %s, %s: %.0f obs/s, +%.0f MiB RSS", n_obs, label, tool, n_obs / m.wall_s, m.rss_extra_mib
                )
        del sdata
        gc.collect()
        shutil.rmtree(work, ignore_errors=True)
    return pd.DataFrame(rows)


def table(results: pd.DataFrame) -> pd.DataFrame:
    """The printed table: one row per size x model x tool.

    Parameters
    ----------
    results
        Output of :func:`run`.

    Returns
    -------
    Formatted frame.
    """
    out = pd.DataFrame(
        {
            "observations": results["n_obs"].map(lambda n: f"{n:,}"),
            "model": results["model"],
            "tool": results["tool"],
            "obs/s": results["obs_per_s"].map(lambda v: f"{v:,.0f}"),
            "obs/CPU-s": (results["n_obs"] / results["cpu_s"]).map(lambda v: f"{v:,.0f}"),
            "wall s": results["wall_s"].map(lambda v: f"{v:.1f}"),
            "CPU s": results["cpu_s"].map(lambda v: f"{v:.1f}"),
            "peak RSS MiB (+ over before)": [
                f"{p:,.0f} (+{e:,.0f})" for p, e in zip(results["rss_peak_mib"], results["rss_extra_mib"], strict=True)
            ],
            "Python peak MiB": results["python_peak_mib"].map(lambda v: "not traced" if pd.isna(v) else f"{v:,.0f}"),
        }
    )
    return out


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Throughput and peak memory of storm_embed and predict_expression.")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES), help="observations per slide")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="xenium", help="slide geometry")
    parser.add_argument("--n-genes", type=int, default=300, help="genes of the generated panel")
    parser.add_argument(
        "--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="architectures, initialised with --seed"
    )
    parser.add_argument("--model", default=None, help="a checkpoint path or registered name instead of --configs")
    parser.add_argument("--batch-size", type=int, default=256, help="observations per forward pass")
    parser.add_argument(
        "--n-draws",
        nargs="+",
        type=int,
        default=None,
        help="time storm_embed with each of these n_draws (default: once)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (torch.set_num_threads)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the slides and of the weights")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where the generated slides are written (default: system temp)"
    )
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false", help="skip the traced call")
    parser.add_argument(
        "--trace-max-size", type=int, default=10**9, help="trace Python allocations only up to this many observations"
    )
    parser.add_argument("--out", action="append", type=Path, default=[], help=".md (table) or .csv; repeatable")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out files")
    return parser.parse_args(argv)


def _check(args: argparse.Namespace) -> None:
    problems = []
    if any(n < 10 for n in args.sizes):
        problems.append(f"--sizes must be at least 10 observations each, got {args.sizes}")
    if args.n_genes < 1 or args.batch_size < 1 or args.threads < 1:
        problems.append("--n-genes, --batch-size and --threads must be positive")
    unknown = sorted(set(args.configs) - set(st.models.list_configs()))
    if args.model is None and unknown:
        problems.append(f"--configs {unknown} are not among {st.models.list_configs()}")
    for out in args.out:
        if out.suffix.lower() not in {".md", ".csv"}:
            problems.append(f"--out {out}: the suffix must be .md or .csv")
        elif out.exists() and not args.overwrite:
            problems.append(f"--out {out} exists; pass --overwrite or choose another path")
    if problems:
        raise SystemExit("; ".join(problems) + ".")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; returns the exit status."""
    args = _parse_args(argv)
    _check(args)
    import torch

    torch.set_num_threads(args.threads)
    # Lightning and squidpy chatter would interleave with the table.
    st.settings.verbosity = "WARNING"
    logger.setLevel(logging.INFO)  # the benchmark's own progress lines, through storm_sc's handler
    logging.getLogger("squidpy").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    results = run(args)
    profile = PROFILES[args.profile]
    largest = max(args.sizes)
    dense_gib = largest**2 * 4 / 2**30
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    header = [
        f"STORM throughput — generated {profile.name}-like slides ({profile.description}), {args.n_genes} genes; "
        f"device cpu, torch threads {args.threads} (set before every call), batch {args.batch_size}",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"total wall {time.perf_counter() - t0:.0f} s; process ru_maxrss {peak_rss:,.0f} MiB",
        "slides written to zarr and read back (lazy image, pyramid levels stored); image sizes: "
        + ", ".join(f"{n:,} obs: {px} px" for n, px in results.groupby("n_obs", sort=True)["image_px"].first().items()),
    ]
    notes = (
        "obs/s = observations / wall seconds of the call (patch reading, expression alignment, neighbour search and "
        "the forward passes); obs/CPU-s divides by the process CPU seconds instead, which a machine shared with other "
        "jobs disturbs less. peak RSS: resident memory sampled every 20 ms during the call; '+' is the increase over "
        f"the resident memory before it. A dense {largest:,} x {largest:,} float32 matrix would take "
        f"{dense_gib:,.1f} GiB. Python peak: tracemalloc's peak during a second, traced call (numpy included; "
        "torch's allocator is not traced)."
    )
    publish(args.out, header, [(None, table(results))], notes, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
