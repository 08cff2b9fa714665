"""Multiple-instance learning over a patient's tiles: gated attention (ABMIL) and mean pooling, in torch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from storm_sc._checks import is_integer, is_real
from storm_sc._random import seeded_torch

AGGREGATORS = ("abmil", "mean")
TASKS = ("response", "survival")
# Below this many tile rows per step, CPU threads only add synchronisation to the small matrix products of the
# aggregator (and stall badly when the cores are shared), so training runs on one thread.
_SINGLE_THREAD_ROWS = 65_536


@contextlib.contextmanager
def cpu_threads(device: torch.device, rows_per_step: int) -> Iterator[None]:
    """One intra-op thread for small CPU workloads, restored afterwards."""
    if device.type != "cpu" or rows_per_step > _SINGLE_THREAD_ROWS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _TileEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GatedAttentionMIL(nn.Module):
    """Gated attention-based MIL pooling (Ilse, Tomczak & Welling 2018), one score per bag.

    Each tile ``h_i`` gets the weight ``a_i = softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i)))``; the bag is
    ``sum_i a_i h_i`` and a linear head scores it (a response logit or a log-hazard).

    Parameters
    ----------
    in_dim
        Width of the tile features.
    hidden_dim
        Width of the tile encoder.
    attention_dim
        Width of the attention branches (default: ``hidden_dim``).
    dropout
        Dropout after the tile encoder.

    Examples
    --------
    >>> import torch
    >>> from storm_sc.clinical import GatedAttentionMIL
    >>> net = GatedAttentionMIL(16, hidden_dim=8)
    >>> score, attention = net(torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool))
    >>> tuple(score.shape), tuple(attention.shape)
    ((2,), (2, 5))
    """

    def __init__(self, in_dim: int, *, hidden_dim: int = 64, attention_dim: int | None = None,
                 dropout: float = 0.25) -> None:  # fmt: skip
        super().__init__()
        a = attention_dim or hidden_dim
        self.encoder = _TileEncoder(in_dim, hidden_dim, dropout)
        self.attention_v = nn.Sequential(nn.Linear(hidden_dim, a), nn.Tanh())
        self.attention_u = nn.Sequential(nn.Linear(hidden_dim, a), nn.Sigmoid())
        self.attention_w = nn.Linear(a, 1)
        self.head = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(b, n, d)`` padded bags and ``(b, n)`` validity -> ``(b,)`` scores and ``(b, n)`` attention."""
        h = self.encoder(x)
        logits = self.attention_w(self.attention_v(h) * self.attention_u(h)).squeeze(-1)
        logits = logits.masked_fill(~mask, float("-inf"))
        attention = torch.softmax(logits, dim=1)
        pooled = torch.einsum("bn,bnd->bd", attention, h)
        return self.head(pooled).squeeze(-1), attention


