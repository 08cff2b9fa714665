"""storm_sc: STORM, a multimodal foundation model of H&E histology, gene expression and spatial context."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("storm-sc")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from . import datasets, io, models, pl, pp, tl  # noqa: E402
from ._settings import settings  # noqa: E402

__all__ = ["datasets", "io", "models", "pl", "pp", "tl", "settings", "__version__"]
