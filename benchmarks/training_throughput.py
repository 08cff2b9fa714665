"""Benchmark: training throughput of STORM on the CPU (or a GPU when present).

For each named config, trains on a generated slide through the public API (``st.training.fit``: data loading,
augmentation, neighbourhoods, all four objectives, optimiser) and reports patches per second (every observation
with an image that passes through the morphology encoder: centres and their neighbours) and centres per second.
In the same process, a baseline: forward + backward of the morphology encoder alone on batches of the same patches,
the floor that the rest of the pipeline adds to. The ratio says how much the whole step costs over the encoder.

    python benchmarks/training_throughput.py                      # storm-tiny and storm-small, 2000 spots
    python benchmarks/training_throughput.py --configs storm-tiny --n-obs 500 --epochs 1
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
import pandas as pd
import torch

import storm_sc as st


def encoder_only(model: st.models.StormModel, patches: np.ndarray, *, batch_size: int, steps: int) -> float:
    """Patches per second of forward + backward through the morphology encoder alone."""
    net = model.network.train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(patches)
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        rows = torch.from_numpy(rng.choice(len(images), size=min(batch_size, len(images)), replace=False))
        loss = net.encode_morphology(images=images[rows]).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        seen += len(rows)
    return seen / (time.perf_counter() - start)


def run(config: str, *, n_obs: int, n_genes: int, epochs: int, batch_size: int, seed: int) -> dict:
    sdata = st.datasets.toy(n_obs=n_obs, n_genes=n_genes, n_domains=5, seed=seed)
    model = st.models.StormModel(config, sdata["table"].var_names)
    start = time.perf_counter()
    model.fit(sdata, max_epochs=epochs, batch_size=batch_size, val_fraction=0.0, seed=seed, verbose=False)
    wall = time.perf_counter() - start
    run_info = model.manifest.get("run", {})
    patches_s = float(model.training_summary["patches_per_second"])
    steps = int(run_info.get("global_step", 0))
    # The encoder-only baseline sees as many patches per step as a training step does on average.
    per_step = patches_s * (wall / max(steps, 1))
    inputs = model.prepare(sdata, verbose=False)
    encoder = encoder_only(model, inputs.patches, batch_size=max(batch_size, int(per_step)), steps=20)
    return {
        "config": config,
        "parameters": model.n_parameters,
        "image_px": model.config.image_size,
        "steps": steps,
        "train_patches_per_s": round(patches_s, 1),
        "train_centres_per_s": round(steps * batch_size / wall, 1),
        "wall_s": round(wall, 1),
        "encoder_only_patches_per_s": round(encoder, 1),
        "encoder_share": round(patches_s / encoder, 2),
    }


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["storm-tiny", "storm-small"])
    parser.add_argument("--n-obs", type=int, default=2000)
    parser.add_argument("--n-genes", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    rows = [
        run(c, n_obs=args.n_obs, n_genes=args.n_genes, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
        for c in args.configs
    ]
    table = pd.DataFrame(rows)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Training throughput ({device}, torch {torch.__version__}, {args.threads} thread(s), "
        f"{os.cpu_count()} cores, load average {load:.1f}; toy slide {args.n_obs} spots x {args.n_genes} genes, "
        f"batch {args.batch_size} centres)"
    )
    print(table.to_markdown(index=False))
    print(
        "patches = observations through the morphology encoder (centres + neighbours); encoder_share = training "
        "patches/s over encoder-only forward+backward patches/s (1.0: the rest of the step is free)."
    )
    return table


if __name__ == "__main__":
    main()