class MeanPoolMIL(nn.Module):
    """Mean pooling baseline: the same tile encoder and head as :class:`GatedAttentionMIL`, uniform weights.

    Parameters
    ----------
    in_dim
        Width of the tile features.
    hidden_dim
        Width of the tile encoder.
    dropout
        Dropout after the tile encoder.

    Examples
    --------
    >>> import torch
    >>> from storm_sc.clinical import MeanPoolMIL
    >>> score, attention = MeanPoolMIL(16, hidden_dim=8)(torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.bool))
    >>> attention.tolist()
    [[0.25, 0.25, 0.25, 0.25]]
    """

    def __init__(self, in_dim: int, *, hidden_dim: int = 64, dropout: float = 0.25) -> None:
        super().__init__()
        self.encoder = _TileEncoder(in_dim, hidden_dim, dropout)
        self.head = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(b, n, d)`` padded bags and ``(b, n)`` validity -> ``(b,)`` scores and ``(b, n)`` uniform weights."""
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True).clamp(min=1.0)
        pooled = torch.einsum("bn,bnd->bd", weights, self.encoder(x))
        return self.head(pooled).squeeze(-1), weights


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties), averaged over events; 0 when there are none.

    Parameters
    ----------
    risk
        ``(n,)`` log-hazard scores.
    time
        ``(n,)`` follow-up times.
    event
        ``(n,)`` True (or 1) where the event was observed, False (or 0) where censored.

    Returns
    -------
    Scalar loss.

    Examples
    --------
    >>> import torch
    >>> from storm_sc.clinical import cox_loss
    >>> t = torch.tensor([1.0, 2.0, 3.0]); e = torch.tensor([True, True, False])
    >>> bool(cox_loss(torch.tensor([2.0, 1.0, 0.0]), t, e) < cox_loss(torch.tensor([0.0, 1.0, 2.0]), t, e))
    True
    """
    if event.dtype != torch.bool:
        # An integer tensor would index rows (0 and 1) instead of selecting the events.
        if not bool(((event == 0) | (event == 1)).all()):
            found = torch.unique(event[(event != 0) & (event != 1)])[:5].tolist()
            raise ValueError(f"`event` must be bool or 0/1 (1 = event observed); found {found}.")
        event = event == 1
    if not bool(event.any()):
        return risk.sum() * 0.0
    order = torch.argsort(time, descending=True, stable=True)
    r, t, e = risk[order], time[order], event[order]
    log_cum = torch.logcumsumexp(r, dim=0)
    # Breslow: everyone with the same time is in the risk set, so a tie group uses the cumulative sum at its end.
    t_np = t.detach().cpu().numpy()
    last = np.searchsorted(-t_np, -t_np, side="right") - 1
    denom = log_cum[torch.as_tensor(last, device=risk.device)]
    return -((r - denom)[e]).mean()


@dataclass(frozen=True)
class MILSettings:
    """Training settings of the MIL aggregator (see :func:`storm_sc.tl.fit_outcome`).

    Parameters
    ----------
    aggregator
        ``"abmil"`` (gated attention over the tiles, Ilse et al. 2018) or ``"mean"`` (mean of the tiles).
    hidden_dim
        Width of the aggregator's hidden layer.
    dropout
        Dropout rate in ``[0, 1)`` of the hidden layer while training.
    epochs
        Passes over the training patients of each fold.
    learning_rate, weight_decay
        AdamW's.
    batch_size
        Patients per optimiser step.
    max_tiles
        At most this many tiles of a slide per step, drawn afresh every epoch (bounds memory on large slides;
        ``None``: all).

    Examples
    --------
    >>> from storm_sc.clinical import MILSettings
    >>> settings = MILSettings(aggregator="mean", epochs=10)
    >>> settings.aggregator, settings.epochs, settings.hidden_dim, settings.max_tiles
    ('mean', 10, 64, 4096)
    """

    aggregator: str = "abmil"
    hidden_dim: int = 64
    dropout: float = 0.25
    epochs: int = 40
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    max_tiles: int | None = 4096

    def __post_init__(self) -> None:
        check_aggregator(self.aggregator)
        for name in ("hidden_dim", "epochs", "batch_size", "max_tiles"):
            value = getattr(self, name)
            if not (value is None and name == "max_tiles") and not (is_integer(value) and value >= 1):
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        checks = {
            "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
            "learning_rate": (lambda v: v > 0, "a positive number"),
            "weight_decay": (lambda v: v >= 0, "a number >= 0"),
        }
        for name, (valid, wanted) in checks.items():
            value = getattr(self, name)
            if not (is_real(value) and valid(value)):
                raise ValueError(f"`{name}` must be {wanted}; got {value!r}.")


def check_aggregator(aggregator: str) -> None:
    """Refuse an aggregator name that :func:`build_mil` does not know."""
    if aggregator not in AGGREGATORS:
        raise ValueError(f"`aggregator` must be one of {AGGREGATORS}; got {aggregator!r}.")


