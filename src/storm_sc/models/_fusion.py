"""Fuse whatever modalities an observation has (H&E, expression, both or neither) into one token."""

from __future__ import annotations

import torch
from torch import nn


class ModalityFusion(nn.Module):
    """Mean of the present modality tokens (each tagged with a learned type embedding), then norm + MLP.

    A mean over present modalities makes H&E-only, expression-only and joint observations live in the same space,
    which modality dropout during training then aligns. Observations with neither (padding, or a neighbour
    without data) get a learned "empty" token.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.image_type = nn.Parameter(torch.zeros(dim))
        self.expression_type = nn.Parameter(torch.zeros(dim))
        self.empty = nn.Parameter(torch.randn(dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(
        self,
        image: torch.Tensor,
        image_present: torch.Tensor,
        expression: torch.Tensor,
        expression_present: torch.Tensor,
    ) -> torch.Tensor:
        """Fuse ``(n, d)`` modality tokens given ``(n,)`` presence flags into ``(n, d)``."""
        ip = image_present.unsqueeze(-1)
        ep = expression_present.unsqueeze(-1)
        # Under autocast the two encoders may return different precisions; fuse in float32.
        image, expression = image.float(), expression.float()
        total = torch.where(ip, image + self.image_type, 0.0) + torch.where(ep, expression + self.expression_type, 0.0)
        count = ip.to(total.dtype) + ep.to(total.dtype)
        fused = torch.where(count > 0, total / count.clamp(min=1.0), self.empty.to(total.dtype))
        fused = self.norm(fused)
        return fused + self.mlp(fused)
