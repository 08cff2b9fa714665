"""The architecture of a STORM model as one plain, JSON-serialisable record."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

from storm_sc._checks import is_real
from storm_sc._constants import DEFAULT_PATCH_UM

from ._replace_fields import replace_fields

# Morphology encoders that the config can rebuild by itself; "timm:<name>" and "hf:<repo>" are lazily imported
# extras, "module" is any torch module handed to the model, "features" reads precomputed patch features.
MORPHOLOGY_KINDS = ("cnn", "vit", "features", "module")
_EXTERNAL_PREFIXES = ("timm:", "hf:")


# Fields added after checkpoints were first written, with the value that rebuilds those checkpoints' networks.
_FIELDS_ADDED_LATER: dict[str, Any] = {"texture_statistics": False}


@dataclass(frozen=True)
class StormConfig:
    """Architecture of a STORM model; named instances live in the registry (:func:`storm_sc.models.get_config`).

    Only what shapes the network is here; optimisation settings belong to
    :class:`storm_sc.training.TrainingConfig`. The number of genes comes from the model's gene vocabulary.

    Attributes
    ----------
    name
        Registry name, or ``"custom"``.
    morphology
        Patch encoder: ``"cnn"`` (small residual CNN trained from scratch), ``"vit"`` (tiny ViT),
        ``"timm:<model>"`` / ``"hf:<repo>"`` (pathology foundation models, optional extras), ``"features"``
        (precomputed patch features from ``.obsm[features_key]``) or ``"module"`` (any torch module given to the
        model, producing ``backbone_dim`` features).
    image_size
        Patch side in pixels fed to the encoder (patches are cut at this size).
    patch_um
        Patch side in microns (its field of view).
    cnn_channels
        Channels of the CNN stem and stages; each stage after the stem halves the resolution.
    cnn_stem_stride
        Downsampling of the CNN stem (1, 2 or 4; 4 is a non-overlapping 4x4 "patchify" stem). Most of a small
        CNN's cost is at full resolution, so this sets the CPU budget.
    vit_patch, vit_dim, vit_depth
        ViT token size in pixels, width and number of blocks.
    backbone_dim
        Output width of a ``timm:``/``hf:``/``module`` backbone (``None``: read from the backbone).
    freeze_backbone
        Keep a pretrained backbone's weights fixed during training.
    feature_dim, features_key
        Width and ``.obsm`` key of precomputed patch features (``morphology="features"``).
    stain_statistics
        Add a second morphology path from per-patch stain and texture statistics (colour deconvolution
        percentiles, block spreads, gradients) to the output of pixel encoders; see
        ``storm_sc.models._stain_statistics``.
    texture_statistics
        Let that path also read texture statistics of the patch (local binary patterns, Sobel and Laplacian
        filters); the expression readout then reads them too. Checkpoints written before this field existed load
        with ``False``, which is how they were trained.
    image_mean, image_std
        Per-channel normalisation of RGB values in ``[0, 1]``.
    gene_dim
        Width of the learned gene embeddings (one per vocabulary gene).
    value_bins, value_max
        Soft bins of log1p expression values, spread over ``[0, value_max]``.
    max_genes
        Gene tokens per observation: the most expressed half, then measured genes drawn at random.
    expression_layers
        Self-attention layers over an observation's gene tokens before pooling.
    program_genes
        Width of the gene-program path (0: off): every observation of a slide is also described by the same
        ``program_genes`` genes, the slide's most variable ones, standardised over the slide and projected by a
        fixed gene-loading map (see ``storm_sc.models._programs``). The tokens alone see too few genes, too
        noisily, for graded programs such as tissue layers.
    program_dim
        Width of the fixed gene-loading map of the program path: at pretraining, the main axes of gene
        co-expression over the training corpus.
    hidden_dim, heads, dropout
        Width, attention heads and dropout of the fusion and context blocks.
    embed_dim
        Width of the joint embedding returned by ``StormModel.embed``.
    projection_dim
        Width of the contrastive projection heads.
    niche_k
        Near neighbours attended to (the niche).
    region_radius_um, region_k
        Radius of the region in microns and the number of observations within it attended to.
    position_frequencies, position_min_um, position_max_um
        Fourier features of relative positions: log-spaced wavelengths between the two bounds.
    logvar_min, logvar_max
        Range of predicted per-gene log-variances (log1p scale).
    backbone_kwargs
        Extra keyword arguments for ``timm.create_model`` / ``transformers.AutoModel.from_pretrained``.

    Examples
    --------
    >>> import storm_sc as st
    >>> config = st.models.get_config("storm-tiny")
    >>> config.name, config.morphology, config.image_size, config.patch_um, config.embed_dim
    ('storm-tiny', 'cnn', 32, 112.0, 16)
    >>> model = st.models.StormModel(config.replace(embed_dim=8), ["GFAP", "MBP"], seed=0)
    >>> model.config.embed_dim
    8
    """

    name: str = "custom"
    morphology: str = "cnn"
    image_size: int = 64
    patch_um: float = DEFAULT_PATCH_UM
    cnn_channels: tuple[int, ...] = (32, 64, 128)
    cnn_stem_stride: int = 2
    vit_patch: int = 8
    vit_dim: int = 128
    vit_depth: int = 4
    backbone_dim: int | None = None
    freeze_backbone: bool = False
    feature_dim: int | None = None
    features_key: str | None = None
    stain_statistics: bool = True
    texture_statistics: bool = True
    image_mean: tuple[float, float, float] = (0.70, 0.55, 0.70)
    image_std: tuple[float, float, float] = (0.18, 0.20, 0.16)
    gene_dim: int = 32
    value_bins: int = 16
    value_max: float = 8.0
    max_genes: int = 256
    expression_layers: int = 1
    program_genes: int = 0
    program_dim: int = 32
    hidden_dim: int = 128
    heads: int = 4
    dropout: float = 0.0
    embed_dim: int = 64
    projection_dim: int = 64
    niche_k: int = 6
    region_radius_um: float = 400.0
    region_k: int = 12
    position_frequencies: int = 12
    position_min_um: float = 5.0
    position_max_um: float = 2000.0
    logvar_min: float = -6.0
    logvar_max: float = 4.0
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("cnn_channels", "image_mean", "image_std"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        problems = self._problems()
        if problems:
            raise ValueError(f"Invalid STORM config {self.name!r}: " + "; ".join(problems) + ".")

    def _problems(self) -> list[str]:
        out: list[str] = []
        positive_ints = (
            "image_size",
            "vit_patch",
            "vit_dim",
            "vit_depth",
            "gene_dim",
            "value_bins",
            "max_genes",
            "program_dim",
            "hidden_dim",
            "heads",
            "embed_dim",
            "projection_dim",
            "niche_k",
            "region_k",
            "position_frequencies",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                out.append(f"`{name}` must be a positive integer (got {value!r})")
        for name in ("expression_layers", "program_genes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                out.append(f"`{name}` must be an integer >= 0 (got {value!r})")
        for name in ("patch_um", "value_max", "region_radius_um", "position_min_um", "position_max_um"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                out.append(f"`{name}` must be a positive number (got {value!r})")
        if not out and self.position_min_um >= self.position_max_um:
            out.append("`position_min_um` must be smaller than `position_max_um`")
        if not is_real(self.dropout) or not 0 <= self.dropout < 1:
            out.append(f"`dropout` must be a number in [0, 1) (got {self.dropout!r})")
        bounds = [name for name in ("logvar_min", "logvar_max") if not is_real(getattr(self, name))]
        for name in bounds:
            out.append(f"`{name}` must be a finite number (got {getattr(self, name)!r})")
        if not bounds and self.logvar_min >= self.logvar_max:
            out.append("`logvar_min` must be smaller than `logvar_max`")
        if not out and self.hidden_dim % self.heads:
            out.append(f"`hidden_dim` ({self.hidden_dim}) must be divisible by `heads` ({self.heads})")
        if self.cnn_stem_stride not in (1, 2, 4):
            out.append(f"`cnn_stem_stride` must be 1, 2 or 4 (got {self.cnn_stem_stride!r})")
        if not self.cnn_channels or any(not isinstance(c, int) or c < 1 for c in self.cnn_channels):
            out.append(f"`cnn_channels` must be positive integers (got {self.cnn_channels!r})")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            out.append("`image_mean` and `image_std` need 3 values each, with positive std")
        kind = self.morphology_kind
        if kind is None:
            out.append(
                f"`morphology` must be one of {list(MORPHOLOGY_KINDS)} or start with {list(_EXTERNAL_PREFIXES)} "
                f"(got {self.morphology!r})"
            )
        elif kind == "vit" and self.image_size % self.vit_patch:
            out.append(f"`image_size` ({self.image_size}) must be a multiple of `vit_patch` ({self.vit_patch})")
        elif kind == "vit" and self.vit_dim % self.heads:
            out.append(f"`vit_dim` ({self.vit_dim}) must be divisible by `heads` ({self.heads})")
        elif kind == "features" and (not self.feature_dim or not self.features_key):
            out.append("`morphology='features'` needs `feature_dim` and `features_key` (the .obsm key)")
        elif kind == "module" and not self.backbone_dim:
            out.append("`morphology='module'` needs `backbone_dim`, the width of the module's output")
        return out

    @property
    def morphology_kind(self) -> str | None:
        """``"cnn"``, ``"vit"``, ``"features"``, ``"module"``, ``"timm"``, ``"hf"``, or ``None`` if unknown."""
        if self.morphology in MORPHOLOGY_KINDS:
            return self.morphology
        for prefix in _EXTERNAL_PREFIXES:
            if self.morphology.startswith(prefix) and len(self.morphology) > len(prefix):
                return prefix[:-1]
        return None

    @property
    def uses_pixels(self) -> bool:
        """Whether the morphology encoder reads image patches (rather than precomputed features)."""
        return self.morphology_kind != "features"

    def replace(self, **changes: Any) -> StormConfig:
        """Return a copy with some fields changed (validated).

        Parameters
        ----------
        **changes
            Field names and their new values.

        Returns
        -------
        The new config.

        Examples
        --------
        >>> from storm_sc.models import get_config
        >>> get_config("storm-tiny").replace(embed_dim=8).embed_dim
        8
        """
        return replace_fields(self, changes, unknown_message="Unknown STORM config field(s) {unknown}; valid: {valid}.")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dictionary (tuples become lists).

        Returns
        -------
        Field name to value.

        Examples
        --------
        >>> from storm_sc.models import StormConfig
        >>> StormConfig().to_dict()["morphology"]
        'cnn'
        """
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StormConfig:
        """Rebuild a config written by :meth:`to_dict`; unknown fields are an error (a newer storm_sc wrote them).

        Parameters
        ----------
        data
            Field name to value.

        Returns
        -------
        The config.

        Examples
        --------
        >>> from storm_sc.models import StormConfig
        >>> c = StormConfig(name="x", hidden_dim=64)
        >>> StormConfig.from_dict(c.to_dict()) == c
        True
        """
        if not isinstance(data, dict):
            raise TypeError(f"A STORM config must be a dict, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"STORM config has fields this version of storm_sc does not know: {unknown}. It was probably written "
                "by a newer storm_sc; upgrade storm_sc."
            )
        return cls(**{**_FIELDS_ADDED_LATER, **data})
