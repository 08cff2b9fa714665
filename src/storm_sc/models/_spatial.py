"""Spatial context: attention over each observation's neighbours in microns, observation -> niche -> region."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._config import StormConfig


class FourierPositions(nn.Module):
    """Relative offsets ``(dx, dy)`` in microns -> sin/cos features at log-spaced wavelengths -> an MLP.

    Wavelengths span ``min_um`` (a cell) to ``max_um`` (a tissue region), so both the fine arrangement of a niche and
    the coarse direction of a region are representable whatever the platform's spacing.
    """

    def __init__(self, n_freq: int, min_um: float, max_um: float, dim: int) -> None:
        super().__init__()
        wavelengths = torch.logspace(math.log10(min_um), math.log10(max_um), n_freq)
        self.register_buffer("freqs", 2 * math.pi / wavelengths, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(4 * n_freq, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, dxy: torch.Tensor) -> torch.Tensor:
        angles = dxy.float().unsqueeze(-1) * self.freqs  # (..., 2, F)
        feats = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)
        return self.mlp(feats)


class ContextBlock(nn.Module):
    """One query per centre attends to itself and its (masked, position-tagged) neighbour tokens; then an MLP."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(
        self,
        query: torch.Tensor,
        self_pos: torch.Tensor,
        keys: torch.Tensor,
        key_pos: torch.Tensor,
        key_valid: torch.Tensor,
    ) -> torch.Tensor:
        # The centre is always among the keys, so an isolated observation (no valid neighbour) is well defined.
        kv = torch.cat([(query + self_pos).unsqueeze(1), keys + key_pos], dim=1)
        valid = torch.cat([torch.ones_like(key_valid[:, :1]), key_valid], dim=1)
        kv = self.norm_kv(kv)
        out, _ = self.attn(self.norm_q(query).unsqueeze(1), kv, kv, key_padding_mask=~valid, need_weights=False)
        x = query + out[:, 0]
        return x + self.mlp(x)


class SpatialContextEncoder(nn.Module):
    """Hierarchical context of each centre observation from sparse neighbour lists (never an N x N matrix).

    * observation: the fused morphology/expression token of the centre;
    * niche: the centre attends to its ``niche_k`` nearest neighbours;
    * region: the niche token attends to ``region_k`` observations spread over ``region_radius_um``.

    The joint embedding is a projection of the three levels concatenated.
    """

    def __init__(self, config: StormConfig) -> None:
        super().__init__()
        d = config.hidden_dim
        freq = (config.position_frequencies, config.position_min_um, config.position_max_um)
        self.niche_pos = FourierPositions(*freq, d)
        self.region_pos = FourierPositions(*freq, d)
        self.niche = ContextBlock(d, config.heads, config.dropout)
        self.region = ContextBlock(d, config.heads, config.dropout)
        self.joint = nn.Sequential(nn.LayerNorm(3 * d), nn.Linear(3 * d, config.embed_dim))

    def forward(
        self,
        tokens: torch.Tensor,
        centre: torch.Tensor,
        niche_idx: torch.Tensor,
        niche_valid: torch.Tensor,
        niche_dxy: torch.Tensor,
        region_idx: torch.Tensor,
        region_valid: torch.Tensor,
        region_dxy: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Context of centres ``tokens[centre]``; neighbour indices point into ``tokens`` (-1 = none).

        Returns ``{"observation", "niche", "region"}`` of shape ``(b, hidden_dim)`` and ``"joint"`` ``(b, embed_dim)``.
        """
        h = tokens[centre]
        origin = torch.zeros_like(niche_dxy[:, :1])
        niche_keys = tokens[niche_idx.clamp(min=0)]
        n = self.niche(h, self.niche_pos(origin)[:, 0], niche_keys, self.niche_pos(niche_dxy), niche_valid)
        region_keys = tokens[region_idx.clamp(min=0)]
        r = self.region(n, self.region_pos(origin)[:, 0], region_keys, self.region_pos(region_dxy), region_valid)
        joint = self.joint(torch.cat([h, n, r], dim=-1))
        return {"observation": h, "niche": n, "region": r, "joint": joint}
