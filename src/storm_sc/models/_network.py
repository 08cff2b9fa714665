"""The STORM network: encoders, fusion, spatial context and heads, as one torch module."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ._augment import stain_jitter
from ._batch import StormBatch
from ._config import StormConfig
from ._expression import ExpressionEncoder
from ._fusion import ModalityFusion
from ._heads import GaussianGeneDecoder, ProjectionHead
from ._losses import gaussian_nll, info_nce
from ._morphology import ImageNormalizer, build_morphology_encoder
from ._spatial import SpatialContextEncoder
from ._stain_statistics import StainStatisticsEncoder, n_patch_statistics, patch_statistics

LOSS_NAMES = ("contrastive", "context_contrastive", "masked_expression", "predicted_expression")
# Share of neighbours each context-contrastive view keeps, drawn independently per view (see StormNetwork.losses).
CONTEXT_VIEW_KEEP = 0.5


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four objectives in the total loss.

    Attributes
    ----------
    contrastive
        InfoNCE between the morphology and expression tokens of the same observation.
    context_contrastive
        InfoNCE between the image-only and the expression-only contextual embeddings of the same centre: it
        aligns what the model says about a neighbourhood from H&E alone with what it says from expression alone.
    masked_expression
        Gaussian NLL of hidden gene tokens, reconstructed from the joint (all modalities, context) embedding.
    predicted_expression
        Gaussian NLL of the measured genes predicted from H&E and spatial context only.

    Examples
    --------
    >>> import storm_sc as st
    >>> config = st.training.TrainingConfig(masked_expression_weight=2.0, context_contrastive_weight=0.0)
    >>> config.loss_weights
    LossWeights(contrastive=1.0, context_contrastive=0.0, masked_expression=2.0, predicted_expression=1.0)
    """

    contrastive: float = 1.0
    context_contrastive: float = 1.0
    masked_expression: float = 1.0
    predicted_expression: float = 1.0


# Gathers a tensor from every data-parallel process with gradients: (n, d) -> (world, n, d).
Gather = Callable[[torch.Tensor], torch.Tensor]


