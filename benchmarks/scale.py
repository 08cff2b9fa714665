"""Benchmark: time and memory of STORM's tools on Xenium-like slides of 10k to 1M cells, against Novae.

For each slide size N a slide is generated once (:mod:`benchmarks._scale_data`: jittered cells ~12 um apart,
400 genes with domain structure, an H&E-like image at 0.5 um/px with its pyramid, written to zarr) and every step
then runs in a **fresh process**, so that the peak memory of one step never includes another's:

* ``embed``: ``st.tl.storm_embed`` (H&E patches + expression + spatial context) with a seeded ``storm-tiny``;
* ``domains``: ``st.tl.storm_domains(n_domains=6)`` on that embedding (k-means on the smoothed embedding);
* ``predict``: ``st.tl.predict_expression`` of all 400 genes (mean and standard deviation) from H&E alone;
* ``novae``: Novae 1.1 ``compute_representations`` on the same slide (expression + Delaunay graph), after a brief
  from-scratch training (``--novae-train-cells`` cells, ``--novae-epochs`` epochs; its training time is reported,
  not compared). Novae runs in its own environment (``--novae-python``); it is never a dependency of storm_sc.

Each process reads the slide, then resets its peak-RSS counter (``/proc/self/clear_refs``), runs the step and
reports: seconds, observations per second, the RSS once the data are loaded, the peak RSS during the step and the
peak of the whole process (``resource.getrusage``). The model is untrained (weights from ``seed=0``): speed and
memory do not depend on training. Torch runs with ``--threads`` threads (1 by default: the machine is shared).

    python benchmarks/scale.py --n-obs 10000 100000
    python benchmarks/scale.py --n-obs 1000000 --steps embed domains predict --timeout 2400
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

STEPS = ("embed", "domains", "predict", "novae")
# Novae lives in its own environment (see benchmarks/README.md, "Published methods"); $NOVAE_PYTHON names its python.
NOVAE_PYTHON = os.environ.get("NOVAE_PYTHON", "/tmp/domains-ext/bin/python")
N_DOMAINS = 6
# Novae's Delaunay graph keeps edges up to this length (its Xenium preset; cells are ~12 um apart here).
NOVAE_RADIUS_UM = 40.0
_GIB = 2**30


# -- measurement ----------------------------------------------------------------------------------------------
def memory() -> dict[str, int]:
    """Current (``VmRSS``) and peak (``VmHWM``) resident memory of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> bool:
    """Restart the peak-RSS counter at the current RSS (Linux ``clear_refs`` 5); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class Step:
    """Times one step and records the memory around it (loaded, peak during the step, peak of the process)."""

    def __enter__(self) -> Step:
        self.loaded = memory()["VmRSS"]
        self.reset = reset_peak()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
        self.step_peak = memory()["VmHWM"] if self.reset else None
        self.process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def report(self, n_obs: int, **extra: object) -> dict:
        return {
            "n_obs": n_obs,
            "seconds": self.seconds,
            "obs_per_s": n_obs / self.seconds if self.seconds > 0 else float("nan"),
            "loaded_gib": self.loaded / _GIB,
            "step_peak_gib": None if self.step_peak is None else self.step_peak / _GIB,
            "process_peak_gib": self.process_peak / _GIB,
            **extra,
        }


# -- workers: each runs in its own process ---------------------------------------------------------------------
def _storm(threads: int):
    import torch

    torch.set_num_threads(threads)
    import storm_sc as st

    st.settings.verbosity = "warning"
    return st


def _read(store: str):
    import warnings

    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sd.read_zarr(store)


def worker_generate(args: argparse.Namespace) -> dict:
    from benchmarks._scale_data import SlideSpec, table_path, write_slide

    spec = SlideSpec(n_obs=args.n_obs)
    with Step() as step:
        path = write_slide(spec, args.data_dir)
    return step.report(spec.n_obs, store=str(path), table=str(table_path(spec, args.data_dir)),
                       image_px=spec.side_px)  # fmt: skip


def worker_embed(args: argparse.Namespace) -> dict:
    import numpy as np

    st = _storm(args.threads)
    sdata = _read(args.store)
    model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    with Step() as step:
        st.tl.storm_embed(sdata, model, device="cpu", verbose=False)
    embedding = sdata["table"].obsm["X_storm"]
    np.save(args.embedding, embedding)
    return step.report(sdata["table"].n_obs, dim=int(embedding.shape[1]))


def worker_domains(args: argparse.Namespace) -> dict:
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    st = _storm(args.threads)
    sdata = _read(args.store)
    table = sdata["table"]
    table.obsm["X_storm"] = np.load(args.embedding)
    with Step() as step:
        st.tl.storm_domains(sdata, n_domains=N_DOMAINS)
    # An untrained model: the agreement with the generated domains is a sanity check, not a quality score.
    ari = adjusted_rand_score(table.obs["true_domain"], table.obs["storm_domain"])
    return step.report(table.n_obs, ari_untrained=float(ari))


def worker_predict(args: argparse.Namespace) -> dict:
    st = _storm(args.threads)
    sdata = _read(args.store)
    model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    with Step() as step:
        pred = st.tl.predict_expression(sdata, model, device="cpu", verbose=False)
    return step.report(pred.n_obs, n_genes=int(pred.n_vars))


def worker_novae(args: argparse.Namespace) -> dict:
    """Runs in Novae's environment: only anndata, scanpy, lightning, torch and novae are imported."""
    import logging
    import warnings

    import anndata as ad
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import lightning as L
    import novae
    import scanpy as sc

    logging.getLogger("novae").setLevel(logging.WARNING)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    adata = ad.read_h5ad(args.table)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    # Brief training from scratch on a contiguous square of the slide (the tissue's lower-left corner).
    xy = np.asarray(adata.obsm["spatial"])
    order = np.argsort(np.maximum(xy[:, 0] - xy[:, 0].min(), xy[:, 1] - xy[:, 1].min()), kind="stable")
    train = adata[np.sort(order[: min(args.novae_train_cells, adata.n_obs)])].copy()
    start = time.perf_counter()
    novae.spatial_neighbors(train, radius=NOVAE_RADIUS_UM, verbose=False)
    L.seed_everything(0, verbose=False)
    model = novae.Novae(train)
    model.fit(train, max_epochs=args.novae_epochs, accelerator="cpu", num_workers=0)
    train_seconds = time.perf_counter() - start
    del train
    with Step() as step:
        graph_start = time.perf_counter()
        novae.spatial_neighbors(adata, radius=NOVAE_RADIUS_UM, verbose=False)
        graph_seconds = time.perf_counter() - graph_start
        model.compute_representations(adata, accelerator="cpu", num_workers=0)
    return step.report(adata.n_obs, graph_seconds=graph_seconds, train_seconds=train_seconds,
                       train_cells=min(args.novae_train_cells, adata.n_obs), novae=novae.__version__)  # fmt: skip


