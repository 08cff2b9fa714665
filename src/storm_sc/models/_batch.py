"""The tensors of one forward pass: observations (flat) and, for some of them, their spatial neighbourhoods."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class StormBatch:
    """A flat set of ``m`` observations plus ``b`` centres whose neighbours index into that set.

    Observations are encoded once each (morphology, expression, fusion); the spatial encoder then gathers, for
    every centre, its niche and region neighbours by index. Index ``-1`` marks a missing neighbour.

    Attributes
    ----------
    has_image
        ``(m,)`` bool: the observation has an H&E patch (or precomputed features).
    has_expression
        ``(m,)`` bool: the observation has measured expression.
    gene_ids, gene_values, gene_valid
        ``(m, t)`` gene tokens: vocabulary index, log1p value, and whether the slot holds a measured gene.
    program_ids, program_values, program_valid
        ``(m, p)`` gene-program inputs (models with ``program_genes``): vocabulary index, value standardised over
        the slide, and whether the slot holds a gene; ``None`` for models without the program path.
    centre
        ``(b,)`` rows of the centres.
    niche_idx, niche_valid, niche_dxy
        ``(b, k1)`` neighbour rows, validity and ``(b, k1, 2)`` offsets in microns.
    region_idx, region_valid, region_dxy
        The same for the region level ``(b, k2)``.
    images
        ``(m, 3, s, s)`` uint8 patches (rows without an image are ignored), or ``None``.
    features
        ``(m, f)`` precomputed patch features instead of ``images``, or ``None``.
    recon_mask
        Training: ``(m, t)`` tokens hidden from the encoder and reconstructed (centres only).
    drop_image, drop_expression
        Training: ``(m,)`` modality dropout of the joint view.
    stain_alpha, stain_beta
        Training: ``(m, 3)`` stain-jitter parameters (see :func:`storm_sc.models.stain_jitter`).
    statistics
        Inference: ``(m, N_STATISTICS)`` stain statistics of ``images`` already computed for the expression readout
        (:meth:`StormNetwork.patch_statistics`), which the stain path then reads instead of computing them again.

    Examples
    --------
    >>> import numpy as np
    >>> from torch.utils.data import DataLoader
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=60, n_genes=20, n_domains=2, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> inputs = model.prepare(sdata, verbose=False)
    >>> slide = st.training.PreparedSlide(st.training.TrainingSlide(sdata, name="toy"), inputs, np.zeros(60, np.int8))
    >>> dataset = st.training.ContextDataset([slide], 0, model.config, st.training.TrainingConfig(), train=True)
    >>> batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=st.training.collate)))
    >>> batch.n_centres, batch.n_obs, tuple(batch.images.shape), tuple(batch.niche_idx.shape)
    (4, 52, (52, 3, 32, 32), (4, 6))
    >>> sorted(model.network.losses(batch))
    ['context_contrastive', 'contrastive', 'loss', 'masked_expression', 'predicted_expression']
    """

    has_image: torch.Tensor
    has_expression: torch.Tensor
    gene_ids: torch.Tensor
    gene_values: torch.Tensor
    gene_valid: torch.Tensor
    centre: torch.Tensor
    niche_idx: torch.Tensor
    niche_valid: torch.Tensor
    niche_dxy: torch.Tensor
    region_idx: torch.Tensor
    region_valid: torch.Tensor
    region_dxy: torch.Tensor
    images: torch.Tensor | None = None
    features: torch.Tensor | None = None
    recon_mask: torch.Tensor | None = None
    drop_image: torch.Tensor | None = None
    drop_expression: torch.Tensor | None = None
    stain_alpha: torch.Tensor | None = None
    stain_beta: torch.Tensor | None = None
    program_ids: torch.Tensor | None = None
    program_values: torch.Tensor | None = None
    program_valid: torch.Tensor | None = None
    statistics: torch.Tensor | None = None

    @property
    def n_obs(self) -> int:
        """Number of observations ``m`` in the flat set."""
        return int(self.has_image.shape[0])

    @property
    def n_centres(self) -> int:
        """Number of centres ``b``."""
        return int(self.centre.shape[0])

    def pin_memory(self) -> StormBatch:
        """Return a copy in page-locked memory (called by a GPU ``DataLoader`` with ``pin_memory=True``)."""
        pinned = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.pin_memory() for k, v in pinned.items() if isinstance(v, torch.Tensor)})

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> StormBatch:
        """Return a copy with every tensor on ``device``."""
        moved = {
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return replace(self, **moved)