class StormNetwork(nn.Module):
    """All trainable parts of STORM; :class:`storm_sc.models.StormModel` wraps it with vocabulary and I/O.

    Parameters
    ----------
    config
        The architecture.
    n_genes
        Size of the gene vocabulary.
    backbone
        The morphology module when ``config.morphology == "module"``.
    pretrained_backbone
        Download pretrained weights for ``timm:``/``hf:`` backbones.

    Examples
    --------
    >>> import torch
    >>> import storm_sc as st
    >>> model = st.models.StormModel("storm-tiny", ["GFAP", "MBP", "SNAP25"], seed=0)
    >>> network = model.network
    >>> network.n_genes, tuple(network.gene_embedding.shape)
    (3, (3, 16))
    >>> patches = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    >>> with torch.no_grad():
    ...     network.encode_morphology(patches).shape
    torch.Size([2, 32])
    """

    def __init__(
        self,
        config: StormConfig,
        n_genes: int,
        *,
        backbone: nn.Module | None = None,
        pretrained_backbone: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_dim
        self.image_norm = ImageNormalizer(config.image_mean, config.image_std, config.image_size)
        self.morphology = build_morphology_encoder(config, backbone=backbone, pretrained_backbone=pretrained_backbone)
        use_stats = config.stain_statistics and config.uses_pixels
        self.stain_statistics = StainStatisticsEncoder(d, texture=config.texture_statistics) if use_stats else None
        self.expression = ExpressionEncoder(config, n_genes)
        self.fusion = ModalityFusion(d)
        self.context = SpatialContextEncoder(config)
        self.image_projection = ProjectionHead(d, config.projection_dim)
        self.expression_projection = ProjectionHead(d, config.projection_dim)
        self.image_context_projection = ProjectionHead(config.embed_dim, config.projection_dim)
        self.expression_context_projection = ProjectionHead(config.embed_dim, config.projection_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        decoder = (config.embed_dim, config.gene_dim, d, n_genes, config.logvar_min, config.logvar_max)
        self.reconstruction_head = GaussianGeneDecoder(*decoder)
        self.prediction_head = GaussianGeneDecoder(*decoder)

    @property
    def n_genes(self) -> int:
        """Size of the gene vocabulary."""
        return self.expression.n_genes

    @property
    def gene_embedding(self) -> torch.Tensor:
        """``(n_genes, gene_dim)`` learned gene embeddings (shared by the encoder and the decoders)."""
        return self.expression.gene_embedding.weight

    # -- per-observation encoders ------------------------------------------------------------------------------
    def encode_morphology(
        self,
        images: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        *,
        statistics: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(n, 3, s, s)`` uint8 patches, or ``(n, f)`` features -> ``(n, hidden_dim)``.

        ``statistics``: :meth:`patch_statistics` of the same ``images``, when the caller needs them anyway (the
        expression readout reads them); the stain path then reads them instead of computing them twice.
        """
        if self.config.uses_pixels:
            if images is None:
                raise ValueError("This model encodes H&E patches; `images` is required.")
            unit = self.image_norm.unit(images)
            z = self.morphology(self.image_norm.normalise(unit))
            if self.stain_statistics is None:
                return z
            if statistics is None:
                statistics = patch_statistics(unit, texture=self.config.texture_statistics)
            return z + self.stain_statistics.encode(statistics)
        if features is None:
            raise ValueError(f"This model reads precomputed patch features (.obsm[{self.config.features_key!r}]).")
        return self.morphology(features)

    @property
    def n_statistics(self) -> int:
        """Width of :meth:`patch_statistics`."""
        return n_patch_statistics(texture=self.config.texture_statistics)

    def patch_statistics(self, images: torch.Tensor) -> torch.Tensor:
        """``(n, 3, s, s)`` uint8 patches -> ``(n, n_statistics)`` colour, stain (and texture) statistics.

        Computed as the stain path reads them, at the encoder's input size; the expression readout may read them.
        """
        return patch_statistics(self.image_norm.unit(images), texture=self.config.texture_statistics)

    def encode_expression(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        valid: torch.Tensor,
        program: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``(n, t)`` gene tokens (and ``(n, p)`` program inputs) -> ``(n, hidden_dim)``."""
        return self.expression(gene_ids, values, valid, program)

    @staticmethod
    def _program_rows(batch: StormBatch, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        if batch.program_ids is None or batch.program_values is None or batch.program_valid is None:
            return None
        return batch.program_ids[rows], batch.program_values[rows], batch.program_valid[rows]

    def _morphology_tokens(self, batch: StormBatch, rows: torch.Tensor, *, augment: bool) -> torch.Tensor:
        if self.config.uses_pixels:
            images = batch.images[rows] if batch.images is not None else None
            jitter = images is not None and augment and batch.stain_alpha is not None
            if jitter:
                images = stain_jitter(images, batch.stain_alpha[rows], batch.stain_beta[rows])
            # Statistics computed before a stain jitter would describe other pixels.
            stats = batch.statistics[rows] if batch.statistics is not None and not jitter else None
            return self.encode_morphology(images=images, statistics=stats)
        return self.encode_morphology(features=batch.features[rows] if batch.features is not None else None)

    def observation_tokens(
        self, batch: StormBatch, *, augment: bool = False, context_grad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Morphology and expression tokens of every observation of ``batch`` (zeros where absent).

        Encoders run only on the rows that have the modality. With ``context_grad=False`` the rows that are not
        centres (the neighbours) are encoded without gradients: the encoders then learn from the centres only,
        which cuts the cost of a training step about threefold while the spatial blocks still learn from the
        neighbours' tokens. Returns ``(z_image, z_expression, expression_present)``.
        """
        is_centre = None
        if not context_grad:
            is_centre = torch.zeros(batch.n_obs, dtype=torch.bool, device=batch.has_image.device)
            is_centre[batch.centre] = True
        image_ok = batch.images is not None or batch.features is not None
        z_image = self._scatter(
            lambda r: self._morphology_tokens(batch, r, augment=augment),
            batch.has_image,
            is_centre,
            batch,
            can_run=image_ok,
        )

        valid = batch.gene_valid
        present = batch.has_expression & valid.any(dim=1)
        z_expr = self._scatter(
            lambda r: self.encode_expression(
                batch.gene_ids[r], batch.gene_values[r], valid[r], self._program_rows(batch, r)
            ),
            present,
            is_centre,
            batch,
            can_run=batch.n_obs > 0,
        )
        return z_image, z_expr, present

    def _scatter(
        self,
        encode: Callable[[torch.Tensor], torch.Tensor],
        present: torch.Tensor,
        is_centre: torch.Tensor | None,
        batch: StormBatch,
        *,
        can_run: bool,
    ) -> torch.Tensor:
        """``encode(rows)`` of the ``present`` rows placed into an ``(m, hidden_dim)`` zero matrix.

        When no centre has the modality during training, the encoder still runs on one row with a zero-weighted
        output: every parameter then receives a (zero) gradient, which data-parallel training requires.
        """
        m, d = batch.n_obs, self.config.hidden_dim
        device = present.device
        out = torch.zeros(m, d, device=device)
        if is_centre is None:
            with_grad, without = present, None
        else:
            with_grad, without = present & is_centre, present & ~is_centre
        rows = torch.nonzero(with_grad, as_tuple=True)[0]
        if len(rows):
            enc = encode(rows)
            out = out.to(enc.dtype).index_copy(0, rows, enc)
        elif can_run and torch.is_grad_enabled() and self.training:
            out = out + 0.0 * encode(torch.zeros(1, dtype=torch.long, device=device)).float().sum()
        if without is not None:
            rows = torch.nonzero(without, as_tuple=True)[0]
            if len(rows):
                with torch.no_grad():
                    enc = encode(rows)
                out = out.index_copy(0, rows, enc.to(out.dtype))
        return out

    def contextualise(self, tokens: torch.Tensor, batch: StormBatch) -> dict[str, torch.Tensor]:
        """Spatial context of ``batch.centre`` given fused ``(m, hidden_dim)`` tokens; see SpatialContextEncoder."""
        return self.context(
            tokens,
            batch.centre,
            batch.niche_idx,
            batch.niche_valid,
            batch.niche_dxy,
            batch.region_idx,
            batch.region_valid,
            batch.region_dxy,
        )

    def embed_batch(
        self, batch: StormBatch, *, use_image: bool = True, use_expression: bool = True
    ) -> dict[str, torch.Tensor]:
        """Embeddings of the centres of ``batch`` from the chosen modalities (inference, no dropout)."""
        z_img, z_expr, expr_present = self.observation_tokens(batch)
        tokens = self.fusion(z_img, batch.has_image & use_image, z_expr, expr_present & use_expression)
        return self.contextualise(tokens, batch)

    # -- training objectives -----------------------------------------------------------------------------------
    def losses(
        self,
        batch: StormBatch,
        *,
        weights: LossWeights = LossWeights(),
        augment: bool = True,
        context_grad: bool = False,
        gather: Gather | None = None,
        rank: int = 0,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the four objectives and their weighted sum (``"loss"``) on one training batch.

        Parameters
        ----------
        batch
            Observations, centres and neighbourhoods, with ``recon_mask`` and the dropout flags set.
        weights
            Weights of the objectives.
        augment
            Apply the batch's stain jitter to the patches.
        context_grad
            Back-propagate into the encoders through the neighbours too (about three times slower); by default
            the encoders learn from the centres and the context blocks from all tokens.
        gather
            Gathers tensors across data-parallel processes so that the contrastive loss sees every process's
            negatives; ``None`` uses the local batch only.
        rank
            This process's index among those gathered.
        generator
            Draws the neighbours each contrastive view keeps (on its own device, then moved to the batch's);
            ``None`` uses torch's global random state on the batch's device. Validation passes one seeded per batch, so that the held-out loss that picks the best
            epoch does not change with the draw.

        Returns
        -------
        ``{"loss", "contrastive", "context_contrastive", "masked_expression", "predicted_expression"}`` scalars.
        """
        z_img, z_expr, expr_present = self.observation_tokens(batch, augment=augment, context_grad=context_grad)
        c = batch.centre

        # Joint view: every modality that survives dropout, with context; reconstructs the hidden tokens. Only
        # this view sees the centres with tokens hidden: the contrastive views compare whole observations.
        z_joint, joint_present = z_expr, expr_present
        if batch.recon_mask is not None:
            visible = batch.gene_valid[c] & ~batch.recon_mask[c]
            program = self._program_rows(batch, c)
            if program is not None:
                # Hidden tokens leave the program path too, or their reconstruction could read them from there.
                p_ids, p_values, p_valid = program
                hidden_ids = torch.where(batch.recon_mask[c], batch.gene_ids[c], -1)
                leaked = (p_ids.unsqueeze(-1) == hidden_ids.unsqueeze(1)).any(dim=-1)
                program = (p_ids, p_values, p_valid & ~leaked)
            hidden_enc = self.encode_expression(batch.gene_ids[c], batch.gene_values[c], visible, program)
            z_joint = z_expr.index_copy(0, c, hidden_enc.to(z_expr.dtype))
            joint_present = expr_present.clone()
            joint_present[c] = expr_present[c] & visible.any(dim=1)
        img_on = batch.has_image if batch.drop_image is None else batch.has_image & ~batch.drop_image
        expr_on = joint_present if batch.drop_expression is None else joint_present & ~batch.drop_expression
        joint = self.contextualise(self.fusion(z_img, img_on, z_joint, expr_on), batch)["joint"]
        ids, values = batch.gene_ids[c], batch.gene_values[c]
        target = batch.gene_valid[c] & batch.has_expression[c].unsqueeze(-1)
        hidden = target & batch.recon_mask[c] if batch.recon_mask is not None else torch.zeros_like(target)
        mean, logvar = self.reconstruction_head(joint, self.gene_embedding, ids)
        masked = gaussian_nll(mean, logvar, values, hidden)

        # The image-only and expression-only views are contrasted at the context level. Given the same neighbours at
        # the same offsets, the context blocks can match the two views by the geometry of the neighbourhood alone
        # (a fingerprint of positions that says nothing about the tissue, and then dominates the embedding); each
        # view therefore sees its own random half of the neighbours, so only what the neighbours contain can pair.
        image_view, expression_view = self._neighbour_subset(batch, generator), self._neighbour_subset(batch, generator)

        # Image-only view: H&E of the centre and its neighbours plus positions, no expression anywhere.
        no_expr = torch.zeros_like(expr_present)
        image_only = self.contextualise(self.fusion(z_img, batch.has_image, z_expr, no_expr), image_view)["joint"]
        mean, logvar = self.prediction_head(image_only, self.gene_embedding, ids)
        predicted = gaussian_nll(mean, logvar, values, target & batch.has_image[c].unsqueeze(-1))

        # Expression-only view, for the context-level contrast with the image-only view.
        no_img = torch.zeros_like(batch.has_image)
        expression_only = self.contextualise(self.fusion(z_img, no_img, z_expr, expr_present), expression_view)["joint"]

        paired = batch.has_image[c] & expr_present[c]
        if batch.n_centres >= 2:
            contrastive = self._contrastive(
                self.image_projection(z_img[c]), self.expression_projection(z_expr[c]), paired, gather, rank
            )
            context = self._contrastive(
                self.image_context_projection(image_only),
                self.expression_context_projection(expression_only),
                paired,
                gather,
                rank,
            )
        else:  # batch normalisation needs two rows; keep every parameter in the graph for data parallelism
            heads = [
                self.image_projection,
                self.expression_projection,
                self.image_context_projection,
                self.expression_context_projection,
            ]
            zero = sum(p.sum() for h in heads for p in h.parameters()) * 0.0 + self.logit_scale * 0.0
            contrastive = context = zero

        total = (
            weights.contrastive * contrastive
            + weights.context_contrastive * context
            + weights.masked_expression * masked
            + weights.predicted_expression * predicted
        )
        return {
            "loss": total,
            "contrastive": contrastive,
            "context_contrastive": context,
            "masked_expression": masked,
            "predicted_expression": predicted,
        }

    @staticmethod
    def _neighbour_subset(batch: StormBatch, generator: torch.Generator | None = None) -> StormBatch:
        """``batch`` with each niche and region neighbour kept with probability ``CONTEXT_VIEW_KEEP``."""
        device = batch.niche_valid.device
        drawn_on = device if generator is None else generator.device

        def keep(shape: torch.Size) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=drawn_on).to(device) < CONTEXT_VIEW_KEEP

        keep_niche, keep_region = keep(batch.niche_valid.shape), keep(batch.region_valid.shape)
        return replace(batch, niche_valid=batch.niche_valid & keep_niche, region_valid=batch.region_valid & keep_region)

    def _contrastive(
        self, pa: torch.Tensor, pb: torch.Tensor, paired: torch.Tensor, gather: Gather | None, rank: int
    ) -> torch.Tensor:
        if gather is None:
            return info_nce(pa[paired], pb[paired], self.logit_scale)
        # Processes have equal batch sizes but different pair counts: gather padded rows and the pairing mask.
        a_all, b_all = gather(pa), gather(pb)
        keep = gather(paired.to(torch.float32)).reshape(-1) > 0.5
        a_all, b_all = a_all.reshape(-1, pa.shape[-1]), b_all.reshape(-1, pb.shape[-1])
        offset = int(keep[: rank * pa.shape[0]].sum())
        return info_nce(pa[paired], pb[paired], self.logit_scale, a_all=a_all[keep], b_all=b_all[keep], offset=offset)