def build_mil(in_dim: int, settings: MILSettings) -> nn.Module:
    """Build the aggregator network named by ``settings.aggregator``."""
    if settings.aggregator == "abmil":
        return GatedAttentionMIL(in_dim, hidden_dim=settings.hidden_dim, dropout=settings.dropout)
    return MeanPoolMIL(in_dim, hidden_dim=settings.hidden_dim, dropout=settings.dropout)


def _pad(bags: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    n_max = max(len(b) for b in bags)
    d = bags[0].shape[1]
    x = np.zeros((len(bags), n_max, d), dtype=np.float32)
    mask = np.zeros((len(bags), n_max), dtype=bool)
    for i, b in enumerate(bags):
        x[i, : len(b)] = b
        mask[i, : len(b)] = True
    return torch.from_numpy(x).to(device), torch.from_numpy(mask).to(device)


def train_mil(
    bags: Sequence[np.ndarray],
    *,
    task: str,
    y: np.ndarray | None = None,
    time: np.ndarray | None = None,
    event: np.ndarray | None = None,
    settings: MILSettings,
    seed: int,
    device: torch.device,
) -> nn.Module:
    """Train an aggregator on standardised bags (one per patient) and return it in evaluation mode.

    Response: binary cross-entropy, positives up-weighted by the class ratio. Survival: Cox partial likelihood over
    each mini-batch of patients. Each step sees at most ``max_tiles`` tiles per bag, drawn afresh every epoch.
    """
    rng = np.random.default_rng(seed)
    with seeded_torch(seed):
        net = build_mil(bags[0].shape[1], settings).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
        if task == "response":
            pos = float(np.sum(y))
            pos_weight = torch.tensor((len(y) - pos) / max(pos, 1.0), device=device)
            bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        net.train()
        n = len(bags)
        for _ in range(settings.epochs):
            order = rng.permutation(n)
            for lo in range(0, n, settings.batch_size):
                idx = order[lo : lo + settings.batch_size]
                batch = [_subsample(bags[i], settings.max_tiles, rng) for i in idx]
                x, mask = _pad(batch, device)
                score, _ = net(x, mask)
                if task == "response":
                    loss = bce(score, torch.as_tensor(y[idx], dtype=torch.float32, device=device))
                else:
                    loss = cox_loss(score, torch.as_tensor(time[idx], dtype=torch.float32, device=device),
                                    torch.as_tensor(event[idx], dtype=torch.bool, device=device))  # fmt: skip
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    net.eval()
    return net


def _subsample(bag: np.ndarray, max_tiles: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_tiles is None or len(bag) <= max_tiles:
        return bag
    return bag[np.sort(rng.choice(len(bag), size=max_tiles, replace=False))]


@torch.no_grad()
def predict_mil(
    net: nn.Module, bags: Sequence[np.ndarray], device: torch.device
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scores ``(n_bags,)`` and per-bag attention weights over all tiles (one bag at a time, no subsampling)."""
    scores, attention = [], []
    for bag in bags:
        x, mask = _pad([bag], device)
        s, a = net(x, mask)
        scores.append(float(s[0]))
        attention.append(a[0].cpu().numpy().astype(np.float32))
    return np.asarray(scores, dtype=np.float64), attention


class Standardiser:
    """Per-feature mean and standard deviation of the training tiles, applied to every bag of a fold."""

    def __init__(self, bags: Sequence[np.ndarray]) -> None:
        total = sum(len(b) for b in bags)
        mean = sum(b.sum(axis=0, dtype=np.float64) for b in bags) / total
        var = sum(((b - mean) ** 2).sum(axis=0, dtype=np.float64) for b in bags) / max(total - 1, 1)
        self.mean = mean.astype(np.float32)
        # Constant features (e.g. a gene predicted identically everywhere) stay zero instead of dividing by zero.
        self.scale = np.where(var > 1e-12, np.sqrt(var), 1.0).astype(np.float32)

    def __call__(self, bag: np.ndarray) -> np.ndarray:
        return (bag - self.mean) / self.scale
