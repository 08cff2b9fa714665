"""storm_sc: STORM, a multimodal foundation model of H&E histology, gene expression and spatial context."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("storm-sc")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from . import clinical, datasets, io, models, pl, pp, tl, wsi
from ._settings import settings


def __getattr__(name: str) -> object:
    # The training engine imports Lightning (seconds): load it on first use of `st.training`.
    if name == "training":
        import importlib

        return importlib.import_module("storm_sc.training")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["clinical", "datasets", "io", "models", "pl", "pp", "tl", "training", "wsi", "settings", "__version__"]
