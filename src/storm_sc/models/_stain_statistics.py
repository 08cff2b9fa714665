"""Stain and texture statistics of H&E patches, computed in torch as a second path of the morphology encoder."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._augment import _HED_FROM_RGB

_QUANTILES = (0.1, 0.5, 0.9)
_POOLS = (2, 4)
N_STATISTICS = 6 * (2 + len(_QUANTILES)) + 3 * len(_POOLS) + 2
# Uniform local binary patterns of 8 neighbours: 0-8 neighbours at least as bright as the centre, or non-uniform.
_LBP_CODES = 10
# LBP histogram; Sobel magnitude of grey (mean, std, median, 90th pct) and haematoxylin (mean, std); Laplacian
# spread of grey and haematoxylin.
N_TEXTURE_STATISTICS = _LBP_CODES + 4 + 2 + 2
_LUMA = (0.2125, 0.7154, 0.0721)
# The 3 x 3 ring in circular order, as (row, column) offsets: LBP uniformity counts transitions around it.
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


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
    return _stain_block(x, _stain_densities(x))


def _stain_densities(x: torch.Tensor) -> torch.Tensor:
    """``(n, 3, h, w)`` RGB in ``[0, 1]`` -> haematoxylin, eosin and residual optical densities, same shape."""
    log_rgb = x.clamp(min=1.0 / 255.0).log_()  # optical density is its negative, folded into the matrix
    return torch.einsum("nchw,cd->ndhw", log_rgb, -_HED_FROM_RGB.to(x.device))


def _stain_block(x: torch.Tensor, hed: torch.Tensor) -> torch.Tensor:
    """:func:`stain_statistics` of float RGB ``x`` with its :func:`_stain_densities` ``hed``."""
    channels = torch.cat([x, hed], dim=1)  # (n, 6, h, w)
    flat = channels.flatten(2)
    q = _quantiles(flat)  # (n, 6, 3)
    mean, sd = _mean_std(flat)
    per_channel = torch.cat([mean, sd, q], dim=-1).flatten(1)

    grey = x.mean(dim=1, keepdim=True)
    textured = torch.cat([grey, hed[:, :2]], dim=1)  # grey, haematoxylin, eosin
    spreads = [
        _mean_std(nn.functional.avg_pool2d(textured, kernel_size=max(1, x.shape[-1] // k)).flatten(2))[1][..., 0]
        for k in _POOLS
    ]
    edges = torch.cat([grey, hed[:, :1]], dim=1)
    gradient = (edges[..., 1:, :-1] - edges[..., :-1, :-1]).abs() + (edges[..., :-1, 1:] - edges[..., :-1, :-1]).abs()
    return torch.cat([per_channel, *spreads, gradient.flatten(2).mean(-1)], dim=1)


def texture_statistics(images: torch.Tensor) -> torch.Tensor:
    """Per-patch texture statistics: local binary patterns, edge strength and fine detail.

    The uniform local-binary-pattern histogram of the grey image (8 neighbours, radius one pixel, on 256 grey
    levels); the mean, standard deviation, median and 90th percentile of the Sobel gradient magnitude of grey and
    the mean and standard deviation of that of haematoxylin; the standard deviation of the Laplacian of grey and
    haematoxylin. Filters run without padding, so borders add no artificial edges.

    Parameters
    ----------
    images
        ``(n, 3, h, w)`` RGB in ``[0, 1]``, ``h, w >= 3``.

    Returns
    -------
    ``(n, N_TEXTURE_STATISTICS)`` float32.

    Examples
    --------
    >>> texture_statistics(torch.rand(2, 3, 16, 16)).shape == (2, N_TEXTURE_STATISTICS)
    True
    """
    x = images.float()
    return _texture_block(x, _stain_densities(x)[:, :1])


def _texture_block(x: torch.Tensor, hema: torch.Tensor) -> torch.Tensor:
    """:func:`texture_statistics` of float RGB ``x`` with its ``(n, 1, h, w)`` haematoxylin density."""
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        raise ValueError(f"Texture statistics need patches of at least 3 x 3 pixels, got {tuple(x.shape[-2:])}.")
    grey = (_LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2]).add_(x[:, 2:3], alpha=_LUMA[2])
    planes = torch.cat([grey, hema], dim=1)  # (n, 2, h, w)

    # 3 x 3 filters as shifted sums (valid region): on the CPU ~10 times faster than a grouped conv2d of one channel.
    inner = planes[..., 1:-1, 1:-1]
    rows = planes[..., :-2, :] + 2 * planes[..., 1:-1, :] + planes[..., 2:, :]  # (up + 2 centre + down)
    cols = planes[..., :, :-2] + 2 * planes[..., :, 1:-1] + planes[..., :, 2:]
    # Sobel at 4 times its scale (an exact power of two), divided out of the few statistics instead of every pixel.
    gx, gy = rows[..., :-2] - rows[..., 2:], cols[..., :-2, :] - cols[..., 2:, :]
    magnitude = gx.mul_(gx).add_(gy.mul_(gy)).sqrt_().flatten(2)
    laplacian = (rows[..., 1:-1] + cols[..., 1:-1, :]).sub_(inner, alpha=8)  # up + down + left + right - 4 centre
    detail = _mean_std(laplacian.flatten(2))[1][..., 0]

    edge_mean, edge_sd = (v / 4 for v in _mean_std(magnitude))  # (n, 2, 1): grey, haematoxylin
    edge_quantiles = _quantiles(magnitude[:, 0])[:, [1, 2]] / 4  # grey's median, 90th percentile
    return torch.cat(
        [
            _lbp_histogram(grey[:, 0]),
            edge_mean[:, 0],
            edge_sd[:, 0],
            edge_quantiles,
            edge_mean[:, 1],
            edge_sd[:, 1],
            detail,
        ],
        dim=1,
    )


def _lbp_histogram(grey: torch.Tensor) -> torch.Tensor:
    """``(n, h, w)`` grey in ``[0, 1]`` -> ``(n, _LBP_CODES)`` fractions of the interior pixels per uniform code."""
    # On 256 levels, as in the classical descriptor: flat regions tie with their centre instead of flickering.
    levels = (grey * 255.0).round()
    h, w = levels.shape[-2:]
    centre = levels[:, 1 : h - 1, 1 : w - 1]

    def shifted(dr: int, dc: int) -> torch.Tensor:
        return levels[:, 1 + dr : h - 1 + dr, 1 + dc : w - 1 + dc]

    # The ring is a circle of radius one: diagonal neighbours are read between pixels (bilinear), as in Ojala et al.
    d = 0.5**0.5
    # Interpolation rounding must not break ties of flat regions, hence the tolerance. A diagonal's test
    # (1-d)^2 c + d(1-d)(a + b) + d^2 e >= c - tol is rearranged so that its centre term is computed once.
    threshold = centre - 1e-3
    diagonal_threshold = (1 - (1 - d) ** 2) * centre - 1e-3
    ones = torch.zeros_like(centre, dtype=torch.uint8)
    transitions = torch.zeros_like(ones)
    first = previous = None
    for dr, dc in _RING:
        if dr and dc:
            value = (shifted(dr, 0) + shifted(0, dc)).mul_(d * (1 - d)).add_(shifted(dr, dc), alpha=d**2)
            bit = (value >= diagonal_threshold).to(torch.uint8)
        else:
            bit = (shifted(dr, dc) >= threshold).to(torch.uint8)
        ones += bit
        if previous is None:
            first = bit
        else:
            transitions += bit ^ previous
        previous = bit
    transitions += previous ^ first  # close the circle
    codes = torch.where(transitions <= 2, ones, _LBP_CODES - 1).long().flatten(1)
    # One histogram per patch in one call: patch i's codes are offset into bins [10 i, 10 i + 10).
    offsets = torch.arange(len(codes), device=codes.device)[:, None] * _LBP_CODES
    counts = torch.bincount((codes + offsets).flatten(), minlength=len(codes) * _LBP_CODES)
    return counts.view(len(codes), _LBP_CODES).float() / codes.shape[1]


def n_patch_statistics(*, texture: bool) -> int:
    """Width of :func:`patch_statistics`.

    Parameters
    ----------
    texture
        Whether the texture statistics are included.

    Returns
    -------
    ``N_STATISTICS``, plus ``N_TEXTURE_STATISTICS`` with the texture.

    Examples
    --------
    >>> n_patch_statistics(texture=False) == N_STATISTICS
    True
    """
    return N_STATISTICS + (N_TEXTURE_STATISTICS if texture else 0)


def patch_statistics(images: torch.Tensor, *, texture: bool) -> torch.Tensor:
    """:func:`stain_statistics`, followed by :func:`texture_statistics` when ``texture``.

    Parameters
    ----------
    images
        ``(n, 3, h, w)`` RGB in ``[0, 1]``.
    texture
        Whether to append the texture statistics.

    Returns
    -------
    ``(n, n_patch_statistics(texture=texture))`` float32.

    Examples
    --------
    >>> patch_statistics(torch.rand(2, 3, 16, 16), texture=True).shape == (2, N_STATISTICS + N_TEXTURE_STATISTICS)
    True
    """
    # Summary statistics need float32 even under a GPU's bf16 autocast (and torch.quantile refuses bf16).
    with torch.autocast(device_type=images.device.type, enabled=False):
        x = images.float()
        hed = _stain_densities(x)  # shared by both blocks: the log is a good part of their cost
        stain = _stain_block(x, hed)
        return torch.cat([stain, _texture_block(x, hed[:, :1])], dim=1) if texture else stain


def _mean_std(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) standard deviation of the last axis, each ``(..., 1)``.

    Two passes over the values: on the CPU about 5 times faster than ``Tensor.std`` (which was the largest single
    cost of the statistics), and within float32 rounding of it.
    """
    mean = flat.mean(-1, keepdim=True)
    centred = flat - mean
    sd = (centred * centred).sum(-1, keepdim=True).div_(flat.shape[-1] - 1).sqrt_()
    return mean, sd


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

    def __init__(self, out_dim: int, *, texture: bool = False) -> None:
        super().__init__()
        self.texture = texture
        n_in = n_patch_statistics(texture=texture)
        self.net = nn.Sequential(nn.Linear(n_in, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(n, 3, h, w)`` RGB in ``[0, 1]`` -> ``(n, out_dim)``."""
        return self.encode(patch_statistics(images, texture=self.texture))

    def encode(self, statistics: torch.Tensor) -> torch.Tensor:
        """``(n, n_patch_statistics(texture))`` :func:`patch_statistics` -> ``(n, out_dim)``."""
        # Scaled so that typical statistics (RGB 0-1, optical densities 0-2, spreads ~0.1) are of order one.
        return self.net(4.0 * statistics)
