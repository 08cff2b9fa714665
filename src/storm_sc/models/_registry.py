"""Named STORM architectures, timm-style: adding a model is one entry in ``_CONFIGS``."""

from __future__ import annotations

from typing import Any

from ._config import StormConfig

_CONFIGS: dict[str, StormConfig] = {
    # Unit tests and quick experiments: trains in seconds on one CPU core.
    "storm-tiny": StormConfig(
        name="storm-tiny",
        morphology="cnn",
        image_size=32,
        cnn_channels=(8, 16, 32),
        cnn_stem_stride=2,
        gene_dim=16,
        value_bins=8,
        max_genes=64,
        expression_layers=0,
        program_genes=512,
        hidden_dim=32,
        heads=2,
        embed_dim=16,
        projection_dim=16,
        niche_k=6,
        region_radius_um=400.0,
        region_k=6,
        position_frequencies=6,
    ),
    # The CPU reference: a 4x4 "patchify" CNN stem keeps H&E encoding at ~10k patches/s per CPU core;
    # ~2.5M weights with a 20k-gene vocabulary (float16 storage keeps larger vocabularies under 10 MB).
    "storm-small": StormConfig(
        name="storm-small",
        morphology="cnn",
        image_size=64,
        cnn_channels=(24, 48, 96, 128),
        cnn_stem_stride=4,
        gene_dim=32,
        value_bins=16,
        max_genes=256,
        expression_layers=0,
        program_genes=1024,
        hidden_dim=128,
        heads=4,
        embed_dim=64,
        projection_dim=64,
        niche_k=6,
        region_radius_um=400.0,
        region_k=8,
        position_frequencies=12,
    ),
    # Paper-ish scale for GPUs: a ViT on 224 px patches, wider expression and context blocks.
    "storm-base": StormConfig(
        name="storm-base",
        morphology="vit",
        image_size=224,
        vit_patch=16,
        vit_dim=384,
        vit_depth=8,
        gene_dim=128,
        value_bins=32,
        max_genes=1024,
        expression_layers=2,
        program_genes=2048,
        hidden_dim=384,
        heads=6,
        embed_dim=256,
        projection_dim=256,
        niche_k=8,
        region_radius_um=500.0,
        region_k=24,
        position_frequencies=16,
    ),
}


class UnknownConfigError(KeyError, ValueError):
    """No STORM config is registered under the name asked for.

    A KeyError, as a failed registry lookup always was here, and a ValueError, as other bad arguments and the YAML
    recipe report it.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError's str() would quote the message


def list_configs() -> list[str]:
    """Names of the registered STORM architectures.

    Returns
    -------
    Sorted names.

    Examples
    --------
    >>> import storm_sc as st
    >>> st.models.list_configs()
    ['storm-base', 'storm-small', 'storm-tiny']
    """
    return sorted(_CONFIGS)


def get_config(name: str, **overrides: Any) -> StormConfig:
    """Return a registered STORM architecture, optionally with some fields changed.

    Parameters
    ----------
    name
        Registry name (see :func:`list_configs`).
    **overrides
        Fields to change; the result is renamed ``"<name>+custom"`` when any are given.

    Returns
    -------
    The config.

    Examples
    --------
    >>> import storm_sc as st
    >>> st.models.get_config("storm-tiny").hidden_dim
    32
    >>> st.models.get_config("storm-tiny", region_k=4).name
    'storm-tiny+custom'
    """
    if name not in _CONFIGS:
        raise UnknownConfigError(
            f"No STORM config named {name!r}; registered (st.models.list_configs()): {list_configs()}."
        )
    config = _CONFIGS[name]
    if overrides:
        config = config.replace(name=f"{name}+custom", **overrides)
    return config


def register_config(config: StormConfig, *, overwrite: bool = False) -> None:
    """Add an architecture to the registry under ``config.name``.

    Parameters
    ----------
    config
        The architecture; its ``name`` is the registry key.
    overwrite
        Replace an existing entry of that name.

    Returns
    -------
    Nothing; :func:`get_config` finds it afterwards.

    Examples
    --------
    >>> import storm_sc as st
    >>> st.models.register_config(st.models.get_config("storm-tiny").replace(name="my-tiny", hidden_dim=16))
    >>> st.models.get_config("my-tiny").hidden_dim
    16
    """
    if not isinstance(config, StormConfig):
        raise TypeError(f"`config` must be a StormConfig, got {type(config).__name__}.")
    if config.name in _CONFIGS and not overwrite:
        raise ValueError(f"A STORM config named {config.name!r} is already registered; pass overwrite=True.")
    _CONFIGS[config.name] = config
