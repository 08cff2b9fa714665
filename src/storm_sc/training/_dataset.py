"""Training samples: a centre observation with its niche and region neighbours, masked and augmented."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from storm_sc.models import StormBatch, StormConfig
from storm_sc.models._inference import neighbourhoods, offsets
from storm_sc.models._inputs import observation_arrays

from ._config import TrainingConfig
from ._slides import PreparedSlide


class ContextDataset(Dataset):
    """One item per centre observation of a partition, over several slides.

    An item holds ``1 + niche_k + region_k`` observations: the centre, its nearest neighbours and observations
    drawn from its region (neighbours in the other partition are dropped, so validation never feeds training).
    Every random choice (region draw, gene tokens, masking, modality dropout, augmentation) comes from a generator
    seeded by ``(seed, epoch, item)``. The epoch travels in the index: :class:`ContextSampler` asks for item
    ``epoch * len(dataset) + i``, so worker processes (copies of the dataset made when an epoch starts) always
    know it and a run is reproducible whatever the number of workers.

    Parameters
    ----------
    slides
        Prepared slides.
    part
        Partition whose observations are centres (0 = training, 1 = validation).
    config
        The model architecture.
    options
        Training settings.
    train
        Random draws and augmentation (training) or deterministic items (validation).

    Examples
    --------
    >>> import numpy as np
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=60, n_genes=20, n_domains=2, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> inputs = model.prepare(sdata, verbose=False)
    >>> partition = (inputs.centers_um[:, 0] > 600).astype(np.int8)  # 0: training, 1: validation
    >>> slide = st.training.PreparedSlide(st.training.TrainingSlide(sdata, name="toy"), inputs, partition)
    >>> options = st.training.TrainingConfig()
    >>> train = st.training.ContextDataset([slide], 0, model.config, options, train=True)
    >>> val = st.training.ContextDataset([slide], 1, model.config, options, train=False)
    >>> len(train), len(val)
    (46, 14)
    >>> item = train[0]  # the centre, its 6 niche neighbours and 6 region neighbours
    >>> item["images"].shape, item["niche_dxy"].shape
    ((13, 3, 32, 32), (6, 2))
    """

    def __init__(
        self, slides: Sequence[PreparedSlide], part: int, config: StormConfig, options: TrainingConfig, *, train: bool
    ) -> None:
        self.slides = list(slides)
        self.config, self.options, self.train = config, options, train
        pairs = [(s, r) for s, p in enumerate(self.slides) for r in p.rows(part)]
        self.index = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, i = divmod(int(key), len(self.index))
        epoch = epoch if self.train else 0
        s, row = (int(v) for v in self.index[i])
        prepared = self.slides[s]
        inputs, cfg, opt = prepared.inputs, self.config, self.options
        rng = np.random.default_rng([opt.seed, epoch, i, int(self.train)])
        draw = rng if self.train else None
        rows = np.asarray([row])
        niche, region = neighbourhoods(inputs, rows, cfg, draw)
        same = prepared.partition[row]
        for nb in (niche, region):
            nb[(nb >= 0) & (prepared.partition[np.maximum(nb, 0)] != same)] = -1
        dxy_niche, dxy_region = offsets(inputs.centers_um, rows, niche)[0], offsets(inputs.centers_um, rows, region)[0]
        members = np.concatenate([rows, niche[0], region[0]])
        item = observation_arrays(inputs, members, config=cfg, rng=draw, pad_missing=True)
        n = len(members)

        # Hide a fraction of the centre's tokens: the encoder does not see them, the joint view reconstructs them.
        recon = np.zeros_like(item["gene_valid"])
        valid = np.flatnonzero(item["gene_valid"][0])
        n_hide = int(round(opt.mask_fraction * len(valid)))
        if n_hide and len(valid) > 1:
            gen = rng if self.train else np.random.default_rng([opt.seed, i, 7])
            recon[0, gen.choice(valid, size=min(n_hide, len(valid) - 1), replace=False)] = True
        item["recon_mask"] = recon

        drop_img = np.zeros(n, dtype=bool)
        drop_expr = np.zeros(n, dtype=bool)
        alpha = np.ones((n, 3), dtype=np.float32)
        beta = np.zeros((n, 3), dtype=np.float32)
        if self.train:
            both = item["has_image"] & item["has_expression"]
            u = rng.random(n)
            drop_img = both & (u < opt.image_dropout)
            drop_expr = both & (u >= opt.image_dropout) & (u < opt.image_dropout + opt.expression_dropout)
            if opt.stain_jitter > 0:
                alpha = rng.uniform(1 - opt.stain_jitter, 1 + opt.stain_jitter, (n, 3)).astype(np.float32)
                beta = rng.uniform(-opt.stain_jitter, opt.stain_jitter, (n, 3)).astype(np.float32)
            if opt.geometric_augment:
                k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
                dxy_niche, dxy_region = _turn(dxy_niche, k, flip), _turn(dxy_region, k, flip)
                if "images" in item:
                    images = np.rot90(item["images"], k, axes=(2, 3))
                    item["images"] = np.ascontiguousarray(images[..., ::-1] if flip else images)
        item.update(
            drop_image=drop_img,
            drop_expression=drop_expr,
            stain_alpha=alpha,
            stain_beta=beta,
            niche_valid=niche[0] >= 0,
            niche_dxy=dxy_niche,
            region_valid=region[0] >= 0,
            region_dxy=dxy_region,
        )
        return item


class ContextSampler(Sampler[int]):
    """Shuffled (or ordered) item keys ``epoch * n + i`` of this process's shard of a :class:`ContextDataset`.

    Shards like :class:`torch.utils.data.DistributedSampler` (padding by repetition so every process gets the
    same number of items) but reads the process layout when iterated, once the process group exists, and puts
    the epoch into the keys. Lightning calls :meth:`set_epoch` before each epoch's iterator is created.

    Parameters
    ----------
    n
        Dataset length.
    shuffle
        A new permutation each epoch (seeded by ``(seed, epoch)``), or the dataset order.
    seed
        Seed of the permutations.

    Examples
    --------
    >>> import storm_sc as st
    >>> sampler = st.training.ContextSampler(5, shuffle=False, seed=0)
    >>> list(sampler)
    [0, 1, 2, 3, 4]
    >>> sampler.set_epoch(2)
    >>> list(sampler)
    [10, 11, 12, 13, 14]
    >>> shuffled = st.training.ContextSampler(5, shuffle=True, seed=0)
    >>> sorted(shuffled), len(shuffled)
    ([0, 1, 2, 3, 4], 5)
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed = int(n), bool(shuffle), int(seed)
        self.epoch = 0

    @staticmethod
    def _layout() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next iteration."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.n / self._layout()[1]) if self.n else 0

    def __iter__(self) -> Iterator[int]:
        if not self.n:
            return iter([])
        rank, world = self._layout()
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        )
        per = math.ceil(self.n / world)
        order = np.resize(order, per * world)  # repeats the first items to fill the last shard
        return iter((self.epoch * self.n + order[rank::world]).tolist())


