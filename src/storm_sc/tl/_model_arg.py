"""The ``model=`` argument shared by the tools: a StormModel, a checkpoint path, a registered name or ``None``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storm_sc.models import StormModel


def get_model(model: StormModel | str | Path | None, *, verbose: bool | None = None) -> StormModel:
    """Load the model a tool was given (``None``: the reference checkpoint bundled with storm_sc)."""
    if isinstance(model, StormModel):
        return model
    if model is None or isinstance(model, str | Path):
        return StormModel.from_pretrained(model, verbose=verbose)
    raise TypeError(
        f"`model` must be a StormModel, a checkpoint path, a registered name or None; got {type(model).__name__}."
    )


def model_name(model: StormModel, given: Any) -> str:
    """A short description of the model for ``.uns`` (what the user passed, else the architecture)."""
    if given is None:
        from storm_sc.models._pretrained import reference_name

        return f"{reference_name()} (bundled reference)"
    if isinstance(given, str | Path):
        return str(given)
    if model.pretrained_name:  # from_pretrained, not trained since: the release it is
        return f"{model.pretrained_name} (in-memory, from_pretrained)"
    base = (model.manifest or {}).get("parent", {}).get("name")
    return f"{model.config.name} (in-memory" + (f", fine-tuned from {base})" if base else ")")