WORKERS = {
    "generate": worker_generate,
    "embed": worker_embed,
    "domains": worker_domains,
    "predict": worker_predict,
    "novae": worker_novae,
}


# -- driver ---------------------------------------------------------------------------------------------------
def run_worker(step: str, python: str, options: list[str], *, timeout: float, log: Path) -> dict:
    """Run one step in a fresh process; its result, or ``{"error": ...}`` when it failed or timed out."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    cmd = [python, str(Path(__file__).resolve()), "--worker", step, "--result", str(result), *options]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.setdefault(var, options[options.index("--threads") + 1])
    start = time.perf_counter()
    with open(log, "w") as fh:
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s (log: {log})", "seconds": time.perf_counter() - start}
    if proc.returncode != 0 or not result.exists():
        tail = log.read_text().strip().splitlines()[-3:]
        return {"error": f"exit code {proc.returncode}: {' | '.join(tail)} (log: {log})"}
    return json.loads(result.read_text())


_ROOT = Path(__file__).resolve().parents[1]


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_row(n: int, step: str, r: dict) -> None:
    if "error" in r:
        print(f"{n:>9} {step:<9} {r['error']}", flush=True)
        return
    print(
        f"{n:>9} {step:<9} {r['seconds']:>9.1f} {r['obs_per_s']:>9.0f} {_fmt(r['loaded_gib'], '>9.2f')} "
        f"{_fmt(r['step_peak_gib'], '>10.2f')} {_fmt(r['process_peak_gib'], '>10.2f')}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-obs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--data-dir", default="/tmp/storm_scale", help="generated slides (reused between runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=2400.0, help="seconds per step")
    parser.add_argument("--novae-python", default=NOVAE_PYTHON)
    parser.add_argument("--novae-train-cells", type=int, default=10_000)
    parser.add_argument("--novae-epochs", type=int, default=1)
    parser.add_argument("--json", default=None, help="write every result here")
    # worker mode (internal)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--embedding", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        args.n_obs = args.n_obs[0]
        out = WORKERS[args.worker](args)
        Path(args.result).write_text(json.dumps(out))
        return 0

    data_dir = Path(args.data_dir)
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    print(f"{'N':>9} {'step':<9} {'seconds':>9} {'obs/s':>9} {'load GiB':>9} {'step peak':>10} {'proc peak':>10}")
    for n in args.n_obs:
        base = ["--n-obs", str(n), "--threads", str(args.threads), "--data-dir", str(data_dir)]
        gen = run_worker("generate", sys.executable, base, timeout=args.timeout * 2, log=logs / f"generate_{n}.log")
        print_row(n, "generate", gen)
        results.append({"step": "generate", **gen, "n_obs": n})
        if "error" in gen:
            continue
        embedding = str(data_dir / f"embedding_{n}.npy")
        common = [*base, "--store", gen["store"], "--table", gen["table"], "--embedding", embedding]
        for step in args.steps:
            if step == "domains" and not Path(embedding).exists():
                r = {"error": "no embedding (run the embed step first)"}
            elif step == "novae" and not Path(args.novae_python).exists():
                r = {"error": f"Novae's interpreter {args.novae_python} is missing"}
            else:
                python = args.novae_python if step == "novae" else sys.executable
                extra = ["--novae-train-cells", str(args.novae_train_cells), "--novae-epochs", str(args.novae_epochs)]
                r = run_worker(step, python, [*common, *extra], timeout=args.timeout, log=logs / f"{step}_{n}.log")
            print_row(n, step, r)
            results.append({"step": step, **r, "n_obs": n})
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    _summary(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _summary(results: list[dict]) -> None:
    ok = {(r["n_obs"], r["step"]): r for r in results if "error" not in r}
    lines = []
    for n in sorted({r["n_obs"] for r in results}):
        storm, novae = ok.get((n, "embed")), ok.get((n, "novae"))
        if storm and novae:
            lines.append(
                f"N={n}: storm_embed {storm['seconds']:.1f} s vs Novae graph + compute_representations "
                f"{novae['seconds']:.1f} s (ratio storm/novae {storm['seconds'] / novae['seconds']:.2f}); "
                f"peak RSS {storm['process_peak_gib']:.2f} vs {novae['process_peak_gib']:.2f} GiB; "
                f"Novae trained {novae['train_seconds']:.0f} s on {novae['train_cells']} cells"
            )
    if lines:
        print("\n" + "\n".join(lines), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
