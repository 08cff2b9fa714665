"""The run checkpoint in ``output_dir``: written at every epoch's end, read back by ``fit(..., resume=True)``.

A long pretraining run that crashes (a pre-empted node, a full disk) otherwise loses every epoch since it started:
only the final model is written. The checkpoint holds what Lightning restores (weights, optimiser, schedule, loop
counters, early stopping) and what storm_sc's callbacks keep (the best epoch's weights, the loss history, the random
generators), plus a description of the run that a resume is checked against before any slide is read.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.plugins.io import TorchCheckpointIO

from storm_sc import __version__
from storm_sc._settings import logger

if TYPE_CHECKING:
    from storm_sc.models import StormModel

    from ._config import TrainingConfig

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
LOG_DIR = "logs"

# Settings a resumed run may change: where and how long it runs, not what it learns from or how.
RESUMABLE_CHANGES = frozenset(
    {
        "max_epochs",
        "max_steps",
        "early_stopping_patience",
        "num_workers",
        "accelerator",
        "devices",
        "num_nodes",
        "strategy",
        "precision",
        "log_every_n_steps",
        "checkpoint_dtype",
        "expression_readout",
    }
)

# Per-slide fields that must match for the resumed run to train on the same observations with the same split.
_SAME_DATA = ("name", "n_obs", "n_train", "n_val", "sha256")


def checkpoint_folder(out_dir: Path) -> Path:
    """Where a run's checkpoints go: Lightning's SLURM pre-emption checkpoints (``hpc_ckpt_<n>.ckpt``) as well."""
    return out_dir / CHECKPOINT_DIR


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint of an interrupted run: the epoch-end one, or one Lightning saved on a SLURM signal."""
    folder = checkpoint_folder(out_dir)
    if not folder.is_dir():
        return None
    found = [p for p in (folder / LAST, *folder.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def requeued_slurm_job() -> bool:
    """Whether this process belongs to a SLURM job that was requeued (pre-empted or timed out, then restarted)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def checkpoint_to_resume(out_dir: Path | None, *, resume: bool | str, overwrite: bool, model_file: str) -> Path | None:
    """Decide, before any work, whether the run resumes (from which checkpoint) or starts; refuse to clobber a run.

    A finished run (its model in ``out_dir``), an interrupted one or another run's logs are replaced only with
    ``overwrite``.

    Parameters
    ----------
    out_dir
        The run's folder (``None``: nothing is written, nothing can be resumed).
    resume, overwrite
        As given to ``fit``: ``resume`` True, False or ``"auto"`` (resume an interrupted run if there is one);
        not together with ``overwrite``.
        A requeued SLURM job (``SLURM_RESTART_COUNT`` > 0) resumes as with ``"auto"`` unless ``overwrite``.
    model_file
        Name of the final model in ``out_dir``.
    """
    if resume not in (True, False, "auto"):
        raise ValueError(f"`resume` must be True, False or 'auto', got {resume!r}.")
    if resume and overwrite:
        # "auto" too: overwrite replaces an interrupted run, "auto" continues it; neither may quietly win
        raise ValueError(
            f"`resume={resume!r}` continues an interrupted run and `overwrite=True` replaces it; pass one of them "
            "(storm-sc pretrain: --resume or --overwrite)."
        )
    if resume is True and out_dir is None:
        raise ValueError("`resume=True` continues the run saved in an `output_dir`; pass the run's output_dir.")
    if out_dir is None:
        return None
    # now, not when the model or first log is written after the slides are prepared (a bare "File exists")
    blocking = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise NotADirectoryError(
            f"`output_dir` {out_dir} cannot be a run folder: {blocking} is a file. Pass a folder, new or existing, "
            f"for {model_file} and the logs."
        )
    if (out_dir / model_file).exists() and not overwrite:
        raise FileExistsError(
            f"{out_dir / model_file} already exists; pass overwrite=True (--overwrite) or another output_dir."
        )
    latest = latest_checkpoint(out_dir)
    if resume is False and not overwrite and requeued_slurm_job():
        # the same job script, run again by SLURM: continue what the first run left, or start it again
        if latest is not None:
            logger.info("A requeued SLURM job: resuming the interrupted run in %s (%s).", out_dir, latest.name)
        resume = "auto"
    if resume is True and not out_dir.is_dir():
        raise FileNotFoundError(f"Nothing to resume: {out_dir} does not exist. Pass the interrupted run's output_dir.")
    if resume is True and latest is None:
        finished = (out_dir / model_file).exists()
        raise FileNotFoundError(
            f"Nothing to resume in {out_dir}: it holds no run checkpoint ({CHECKPOINT_DIR}/{LAST})"
            + (
                f"; its run finished ({model_file}). To train that model further, load it and call fit with "
                "another output_dir."
                if finished
                else "; the run stopped before its first epoch ended. Start it again with overwrite=True "
                "(--overwrite), or use resume='auto' (--resume auto), which starts a run when there is none to resume."
            )
        )
    if resume and latest is not None:
        return latest
    if overwrite or resume == "auto":
        # "auto" with no checkpoint: logs without a model or checkpoint are a run that died in its first epoch
        return None
    if latest is not None:
        raise FileExistsError(
            f"{out_dir} holds an interrupted run ({CHECKPOINT_DIR}/{latest.name}): pass resume=True (storm-sc "
            "pretrain --resume) to continue it, overwrite=True (--overwrite) to start again from scratch, or another "
            "output_dir."
        )
    metrics = out_dir / LOG_DIR / "metrics.csv"
    if metrics.exists():
        raise FileExistsError(
            f"{metrics} holds the logs of another run, which this run would replace; pass overwrite=True "
            "(--overwrite) or another output_dir."
        )
    return None


def clear_resumed_logs(out_dir: Path) -> None:
    """Remove the logs of an earlier run's resumed parts (``overwrite=True``: they would sit beside the new run's)."""
    for folder in out_dir.glob(f"{LOG_DIR}-from-epoch-*"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def clear_checkpoints(out_dir: Path) -> None:
    """Remove the run's checkpoints: a new run must not resume a stale one (Lightning would, on SLURM, by itself).

    Safe to call from every process of a run at once.
    """
    folder = checkpoint_folder(out_dir)
    if not folder.is_dir():
        return
    for path in folder.glob("*.ckpt"):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # another process removed it first, or the user keeps files there
        folder.rmdir()


def read_description(path: Path) -> tuple[dict[str, Any], int]:
    """The run description stored in a checkpoint, and the number of epochs it completed."""
    try:
        # memory-mapped: only the description is read here; Lightning loads the tensors once, when it restores
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a truncated file, another program's pickle: say which file and what to do
        raise ValueError(
            f"{path} cannot be read as a storm_sc run checkpoint (torch.load: {type(err).__name__}; damaged, cut "
            "short, or written by another program); start the run again with overwrite=True (--overwrite)."
        ) from err
    description = checkpoint.get("storm_sc") if isinstance(checkpoint, dict) else None
    if not isinstance(description, dict):
        raise ValueError(f"{path} was not written by storm_sc's training; start the run again with overwrite=True.")
    # the epoch-end checkpoint is saved as its epoch ends; a SLURM pre-emption one during the epoch it resumes
    epoch = int(checkpoint.get("epoch", -1))
    return description, epoch + 1 if path.name == LAST else max(epoch, 0)


def check_same_run(description: dict[str, Any], model: StormModel, options: TrainingConfig, path: Path) -> None:
    """Refuse a resume with another architecture, vocabulary or learning settings than the checkpoint's."""
    problems = []
    if description.get("config") != model.config.to_dict():
        problems.append(f"the model architecture differs ({description.get('config', {}).get('name')!r} was trained)")
    genes = model.vocabulary.to_dict()["symbols"]
    if description.get("genes") != genes:
        problems.append(
            f"the model's genes differ ({len(description.get('genes', []))} were trained, {len(genes)} now)"
        )
    written_by = description.get("storm_sc_version")
    if written_by != __version__:
        logger.warning(
            "%s was written by storm_sc %s, this is %s: the resumed run may not continue exactly as it would have.",
            path,
            written_by,
            __version__,
        )
    saved, now = description.get("training", {}), options.to_dict()
    schedule = [k for k in ("max_epochs", "max_steps", "devices", "num_nodes") if saved.get(k) != now.get(k)]
    if schedule:
        logger.warning(
            "Resuming with other %s: the learning-rate schedule (warm-up and cosine decay over the run's steps) is "
            "recomputed for the new run length, so the rate can jump at the first resumed step%s.",
            ", ".join(schedule),
            "; more processes also make a larger global batch"
            if any(k in schedule for k in ("devices", "num_nodes"))
            else "",
        )
    changed = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if changed:
        problems.append(
            "these settings differ from the interrupted run's: "
            + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed)
        )
    if problems:
        raise ValueError(
            f"Cannot resume {path}: "
            + "; ".join(problems)
            + f". A resumed run may change only {', '.join(sorted(RESUMABLE_CHANGES))}; start a new run (another "
            "output_dir, or overwrite=True) for anything else."
        )


