"""Optimisation, data, split and hardware settings of a training run, as one validated record."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.strategies import StrategyRegistry

from storm_sc.models import LossWeights
from storm_sc.models._network import LOSS_NAMES
from storm_sc.models._replace_fields import replace_fields

# Lightning 2's precision values (its aliases 16, 32, 64 and "bf16" included): checked here, before any slide is
# prepared, rather than by the Trainer once they all are.
PRECISIONS = (
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    "bf16",
    "16",
    "32",
    "64",
    16,
    32,
    64,
)
_GPU_ACCELERATORS = ("gpu", "cuda")


def _accelerators() -> list[str]:
    return [
        "auto",
        "cpu",
        *_GPU_ACCELERATORS,
        *sorted(set(AcceleratorRegistry.available_accelerators()) - {"cpu", "cuda"}),
    ]


def _strategies() -> list[str]:
    return ["auto", *StrategyRegistry.available_strategies()]


@dataclass(frozen=True)
class TrainingConfig:
    """How to train a STORM model (the architecture is a :class:`storm_sc.models.StormConfig`).

    Attributes
    ----------
    max_epochs
        Passes over the training centres.
    max_steps
        Stop after this many optimiser steps (``-1``: no limit).
    batch_size
        Centre observations per step and process; each brings its niche and region neighbours.
    lr, weight_decay
        AdamW learning rate and decoupled weight decay (not applied to biases, norms and embeddings).
    warmup_steps
        Linear warm-up (at most a tenth of the run), then cosine decay to ``min_lr_ratio * lr``.
    min_lr_ratio
        Final learning rate as a fraction of ``lr``.
    gradient_clip
        Clip the gradient norm (``0``: off).
    mask_fraction
        Fraction of a centre's gene tokens hidden and reconstructed.
    image_dropout, expression_dropout
        Probability that an observation having both modalities loses its image / its expression in the joint view.
    stain_jitter
        Half-width of the uniform jitter of stain concentrations (H&E optical densities) and their offsets.
    geometric_augment
        Random 90-degree rotations and flips of a whole neighbourhood (patches and relative positions together).
    context_grad
        Back-propagate into the encoders through the neighbours too (about three times slower per step); by
        default the encoders learn from the centres and the spatial blocks from every token.
    contrastive_weight, context_contrastive_weight, masked_expression_weight, predicted_expression_weight
        Weights of the objectives (see :class:`storm_sc.models.LossWeights`).
    gather_contrastive
        With several processes, contrast against every process's batch (more negatives).
    val_fraction
        Fraction of slide groups (patients) held out for validation; with a single group, a spatial block of
        that fraction of each slide is held out instead (with a warning). Groups are held out whole: a warning says
        when that holds out more than twice this fraction of the observations (with two groups, one of them).
    val_groups
        Explicit validation groups (overrides ``val_fraction``).
    early_stopping_patience
        Stop after this many epochs without a better validation loss (``None``: never).
    monitor
        The validation loss that picks the kept weights and drives early stopping: ``"val/loss"`` (the weighted
        total) or one objective, e.g. ``"val/masked_expression"``. On small corpora the contrastive terms can rise
        on held-out tissues while the expression objectives still improve; the total then keeps an early epoch.
    seed
        Seed of weight initialisation, sampling, masking and augmentation.
    num_workers
        DataLoader worker processes per training process.
    accelerator, devices, strategy, num_nodes, precision
        Lightning Trainer settings (names Lightning knows; an accelerator the machine lacks is refused when training
        starts, before any slide is read). ``devices="auto"`` follows torchrun / SLURM when launched by them, and is one
        device (a GPU when there is one) otherwise: for data-parallel training on several GPUs of one machine, pass
        ``devices=N`` (run as a script) or launch with torchrun.
        ``precision=None``: ``"bf16-mixed"`` on GPUs that compute in bf16 natively (NVIDIA Ampere and newer),
        ``"32-true"`` on older GPUs and on CPUs (``"16-mixed"`` is the fast choice on a V100 or T4).
    log_every_n_steps
        Logging interval of step-level losses.
    checkpoint_dtype
        Storage precision of the checkpoint written to ``output_dir`` (``"float32"``, ``"float16"``,
        ``"bfloat16"``; see :meth:`storm_sc.models.StormModel.save`).
    expression_readout
        After training, fit the model's linear expression readout
        (:meth:`storm_sc.models.StormModel.fit_expression_readout`) on every slide with H&E and expression
        (with a warning and no readout when they hold fewer than 10 observations, too few to cross-validate it).

    Examples
    --------
    >>> import storm_sc as st
    >>> config = st.training.TrainingConfig(max_epochs=5, batch_size=32, val_groups=["patient_3"])
    >>> config.max_epochs, config.batch_size, config.val_groups
    (5, 32, ('patient_3',))
    >>> try:
    ...     st.training.TrainingConfig(batch_size=0)
    ... except ValueError as err:
    ...     print(err)
    Invalid training config: `batch_size` must be a positive integer (got 0).
    >>> model = st.training.pretrain(slides, model="storm-tiny", config=config)  # doctest: +SKIP
    """

    max_epochs: int = 20
    max_steps: int = -1
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    gradient_clip: float = 1.0
    mask_fraction: float = 0.25
    image_dropout: float = 0.25
    expression_dropout: float = 0.25
    stain_jitter: float = 0.05
    geometric_augment: bool = True
    context_grad: bool = False
    contrastive_weight: float = 1.0
    context_contrastive_weight: float = 1.0
    masked_expression_weight: float = 1.0
    predicted_expression_weight: float = 1.0
    gather_contrastive: bool = True
    val_fraction: float = 0.2
    val_groups: tuple[str, ...] | None = None
    early_stopping_patience: int | None = 5
    monitor: str = "val/loss"
    seed: int = 0
    num_workers: int = 0
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None
    log_every_n_steps: int = 10
    checkpoint_dtype: str = "float32"
    expression_readout: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.val_groups, list | str):
            groups = [self.val_groups] if isinstance(self.val_groups, str) else self.val_groups
            object.__setattr__(self, "val_groups", tuple(str(g) for g in groups))
        problems = []
        for name in ("max_epochs", "batch_size", "num_nodes", "log_every_n_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"`{name}` must be a positive integer (got {v!r})")
        for name in ("warmup_steps", "num_workers", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                problems.append(f"`{name}` must be an integer >= 0 (got {v!r})")
        steps = self.max_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps == 0 or steps < -1:
            problems.append(f"`max_steps` must be -1 or a positive integer (got {self.max_steps!r})")
        for name in ("lr",):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                problems.append(f"`{name}` must be a positive number (got {v!r})")
        for name in (
            "weight_decay",
            "gradient_clip",
            "stain_jitter",
            "contrastive_weight",
            "context_contrastive_weight",
            "masked_expression_weight",
            "predicted_expression_weight",
        ):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                problems.append(f"`{name}` must be a number >= 0 (got {v!r})")
        for name in ("mask_fraction", "image_dropout", "expression_dropout", "val_fraction", "min_lr_ratio"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0 <= v < 1:
                problems.append(f"`{name}` must be in [0, 1) (got {v!r})")
        dropouts = (self.image_dropout, self.expression_dropout)
        if all(isinstance(v, int | float) for v in dropouts) and sum(dropouts) >= 1:
            problems.append("`image_dropout + expression_dropout` must be < 1 (some observations must keep both)")
        if isinstance(self.stain_jitter, int | float) and self.stain_jitter >= 1:
            problems.append("`stain_jitter` must be < 1")
        patience = self.early_stopping_patience
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            problems.append(
                f"`early_stopping_patience` must be a positive integer or None (got {self.early_stopping_patience!r})"
            )
        monitors = ["val/loss", *(f"val/{name}" for name in LOSS_NAMES)]
        if self.monitor not in monitors:
            problems.append(f"`monitor` must be one of {monitors} (got {self.monitor!r})")
        if self.checkpoint_dtype not in ("float32", "float16", "bfloat16"):
            problems.append(f"`checkpoint_dtype` must be float32, float16 or bfloat16 (got {self.checkpoint_dtype!r})")
        if not (self.devices == "auto" or (isinstance(self.devices, int) and self.devices >= 1)):
            problems.append(f"`devices` must be 'auto' or a positive integer (got {self.devices!r})")
        # Names only (a recipe's, stored in the manifest), in any case as Lightning takes them.
        if not isinstance(self.accelerator, str) or self.accelerator.lower() not in _accelerators():
            problems.append(f"`accelerator` must be one of {_accelerators()} (got {self.accelerator!r})")
        if not isinstance(self.strategy, str) or self.strategy.lower() not in _strategies():
            problems.append(f"`strategy` must be one of {_strategies()} (got {self.strategy!r})")
        if isinstance(self.precision, np.integer):
            object.__setattr__(self, "precision", int(self.precision))  # Lightning and the JSON manifest want int
        precision = self.precision
        if precision is not None and (
            not isinstance(precision, str | int) or isinstance(precision, bool) or precision not in PRECISIONS
        ):
            problems.append(
                f"`precision` must be None (automatic) or one of {list(PRECISIONS)} (got {self.precision!r})"
            )
        if problems:
            raise ValueError("Invalid training config: " + "; ".join(problems) + ".")

    @property
    def loss_weights(self) -> LossWeights:
        """The objectives' weights."""
        return LossWeights(
            self.contrastive_weight,
            self.context_contrastive_weight,
            self.masked_expression_weight,
            self.predicted_expression_weight,
        )

    def replace(self, **changes: Any) -> TrainingConfig:
        """Return a copy with some fields changed (validated; unknown names are an error).

        Parameters
        ----------
        **changes
            Field names and values.

        Returns
        -------
        The new config.

        Examples
        --------
        >>> from storm_sc.training import TrainingConfig
        >>> TrainingConfig().replace(max_epochs=3).max_epochs
        3
        """
        return replace_fields(
            self, changes, unknown_message="Unknown training option(s) {unknown}; valid options: {valid}."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields.

        Returns
        -------
        Field name to value.

        Examples
        --------
        >>> from storm_sc.training import TrainingConfig
        >>> TrainingConfig().to_dict()["batch_size"]
        64
        """
        out = dataclasses.asdict(self)
        if out["val_groups"] is not None:
            out["val_groups"] = list(out["val_groups"])
        return out


def check_hardware(options: TrainingConfig) -> None:
    """Refuse an accelerator this machine lacks, before any slide is read (the Trainer would, once all are prepared).

    Parameters
    ----------
    options
        The run's settings.
    """
    name = options.accelerator.lower()
    if name in _GPU_ACCELERATORS:
        available = torch.cuda.is_available()
    elif name in ("auto", "cpu"):
        available = True
    else:
        available = AcceleratorRegistry[name]["accelerator"].is_available()
    if not available:
        raise ValueError(
            f"accelerator={name!r}, but this machine has no {'CUDA GPU' if name in _GPU_ACCELERATORS else name} "
            "that torch can use; pass accelerator='cpu' (or 'auto', which uses a GPU where there is one)."
        )
