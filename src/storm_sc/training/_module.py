"""The Lightning wrapper of the STORM network, and the callbacks of a training run."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch

from storm_sc.models import StormBatch, StormNetwork
from storm_sc.models._network import LOSS_NAMES

from ._config import TrainingConfig

# Only the weights of these layers decay; biases, norms, embedding tables, learned tokens and the logit scale do not.
# Decided by layer type, not by name: a name filter ("pos", "query") also spared the dense layers of the neighbour
# position MLPs and of the heads' gene queries.
_DECAYED_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)


class StormLightningModule(L.LightningModule):
    """Trains a :class:`storm_sc.models.StormNetwork` on :class:`storm_sc.models.StormBatch` batches.

    Parameters
    ----------
    network
        The network (trained in place).
    options
        Training settings.

    Examples
    --------
    >>> import lightning as L
    >>> import numpy as np
    >>> from torch.utils.data import DataLoader
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=60, n_genes=20, n_domains=2, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> inputs = model.prepare(sdata, verbose=False)
    >>> partition = (inputs.centers_um[:, 0] > 600).astype(np.int8)  # 0: training, 1: validation
    >>> slide = st.training.PreparedSlide(st.training.TrainingSlide(sdata, name="toy"), inputs, partition)
    >>> options = st.training.TrainingConfig(batch_size=8, lr=3e-3)
    >>> train = st.training.ContextDataset([slide], 0, model.config, options, train=True)
    >>> val = st.training.ContextDataset([slide], 1, model.config, options, train=False)
    >>> loaders = [DataLoader(ds, batch_size=8, collate_fn=st.training.collate) for ds in (train, val)]
    >>> module = st.training.StormLightningModule(model.network, options)
    >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False,
    ...                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(module, *loaders)
    >>> trainer.global_step, "val/loss" in trainer.callback_metrics, module.network is model.network
    (2, True, True)
    """

    def __init__(self, network: StormNetwork, options: TrainingConfig) -> None:
        super().__init__()
        self.network = network
        self.options = options

    def transfer_batch_to_device(self, batch: StormBatch, device: torch.device, dataloader_idx: int) -> StormBatch:
        """Move every tensor of the batch (a dataclass Lightning does not know)."""
        return batch.to(device, non_blocking=True)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        return self.all_gather(t, sync_grads=True)

    def _step(self, batch: StormBatch, stage: str, batch_idx: int) -> torch.Tensor:
        multi = self.trainer.world_size > 1 and self.options.gather_contrastive
        generator = None
        if stage != "train":
            # The same neighbours kept for every epoch's pass over this batch: the held-out loss picks the best
            # epoch, and the draw alone moved it by about as much as an epoch of training gains. A CPU generator: the
            # same draw on every accelerator (XLA has no generator objects), and the masks are small.
            generator = torch.Generator()
            generator.manual_seed(int(self.options.seed) * 1_000_003 + batch_idx * 1_009 + self.global_rank)
        losses = self.network.losses(
            batch,
            weights=self.options.loss_weights,
            augment=stage == "train",
            context_grad=self.options.context_grad,
            gather=self._gather if multi and stage == "train" else None,
            rank=self.global_rank,
            generator=generator,
        )
        size = batch.n_centres
        for name in ("loss", *LOSS_NAMES):
            value = losses[name].detach()
            if stage != "train":
                self.log(
                    f"{stage}/{name}", value, on_epoch=True, batch_size=size, sync_dist=True, prog_bar=name == "loss"
                )
                continue
            # Per-step values are this process's own (a live view): averaging them over processes would cost an
            # all-reduce per objective on every step. The epoch means, which the history records, are averaged.
            self.log(
                f"train/{name}_step", value, on_step=True, on_epoch=False, batch_size=size, prog_bar=name == "loss"
            )
            self.log(f"train/{name}_epoch", value, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        return losses["loss"]

    def training_step(self, batch: StormBatch, batch_idx: int) -> torch.Tensor:
        """Weighted sum of the objectives on one batch."""
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch: StormBatch, batch_idx: int) -> torch.Tensor:
        """Compute the same objectives without augmentation or dropout."""
        return self._step(batch, "val", batch_idx)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with linear warm-up and cosine decay, stepped every optimiser step."""
        decay, no_decay = weight_decay_groups(self.network)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.options.lr,
        )
        # the trainer knows the process layout, max_epochs / max_steps and the batches per process
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup, floor = min(self.options.warmup_steps, total // 10), self.options.min_lr_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class BestWeights(L.Callback):
    """Keep (in memory) the weights of the epoch with the lowest validation loss, and restore them at the end.

    Every process holds identical weights under data parallelism, so no file needs to be shared.
    """

    def __init__(self, monitor: str = "val/loss") -> None:
        self.monitor = monitor
        self.best: float = math.inf
        self.best_epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) < self.best:
            self.best, self.best_epoch = float(value), trainer.current_epoch
            self.state = {k: v.detach().cpu().clone() for k, v in pl_module.network.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "state": self.state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.state = state_dict["best"], state_dict["best_epoch"], state_dict["state"]

    def restore(self, network: StormNetwork) -> None:
        """Load the best weights seen (no-op without validation)."""
        if self.state is not None:
            network.load_state_dict(self.state)


class History(L.Callback):
    """Epoch-level losses (training and validation) for the manifest and for inspection."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.epochs and self.epochs[-1]["epoch"] == trainer.current_epoch:
            return  # a run resumed from a step-limited checkpoint ends its last saved epoch a second time
        row: dict[str, float] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if key.endswith("_epoch") or key.startswith("val/"):
                row[key.removesuffix("_epoch")] = round(float(value), 6)
        self.epochs.append(row)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict["epochs"])


class SamplerEpoch(L.Callback):
    """Gives the training sampler the trainer's epoch at the start of each epoch.

    Lightning sets it from its count of processed epochs, which a run resumed from a checkpoint of a step-limited
    (``max_steps``) run counts one too far: the resumed epochs would take the next epoch's order.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sampler.set_epoch(trainer.current_epoch)


class Throughput(L.Callback):
    """Patches (observations with an image) per second of training per process, data loading included.

    Timed from the start of each epoch's first batch to the end of its last one, so validation and the loading
    of the first batch (worker start-up) are excluded. Logged per epoch as ``train/patches_per_s``.
    """

    def __init__(self) -> None:
        self.patches = 0
        self.seconds = 0.0
        self._epoch_start: float | None = None
        self._epoch_patches = 0
        self._last_end = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._epoch_start is None:
            self._epoch_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._epoch_patches += int(batch.has_image.sum())
        self._last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_start is None:
            return
        elapsed = self._last_end - self._epoch_start
        self.patches += self._epoch_patches
        self.seconds += elapsed
        if elapsed > 0:
            pl_module.log(
                "train/patches_per_s",
                self._epoch_patches / elapsed,
                on_step=False,
                on_epoch=True,
                batch_size=1,
                sync_dist=True,
            )
        self._epoch_start, self._epoch_patches = None, 0

    def state_dict(self) -> dict[str, Any]:
        return {"patches": self.patches, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.patches, self.seconds = state_dict["patches"], state_dict["seconds"]

    @property
    def patches_per_second(self) -> float:
        """Average over the run."""
        return self.patches / self.seconds if self.seconds else float("nan")


def weight_decay_groups(network: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Split the trainable parameters into those that decay and those that do not, each once, in network order.

    Decay: weights of dense and convolution layers and attention's input projection; everything else does not.
    """
    decay, no_decay, seen = [], [], set()
    for module in network.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            dense = (isinstance(module, _DECAYED_LAYERS) and name == "weight") or (
                isinstance(module, torch.nn.MultiheadAttention) and name == "in_proj_weight"
            )
            (decay if dense else no_decay).append(p)
    return decay, no_decay
