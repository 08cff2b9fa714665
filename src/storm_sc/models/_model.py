"""``StormModel``: the network with its gene vocabulary, inference, checkpoints and training entry point."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from storm_sc._checks import check_integer
from storm_sc._random import seeded_torch
from storm_sc._settings import logger

from ._checkpoint import (
    SUFFIX,
    CheckpointError,
    IncompatibleCheckpointError,
    check_compatible,
    decode_json,
    read_checkpoint,
    read_metadata,
    storage_dtype,
    with_checkpoint_suffix,
    write_checkpoint,
)
from ._config import StormConfig
from ._inference import INFERENCE_DRAWS, check_prediction_memory, embed_inputs, image_features, predict_inputs
from ._inputs import StormInputs, prepare_inputs
from ._network import StormNetwork
from ._pretrained import reference_name, resolve_pretrained
from ._readout import (
    LEVELS_INPUT,
    PENALTY_STRATA,
    READOUT_INPUTS,
    ExpressionReadout,
    ReadoutSlide,
    check_penalty_strata,
    fit_readout,
    readout_shortfall,
)
from ._registry import get_config

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

    from storm_sc.io import SpatialInput
    from storm_sc.pp import GeneVocabulary


@dataclass(frozen=True, eq=False)
class ExpressionPrediction:
    """Expression predicted from H&E and spatial context, with per-gene uncertainty.

    Attributes
    ----------
    mean
        ``(n_obs, n_genes)`` float32 predicted log1p expression (library size 1e4).
    std
        ``(n_obs, n_genes)`` float32 predicted standard deviation on the same scale.
    genes
        Gene symbols of the columns.
    obs_names
        Observation names of the rows, when known.
    sources
        Per gene, what predicted it: ``"readout"`` (the model's ridge readout of its H&E-only embeddings) or
        ``"head"`` (the network's prediction head).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=60, n_genes=20, n_domains=2, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> pred = model.predict_expression(sdata, genes=["gene_0000", "gene_0001"], verbose=False)
    >>> pred
    ExpressionPrediction(60 obs x 2 genes)
    >>> pred.mean.shape, pred.std.shape, pred.genes, pred.sources
    ((60, 2), (60, 2), ['gene_0000', 'gene_0001'], ['head', 'head'])
    """

    mean: np.ndarray
    std: np.ndarray
    genes: list[str]
    obs_names: pd.Index | None = None
    sources: list[str] | None = None

    def __repr__(self) -> str:
        return f"ExpressionPrediction({self.mean.shape[0]} obs x {len(self.genes)} genes)"


def _as_vocabulary(vocabulary: GeneVocabulary | Sequence[str] | None) -> GeneVocabulary:
    from storm_sc.pp import GeneVocabulary

    if vocabulary is None:
        raise ValueError(
            "A STORM model needs its gene vocabulary: pass `vocabulary=st.pp.GeneVocabulary.from_genes(genes)` "
            "(e.g. the union of the training panels), or train with `st.training.pretrain`, which builds it."
        )
    if isinstance(vocabulary, GeneVocabulary):
        return vocabulary
    if isinstance(vocabulary, str):
        raise TypeError("`vocabulary` must be a GeneVocabulary or a sequence of gene symbols, not a single string.")
    return GeneVocabulary.from_genes(list(vocabulary))


class StormModel:
    """STORM: joint embeddings of H&E morphology, gene expression and spatial context.

    Parameters
    ----------
    config
        A registered architecture name (``"storm-tiny"``, ``"storm-small"``, ``"storm-base"``; see
        :func:`storm_sc.models.list_configs`) or a :class:`StormConfig`.
    vocabulary
        The model's genes (a :class:`storm_sc.pp.GeneVocabulary` or gene symbols); any panel is aligned to it.
    backbone
        A torch module encoding patches, for configs with ``morphology="module"``.
    seed
        Seed of the weight initialisation (the global torch random state is left untouched).
    pretrained_backbone
        Download pretrained weights for ``timm:``/``hf:`` backbones.

    Examples
    --------
    >>> import storm_sc as st
    >>> model = st.models.StormModel("storm-tiny", ["GFAP", "MBP", "SNAP25"], seed=0)
    >>> model
    StormModel(storm-tiny, 3 genes, ... parameters)
    """

    def __init__(
        self,
        config: str | StormConfig = "storm-small",
        vocabulary: GeneVocabulary | Sequence[str] | None = None,
        *,
        backbone: nn.Module | None = None,
        seed: int | None = 0,
        pretrained_backbone: bool = True,
    ) -> None:
        if isinstance(config, str):
            config = get_config(config)
        if not isinstance(config, StormConfig):
            raise TypeError(f"`config` must be a config name or a StormConfig, got {type(config).__name__}.")
        self._vocabulary = _as_vocabulary(vocabulary)
        self._config = config
        with seeded_torch(seed):
            self.network = StormNetwork(
                config, len(self._vocabulary), backbone=backbone, pretrained_backbone=pretrained_backbone
            )
        self.manifest: dict[str, Any] = {}
        # Closed-form linear map from H&E-only embeddings to expression (fit_expression_readout); None until fitted.
        self.readout: ExpressionReadout | None = None
        # Facts of the last training run in this session that are not reproducible (throughput, log folder).
        self.training_summary: dict[str, Any] = {}
        #: The registered name it was loaded by (:meth:`from_pretrained`), e.g. the bundled reference's; else None.
        self.pretrained_name: str | None = None

    # -- description ---------------------------------------------------------------------------------------
    @property
    def config(self) -> StormConfig:
        """The architecture."""
        return self._config

    @property
    def vocabulary(self) -> GeneVocabulary:
        """The model's genes."""
        return self._vocabulary

    @property
    def n_parameters(self) -> int:
        """Number of weights."""
        return sum(p.numel() for p in self.network.parameters())

    def __repr__(self) -> str:
        name = f"{self.pretrained_name}: {self._config.name}" if self.pretrained_name else self._config.name
        return f"StormModel({name}, {len(self._vocabulary)} genes, {self.n_parameters:,} parameters)"

    def weights_digest(self) -> str:
        """sha256 of all weights (names, shapes, bytes): equal digests mean bit-identical models.

        Returns
        -------
        Hex digest.

        Examples
        --------
        >>> import storm_sc as st
        >>> a = st.models.StormModel("storm-tiny", ["A", "B"], seed=1)
        >>> a.weights_digest() == st.models.StormModel("storm-tiny", ["A", "B"], seed=1).weights_digest()
        True
        """
        h = hashlib.sha256()
        for name, t in sorted(self.network.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # -- inputs ---------------------------------------------------------------------------------------------
    def prepare(
        self,
        data: SpatialData | AnnData | SpatialInput,
        *,
        use_image: bool = True,
        use_expression: bool = True,
        table_key: str | None = None,
        image_key: str | None = None,
        mpp: float | None = None,
        library_id: str | None = None,
        layer: str | None = None,
        gene_symbols: str | None = None,
        cache_dir: str | Path | None = None,
        num_workers: int = 0,
        stream_patches: bool = False,
        verbose: bool | None = None,
    ) -> StormInputs:
        """Resolve one slide and turn it into the model's array inputs (patches, aligned expression, neighbours).

        Parameters
        ----------
        data
            A SpatialData, an AnnData with spatial coordinates, or a SpatialInput from :func:`storm_sc.io.resolve`.
        use_image
            Read H&E patches (or the config's precomputed features) when the slide has them.
        use_expression
            Align and read the expression.
        table_key, image_key, mpp, library_id
            Passed to :func:`storm_sc.io.resolve`.
        layer, gene_symbols
            Passed to :func:`storm_sc.pp.align_genes`.
        cache_dir
            Folder for a memory-mapped patch cache (default: RAM below 2 GiB).
        num_workers
            Worker processes reading patches.
        stream_patches
            Do not read the patches now: cut them from the image whenever the model needs them. Memory then stays
            flat whatever the slide size, and one pass (``embed`` / ``predict_expression``) costs one read of the
            image; each further pass reads it again. ``False`` (the default) reads every patch once into a cache.
        verbose
            Progress bars.

        Returns
        -------
        The slide's :class:`StormInputs`; reuse it across ``embed`` / ``predict_expression`` calls.

        Examples
        --------
        >>> inputs = model.prepare(sdata)  # doctest: +SKIP
        >>> model.embed(inputs).shape  # doctest: +SKIP
        (1000, 64)
        """
        return prepare_inputs(
            data,
            config=self._config,
            vocabulary=self._vocabulary,
            use_image=use_image,
            use_expression=use_expression,
            table_key=table_key,
            image_key=image_key,
            mpp=mpp,
            library_id=library_id,
            layer=layer,
            gene_symbols=gene_symbols,
            cache_dir=cache_dir,
            num_workers=num_workers,
            stream_patches=stream_patches,
            verbose=verbose,
        )

    def _inputs(
        self, data: Any, *, use_image: bool, use_expression: bool, resolve: dict[str, Any], verbose: bool | None
    ) -> StormInputs:
        if isinstance(data, StormInputs):
            given = {k: v for k, v in resolve.items() if v is not None}
            if given:
                raise ValueError(f"{sorted(given)} only apply when `data` is not already StormInputs; drop them.")
            return data
        # One pass over the slide: patches are streamed from the image rather than cached and read back once.
        return self.prepare(
            data, use_image=use_image, use_expression=use_expression, stream_patches=True, verbose=verbose, **resolve
        )

    # -- inference ------------------------------------------------------------------------------------------
    def embed(
        self,
        data: SpatialData | AnnData | SpatialInput | StormInputs,
        *,
        level: str = "joint",
        use_image: bool = True,
        use_expression: bool = True,
        table_key: str | None = None,
        image_key: str | None = None,
        mpp: float | None = None,
        library_id: str | None = None,
        layer: str | None = None,
        gene_symbols: str | None = None,
        batch_size: int = 256,
        device: str | torch.device = "auto",
        verbose: bool | None = None,
        n_draws: int = INFERENCE_DRAWS,
    ) -> np.ndarray:
        """Embedding of every observation from whatever modalities are present, with its spatial context.

        Parameters
        ----------
        data
            One slide: SpatialData, AnnData, SpatialInput, or :class:`StormInputs` from :meth:`prepare`.
        level
            ``"joint"`` (observation + niche + region projected to ``embed_dim``), ``"levels"`` (the three levels
            side by side, ``3 * hidden_dim`` wide, unprojected), or one level alone (``"observation"``, ``"niche"``,
            ``"region"``; ``hidden_dim`` wide).
        use_image, use_expression
            Modalities to use (e.g. ``use_expression=False`` for an H&E-only embedding).
        table_key, image_key, mpp, library_id
            Passed to :func:`storm_sc.io.resolve`.
        layer, gene_symbols
            Passed to :func:`storm_sc.pp.align_genes`.
        batch_size
            Observations per forward pass.
        device
            ``"auto"`` (CUDA when available, with bf16 autocast on Ampere and newer; else CPU), ``"cpu"``,
            ``"cuda"``, ...
        verbose
            Progress bars.
        n_draws
            Draws of random gene tokens averaged into each observation's expression token, for panels larger than
            the model's gene tokens (``config.max_genes``); see :func:`storm_sc.tl.storm_embed`.

        Returns
        -------
        ``(n_obs, dim)`` float32 embeddings in table order.

        Examples
        --------
        >>> import storm_sc as st
        >>> sdata = st.datasets.toy(n_obs=60, n_genes=20, n_domains=2, seed=0)  # doctest: +SKIP
        >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names)  # doctest: +SKIP
        >>> model.embed(sdata).shape  # doctest: +SKIP
        (60, 16)
        """
        if not (use_image or use_expression):
            raise ValueError("At least one of `use_image` and `use_expression` must be True.")
        check_integer(batch_size, "batch_size")
        check_integer(n_draws, "n_draws")
        resolve = {
            "table_key": table_key,
            "image_key": image_key,
            "mpp": mpp,
            "library_id": library_id,
            "layer": layer,
            "gene_symbols": gene_symbols,
        }
        inputs = self._inputs(
            data, use_image=use_image, use_expression=use_expression, resolve=resolve, verbose=verbose
        )
        return embed_inputs(
            self.network,
            inputs,
            level=level,
            use_image=use_image,
            use_expression=use_expression,
            batch_size=batch_size,
            device=device,
            verbose=verbose,
            draws=int(n_draws),
        )

    def predict_expression(
        self,
        data: SpatialData | AnnData | SpatialInput | StormInputs,
        *,
        genes: Sequence[str] | None = None,
        source: str = "auto",
        table_key: str | None = None,
        image_key: str | None = None,
        mpp: float | None = None,
        library_id: str | None = None,
        batch_size: int = 256,
        device: str | torch.device = "auto",
        verbose: bool | None = None,
    ) -> ExpressionPrediction:
        """Expression of vocabulary genes predicted from H&E and positions only (measured expression is not read).

        Parameters
        ----------
        data
            One slide with an H&E image (or the config's patch features).
        genes
            Genes to predict (symbols or Ensembl ids in the vocabulary); default the genes the expression readout
            covers (every vocabulary gene for ``source="head"`` or a model without a readout).
        source
            ``"auto"``: genes covered by the model's expression readout (:meth:`fit_expression_readout`, fitted
            by training) from the readout, the others from the network's prediction head; ``"readout"``: the
            readout only (an error for genes it does not cover); ``"head"``: the prediction head only.
        table_key, image_key, mpp, library_id
            Passed to :func:`storm_sc.io.resolve`.
        batch_size
            Observations per forward pass.
        device
            ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        verbose
            Progress bars.

        Returns
        -------
        :class:`ExpressionPrediction` with Gaussian mean and standard deviation of log1p expression (library size
        1e4) per observation and gene.

        Examples
        --------
        >>> pred = model.predict_expression(sdata, genes=["ERBB2", "CD74"])  # doctest: +SKIP
        >>> pred.mean.shape, pred.std.shape  # doctest: +SKIP
        ((1000, 2), (1000, 2))
        """
        check_integer(batch_size, "batch_size")
        ids, columns = self._prediction_genes(genes, source)
        resolve = {"table_key": table_key, "image_key": image_key, "mpp": mpp, "library_id": library_id}
        if not isinstance(data, StormInputs):
            from storm_sc.pp._input import as_spatial_input

            data = as_spatial_input(data, caller="StormModel.predict_expression", **resolve)
            resolve = {}
            cfg = self._config
            if not (data.has_image if cfg.uses_pixels else cfg.features_key in data.table.obsm):
                what = "H&E image" if cfg.uses_pixels else f"patch features (obsm[{cfg.features_key!r}])"
                raise ValueError(
                    f"Slide {data.library_id!r} has no {what}, and expression is predicted from morphology and "
                    "positions only. Pass data with an image (`image_key=`)."
                )
        check_prediction_memory(data.n_obs, len(ids))
        inputs = self._inputs(data, use_image=True, use_expression=False, resolve=resolve, verbose=verbose)
        if not inputs.has_image:
            raise ValueError(
                f"Slide {inputs.library_id!r} has no H&E image (or patch features), and expression is predicted from "
                "morphology and positions only."
            )
        mean, std = predict_inputs(
            self.network,
            inputs,
            ids,
            readout=self.readout,
            readout_columns=columns,
            batch_size=batch_size,
            device=device,
            verbose=verbose,
        )
        symbols = self._vocabulary.symbols
        return ExpressionPrediction(
            mean=mean,
            std=std,
            genes=[symbols[i] for i in ids],
            obs_names=inputs.obs_names,
            sources=["readout" if c >= 0 else "head" for c in columns],
        )

    def _prediction_genes(self, genes: Sequence[str] | str | None, source: str) -> tuple[np.ndarray, np.ndarray]:
        """Vocabulary ids of the genes :meth:`predict_expression` returns, and their readout columns (-1: head).

        Every check of the request is made here, so that callers can validate it before any work.
        """
        if source not in ("auto", "readout", "head"):
            raise ValueError(f"`source` must be 'auto', 'readout' or 'head'; got {source!r}.")
        if genes is None:
            # The head's predictions are at chance on sections the reference never saw (mean r 0.000 on three
            # held-out Visium FFPE sections, against 0.03-0.06 for its readout): by default, the readout's genes.
            ids = np.arange(len(self._vocabulary))
            if source != "head" and self.readout is not None:
                ids = np.sort(self.readout.gene_ids)
        else:
            if isinstance(genes, str):
                genes = [genes]
            try:
                ids = np.asarray(self._vocabulary.index(list(genes)), dtype=np.int64)
            except KeyError as err:
                raise ValueError(f"Cannot predict genes outside the model's vocabulary: {err.args[0]}") from err
        columns = self._readout_columns(ids) if source != "head" else np.full(len(ids), -1)
        if source == "readout" and (columns < 0).any():
            symbols = self._vocabulary.symbols
            missing = [symbols[i] for i in ids[columns < 0]]
            raise ValueError(
                f"{len(missing)} requested genes are not covered by the model's expression readout "
                f"(e.g. {missing[:5]}); fit it with `model.fit_expression_readout(slides, genes=...)`, or pass "
                "source='auto' to predict them with the network's head."
            )
        return ids, columns

    def _readout_columns(self, ids: np.ndarray) -> np.ndarray:
        """Column of the readout predicting each vocabulary index, ``-1`` where it has none."""
        out = np.full(len(ids), -1, dtype=np.int64)
        if self.readout is None:
            return out
        lookup = np.full(len(self._vocabulary), -1, dtype=np.int64)
        lookup[self.readout.gene_ids] = np.arange(self.readout.n_genes)
        return lookup[ids]

    def fit_expression_readout(
        self,
        data: Any,
        *,
        genes: Sequence[str] | None = None,
        min_detection: float = 0.05,
        stain_statistics: bool = True,
        penalty_strata: int = PENALTY_STRATA,
        batch_size: int = 256,
        device: str | torch.device = "auto",
        verbose: bool | None = None,
    ) -> StormModel:
        """Fit the linear expression readout on slides with H&E and expression; the network is left unchanged.

        Each gene's log1p expression (library size 1e4) is regressed on the model's H&E-only embeddings
        (observation, niche and region levels) and, for models that read pixels, on the colour and stain
        statistics of each observation's patch and their mean over its niche (the embeddings lose some of what
        the statistics carry), by ridge regression in closed form. Genes are split into ``penalty_strata``
        strata by the variance of their expression, and each stratum's penalty maximises the mean per-gene
        Pearson correlation of its genes over leave-one-slide-out folds (three spatial stripes for a single
        slide): strongly varying genes are shrunk less than the many weakly varying ones. Each gene's predictive
        standard deviation is its cross-validated residual standard deviation. :meth:`predict_expression` then uses it for the genes it covers. Training
        (:func:`storm_sc.training.fit`) fits it on the training slides by default.

        Parameters
        ----------
        data
            Slides as :func:`storm_sc.training.fit` takes them (SpatialData / AnnData / SpatialInput /
            :class:`storm_sc.training.TrainingSlide`, a list of them, or a dict of name to them), or prepared
            :class:`StormInputs` (one, or a dict of name to them).
        genes
            Vocabulary genes to fit; default every gene detected in at least ``min_detection`` of the observations
            of the slides that measure it. A readout fitted for the few genes a study is about chooses its penalty
            for them, which suits strongly varying genes better than one fitted over thousands (her2st, leave one
            section out, the 50 most variable genes: mean r 0.200 -> 0.219; ``benchmarks/README.md``).
        min_detection
            Detection threshold of the default gene set.
        stain_statistics
            Also read the patches' stain (and, for models with ``texture_statistics``, texture) statistics and
            their niche mean (models that read pixels; ignored for patch features).
        penalty_strata
            Strata of gene variance with a penalty each (1: one penalty for all genes, as readouts fitted before
            2026-12-06); strata keep at least 50 genes each.
        batch_size, device, verbose
            As in :meth:`embed`.

        Returns
        -------
        This model, with ``model.readout`` set (replacing any previous readout).

        Examples
        --------
        >>> model.fit_expression_readout([sdata_a, sdata_b])  # doctest: +SKIP
        StormModel(storm-tiny, ...)
        >>> model.readout  # doctest: +SKIP
        ExpressionReadout(2000 genes, 2 slides, mean cv r = 0.215)
        """
        if not 0 <= min_detection < 1:
            raise ValueError(f"`min_detection` must be in [0, 1); got {min_detection!r}.")
        check_penalty_strata(penalty_strata)
        check_integer(batch_size, "batch_size")
        gene_ids = None
        if genes is not None:
            try:
                gene_ids = np.asarray(self._vocabulary.index([genes] if isinstance(genes, str) else list(genes)))
            except KeyError as err:
                raise ValueError(f"Cannot fit genes outside the model's vocabulary: {err.args[0]}") from err
        if isinstance(data, StormInputs):
            data = {data.library_id: data}
        if isinstance(data, dict) and data and all(isinstance(v, StormInputs) for v in data.values()):
            named = list(data.items())
        else:
            from storm_sc.training._slides import as_slides, slide_inputs

            named = [(s.name, slide_inputs(self, s, stream_patches=True, verbose=verbose)) for s in as_slides(data)]
        prepared = []
        for name, inputs in named:
            if not inputs.has_image or inputs.expression is None:
                raise ValueError(
                    f"Slide {name!r} lacks H&E (or patch features) or expression; the readout is fitted on slides "
                    "with both."
                )
            prepared.append((name, inputs))
        # before the embeddings are computed, the costly part
        why = readout_shortfall([inputs.centers_um[:, 0] for _, inputs in prepared])
        if why is not None:
            raise ValueError(f"Cannot fit the expression readout: {why}.")
        inputs_read = READOUT_INPUTS if stain_statistics and self._config.uses_pixels else (LEVELS_INPUT,)
        slides = [
            ReadoutSlide(
                name=name,
                features=image_features(
                    self.network,
                    inputs,
                    readout_inputs=inputs_read,
                    batch_size=batch_size,
                    device=device,
                    verbose=verbose,
                ),
                expression=inputs.expression,
                gene_index=inputs.gene_index,
                x_um=inputs.centers_um[:, 0],
            )
            for name, inputs in prepared
        ]
        self.readout = fit_readout(
            slides,
            len(self._vocabulary),
            genes=gene_ids,
            min_detection=min_detection,
            inputs=inputs_read,
            penalty_strata=penalty_strata,
        )
        self.pretrained_name = None  # its predictions are no longer the release's
        return self

    # -- training -------------------------------------------------------------------------------------------
    def fit(self, data: Any, **kwargs: Any) -> StormModel:
        """Train (or fine-tune) this model in place; see :func:`storm_sc.training.fit` for the options.

        Parameters
        ----------
        data
            Slides: SpatialData / AnnData / SpatialInput, :class:`storm_sc.training.TrainingSlide`, or a dict of
            name to either.
        **kwargs
            Options of :func:`storm_sc.training.fit` (``max_epochs``, ``batch_size``, ``seed``, ``devices`` ...).

        Returns
        -------
        This model, trained.

        Examples
        --------
        >>> model.fit([sdata], max_epochs=3, seed=0)  # doctest: +SKIP
        StormModel(storm-tiny, ...)
        """
        from storm_sc.training import fit

        return fit(self, data, **kwargs)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, overwrite: bool = False, dtype: str = "float32") -> Path:
        """Write the model to one ``.safetensors`` file (weights, config, vocabulary, version, data manifest).

        Parameters
        ----------
        path
            Target file; ``.safetensors`` is appended when it has no suffix.
        overwrite
            Replace an existing file.
        dtype
            Storage precision of floating-point weights: ``"float32"`` (bit-exact), or ``"float16"`` /
            ``"bfloat16"`` (half the size; loaded back as float32).

        Returns
        -------
        The path written.

        Examples
        --------
        >>> model.save("storm.safetensors")  # doctest: +SKIP
        PosixPath('storm.safetensors')
        """
        from storm_sc import __version__

        store = storage_dtype(dtype)
        state = dict(self.network.state_dict())
        if self.readout is not None:
            state.update(self.readout.state_dict())
        tensors = {name: (t.to(store) if t.is_floating_point() else t) for name, t in state.items()}
        metadata = {
            "storm_sc_version": __version__,
            "torch_version": torch.__version__,
            "storage_dtype": dtype,
            "config": json.dumps(self._config.to_dict(), sort_keys=True),
            "vocabulary": json.dumps(self._vocabulary.to_dict(), sort_keys=True),
            "manifest": json.dumps(self.manifest, sort_keys=True, default=str),
        }
        if self.readout is not None:
            metadata["readout"] = json.dumps(self.readout.describe(), sort_keys=True)
        written = write_checkpoint(path, tensors, metadata, overwrite=overwrite)
        logger.info("Saved %r to %s (%.2f MB).", self, written, written.stat().st_size / 1e6)
        return written

    @classmethod
    def load(cls, path: str | Path, *, backbone: nn.Module | None = None) -> StormModel:
        """Read a model written by :meth:`save`, verifying its integrity and compatibility.

        Parameters
        ----------
        path
            The ``.safetensors`` checkpoint.
        backbone
            The custom morphology module, for configs with ``morphology="module"``.

        Returns
        -------
        The model (on the CPU, in evaluation mode).

        Raises
        ------
        CheckpointError
            Truncated, not a checkpoint, or modified after saving (content hash mismatch).
        IncompatibleCheckpointError
            Written by a newer storm_sc, or config / vocabulary / weights that do not fit together.

        Examples
        --------
        >>> model = st.models.StormModel.load("storm.safetensors")  # doctest: +SKIP
        """
        from storm_sc.pp import GeneVocabulary

        tensors, metadata = read_checkpoint(path)
        try:
            config = StormConfig.from_dict(decode_json(path, metadata, "config"))
        except (TypeError, ValueError) as err:
            if isinstance(err, CheckpointError):
                raise
            raise IncompatibleCheckpointError(f"{path}: its model config cannot be used here: {err}") from err
        try:
            vocabulary = GeneVocabulary.from_dict(decode_json(path, metadata, "vocabulary"))
        except (TypeError, ValueError) as err:
            if isinstance(err, CheckpointError):
                raise
            raise IncompatibleCheckpointError(f"{path}: its gene vocabulary cannot be read: {err}") from err
        model = cls(config, vocabulary, backbone=backbone, seed=None, pretrained_backbone=False)
        header = decode_json(path, metadata, "readout") if "readout" in metadata else None
        model.readout = ExpressionReadout.pop_from(tensors, header)
        if model.readout is not None and (
            model.readout.gene_ids.size and int(model.readout.gene_ids.max()) >= len(vocabulary)
        ):
            raise IncompatibleCheckpointError(f"{path}: its expression readout names genes outside its vocabulary.")
        _load_weights(model.network, tensors, path, n_genes=len(vocabulary))
        model.manifest = decode_json(path, metadata, "manifest") if "manifest" in metadata else {}
        model.network.eval()
        return model

    @classmethod
    def inspect(cls, path: str | Path) -> dict[str, Any]:
        """Read the header of a checkpoint (version, config, manifest, vocabulary size) without its weights.

        Parameters
        ----------
        path
            The ``.safetensors`` checkpoint.

        Returns
        -------
        ``{"storm_sc_version", "storage_dtype", "config", "manifest", "n_genes", ...}``.

        Examples
        --------
        >>> st.models.StormModel.inspect("storm.safetensors")["config"]["name"]  # doctest: +SKIP
        'storm-small'
        """
        metadata = read_metadata(path, compatible=False)
        try:
            check_compatible(Path(path), metadata)
        except IncompatibleCheckpointError as err:
            # Its header says what it is (and which storm_sc to install); only loading it needs that release.
            logger.warning("%s Showing its header; loading it needs that release.", err)
        out: dict[str, Any] = {
            k: v for k, v in metadata.items() if k not in ("config", "vocabulary", "manifest", "readout")
        }
        out["readout"] = decode_json(path, metadata, "readout") if "readout" in metadata else None
        out["config"] = decode_json(path, metadata, "config")
        out["manifest"] = decode_json(path, metadata, "manifest") if "manifest" in metadata else {}
        out["n_genes"] = len(decode_json(path, metadata, "vocabulary").get("symbols", []))
        return out

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path | None = None, *, backbone: nn.Module | None = None, verbose: bool | None = None
    ) -> StormModel:
        """Load a pretrained model: a local checkpoint file, or a registered name (bundled, cached or downloaded).

        Parameters
        ----------
        name_or_path
            Path to a ``.safetensors`` checkpoint; else a name from :func:`storm_sc.models.list_pretrained`
            (looked for in the package, then in ``<st.settings.data_dir>/models``, then downloaded there; sha256
            verified); ``None`` for the reference checkpoint shipped with storm_sc.
        backbone
            The custom morphology module, for configs with ``morphology="module"``.
        verbose
            Download progress bar.

        Returns
        -------
        The model.

        Examples
        --------
        >>> model = st.models.StormModel.from_pretrained()  # doctest: +SKIP
        >>> model = st.models.StormModel.from_pretrained("runs/toy/model.safetensors")  # doctest: +SKIP
        """
        if name_or_path is not None:
            path = with_checkpoint_suffix(Path(name_or_path).expanduser())
            if path.exists():
                return cls.load(path, backbone=backbone)
            if str(name_or_path).endswith(SUFFIX) or path.parent != Path("."):
                raise FileNotFoundError(f"No checkpoint file at {path}.")
        name = None if name_or_path is None else str(name_or_path)
        model = cls.load(resolve_pretrained(name, verbose=verbose), backbone=backbone)
        model.pretrained_name = name or reference_name()
        return model


def _load_weights(network: StormNetwork, tensors: dict[str, torch.Tensor], path: str | Path, *, n_genes: int) -> None:
    expected = network.state_dict()
    emb = tensors.get("expression.gene_embedding.weight")
    if emb is not None and emb.shape[0] != n_genes:
        raise IncompatibleCheckpointError(
            f"{path}: the gene vocabulary lists {n_genes} genes but the weights embed {emb.shape[0]}; the header and "
            "weights come from different models."
        )
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(expected[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}")
        if wrong:
            details.append(
                "shape mismatch "
                + ", ".join(f"{k}: {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:5])
            )
        raise IncompatibleCheckpointError(
            f"{path}: the weights do not fit the architecture described by its config ({'; '.join(details)})."
        )
    network.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
