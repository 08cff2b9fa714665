"""Panel-agnostic expression encoder: genes are tokens, pooled over the genes measured in each observation."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._config import StormConfig


class SoftValueScale(nn.Module):
    """A learned scalar function of a log1p expression value: soft (Gaussian-kernel) bins with learned heights.

    Smooth and differentiable, yet free to treat "absent", "low" and "high" differently. Initialised increasing,
    from 0.5 at zero to 2 at ``value_max``, so that an untrained encoder already weighs expressed genes more.
    """

    def __init__(self, n_bins: int, value_max: float) -> None:
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, value_max, n_bins), persistent=False)
        self.width = value_max / max(n_bins - 1, 1)
        self.heights = nn.Parameter(torch.linspace(0.5, 2.0, n_bins))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        d = (values.float().unsqueeze(-1) - self.centres) / self.width
        return torch.softmax(-0.5 * d * d, dim=-1) @ self.heights


class TokenPool(nn.Module):
    """Multi-head attention pooling of a masked token set with learned queries, linear in the number of tokens.

    Each head scores the tokens by a dot product of its slice with a learned query (no per-token key/value
    projections, which would cost ``hidden_dim**2`` per token), averages its slice with the softmax weights, and
    the heads are mixed by one linear layer after pooling.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(heads, dim // heads))
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        n, t, d = tokens.shape
        split = tokens.view(n, t, self.heads, d // self.heads)
        scores = torch.einsum("nthc,hc->nht", split, self.query) / math.sqrt(d // self.heads)
        # A row without valid tokens pools nothing (zeros); callers mark it as having no expression.
        scores = scores.masked_fill(~valid.unsqueeze(1), float("-inf"))
        weights = torch.nan_to_num(torch.softmax(scores.float(), dim=-1), nan=0.0).to(tokens.dtype)
        pooled = torch.einsum("nht,nthc->nhc", weights, split).reshape(n, d)
        return self.norm(self.out(pooled))


class ExpressionEncoder(nn.Module):
    """Gene tokens (vocabulary id + value) of each observation -> one vector.

    Each token is ``(W e_gene) * s(value)``: the gene's learned embedding (keyed by the gene vocabulary, so any
    panel maps onto the same table), scaled by a learned function of its log1p value. "Gene A is high" is thus
    a direction of the pooled vector; a value embedding added to every gene alike would only say "some gene is
    high", which mostly measures sequencing depth. Optional self-attention layers mix the tokens; attention
    pooling then runs over the valid tokens only, so the number and identity of measured genes may differ
    between observations (Visium ~18k genes, Xenium 300-5k, CosMx ~1k, legacy ST panels).

    With ``config.program_genes`` a second, linear path adds the observation's standardised expression of its
    slide's most variable genes projected by a fixed gene-loading map (see ``storm_sc.models._programs``): the
    tokens say which genes are on, the programs say where along the main axes of co-expression it lies.
    """

    def __init__(self, config: StormConfig, n_genes: int) -> None:
        super().__init__()
        if n_genes < 1:
            raise ValueError("The gene vocabulary is empty; the expression encoder needs at least one gene.")
        # Unit-variance gene embeddings and a bias-free projection: at initialisation genes must already differ
        # (a shared bias would make every gene look alike and hide which gene carries a value).
        self.gene_embedding = nn.Embedding(n_genes, config.gene_dim)
        self.gene_proj = nn.Linear(config.gene_dim, config.hidden_dim, bias=False)
        self.value_scale = SoftValueScale(config.value_bins, config.value_max)
        if config.expression_layers:
            layer = nn.TransformerEncoderLayer(
                config.hidden_dim,
                config.heads,
                2 * config.hidden_dim,
                dropout=config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.mixer: nn.Module | None = nn.TransformerEncoder(
                layer, config.expression_layers, enable_nested_tensor=False
            )
        else:
            self.mixer = None
        self.pool = TokenPool(config.hidden_dim, config.heads)
        if config.program_genes:
            # A fixed map, not trained with the network: at pretraining it is set to the corpus's main axes of gene
            # co-expression (storm_sc.models._programs.corpus_loadings), so an observation's program scores are a
            # PCA-like summary of its slide-standardised expression in axes shared by every slide. A random map
            # (unit-variance scores) stands in until then. Saved with the weights.
            loadings = torch.randn(n_genes, config.program_dim) / math.sqrt(config.program_genes)
            self.register_buffer("program_loadings", loadings)
            self.program_proj: nn.Linear | None = nn.Linear(config.program_dim, config.hidden_dim)
        else:
            self.program_proj = None

    @property
    def n_genes(self) -> int:
        """Size of the gene vocabulary."""
        return self.gene_embedding.num_embeddings

    def forward(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        valid: torch.Tensor,
        program: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Encode ``(n, t)`` gene ids, log1p values and validity masks into ``(n, hidden_dim)``.

        ``program`` holds ``(n, p)`` program ids, standardised values and validity (models with a program path).
        """
        # Project each distinct gene once rather than every token: batches repeat the same genes many times.
        # Gathered by an embedding lookup, not by indexing: on CPU with several threads the backward of `x[inverse]`
        # sums each gene's token gradients in parallel, in any order, and two runs of one seed trained apart.
        unique, inverse = torch.unique(gene_ids, return_inverse=True)
        genes = nn.functional.embedding(inverse, self.gene_proj(self.gene_embedding(unique)))
        tokens = genes * self.value_scale(values).unsqueeze(-1).to(genes.dtype)
        if self.mixer is not None:
            safe = valid.clone()
            safe[~safe.any(dim=1), 0] = True
            tokens = self.mixer(tokens, src_key_padding_mask=~safe)
        out = self.pool(tokens, valid)
        if self.program_proj is not None and program is not None:
            out = out + self._program(*program)
        return out

    def _program(self, ids: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        weights = torch.where(valid, values, torch.zeros_like(values)).float()
        # Rows of a slide share their program genes: a (rows x distinct genes) matrix times the distinct genes'
        # loadings costs far less memory than gathering one loading vector per row and gene.
        unique, inverse = torch.unique(ids, return_inverse=True)
        dense = torch.zeros(len(ids), len(unique), device=weights.device).scatter_add_(1, inverse, weights)
        scores = dense @ self.program_loadings[unique].float()
        return self.program_proj(scores.to(self.program_proj.weight.dtype))
