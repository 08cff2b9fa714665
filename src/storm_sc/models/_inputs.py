"""Array-level inputs of one slide (patches, aligned expression, neighbour lists), and building them from data."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from storm_sc._settings import logger, settings

from ._config import StormConfig
from ._neighbors import niche_neighbors, region_neighbors
from ._programs import SlidePrograms, program_arrays, slide_programs
from ._tokens import draw_weights, gene_tokens

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

    from storm_sc.io import SpatialInput
    from storm_sc.pp import GeneVocabulary, PatchDataset

# Candidate region neighbours stored per observation, as a multiple of the region_k attended to.
REGION_POOL_FACTOR = 4
# Patch caches larger than this go to a temporary memory-mapped file instead of RAM.
MEMMAP_ABOVE_GIB = 2.0
# Patches read per block when StreamedPatches are turned into one array.
_STREAM_BATCH = 256


class StreamedPatches:
    """The ``(n, 3, s, s)`` uint8 patches of a slide, cut from its image only when rows are indexed.

    Stands in for a patch array in :class:`StormInputs` when a slide is read once (inference): nothing is cached,
    so memory does not grow with the number of observations and no disk is used. Indexing with an integer, a
    slice, an integer array or a boolean mask reads those rows (one block read per group of neighbouring rows,
    see :func:`storm_sc.pp._pyramid.read_windows`); ``np.asarray`` reads them all.

    Parameters
    ----------
    dataset
        The slide's :class:`storm_sc.pp.PatchDataset`.

    Examples
    --------
    >>> patches = StreamedPatches(st.pp.patch_dataset(sdata, patch_um=112, patch_px=32))  # doctest: +SKIP
    >>> patches[[0, 5]].shape  # doctest: +SKIP
    (2, 3, 32, 32)
    """

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, dataset: PatchDataset) -> None:
        self.dataset = dataset
        self.shape = (len(dataset), 3, dataset.patch_px, dataset.patch_px)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"StreamedPatches({self.dataset!r})"

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):
            if len(index) > 1:
                return self[index[0]][(slice(None), *index[1:])]
            index = index[0]
        if isinstance(index, int | np.integer):
            return self.dataset.read([int(index)])[0]
        rows = np.arange(len(self))[index]
        return self.dataset.read(rows.reshape(-1)).reshape((*rows.shape, *self.shape[1:]))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.uint8)
        for rows in self.dataset.reading_batches(_STREAM_BATCH):
            out[rows] = self.dataset.read(rows)
        return out if dtype is None else out.astype(dtype, copy=False)


@dataclass(eq=False)
class StormInputs:
    """Everything the model reads about one slide, as arrays; built by :meth:`StormModel.prepare`.

    Attributes
    ----------
    centers_um
        ``(n, 2)`` float64 positions in microns.
    niche_neighbors
        ``(n, k1)`` int64 nearest neighbours (``-1`` padded).
    region_neighbors
        ``(n, pool)`` int64 candidate region neighbours within the region radius (``-1`` padded).
    patches
        ``(n, 3, s, s)`` uint8 H&E patches: an array, a memory map, or :class:`StreamedPatches` (read from the
        image whenever rows are indexed); or ``None``.
    features
        ``(n, f)`` float32 precomputed patch features, or ``None``.
    expression
        ``(n, n_panel)`` float32 CSR log1p expression (library size 1e4), or ``None``.
    gene_index
        ``(n_panel,)`` vocabulary index of each expression column.
    obs_names
        Observation names in table order.
    library_id
        Name of the slide.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=60, n_genes=20, n_domains=2, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> inputs = model.prepare(sdata, verbose=False)
    >>> inputs
    StormInputs('toy': 60 obs, patches 32 px, 20 genes)
    >>> inputs.niche_neighbors.shape, inputs.patches.shape, inputs.expression.shape
    ((60, 6), (60, 3, 32, 32), (60, 20))
    >>> model.embed(inputs, verbose=False).shape
    (60, 16)
    """

    centers_um: np.ndarray
    niche_neighbors: np.ndarray
    region_neighbors: np.ndarray
    patches: np.ndarray | StreamedPatches | None = None
    features: np.ndarray | None = None
    expression: sparse.csr_matrix | None = None
    gene_index: np.ndarray | None = None
    obs_names: pd.Index | None = None
    library_id: str = "slide"

    def __post_init__(self) -> None:
        n = len(self.centers_um)
        problems = []
        if np.shape(self.centers_um) != (n, 2) or not np.isfinite(self.centers_um).all():
            problems.append(f"`centers_um` must be a finite (n, 2) array; got shape {np.shape(self.centers_um)}")
        for name in ("niche_neighbors", "region_neighbors"):
            arr = getattr(self, name)
            if arr.ndim != 2 or arr.shape[0] != n or (arr.size and (arr.min() < -1 or arr.max() >= n)):
                problems.append(f"`{name}` must be (n, k) indices in [-1, n); got shape {arr.shape}")
        if self.patches is not None and (
            self.patches.ndim != 4 or self.patches.shape[:2] != (n, 3) or self.patches.dtype != np.uint8
        ):
            problems.append(f"`patches` must be (n, 3, s, s) uint8; got {self.patches.shape} {self.patches.dtype}")
        if self.features is not None and (self.features.ndim != 2 or self.features.shape[0] != n):
            problems.append(f"`features` must be (n, f); got {self.features.shape}")
        if (self.expression is None) != (self.gene_index is None):
            problems.append("`expression` and `gene_index` go together")
        elif self.expression is not None:
            if not sparse.isspmatrix_csr(self.expression) or self.expression.shape[0] != n:
                problems.append(
                    f"`expression` must be an (n, n_panel) CSR matrix; got {type(self.expression).__name__}"
                )
            elif len(self.gene_index) != self.expression.shape[1]:
                problems.append("`gene_index` needs one vocabulary index per expression column")
        if problems:
            raise ValueError(f"Invalid StormInputs for slide {self.library_id!r}: " + "; ".join(problems) + ".")

    @property
    def n_obs(self) -> int:
        """Number of observations."""
        return len(self.centers_um)

    @property
    def has_image(self) -> bool:
        """Whether patches or patch features are present."""
        return self.patches is not None or self.features is not None

    def token_weights(self) -> np.ndarray | None:
        """Draw probabilities of the random gene tokens (:func:`storm_sc.models._tokens.draw_weights`), cached."""
        if self.expression is None or self.expression.shape[1] <= 0:
            return None
        cached = self.__dict__.get("_token_weights")
        if cached is None or len(cached) != self.expression.shape[1]:
            cached = self.__dict__["_token_weights"] = draw_weights(self.expression)
        return cached

    def programs(self, n_genes: int) -> SlidePrograms | None:
        """The slide's gene-program columns and standardisation (:func:`storm_sc.models._programs.slide_programs`)."""
        if self.expression is None or self.expression.shape[1] <= 0 or n_genes <= 0:
            return None
        cache = self.__dict__.setdefault("_programs", {})
        if n_genes not in cache:
            cache[n_genes] = slide_programs(self.expression, n_genes)
        return cache[n_genes]

    @property
    def has_expression(self) -> bool:
        """Whether expression is present."""
        return self.expression is not None

    def __repr__(self) -> str:
        parts = [f"{self.n_obs} obs"]
        if self.patches is not None:
            parts.append(f"patches {self.patches.shape[-1]} px")
        if self.features is not None:
            parts.append(f"features {self.features.shape[1]}-d")
        if self.expression is not None:
            parts.append(f"{self.expression.shape[1]} genes")
        return f"StormInputs({self.library_id!r}: {', '.join(parts)})"

    @classmethod
    def from_arrays(
        cls,
        centers_um: np.ndarray,
        *,
        config: StormConfig,
        patches: np.ndarray | None = None,
        features: np.ndarray | None = None,
        expression: np.ndarray | sparse.spmatrix | None = None,
        gene_index: np.ndarray | None = None,
        obs_names: pd.Index | None = None,
        library_id: str = "slide",
    ) -> StormInputs:
        """Build inputs from plain arrays, computing the neighbour lists from the positions.

        Parameters
        ----------
        centers_um
            ``(n, 2)`` positions in microns.
        config
            The model architecture (neighbour counts and region radius).
        patches, features
            H&E patches ``(n, 3, s, s)`` uint8 or precomputed features ``(n, f)``.
        expression, gene_index
            ``(n, n_panel)`` log1p expression on the model's scale and the vocabulary index of each column
            (as in :class:`storm_sc.pp.AlignedExpression`).
        obs_names
            Observation names.
        library_id
            Slide name.

        Returns
        -------
        The inputs.

        Examples
        --------
        >>> import numpy as np
        >>> from storm_sc.models import StormInputs, get_config
        >>> xy = np.random.default_rng(0).uniform(0, 1000, (20, 2))
        >>> x = np.random.default_rng(0).poisson(1.0, (20, 5)).astype(np.float32)
        >>> StormInputs.from_arrays(xy, config=get_config("storm-tiny"), expression=x, gene_index=np.arange(5))
        StormInputs('slide': 20 obs, 5 genes)
        """
        centers = np.ascontiguousarray(centers_um, dtype=np.float64)
        if centers.ndim != 2 or centers.shape[1] != 2:
            raise ValueError(f"`centers_um` must be (n, 2); got {centers.shape}.")
        if expression is not None:
            expression = sparse.csr_matrix(expression, dtype=np.float32)
            expression.sum_duplicates()
            expression.sort_indices()
            gene_index = None if gene_index is None else np.asarray(gene_index, dtype=np.int64)
        if features is not None:
            features = np.ascontiguousarray(features, dtype=np.float32)
        return cls(
            centers_um=centers,
            niche_neighbors=niche_neighbors(centers, config.niche_k),
            region_neighbors=region_neighbors(centers, config.region_radius_um, REGION_POOL_FACTOR * config.region_k),
            patches=patches,
            features=features,
            expression=expression,
            gene_index=gene_index,
            obs_names=obs_names,
            library_id=library_id,
        )


