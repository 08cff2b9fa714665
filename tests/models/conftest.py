"""Fixtures of the model tests: small generated slides, a tiny model and random batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import storm_sc as st
from storm_sc.models import StormBatch
from tests._torch_threads import one_torch_thread  # noqa: F401  (autouse: one torch thread per module)


@pytest.fixture(scope="module")
def toy_sdata():
    return st.datasets.toy(n_obs=150, n_genes=40, n_domains=3, seed=0)


@pytest.fixture(scope="module")
def toy_vocab(toy_sdata):
    return st.pp.GeneVocabulary.from_genes(toy_sdata["table"].var_names)


@pytest.fixture
def tiny_model(toy_vocab):
    return st.models.StormModel("storm-tiny", toy_vocab, seed=0)


def make_batch(
    config: st.models.StormConfig,
    n_genes: int,
    *,
    b: int = 6,
    image: bool = True,
    expression: bool = True,
    features: int | None = None,
    seed: int = 0,
) -> StormBatch:
    """A training batch of random content laid out like training.collate: per centre 1 + niche_k + region_k rows."""
    g = torch.Generator().manual_seed(seed)
    k1, k2, t = config.niche_k, config.region_k, config.max_genes
    size = 1 + k1 + k2
    m = b * size
    base = torch.arange(b).unsqueeze(1) * size
    niche_valid = torch.rand(b, k1, generator=g) > 0.2
    region_valid = torch.rand(b, k2, generator=g) > 0.3
    gene_valid = torch.rand(m, t, generator=g) > 0.3
    out = StormBatch(
        has_image=torch.full((m,), image),
        has_expression=torch.full((m,), expression) & gene_valid.any(1),
        gene_ids=torch.randint(0, n_genes, (m, t), generator=g),
        gene_values=torch.rand(m, t, generator=g) * 4,
        gene_valid=gene_valid,
        centre=base[:, 0].clone(),
        niche_idx=torch.where(niche_valid, base + 1 + torch.arange(k1), -1),
        niche_valid=niche_valid,
        niche_dxy=torch.randn(b, k1, 2, generator=g) * 100,
        region_idx=torch.where(region_valid, base + 1 + k1 + torch.arange(k2), -1),
        region_valid=region_valid,
        region_dxy=torch.randn(b, k2, 2, generator=g) * 300,
        recon_mask=(torch.rand(m, t, generator=g) > 0.7) & gene_valid,
        drop_image=torch.rand(m, generator=g) > 0.8,
        drop_expression=torch.rand(m, generator=g) > 0.8,
        stain_alpha=1 + 0.05 * torch.randn(m, 3, generator=g),
        stain_beta=0.02 * torch.randn(m, 3, generator=g),
    )
    if config.program_genes:
        p = config.program_genes
        program_valid = (torch.rand(m, p, generator=g) > 0.2) & torch.full((m, 1), expression)
        out.program_ids = torch.randint(0, n_genes, (m, p), generator=g)
        out.program_values = torch.randn(m, p, generator=g)
        out.program_valid = program_valid
    if features is not None:
        out.features = torch.randn(m, features, generator=g)
    else:
        s = config.image_size
        out.images = torch.randint(0, 256, (m, 3, s, s), dtype=torch.uint8, generator=g)
    return out


@pytest.fixture
def batch_factory():
    return make_batch


@pytest.fixture
def rng():
    return np.random.default_rng(0)
