"""Batched inference over a whole slide: encode every observation once, then each centre's neighbourhood."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from storm_sc._settings import settings

from ._batch import StormBatch
from ._config import StormConfig
from ._inputs import StormInputs, observation_arrays, redrawn_gene_tokens
from ._neighbors import pick
from ._network import StormNetwork
from ._readout import LEVELS_INPUT, NICHE_STAIN_INPUT, READOUT_LEVELS, STAIN_INPUT, ExpressionReadout

LEVELS = ("joint", "levels", "observation", "niche", "region")
# Draws of random gene tokens averaged into each observation's expression token when embedding (see fused_tokens):
# with one, a spot's embedding follows which genes happened to be drawn. Four halve that spread; with tokens built
# per batch they cost storm_embed 1.1-1.4 times the CPU of one (benchmarks/README.md, "Spatial domains").
INFERENCE_DRAWS = 4
T = TypeVar("T")


def parse_device(device: str | torch.device) -> torch.device | str:
    """Check that ``device`` names a device (``"auto"`` or a torch device); whether it exists is not checked here.

    The tools call this before any work, where the device may belong to other machines (Dask workers).

    Examples
    --------
    >>> parse_device("cuda:1")
    device(type='cuda', index=1)
    """
    if isinstance(device, str) and device == "auto":
        return device
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"`device` must be 'auto', 'cpu', 'cuda', 'cuda:1', 'mps', ... (a torch device name); got {device!r}."
        ) from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> the first CUDA GPU if one is available, else the CPU; anything else as given.

    Parameters
    ----------
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or a ``torch.device``.

    Returns
    -------
    The device.

    Examples
    --------
    >>> from storm_sc.models import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = parse_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use device='cpu' or 'auto'.")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a GPU that computes in bfloat16 natively (NVIDIA compute capability 8.0, Ampere, on).

    Older GPUs (V100, T4) only emulate bf16, more slowly than float32, so they run in float32.

    Examples
    --------
    >>> native_bf16(torch.device("cpu"))
    False
    """
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs that compute in bf16 natively (faster, same range as fp32); exact fp32 elsewhere."""
    if native_bf16(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def neighbourhoods(
    inputs: StormInputs, rows: np.ndarray, config: StormConfig, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Slide-level niche ``(b, niche_k)`` and region ``(b, region_k)`` neighbours of ``rows`` (``-1`` = none)."""
    niche = np.full((len(rows), config.niche_k), -1, dtype=np.int64)
    k = min(config.niche_k, inputs.niche_neighbors.shape[1])
    niche[:, :k] = inputs.niche_neighbors[rows, :k]
    if not len(rows):
        region = np.zeros((0, config.region_k), dtype=np.int64)
    elif rng is None:
        region = spread_picks(inputs.region_neighbors[rows], config.region_k)
    else:
        region = np.stack([pick(inputs.region_neighbors[r], config.region_k, rng) for r in rows])
    return niche, region


def spread_picks(pools: np.ndarray, k: int) -> np.ndarray:
    """:func:`pick` without a generator (evenly spread over each row's valid entries), for many rows at once.

    Parameters
    ----------
    pools
        ``(b, pool)`` int64 neighbour rows, ``-1`` where empty.
    k
        Entries kept per row.

    Returns
    -------
    ``(b, k)`` int64, equal row by row to ``pick(pools[i], k, None)``.

    Examples
    --------
    >>> spread_picks(np.array([[4, 5, 6, 7, 8], [3, -1, -1, -1, -1]]), 3).tolist()
    [[4, 6, 8], [3, -1, -1]]
    """
    b, width = pools.shape
    out = np.full((b, k), -1, dtype=np.int64)
    if not b or not k:
        return out
    valid = pools >= 0
    # Valid entries first, in their order (a stable sort of the padding flags).
    packed = np.take_along_axis(pools, np.argsort(~valid, axis=1, kind="stable"), axis=1)
    count = valid.sum(axis=1)
    j = np.arange(k)
    few = count <= k
    head = min(k, width)
    out[few, :head] = np.where(j[:head] < count[few, None], packed[few, :head], -1)
    many = ~few
    if many.any():
        last = (count[many] - 1).astype(np.float64)
        if k == 1:
            pos = np.zeros((len(last), 1))
        else:
            # The float arithmetic of np.linspace(0, count - 1, k): j * step, then the last point set exactly.
            pos = j[None, :] * (last / (k - 1))[:, None]
            pos[:, -1] = last
        out[many] = np.take_along_axis(packed[many], pos.round().astype(np.int64), axis=1)
    return out


