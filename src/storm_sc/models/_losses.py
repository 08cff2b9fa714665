"""Training objectives of STORM."""

from __future__ import annotations

import math

import torch
from torch import nn


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    a_all: torch.Tensor | None = None,
    b_all: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) between paired rows of ``a`` and ``b``.

    Parameters
    ----------
    a, b
        ``(n, d)`` embeddings of the two modalities; row ``i`` of ``a`` is paired with row ``i`` of ``b``.
    logit_scale
        Log of the inverse temperature (clamped to at most log 100).
    a_all, b_all
        The same embeddings gathered from every process (data-parallel training): their extra rows serve as
        negatives. ``None``: only the local rows.
    offset
        Position of the local rows inside ``a_all``/``b_all``.

    Returns
    -------
    Scalar loss; 0 (still connected to the graph, gathered rows included) with fewer than two pairs, or with no
    local pair when gathered negatives are given.

    Examples
    --------
    >>> x = torch.eye(4)
    >>> float(info_nce(x, x, torch.tensor(3.0))) < float(info_nce(x, x.flip(0), torch.tensor(3.0)))
    True
    """
    gathered = a_all is not None and b_all is not None
    # With gathered negatives one local pair still has a loss; without, one pair has nothing to be told apart from.
    if a.shape[0] < (1 if gathered else 2):
        zero = a.sum() + b.sum() + logit_scale
        if gathered:
            # The gathered rows must stay in the graph: their backward is a collective that every process joins,
            # and a process that skipped it would leave the others waiting.
            zero = zero + a_all.sum() + b_all.sum()
        return zero * 0.0
    # Logits scaled up to 100 lose too much in bf16 (its spacing near 90 is 0.5): compute them in float32 even
    # under mixed-precision autocast, which would otherwise cast the matmuls' inputs back down.
    with torch.autocast(a.device.type, enabled=False):
        a = nn.functional.normalize(a.float(), dim=-1)
        b = nn.functional.normalize(b.float(), dim=-1)
        a_all = a if a_all is None else nn.functional.normalize(a_all.float(), dim=-1)
        b_all = b if b_all is None else nn.functional.normalize(b_all.float(), dim=-1)
        scale = logit_scale.float().clamp(max=math.log(100.0)).exp()
        target = torch.arange(a.shape[0], device=a.device) + offset
        loss_ab = nn.functional.cross_entropy(scale * a @ b_all.T, target)
        loss_ba = nn.functional.cross_entropy(scale * b @ a_all.T, target)
    return 0.5 * (loss_ab + loss_ba)


def gaussian_nll(
    mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, beta: float = 0.5
) -> torch.Tensor:
    """Heteroscedastic Gaussian negative log-likelihood averaged over the ``mask``-ed entries (beta-NLL).

    Each entry's NLL is weighted by its predicted variance to the power ``beta``, held constant for the gradient
    (Seitzer et al., ICLR 2022). With ``beta = 0`` this is the plain NLL, whose gradient on the mean is divided by
    the variance: a model can then lower the loss by inflating the variance instead of fitting the mean, and
    noisy genes barely train. ``beta = 0.5`` restores a useful gradient on the mean while still learning
    per-gene uncertainty.

    Parameters
    ----------
    mean, logvar
        Predicted mean and log-variance.
    target
        Observed log1p values.
    mask
        Which entries count (measured genes of the observation).
    beta
        Variance weighting exponent in ``[0, 1]``.

    Returns
    -------
    Scalar loss (0, still connected to the graph, when the mask is empty).

    Examples
    --------
    >>> m = torch.zeros(2, 3); lv = torch.zeros(2, 3)
    >>> round(float(gaussian_nll(m, lv, torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))), 4)
    0.9189
    """
    mean, logvar, target = mean.float(), logvar.float(), target.float()
    nll = 0.5 * (logvar + (target - mean) ** 2 * torch.exp(-logvar) + math.log(2 * math.pi))
    if beta:
        nll = nll * torch.exp(beta * logvar).detach()
    w = mask.to(nll.dtype)
    return (nll * w).sum() / w.sum().clamp(min=1.0)
