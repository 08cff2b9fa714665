"""The STORM model: architectures, network, inference and checkpoints."""

from ._augment import stain_jitter
from ._batch import StormBatch
from ._checkpoint import CheckpointError, IncompatibleCheckpointError
from ._config import StormConfig
from ._inference import resolve_device
from ._inputs import StormInputs
from ._model import ExpressionPrediction, StormModel
from ._network import LossWeights, StormNetwork
from ._pretrained import list_pretrained, register_pretrained
from ._readout import ExpressionReadout
from ._registry import get_config, list_configs, register_config

__all__ = [
    "CheckpointError",
    "ExpressionPrediction",
    "ExpressionReadout",
    "IncompatibleCheckpointError",
    "LossWeights",
    "StormBatch",
    "StormConfig",
    "StormInputs",
    "StormModel",
    "StormNetwork",
    "get_config",
    "list_configs",
    "list_pretrained",
    "register_config",
    "register_pretrained",
    "resolve_device",
    "stain_jitter",
]
