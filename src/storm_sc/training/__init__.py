"""Training engine of STORM: PyTorch Lightning on CPU, one GPU (bf16) or many (DDP via torchrun / SLURM)."""

from ._config import TrainingConfig
from ._dataset import ContextDataset, ContextSampler, collate
from ._fit import fit, pretrain
from ._module import StormLightningModule
from ._recipe import Recipe, load_recipe, run_recipe
from ._slides import PreparedSlide, TrainingSlide, union_vocabulary

__all__ = [
    "ContextDataset",
    "ContextSampler",
    "PreparedSlide",
    "Recipe",
    "StormLightningModule",
    "TrainingConfig",
    "TrainingSlide",
    "collate",
    "fit",
    "load_recipe",
    "pretrain",
    "run_recipe",
    "union_vocabulary",
]