def _turn(dxy: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Offsets (x right, y down) rotated like ``np.rot90(image, k)`` and then mirrored left-right like the patches."""
    out = dxy.copy()
    for _ in range(k):
        out = np.stack([out[:, 1], -out[:, 0]], axis=1)
    if flip:
        out[:, 0] = -out[:, 0]
    return out


_PER_OBS = (
    "has_image",
    "has_expression",
    "gene_ids",
    "gene_values",
    "gene_valid",
    "program_ids",
    "program_values",
    "program_valid",
    "images",
    "features",
    "recon_mask",
    "drop_image",
    "drop_expression",
    "stain_alpha",
    "stain_beta",
)


def collate(items: list[dict[str, Any]]) -> StormBatch:
    """Stack items into one flat :class:`StormBatch`: item ``b``'s members occupy rows ``b*L .. b*L+L-1``.

    Parameters
    ----------
    items
        Items of a :class:`ContextDataset` (a centre observation with its niche and region members).

    Returns
    -------
    The batch the network reads; pass it as ``collate_fn`` of a ``DataLoader``.

    Examples
    --------
    >>> from torch.utils.data import DataLoader
    >>> loader = DataLoader(dataset, batch_size=64, collate_fn=collate)  # doctest: +SKIP
    """
    b = len(items)
    size = len(items[0]["has_image"])
    k1 = len(items[0]["niche_valid"])
    base = torch.arange(b).unsqueeze(1) * size
    tensors: dict[str, torch.Tensor] = {}
    for key in _PER_OBS:
        if key in items[0]:
            stacked = np.stack([it[key] for it in items])
            tensors[key] = torch.from_numpy(stacked.reshape(b * size, *stacked.shape[2:]))
    niche_valid = torch.from_numpy(np.stack([it["niche_valid"] for it in items]))
    region_valid = torch.from_numpy(np.stack([it["region_valid"] for it in items]))
    niche_idx = base + 1 + torch.arange(k1)
    region_idx = base + 1 + k1 + torch.arange(region_valid.shape[1])
    return StormBatch(
        centre=base[:, 0].clone(),
        niche_idx=torch.where(niche_valid, niche_idx, -1),
        niche_valid=niche_valid,
        niche_dxy=torch.from_numpy(np.stack([it["niche_dxy"] for it in items])),
        region_idx=torch.where(region_valid, region_idx, -1),
        region_valid=region_valid,
        region_dxy=torch.from_numpy(np.stack([it["region_dxy"] for it in items])),
        **tensors,
    )