def offsets(centers_um: np.ndarray, rows: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """``(b, k, 2)`` float32 offsets (um) of neighbours from their centre; 0 where there is no neighbour."""
    d = centers_um[np.maximum(neighbours, 0)] - centers_um[rows][:, None, :]
    d[neighbours < 0] = 0.0
    return d.astype(np.float32)


def _chunks(n: int, size: int) -> Iterator[np.ndarray]:
    for start in range(0, n, size):
        yield np.arange(start, min(start + size, n))


def _progress(total: int, desc: str, verbose: bool | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="obs", disable=not settings.show_progress(verbose))


@torch.no_grad()
def fused_tokens(
    network: StormNetwork,
    inputs: StormInputs,
    *,
    use_image: bool,
    use_expression: bool,
    batch_size: int,
    device: torch.device,
    verbose: bool | None = None,
    statistics: np.ndarray | None = None,
    draws: int = 1,
) -> torch.Tensor:
    """``(n, hidden_dim)`` float32 fused observation tokens of a whole slide, on ``device``.

    Observations are encoded in batches of spatial neighbours (:func:`storm_sc.pp._patches.locality_order`), so
    that patches streamed from the image are read from compact areas; the next batch is read on a background
    thread while the network encodes the current one. Only the tokens grow with the slide. ``statistics``, an
    ``(n, network.n_statistics)`` array, is filled with each patch's statistics on the way (zeros without an image).
    With ``draws > 1``, an observation's expression token is the mean of its tokens over that many draws of random
    gene tokens (panels larger than ``max_genes``; see :func:`~storm_sc.models._tokens.gene_tokens`): an estimate
    of what the network makes of the observation's whole profile, less tied to one draw.
    """
    from storm_sc.pp._patches import locality_order

    config = network.config
    out = torch.empty(inputs.n_obs, config.hidden_dim, device=device)
    order = locality_order(inputs.centers_um)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    random_tokens = use_expression and inputs.expression is not None and inputs.expression.shape[1] > config.max_genes
    draws = draws if random_tokens else 1  # a panel within max_genes is all tokens: every draw is the same

    def read(rows: np.ndarray) -> tuple[dict, list[dict]]:
        arrays = observation_arrays(inputs, rows, config=config, use_image=use_image, use_expression=use_expression)
        # Further draws change only the random gene tokens: the rest (gene programs) is reused, the image left out.
        rest = {k: v for k, v in arrays.items() if k not in ("images", "features")}
        rest["has_image"] = np.zeros_like(arrays["has_image"])
        more = [{**rest, **redrawn_gene_tokens(inputs, rows, config=config, draw=d)} for d in range(1, draws)]
        return arrays, more

    with _progress(inputs.n_obs, f"encode {inputs.library_id}", verbose) as bar, autocast(device):
        for rows, (arrays, more) in _read_ahead(read, batches):
            batch = _observation_batch(arrays, device)
            if statistics is not None and batch.images is not None:
                batch.statistics = network.patch_statistics(batch.images)
                stats = batch.statistics.float().cpu().numpy()
                statistics[rows] = np.where(batch.has_image.cpu().numpy()[:, None], stats, 0.0)
            z_img, z_expr, expr_present = network.observation_tokens(batch)
            if more:
                z_expr = z_expr.float()
                for extra in more:  # the same observations have tokens in every draw: only which genes differ
                    z_expr = z_expr + network.observation_tokens(_observation_batch(extra, device))[1].float()
                z_expr = z_expr / draws
            out[torch.as_tensor(rows, device=device)] = network.fusion(
                z_img, batch.has_image, z_expr, expr_present
            ).float()
            bar.update(len(rows))
    return out


def niche_mean(values: np.ndarray, inputs: StormInputs, niche_k: int) -> np.ndarray:
    """``(n, k)`` mean of ``values`` over each observation's niche neighbours (its own value where it has none).

    Parameters
    ----------
    values
        ``(n, k)`` per observation.
    inputs
        The slide (its niche neighbour lists).
    niche_k
        Neighbours used, as the network's niche.

    Returns
    -------
    float32 means.

    Examples
    --------
    >>> from storm_sc.models import get_config
    >>> centers = np.array([[0.0, 0.0], [10.0, 0.0], [25.0, 0.0]])
    >>> inputs = StormInputs.from_arrays(centers, config=get_config("storm-tiny"))
    >>> niche_mean(np.array([[0.0], [3.0], [6.0]]), inputs, 1).tolist()  # each one's nearest neighbour
    [[3.0], [0.0], [3.0]]
    """
    neighbours = inputs.niche_neighbors[:, :niche_k]
    valid = neighbours >= 0
    total = (values[np.maximum(neighbours, 0)] * valid[..., None]).sum(axis=1)
    count = valid.sum(axis=1, keepdims=True)
    return np.where(count > 0, total / np.maximum(count, 1), values).astype(np.float32)


def readout_extras(
    statistics: np.ndarray, inputs: StormInputs, readout_inputs: tuple[str, ...], niche_k: int
) -> np.ndarray:
    """``(n, k)`` the features a readout reads beside the levels, in its order (``k = 0`` for the levels alone)."""
    blocks = {STAIN_INPUT: lambda: statistics, NICHE_STAIN_INPUT: lambda: niche_mean(statistics, inputs, niche_k)}
    parts = [blocks[name]() for name in readout_inputs if name != LEVELS_INPUT]
    return np.hstack(parts).astype(np.float32) if parts else np.zeros((inputs.n_obs, 0), dtype=np.float32)


def _read_ahead(read: Callable[[np.ndarray], T], batches: list[np.ndarray]) -> Iterator[tuple[np.ndarray, T]]:
    """``(rows, read(rows))`` per batch, reading batch ``i + 1`` on a thread while the caller works on batch ``i``.

    Reading (image decoding, resampling, gene tokens) and the network's forward pass mostly release the GIL, so
    they overlap; at most two batches exist at once.
    """
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="storm_sc-read") as pool:
        pending = pool.submit(read, batches[0])
        for i, rows in enumerate(batches):
            arrays = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(read, batches[i + 1])
            yield rows, arrays


