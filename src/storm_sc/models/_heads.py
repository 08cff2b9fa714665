"""Output heads: contrastive projections and per-gene Gaussian expression decoders."""

from __future__ import annotations

import math

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """Observation token -> contrastive space (L2-normalised by the loss).

    Encoder outputs share a large common component at initialisation (every patch is H&E, every observation
    expresses the same housekeeping genes), so all pairs look alike and InfoNCE first collapses them. Batch
    normalisation removes the batch mean before projecting, as in SimCLR/MoCo v3; the heads serve only the
    training loss, so the batch dependence never reaches embeddings.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # Batch statistics also at evaluation (no running averages): no buffers that could drift apart between
        # data-parallel processes, and validation losses use the same normalisation as training.
        self.net = nn.Sequential(
            nn.BatchNorm1d(in_dim, track_running_stats=False),
            nn.Linear(in_dim, in_dim),
            nn.BatchNorm1d(in_dim, track_running_stats=False),
            nn.GELU(),
            nn.Linear(in_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GaussianGeneDecoder(nn.Module):
    """Per-gene Gaussian (mean, log-variance) of log1p expression, queried by gene embedding.

    A state vector is computed once per observation; each gene's prediction is a scaled dot product between that
    state and a query made from the gene's embedding, plus a per-gene bias. Any subset of the vocabulary (the
    genes measured in an observation during training, or all genes at inference) costs only its own size, and new
    panels need no new weights. The mean goes through a softplus because log1p expression is non-negative; the
    log-variance is softly bounded to ``[logvar_min, logvar_max]`` for numerical stability.
    """

    def __init__(
        self, in_dim: int, gene_dim: int, hidden: int, n_genes: int, logvar_min: float, logvar_max: float
    ) -> None:
        super().__init__()
        self.state = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 2 * hidden)
        )
        self.gene_query = nn.Linear(gene_dim, 2 * hidden, bias=False)  # per-gene biases are separate parameters
        self.mean_bias = nn.Parameter(torch.zeros(n_genes))
        self.logvar_bias = nn.Parameter(torch.zeros(n_genes))
        self.hidden = hidden
        self.logvar_min, self.logvar_max = logvar_min, logvar_max

    def forward(
        self, x: torch.Tensor, gene_embedding: torch.Tensor, gene_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance for ``gene_ids``: ``(t,)`` shared by all rows -> ``(b, t)``; ``(b, t)`` -> ``(b, t)``."""
        mu_state, lv_state = self.state(x).chunk(2, dim=-1)
        # Rows gathered by embedding lookups, not by indexing: on CPU with several threads the backward of
        # `table[gene_ids]` sums repeated genes' gradients in parallel, in any order (see ExpressionEncoder).
        embedding = nn.functional.embedding
        q_mu, q_lv = self.gene_query(embedding(gene_ids, gene_embedding)).chunk(2, dim=-1)
        scale = 1.0 / math.sqrt(self.hidden)
        if gene_ids.ndim == 1:
            raw_mu = mu_state @ q_mu.T
            raw_lv = lv_state @ q_lv.T
        else:
            raw_mu = torch.einsum("bh,bth->bt", mu_state, q_mu)
            raw_lv = torch.einsum("bh,bth->bt", lv_state, q_lv)
        mean = nn.functional.softplus(raw_mu * scale + embedding(gene_ids, self.mean_bias[:, None])[..., 0])
        half = 0.5 * (self.logvar_max - self.logvar_min)
        mid = 0.5 * (self.logvar_max + self.logvar_min)
        logvar = mid + half * torch.tanh(
            (raw_lv * scale + embedding(gene_ids, self.logvar_bias[:, None])[..., 0]) / half
        )
        return mean, logvar
