"""``storm-sc pretrain --config FILE.yaml``: train STORM from a YAML recipe (CPU, GPU, torchrun/SLURM DDP)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

_EPILOG = """\
The YAML lists the datasets (storm_sc.datasets loaders with arguments, or SpatialData .zarr / AnnData .h5ad paths,
each with an optional patient `group` for the validation split), the model config name, the optimisation,
split and trainer settings and the output folder; see configs/ for examples.

Multi-GPU / multi-node: launch the same command under torchrun or srun, e.g.
  torchrun --nproc_per_node=4 -m storm_sc.cli pretrain --config configs/storm-base.yaml
Lightning reads the process layout from the launcher (devices/num_nodes follow it when left at "auto").

An interrupted run continues from its last completed epoch with the same command and --resume; job scripts that may
run again (pre-emptible queues) use --resume auto. A requeued SLURM job resumes by itself.
"""


def add_parser(subparsers: Any) -> None:
    """Register ``storm-sc pretrain``."""
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain (or continue training) a STORM model from a YAML config",
        description="Pretrain a STORM model on spatial slides described in a YAML config.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="the YAML training config")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (dotted key, YAML value), e.g. --set training.max_epochs=3; repeatable",
    )
    parser.add_argument("--output-dir", type=Path, default=None, help="override `output_dir` of the config")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing model.safetensors, logs or interrupted run"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        choices=["auto"],
        help="continue the interrupted run in the output folder from its last checkpoint (same config); "
        "'--resume auto': resume if there is one, else start (for job scripts that may run twice)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate the config and print the plan; no training")


def run(args: argparse.Namespace) -> int:
    """Run ``storm-sc pretrain``; returns the exit status."""
    from storm_sc.training import load_recipe, run_recipe

    try:
        # the folder goes in as given: as a --set value, YAML would cut "runs #1" at the "#" and read 2024 as a number
        recipe = load_recipe(args.config, overrides=args.overrides, output_dir=args.output_dir)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"storm-sc pretrain: {err}") from err
    plan = {
        "config": str(args.config),
        "model": recipe.model.name if recipe.checkpoint is None else f"continue from {recipe.checkpoint}",
        "datasets": [e["name"] for e in recipe.datasets],
        "output_dir": str(recipe.output_dir),
        "training": recipe.training.to_dict(),
    }
    if args.dry_run:
        from storm_sc.training._fit import MODEL_FILE
        from storm_sc.training._resume import checkpoint_to_resume

        # what the real run would do with the output folder (or the error it would stop with)
        try:
            start = checkpoint_to_resume(
                recipe.output_dir, resume=args.resume, overwrite=args.overwrite, model_file=MODEL_FILE
            )
        except (ValueError, OSError) as err:
            raise SystemExit(f"storm-sc pretrain: {err}") from err
        plan["run"] = "new" if start is None else f"resume from {start}"
        print(json.dumps(plan, indent=2))
        return 0
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        model = run_recipe(recipe, overwrite=args.overwrite, resume=args.resume)
    except KeyboardInterrupt as err:
        signal_name = "SIGTERM" if "SIGTERM" in err.args else "SIGINT"
        from storm_sc.training._resume import latest_checkpoint

        saved = latest_checkpoint(recipe.output_dir)
        print(
            f"storm-sc pretrain: interrupted ({signal_name}); "
            + (
                f"rerun the same command with --resume to continue from {saved}."
                if saved is not None
                else "no epoch had finished: rerun with --resume auto (or --overwrite) to start it again."
            ),
            file=sys.stderr,
        )
        return 143 if signal_name == "SIGTERM" else 130
    # the user's data or settings (MisconfigurationException: trainer settings Lightning refuses in combination)
    except (ValueError, KeyError, OSError, MisconfigurationException) as err:
        raise SystemExit(f"storm-sc pretrain: {err}") from err
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:  # other data-parallel processes stay quiet
        return 0
    run_info = model.manifest.get("run", {})
    print(
        f"storm-sc pretrain: trained {model} for {run_info.get('epochs')} epochs "
        f"(best validation loss {run_info.get('best_val_loss')}); wrote {recipe.output_dir}"
    )
    return 0
