"""Seeded blocks of code that leave the caller's global random state as it was."""

from __future__ import annotations

import contextlib
import functools
import os
import random
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import numpy as np
import torch

P = ParamSpec("P")
R = TypeVar("R")


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


# Environment variables through which Lightning's seed_everything hands its seed to worker processes.
_LIGHTNING_SEED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


@contextlib.contextmanager
def global_random_state_kept() -> Iterator[None]:
    """Run a block that seeds Python's, NumPy's and torch's global generators, then give the caller's back.

    Training seeds them all (Lightning's ``seed_everything``) so that a run is reproducible; a user who seeded
    their own analysis must not find it reset by ``model.fit`` or ``storm_embed(adapt_epochs=...)``.

    Examples
    --------
    >>> import numpy as np
    >>> _ = np.random.seed(5)
    >>> with global_random_state_kept():
    ...     np.random.seed(0)
    >>> float(np.random.rand()) == float(np.random.RandomState(5).rand())
    True
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    env = {key: os.environ.get(key) for key in _LIGHTNING_SEED_ENV}
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def keeps_global_random_state(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a function that seeds the global generators so that it runs inside :func:`global_random_state_kept`.

    Examples
    --------
    >>> import numpy as np
    >>> @keeps_global_random_state
    ... def reseeds():
    ...     np.random.seed(0)
    >>> _ = np.random.seed(5); reseeds()
    >>> float(np.random.rand()) == float(np.random.RandomState(5).rand())
    True
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with global_random_state_kept():
            return fn(*args, **kwargs)

    return wrapper


# The golden-ratio increment of SplitMix64 (2**64 / phi): successive counters of one seed land far apart.
GOLDEN = 0x9E3779B97F4A7C15


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser, elementwise on uint64 (wrapping arithmetic): a well-mixed 64-bit hash.

    Examples
    --------
    >>> a = splitmix64(np.arange(3, dtype=np.uint64))
    >>> a.dtype, len(set(a.tolist()))
    (dtype('uint64'), 3)
    """
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def counter_uniforms(seeds: np.ndarray, start: int, count: int) -> np.ndarray:
    """``(len(seeds), count)`` uniforms in ``[0, 1)``: positions ``start`` onwards of each seed's own stream.

    Counter-based: a row's numbers depend on its seed and their position only, so rows drawn together in any
    batch and any order get the same numbers.

    Examples
    --------
    >>> seeds = np.array([7, 8], dtype=np.uint64)
    >>> bool((counter_uniforms(seeds, 0, 3)[:, 1:] == counter_uniforms(seeds, 1, 2)).all())
    True
    """
    counters = np.arange(start + 1, start + count + 1, dtype=np.uint64) * np.uint64(GOLDEN)
    bits = splitmix64(seeds[:, None] + counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