def _observation_batch(arrays: dict, device: torch.device) -> StormBatch:
    empty_i = torch.zeros((0, 1), dtype=torch.long)
    empty_b = torch.zeros((0, 1), dtype=torch.bool)
    empty_f = torch.zeros((0, 1, 2))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    return StormBatch(
        centre=torch.zeros(0, dtype=torch.long),
        niche_idx=empty_i,
        niche_valid=empty_b,
        niche_dxy=empty_f,
        region_idx=empty_i,
        region_valid=empty_b,
        region_dxy=empty_f,
        **tensors,
    ).to(device)


@torch.no_grad()
def contextual(
    network: StormNetwork,
    inputs: StormInputs,
    tokens: torch.Tensor,
    rows: np.ndarray,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Observation, niche, region and joint embeddings of ``rows`` given the slide's fused ``tokens``."""
    config = network.config
    niche, region = neighbourhoods(inputs, rows, config)
    t = {
        "centre": torch.from_numpy(rows),
        "niche_idx": torch.from_numpy(niche),
        "niche_valid": torch.from_numpy(niche >= 0),
        "niche_dxy": torch.from_numpy(offsets(inputs.centers_um, rows, niche)),
        "region_idx": torch.from_numpy(region),
        "region_valid": torch.from_numpy(region >= 0),
        "region_dxy": torch.from_numpy(offsets(inputs.centers_um, rows, region)),
    }
    t = {k: v.to(device) for k, v in t.items()}
    with autocast(device):
        return network.context(tokens, **t)


@contextlib.contextmanager
def evaluating_on(network: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Run ``network`` in eval mode on ``device``, then give it back in its former mode.

    It stays on ``device``: moving it back on the way out would pull it from under another thread that uses the
    same model (a Dask worker runs several slides at once on its one copy). Code that writes into the weights
    outside such a call must therefore follow the weights' device (see ``training._fit._init_gene_statistics``).
    """
    was_training = network.training
    network.to(device).eval()
    try:
        yield
    finally:
        network.train(was_training)


@torch.no_grad()
def embed_inputs(
    network: StormNetwork,
    inputs: StormInputs,
    *,
    level: str = "joint",
    use_image: bool = True,
    use_expression: bool = True,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    verbose: bool | None = None,
    statistics: np.ndarray | None = None,
    draws: int = INFERENCE_DRAWS,
) -> np.ndarray:
    """Embeddings of every observation of one slide (see :meth:`StormModel.embed`).

    ``statistics`` and ``draws``: as in :func:`fused_tokens`.
    """
    if level not in LEVELS:
        raise ValueError(f"`level` must be one of {LEVELS}; got {level!r}.")
    dev = resolve_device(device)
    with evaluating_on(network, dev):
        tokens = fused_tokens(
            network,
            inputs,
            use_image=use_image,
            use_expression=use_expression,
            batch_size=batch_size,
            device=dev,
            verbose=verbose,
            statistics=statistics,
            draws=draws,
        )
        out = np.empty((inputs.n_obs, embedding_width(network.config, level)), dtype=np.float32)
        for rows in _chunks(inputs.n_obs, batch_size):
            levels = contextual(network, inputs, tokens, rows, dev)
            out[rows] = readout_features(levels) if level == "levels" else levels[level].float().cpu().numpy()
    return out


def embedding_width(config: StormConfig, level: str) -> int:
    """Width of an embedding level: ``embed_dim`` for ``"joint"``, three ``hidden_dim`` for ``"levels"``."""
    if level == "joint":
        return config.embed_dim
    return len(READOUT_LEVELS) * config.hidden_dim if level == "levels" else config.hidden_dim


def readout_features(levels: dict[str, torch.Tensor]) -> np.ndarray:
    """The H&E-only embedding levels read by the expression readout, concatenated: ``(b, 3 * hidden_dim)``."""
    return torch.cat([levels[k].float() for k in READOUT_LEVELS], dim=-1).cpu().numpy()


def image_features(
    network: StormNetwork,
    inputs: StormInputs,
    *,
    readout_inputs: tuple[str, ...] = (LEVELS_INPUT,),
    batch_size: int = 256,
    device: str | torch.device = "auto",
    verbose: bool | None = None,
) -> np.ndarray:
    """H&E-only features of every observation as a readout with ``readout_inputs`` reads them: ``(n, f)``."""
    statistics = np.zeros((inputs.n_obs, network.n_statistics), dtype=np.float32) if len(readout_inputs) > 1 else None
    levels = embed_inputs(
        network,
        inputs,
        level="levels",
        use_expression=False,
        batch_size=batch_size,
        device=device,
        verbose=verbose,
        statistics=statistics,
    )
    if statistics is None:
        return levels
    return np.hstack([levels, readout_extras(statistics, inputs, readout_inputs, network.config.niche_k)])


class ExpressionPlan:
    """Which genes the expression readout predicts and which the network's head, for one prediction call.

    Parameters
    ----------
    network
        The network (its prediction head and gene embeddings).
    gene_ids
        ``(g,)`` vocabulary indices to predict.
    readout, readout_columns
        The model's readout and, per gene, its column there (``-1``: the head predicts that gene).
    device
        Where the head runs.
    """

    def __init__(
        self,
        network: StormNetwork,
        gene_ids: np.ndarray,
        readout: ExpressionReadout | None,
        readout_columns: np.ndarray | None,
        device: torch.device,
    ) -> None:
        self.network, self.readout, self.device = network, readout, device
        self.n_genes = len(gene_ids)
        self.columns = (
            np.full(len(gene_ids), -1) if readout is None or readout_columns is None else np.asarray(readout_columns)
        )
        self.by_readout = np.flatnonzero(self.columns >= 0)
        self.by_head = np.flatnonzero(self.columns < 0)
        self.head_ids = torch.as_tensor(np.asarray(gene_ids)[self.by_head], dtype=torch.long, device=device)

    @property
    def needs_statistics(self) -> bool:
        """Whether :meth:`fill` needs the readout's extra features (the patches' stain statistics)."""
        return self.readout is not None and len(self.by_readout) > 0 and self.readout.uses_stain_statistics

    def fill(
        self,
        levels: dict[str, torch.Tensor],
        means: np.ndarray,
        stds: np.ndarray | None = None,
        extra: np.ndarray | None = None,
    ) -> None:
        """Write the ``(b, g)`` predictions for one batch of contextual ``levels`` into ``means`` (and ``stds``).

        ``extra``: the batch's rows of :func:`readout_extras`, required when :attr:`needs_statistics`.
        """
        if len(self.by_head):
            with autocast(self.device):
                mean, logvar = self.network.prediction_head(levels["joint"], self.network.gene_embedding, self.head_ids)
            where = slice(None) if len(self.by_head) == self.n_genes else self.by_head
            means[:, where] = mean.float().cpu().numpy()
            if stds is not None:
                stds[:, where] = torch.exp(0.5 * logvar.float()).cpu().numpy()
        if len(self.by_readout):
            assert self.readout is not None
            features = readout_features(levels)
            if self.needs_statistics:
                if extra is None:
                    raise ValueError("This expression readout also reads the patches' stain statistics; pass `extra`.")
                features = np.hstack([features, extra])
            means[:, self.by_readout] = self.readout.predict(features, self.columns[self.by_readout])
            if stds is not None:
                stds[:, self.by_readout] = self.readout.residual_sd[self.columns[self.by_readout]]


# Share of the memory available now that a prediction's result may take: the rest is left to the model's working
# memory (patches, tokens), the user's data and the other programs.
_RESULT_MEMORY_SHARE = 0.8


def available_memory() -> int:
    """Bytes of memory available to this process now (psutil's estimate: free plus reclaimable)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_prediction_memory(n_obs: int, n_genes: int) -> None:
    """Raise before any work when a prediction's result would not fit in the memory available.

    The result is two ``(n_obs, n_genes)`` float32 arrays (values and standard deviations), allocated up front
    and filled batch by batch: without this check a too-large request fails with the operating system killing
    the process, after the whole slide has been read.

    Parameters
    ----------
    n_obs, n_genes
        Shape of the prediction.

    Raises
    ------
    MemoryError
        With the sizes and what to pass instead.

    Examples
    --------
    >>> check_prediction_memory(1_000, 50)  # a few hundred kB: fine
    """
    need = 2 * 4 * int(n_obs) * int(n_genes)
    available = available_memory()
    if need > _RESULT_MEMORY_SHARE * available:
        raise MemoryError(
            f"Predicting {n_genes:,} genes for {n_obs:,} observations needs {need / 2**30:.1f} GiB for the result "
            f"(values and standard deviations, float32), more than {_RESULT_MEMORY_SHARE:.0%} of the "
            f"{available / 2**30:.1f} GiB of memory available. Pass `genes=` with the genes you need (for "
            "example the measured panel, `genes=sdata['table'].var_names`), or predict fewer slides at a time."
        )


@torch.no_grad()
def predict_inputs(
    network: StormNetwork,
    inputs: StormInputs,
    gene_ids: np.ndarray,
    *,
    readout: ExpressionReadout | None = None,
    readout_columns: np.ndarray | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    verbose: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of log1p expression of ``gene_ids`` from H&E and positions only.

    Genes with a ``readout_columns`` entry >= 0 come from that column of ``readout``; the others from the
    network's prediction head (see :class:`ExpressionPlan`).
    """
    dev = resolve_device(device)
    plan = ExpressionPlan(network, gene_ids, readout, readout_columns, dev)
    # The outputs are the only (n_obs x genes) arrays: filled batch by batch, never concatenated from parts.
    means = np.empty((inputs.n_obs, len(gene_ids)), dtype=np.float32)
    stds = np.empty_like(means)
    statistics = np.zeros((inputs.n_obs, network.n_statistics), dtype=np.float32) if plan.needs_statistics else None
    with evaluating_on(network, dev):
        tokens = fused_tokens(
            network,
            inputs,
            use_image=True,
            use_expression=False,
            batch_size=batch_size,
            device=dev,
            verbose=verbose,
            statistics=statistics,
        )
        extras = None
        if statistics is not None:
            assert readout is not None
            extras = readout_extras(statistics, inputs, readout.inputs, network.config.niche_k)
        for rows in _chunks(inputs.n_obs, batch_size):
            block = slice(int(rows[0]), int(rows[-1]) + 1)  # a view: filled in place
            plan.fill(
                contextual(network, inputs, tokens, rows, dev),
                means[block],
                stds[block],
                None if extras is None else extras[block],
            )
    return means, stds
