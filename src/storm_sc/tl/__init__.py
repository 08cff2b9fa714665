"""Tools: the scanpy-style calls on SpatialData / AnnData (embed, domains, predicted expression, pretraining)."""

from typing import Any

from ._clinical import fit_outcome, slide_features
from ._domains import storm_domains
from ._embed import storm_embed
from ._predict import predict_expression

__all__ = ["fit_outcome", "predict_expression", "pretrain", "slide_features", "storm_domains", "storm_embed"]


def __getattr__(name: str) -> Any:
    # The training engine pulls in Lightning (seconds to import): load it only when pretraining is asked for.
    if name == "pretrain":
        from storm_sc.training import pretrain

        return pretrain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