def check_same_data(description: dict[str, Any], datasets: Sequence[dict[str, Any]], path: Path) -> None:
    """Refuse a resume on other slides, or the same slides split otherwise, than the checkpoint's run."""

    def key(rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [tuple(str(r.get(f)) for f in _SAME_DATA) for r in rows]

    before = description.get("datasets", [])
    if key(before) == key(datasets):
        return
    names_before, names_now = [r.get("name") for r in before], [r.get("name") for r in datasets]
    if names_before != names_now:
        what = f"slides {names_before} were trained, {names_now} given"
    else:
        what = "; ".join(
            f"slide {a.get('name')!r}: "
            + ", ".join(
                f"{f} {a.get(f)!r} -> {b.get(f)!r}" if f != "sha256" else "its arrays (sha256) differ"
                for f in _SAME_DATA
                if str(a.get(f)) != str(b.get(f))
            )
            for a, b in zip(before, datasets, strict=True)
            if key([a]) != key([b])
        )
    raise ValueError(f"Cannot resume {path} on other data: {what}. Give the run's slides, or start a new run.")


def describe_run(model: StormModel, options: TrainingConfig, datasets: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a resume must match: stored in every run checkpoint."""
    return {
        "storm_sc_version": __version__,
        "config": model.config.to_dict(),
        "genes": model.vocabulary.to_dict()["symbols"],
        "training": options.to_dict(),
        "datasets": list(datasets),
    }


class RunDescription(L.Callback):
    """Adds the run description to every checkpoint Lightning writes."""

    def __init__(self, description: dict[str, Any]) -> None:
        self.description = description

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["storm_sc"] = self.description


class RandomStates(L.Callback):
    """Saves and restores Python's, NumPy's and torch's generators, so a resumed run draws what it would have drawn.

    Stored as tensors and plain lists: a checkpoint then loads with ``weights_only=True``.
    """

    def __init__(self) -> None:
        self._epoch = -1  # the last epoch ended: the one a checkpoint written now was saved at
        self._restored: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        numpy_state = np.random.get_state(legacy=False)
        state: dict[str, Any] = {
            "epoch": self._epoch,
            "python": [version, list(internal), gauss],
            "numpy": {
                "key": torch.as_tensor(numpy_state["state"]["key"].astype(np.int64)),
                "pos": int(numpy_state["state"]["pos"]),
                "has_gauss": int(numpy_state["has_gauss"]),
                "gauss": float(numpy_state["gauss"]),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            # this process's GPU only: every process of a data-parallel run is seeded alike and draws alike, and
            # only the first one's state is saved, to be restored on each process's own GPU
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        restored, self._restored = self._restored, None
        if restored is not None and restored["epoch"] == trainer.current_epoch:
            # Lightning ends a step-limited (max_steps) run's saved epoch a second time when it resumes it, after
            # drawing from the generators for that epoch's loader: back to the state the checkpoint was saved with
            self._apply(restored)
        self._epoch = trainer.current_epoch

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict
        self._apply(state_dict)

    @staticmethod
    def _apply(state_dict: dict[str, Any]) -> None:
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        saved = state_dict["numpy"]
        np.random.set_state(
            {
                "bit_generator": "MT19937",
                "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]},
                "has_gauss": saved["has_gauss"],
                "gauss": saved["gauss"],
            }
        )
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict.get("cuda")
        if cuda is None:
            return
        if torch.cuda.is_available() and isinstance(cuda, torch.Tensor):
            torch.cuda.set_rng_state(cuda)
        else:
            logger.warning(
                "The run checkpoint holds a GPU's random state and this run has %s: its GPU draws (dropout) differ "
                "from the interrupted run's.",
                "no GPU" if not torch.cuda.is_available() else "a checkpoint of another layout",
            )


class ResumableEarlyStopping(EarlyStopping):
    """Lightning's early stopping, for a resumed run: an early stop made stays made, a new patience is honoured.

    Lightning's checkpoint does not hold ``trainer.should_stop``, so a run killed between stopping early and writing
    its model would train on when resumed, its patience already spent; and Lightning restores the saved patience
    over the one given to the resumed run.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        if patience != self.patience:
            # a new patience is a new decision: the epochs already waited count against it, a stop already made
            # under the old one does not (and without early stopping on resume there is no stop to keep)
            self.stopped_epoch = 0
        self.patience = patience

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped_epoch > 0:  # restored from a run that had stopped early
            trainer.should_stop = True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint beside its target and renames it into place, so a kill never leaves half a checkpoint.

    Lightning's own writer goes through a temporary file of the system's temporary folder: across file systems (a
    node-local /tmp, a shared output disk, the usual cluster layout) its final move rewrites the old checkpoint in
    place, and a job killed meanwhile loses the only copy of the run.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("storm_sc's run checkpoints take no storage_options.")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        torch.save(checkpoint, partial)
        os.replace(partial, target)