def materialise_patches(
    dataset: PatchDataset,
    *,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    batch_size: int = 64,
    verbose: bool | None = None,
) -> np.ndarray:
    """Read every patch of a slide once into a uint8 array (RAM, or a temporary memory map when large).

    Parameters
    ----------
    dataset
        From :func:`storm_sc.pp.patch_dataset`.
    cache_dir
        Folder for a memory-mapped cache (a temporary folder inside it, removed when the array is freed);
        ``None``: RAM below 2 GiB, else the system temporary folder.
    num_workers
        DataLoader workers reading patches.
    batch_size
        Patches read per worker task.
    verbose
        Progress bar; defaults to :attr:`storm_sc.settings.progress`.

    Returns
    -------
    ``(n, 3, s, s)`` uint8 patches in table order.

    Examples
    --------
    >>> patches = materialise_patches(st.pp.patch_dataset(sdata, patch_px=64))  # doctest: +SKIP
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    n, px = len(dataset), dataset.patch_px
    gib = n * 3 * px * px / 2**30
    if cache_dir is None and gib <= MEMMAP_ABOVE_GIB:
        out: np.ndarray = np.empty((n, 3, px, px), dtype=np.uint8)
    else:
        folder = Path(tempfile.mkdtemp(prefix="storm_sc_patches_", dir=cache_dir))
        out = np.lib.format.open_memmap(folder / "patches.npy", mode="w+", dtype=np.uint8, shape=(n, 3, px, px))
        weakref.finalize(out, shutil.rmtree, folder, ignore_errors=True)
        logger.info("Caching %d patches (%.2f GiB) in a memory map under %s.", n, gib, folder)
    # Batches of neighbouring observations: each reads one compact area of the image, whatever the table order.
    loader = DataLoader(dataset, batch_sampler=dataset.reading_batches(batch_size), num_workers=num_workers)
    show = settings.show_progress(verbose)
    with tqdm(total=n, unit="patch", desc=f"patches {dataset.library_id}", disable=not show) as bar:
        for batch in loader:
            idx = batch["index"].numpy()
            out[idx] = batch["image"].numpy()
            bar.update(len(idx))
    return out


def prepare_inputs(
    data: SpatialData | AnnData | SpatialInput,
    *,
    config: StormConfig,
    vocabulary: GeneVocabulary,
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
    """Resolve a slide and turn it into :class:`StormInputs` for a model (see :meth:`StormModel.prepare`).

    With ``stream_patches`` the patches are not read here but whenever the model asks for rows
    (:class:`StreamedPatches`): the right choice for one pass over a slide (inference), where a cache would be
    written once and read once. Training reads every patch many times and keeps the default cache.
    """
    from storm_sc.pp import align_genes, patch_dataset
    from storm_sc.pp._input import as_spatial_input

    if not (use_image or use_expression):
        raise ValueError("At least one of `use_image` and `use_expression` must be True.")
    si = as_spatial_input(
        data, caller="StormModel.prepare", table_key=table_key, image_key=image_key, mpp=mpp, library_id=library_id
    )
    patches = features = expression = gene_index = None
    if use_image and config.uses_pixels and si.has_image:
        ds = patch_dataset(si, patch_um=config.patch_um, patch_px=config.image_size)
        if stream_patches:
            patches = StreamedPatches(ds)
        else:
            patches = materialise_patches(ds, cache_dir=cache_dir, num_workers=num_workers, verbose=verbose)
    elif use_image and not config.uses_pixels:
        key = config.features_key
        if key in si.table.obsm:
            features = np.asarray(si.table.obsm[key], dtype=np.float32)
            if features.shape != (si.n_obs, config.feature_dim):
                raise ValueError(
                    f"obsm[{key!r}] has shape {features.shape}; this model expects ({si.n_obs}, {config.feature_dim}) "
                    "patch features from the same feature extractor it was trained with."
                )
        else:
            logger.warning("Slide %r has no obsm[%r] patch features; using expression only.", si.library_id, key)
    if use_expression:
        aligned = align_genes(si, vocabulary, layer=layer, gene_symbols=gene_symbols)
        expression, gene_index = aligned.X, aligned.vocab_indices
    if patches is None and features is None and expression is None:
        what = "H&E image" if config.uses_pixels else f"patch features in obsm[{config.features_key!r}]"
        raise ValueError(
            f"Slide {si.library_id!r} gives the model nothing to read: it has no {what} and expression was not "
            "requested. Pass `use_expression=True`, or data with an image (`image_key=`)."
        )
    return StormInputs.from_arrays(
        si.centers_um,
        config=config,
        patches=patches,
        features=features,
        expression=expression,
        gene_index=gene_index,
        obs_names=pd.Index(si.table.obs_names),
        library_id=si.library_id,
    )


def redrawn_gene_tokens(inputs: StormInputs, rows: np.ndarray, *, config: StormConfig, draw: int) -> dict[str, Any]:
    """The entries of :func:`observation_arrays` that another inference draw of random gene tokens changes.

    See :func:`~storm_sc.models._tokens.gene_tokens` for ``draw``.
    """
    ids, values, valid = gene_tokens(
        inputs.expression, inputs.gene_index, rows, config.max_genes, weights=inputs.token_weights(), draw=draw
    )
    return {"gene_ids": ids, "gene_values": values, "gene_valid": valid}


def observation_arrays(
    inputs: StormInputs,
    rows: np.ndarray,
    *,
    config: StormConfig,
    use_image: bool = True,
    use_expression: bool = True,
    rng: np.random.Generator | None = None,
    pad_missing: bool = False,
) -> dict[str, Any]:
    """Per-observation arrays of ``rows`` (``-1``: an empty padding row) for a :class:`StormBatch`.

    ``pad_missing`` adds zero patches (or features) for slides without images, so that items of different slides
    can be stacked into one training batch.
    """
    rows = np.asarray(rows, dtype=np.int64)
    present = rows >= 0
    safe = np.where(present, rows, 0)
    out: dict[str, Any] = {"has_image": present & use_image & inputs.has_image}
    if inputs.patches is not None and use_image:
        uniq, inverse = np.unique(safe, return_inverse=True)  # one sorted read is kind to memory maps
        images = inputs.patches[uniq][inverse]
        images[~present] = 0
        out["images"] = images
    elif inputs.features is not None and use_image:
        feats = inputs.features[safe].copy()
        feats[~present] = 0.0
        out["features"] = feats
    elif pad_missing and config.uses_pixels:
        out["images"] = np.zeros((len(rows), 3, config.image_size, config.image_size), dtype=np.uint8)
    elif pad_missing:
        out["features"] = np.zeros((len(rows), int(config.feature_dim)), dtype=np.float32)
    if inputs.expression is not None and use_expression:
        ids, values, valid = gene_tokens(
            inputs.expression, inputs.gene_index, rows, config.max_genes, rng=rng, weights=inputs.token_weights()
        )
    else:
        ids = np.zeros((len(rows), config.max_genes), dtype=np.int64)
        values = np.zeros((len(rows), config.max_genes), dtype=np.float32)
        valid = np.zeros((len(rows), config.max_genes), dtype=bool)
    out.update(gene_ids=ids, gene_values=values, gene_valid=valid, has_expression=present & valid.any(axis=1))
    n_program = config.program_genes
    if n_program:
        programs = inputs.programs(n_program) if use_expression else None
        if programs is not None:
            p_ids, p_values, p_valid = program_arrays(inputs.expression, inputs.gene_index, programs, rows, n_program)
        else:
            p_ids = np.zeros((len(rows), n_program), dtype=np.int64)
            p_values = np.zeros((len(rows), n_program), dtype=np.float32)
            p_valid = np.zeros((len(rows), n_program), dtype=bool)
        out.update(program_ids=p_ids, program_values=p_values, program_valid=p_valid)
    return out
