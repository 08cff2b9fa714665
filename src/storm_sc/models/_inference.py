"""Batched inference over a whole slide: encode every observation once, then each centre's neighbourhood."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from storm_sc._settings import settings

from ._batch import StormBatch
from ._config import StormConfig
from ._inputs import StormInputs, observation_arrays
from ._neighbors import pick
from ._network import StormNetwork

LEVELS = ("joint", "observation", "niche", "region")


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
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use device='cpu' or 'auto'.")
    return dev


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs (faster, same range as fp32); exact fp32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def neighbourhoods(
    inputs: StormInputs, rows: np.ndarray, config: StormConfig, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Slide-level niche ``(b, niche_k)`` and region ``(b, region_k)`` neighbours of ``rows`` (``-1`` = none)."""
    niche = np.full((len(rows), config.niche_k), -1, dtype=np.int64)
    k = min(config.niche_k, inputs.niche_neighbors.shape[1])
    niche[:, :k] = inputs.niche_neighbors[rows, :k]
    region = (
        np.stack([pick(inputs.region_neighbors[r], config.region_k, rng) for r in rows])
        if len(rows)
        else np.zeros((0, config.region_k), dtype=np.int64)
    )
    return niche, region


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
) -> torch.Tensor:
    """``(n, hidden_dim)`` float32 fused observation tokens of a whole slide, on ``device``."""
    out = torch.empty(inputs.n_obs, network.config.hidden_dim, device=device)
    with _progress(inputs.n_obs, f"encode {inputs.library_id}", verbose) as bar, autocast(device):
        for rows in _chunks(inputs.n_obs, batch_size):
            arrays = observation_arrays(
                inputs, rows, config=network.config, use_image=use_image, use_expression=use_expression
            )
            batch = _observation_batch(arrays, device)
            z_img, z_expr, expr_present = network.observation_tokens(batch)
            out[torch.as_tensor(rows, device=device)] = network.fusion(
                z_img, batch.has_image, z_expr, expr_present
            ).float()
            bar.update(len(rows))
    return out


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


def _with_eval(network: StormNetwork, device: torch.device):
    @contextlib.contextmanager
    def ctx():
        was_training = network.training
        network.to(device).eval()
        try:
            yield
        finally:
            network.train(was_training)

    return ctx()


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
) -> np.ndarray:
    """Embeddings of every observation of one slide (see :meth:`StormModel.embed`)."""
    if level not in LEVELS:
        raise ValueError(f"`level` must be one of {LEVELS}; got {level!r}.")
    dev = resolve_device(device)
    with _with_eval(network, dev):
        tokens = fused_tokens(
            network,
            inputs,
            use_image=use_image,
            use_expression=use_expression,
            batch_size=batch_size,
            device=dev,
            verbose=verbose,
        )
        parts = [
            contextual(network, inputs, tokens, rows, dev)[level].float().cpu()
            for rows in _chunks(inputs.n_obs, batch_size)
        ]
    return torch.cat(parts).numpy() if parts else np.zeros((0, network.config.embed_dim), dtype=np.float32)


@torch.no_grad()
def predict_inputs(
    network: StormNetwork,
    inputs: StormInputs,
    gene_ids: np.ndarray,
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    verbose: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of log1p expression of ``gene_ids`` from H&E and positions only."""
    dev = resolve_device(device)
    ids = torch.as_tensor(gene_ids, dtype=torch.long, device=dev)
    means, stds = [], []
    with _with_eval(network, dev):
        tokens = fused_tokens(
            network, inputs, use_image=True, use_expression=False, batch_size=batch_size, device=dev, verbose=verbose
        )
        for rows in _chunks(inputs.n_obs, batch_size):
            joint = contextual(network, inputs, tokens, rows, dev)["joint"]
            with autocast(dev):
                mean, logvar = network.prediction_head(joint, network.gene_embedding, ids)
            means.append(mean.float().cpu())
            stds.append(torch.exp(0.5 * logvar.float()).cpu())
    return torch.cat(means).numpy(), torch.cat(stds).numpy()
