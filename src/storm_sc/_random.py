"""Seeded blocks of torch code that leave the caller's global random state as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded_torch(seed: int | None) -> Iterator[None]:
    """Seed torch's global generators for a block, then restore the caller's state: the CPU's and every GPU's.

    ``torch.manual_seed`` seeds the GPUs' generators too, so forking only the CPU's (``fork_rng(devices=[])``)
    would leave the caller's GPU random state replaced after the block.

    Parameters
    ----------
    seed
        Seed for the block (``None``: the state is only forked, not seeded).

    Examples
    --------
    >>> before = torch.rand(1)
    >>> with seeded_torch(0):
    ...     a = torch.rand(1)
    >>> with seeded_torch(0):
    ...     b = torch.rand(1)
    >>> bool(a == b)
    True
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield
