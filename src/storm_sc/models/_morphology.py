"""Morphology encoders: H&E patch (or precomputed patch features) -> one vector per observation."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from ._config import StormConfig


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: batch-independent, so results do not depend on batch composition or DDP."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ImageNormalizer(nn.Module):
    """RGB in ``[0, 255]`` (uint8, or float after stain jitter) -> normalised float at the encoder's input size."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.size = size

    def unit(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in ``[0, 1]`` at the encoder's input size."""
        x = images.float() / 255.0
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        return x.clamp(0.0, 1.0)

    def normalise(self, unit: torch.Tensor) -> torch.Tensor:
        """Output of :meth:`unit` -> per-channel standardised input of the encoder."""
        return (unit - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.unit(images))


class _ResidualStage(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), group_norm(c_out))
        self.body = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            group_norm(c_out),
            nn.GELU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            group_norm(c_out),
        )
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return self.act(x + self.body(x))


class ConvEncoder(nn.Module):
    """Small residual CNN trained from scratch; every stage halves the resolution.

    The stem normalises all channels together (one group): per-channel normalisation there would remove each
    patch's colour balance, which is much of what distinguishes H&E tissue types.
    """

    def __init__(self, channels: tuple[int, ...], out_dim: int, *, stem_stride: int = 2) -> None:
        super().__init__()
        stem = channels[0]
        kernel, padding = (4, 0) if stem_stride == 4 else (3, 1)
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, kernel, stride=stem_stride, padding=padding, bias=False),
            nn.GroupNorm(1, stem),
            nn.GELU(),
        )
        self.stages = nn.Sequential(*[_ResidualStage(a, b) for a, b in zip(channels[:-1], channels[1:], strict=True)])
        self.pool_norm = nn.LayerNorm(channels[-1])
        self.out = nn.Linear(channels[-1], out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.out(self.pool_norm(x.mean(dim=(-2, -1))))


class ViTEncoder(nn.Module):
    """Tiny vision transformer: patchify, pre-norm blocks, class token."""

    def __init__(self, image_size: int, patch: int, dim: int, depth: int, heads: int, out_dim: int) -> None:
        super().__init__()
        n_tokens = (image_size // patch) ** 2
        self.patchify = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n_tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patchify(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos
        return self.out(self.norm(self.blocks(tokens)[:, 0]))


class FeatureEncoder(nn.Module):
    """Precomputed patch features (e.g. from a foundation model run elsewhere) -> hidden width."""

    def __init__(self, feature_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(feature_dim), nn.Linear(feature_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
        )
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


class _BackboneAdapter(nn.Module):
    """Wrap a foreign backbone (any module, timm, Hugging Face): its output -> (n, backbone_dim) -> hidden width."""

    def __init__(self, backbone: nn.Module, backbone_dim: int, out_dim: int, *, freeze: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.freeze = freeze
        if freeze:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.head = nn.Sequential(nn.LayerNorm(backbone_dim), nn.Linear(backbone_dim, out_dim))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze:
            self.backbone.eval()  # a frozen backbone keeps its own normalisation statistics and no dropout
            with torch.no_grad():
                feats = _as_features(self.backbone(x))
        else:
            feats = _as_features(self.backbone(x))
        return self.head(feats.float())


def _as_features(out: Any) -> torch.Tensor:
    """Pooled features from the outputs of common backbones (tensor, HF ModelOutput, tuple)."""
    if isinstance(out, torch.Tensor):
        feats = out
    elif getattr(out, "pooler_output", None) is not None:
        feats = out.pooler_output
    elif getattr(out, "last_hidden_state", None) is not None:
        feats = out.last_hidden_state[:, 0]
    elif isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        feats = out[0]
    else:
        raise TypeError(f"Cannot read features from a backbone output of type {type(out).__name__}.")
    if feats.ndim == 4:  # (n, c, h, w) feature maps
        feats = feats.mean(dim=(-2, -1))
    elif feats.ndim == 3:  # (n, tokens, c): take the class token
        feats = feats[:, 0]
    if feats.ndim != 2:
        raise ValueError(f"Backbone features must be (n, dim) after pooling; got shape {tuple(feats.shape)}.")
    return feats


def _import_extra(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"This STORM config uses a {extra} backbone, which needs the optional package `{module}`: "
            f"`pip install {module}` (not a core dependency of storm_sc). Or use morphology='cnn'/'vit', or "
            "precomputed patch features (morphology='features')."
        ) from err


def _external_backbone(config: StormConfig, *, pretrained: bool) -> tuple[nn.Module, int]:
    kind, name = config.morphology.split(":", 1)
    if kind == "timm":
        timm = _import_extra("timm", "timm")
        net = timm.create_model(name, pretrained=pretrained, num_classes=0, **config.backbone_kwargs)
        dim = config.backbone_dim or int(net.num_features)
    else:
        transformers = _import_extra("transformers", "Hugging Face")
        kwargs = dict(config.backbone_kwargs)
        if pretrained:
            net = transformers.AutoModel.from_pretrained(name, **kwargs)
        else:  # the weights come from a storm_sc checkpoint: build the architecture only
            net = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(name, **kwargs))
        dim = config.backbone_dim or int(getattr(net.config, "hidden_size", 0))
        if not dim:
            raise ValueError(f"Cannot tell the output width of {name!r}; set `backbone_dim` in the config.")
    return net, dim


def build_morphology_encoder(
    config: StormConfig, *, backbone: nn.Module | None = None, pretrained_backbone: bool = True
) -> nn.Module:
    """Build the morphology encoder named by ``config.morphology``, producing ``config.hidden_dim`` features.

    Parameters
    ----------
    config
        The architecture.
    backbone
        The module used when ``config.morphology == "module"``.
    pretrained_backbone
        Download pretrained weights of ``timm:``/``hf:`` backbones (``False`` when a checkpoint supplies them).

    Returns
    -------
    A module mapping normalised images ``(n, 3, s, s)`` (or features ``(n, feature_dim)``) to ``(n, hidden_dim)``.

    Examples
    --------
    >>> from storm_sc.models import get_config
    >>> enc = build_morphology_encoder(get_config("storm-tiny"))
    >>> enc(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 32])
    """
    kind = config.morphology_kind
    if backbone is not None and kind != "module":
        raise ValueError(
            f"A `backbone` module was given but the config's morphology is {config.morphology!r}; use a config "
            "with morphology='module' and backbone_dim=<its output width>, e.g. "
            "get_config('storm-small', morphology='module', backbone_dim=512)."
        )
    if kind == "cnn":
        return ConvEncoder(config.cnn_channels, config.hidden_dim, stem_stride=config.cnn_stem_stride)
    if kind == "vit":
        return ViTEncoder(
            config.image_size, config.vit_patch, config.vit_dim, config.vit_depth, config.heads, config.hidden_dim
        )
    if kind == "features":
        return FeatureEncoder(int(config.feature_dim), config.hidden_dim)
    if kind == "module":
        if not isinstance(backbone, nn.Module):
            raise ValueError(
                "This STORM config uses a custom morphology backbone (morphology='module'): pass the same torch "
                "module again as `backbone=` (its weights are restored from the checkpoint)."
            )
        return _BackboneAdapter(backbone, int(config.backbone_dim), config.hidden_dim, freeze=config.freeze_backbone)
    net, dim = _external_backbone(config, pretrained=pretrained_backbone)
    return _BackboneAdapter(net, dim, config.hidden_dim, freeze=config.freeze_backbone)
