"""Stain and texture statistics of H&E patches, computed in torch as a second path of the morphology encoder."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._augment import _HED_FROM_RGB

_QUANTILES = (0.1, 0.5, 0.9)
_POOLS = (2, 4)
N_STATISTICS = 6 * (2 + len(_QUANTILES)) + 3 * len(_POOLS) + 2


def stain_statistics(images: torch.Tensor) -> torch.Tensor:
    """Per-patch colour, stain and texture statistics.

    For the RGB channels and the haematoxylin, eosin and residual optical densities (Ruifrok-Johnston colour
    deconvolution): mean, standard deviation and the 10/50/90th percentiles; the spread of block means at two
    coarser scales (grey, haematoxylin, eosin); and the mean gradient magnitude of grey and haematoxylin.

    Parameters
    ----------
    images
        ``(n, 3, h, w)`` RGB in ``[0, 1]``.

    Returns
    -------
    ``(n, N_STATISTICS)`` float32.

    Examples
    --------
    >>> stain_statistics(torch.rand(2, 3, 16, 16)).shape == (2, N_STATISTICS)
    True
    """
    x = images.float()
    od = -torch.log(x.clamp(min=1.0 / 255.0))
    hed = torch.einsum("nchw,cd->ndhw", od, _HED_FROM_RGB.to(x.device))
    channels = torch.cat([x, hed], dim=1)  # (n, 6, h, w)
    flat = channels.flatten(2)
    q = _quantiles(flat)  # (n, 6, 3)
    per_channel = torch.cat([flat.mean(-1, keepdim=True), flat.std(-1, keepdim=True), q], dim=-1).flatten(1)

    grey = x.mean(dim=1, keepdim=True)
    textured = torch.cat([grey, hed[:, :2]], dim=1)  # grey, haematoxylin, eosin
    spreads = [
        nn.functional.avg_pool2d(textured, kernel_size=max(1, x.shape[-1] // k)).flatten(2).std(-1) for k in _POOLS
    ]
    edges = torch.cat([grey, hed[:, :1]], dim=1)
    gradient = (edges[..., 1:, :-1] - edges[..., :-1, :-1]).abs() + (edges[..., :-1, 1:] - edges[..., :-1, :-1]).abs()
    return torch.cat([per_channel, *spreads, gradient.flatten(2).mean(-1)], dim=1)


def _quantiles(flat: torch.Tensor) -> torch.Tensor:
    """``_QUANTILES`` of the last axis, ``(..., len(_QUANTILES))``, with torch.quantile's linear interpolation.

    On the CPU the values are sorted by numpy, whose vectorised sort is ~30 times faster than torch's there (the
    stain statistics were most of a tiny model's inference time); the result is identical. Pixels carry no
    gradient, so nothing is lost by leaving autograd.
    """
    q = torch.tensor(_QUANTILES, dtype=flat.dtype, device=flat.device)
    if flat.device.type != "cpu" or flat.requires_grad or flat.dtype not in (torch.float32, torch.float64):
        return torch.quantile(flat, q, dim=-1).movedim(0, -1)
    ranks = q * (flat.shape[-1] - 1)
    below, above = ranks.floor().long(), ranks.ceil().long()
    ordered = torch.from_numpy(np.sort(flat.detach().contiguous().numpy(), axis=-1))
    return torch.lerp(ordered[..., below], ordered[..., above], ranks - below)


class StainStatisticsEncoder(nn.Module):
    """Stain statistics of a patch -> ``out_dim``, added to the learned encoder's output.

    Encoders with per-sample normalisation (GroupNorm/LayerNorm) discard how dark or how haematoxylin-rich a
    patch is in absolute terms, yet cellularity and stain balance are among the best-known morphological
    correlates of expression. This path keeps them, and gives a small encoder trained from scratch on a few
    thousand spots a useful representation from the first step.
    """

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_STATISTICS, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(n, 3, h, w)`` RGB in ``[0, 1]`` -> ``(n, out_dim)``."""
        return self.encode(stain_statistics(images))

    def encode(self, statistics: torch.Tensor) -> torch.Tensor:
        """``(n, N_STATISTICS)`` :func:`stain_statistics` -> ``(n, out_dim)``."""
        # Scaled so that typical statistics (RGB 0-1, optical densities 0-2, spreads ~0.1) are of order one.
        return self.net(4.0 * statistics)
