"""Package-wide settings: verbosity and the data directory."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("storm_sc")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s [storm_sc] %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    # scanpy and spatialdata log through the root logger; do not print our lines twice.
    logger.propagate = False

# Warnings about the data itself (an image coarser than the model's patches) already given in this session.
_WARNED: set[str] = set()


def warn_once(message: str, *args: object) -> None:
    """Log a warning the first time this exact text comes up in the session, later ones at debug level.

    Every tool call on a slide would otherwise repeat what is true of the slide (a notebook re-run, embed then
    predict then fit on one slide), and the repeats drown the warnings that are new.
    """
    text = message % args if args else message
    if text in _WARNED:
        logger.debug("%s (warned before)", text)
        return
    _WARNED.add(text)
    logger.warning(text)


DATA_DIR_ENV = "STORM_SC_DATA_DIR"
# scanpy's verbosity 0-4 (errors, warnings, info, hints, debug) as logging levels: scverse users set it that way.
_SCANPY_LEVELS = (logging.ERROR, logging.WARNING, logging.INFO, logging.INFO, logging.DEBUG)


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Hold the named loggers at ``level`` or above for the duration, then restore their levels.

    For libraries whose informational messages restate, on every call, what storm_sc logs once in its own words
    (squidpy announcing each neighbour graph, Lightning its accelerator); their warnings still show.
    """
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), level))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def messages_from_rank_zero(fn: Callable[P, R]) -> Callable[P, R]:
    """Only the first process of a data-parallel run logs storm_sc's warnings and information (errors: all).

    Every process of a training run reads the same slides and fits the same readout, so each message would repeat
    once per GPU. The rank is the launcher's (torchrun, SLURM), as Lightning reads it.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from lightning.pytorch.utilities import rank_zero_only

        if getattr(rank_zero_only, "rank", 0) == 0:
            return fn(*args, **kwargs)
        with quiet_loggers("storm_sc", level=logging.ERROR):
            return fn(*args, **kwargs)

    return wrapper


class _Settings:
    """Global settings of storm_sc (``st.settings``).

    Attributes
    ----------
    verbosity
        Level of the ``storm_sc`` logger: scanpy's scale (0 errors, 1 warnings, 2 info, 3 hints, 4 debug, as
        ``sc.settings.verbosity``), a :mod:`logging` level name (``"INFO"``) or a :mod:`logging` number (10 and
        above). Reads back as the :mod:`logging` number.
    data_dir
        Where datasets and checkpoints are cached. Defaults to ``$STORM_SC_DATA_DIR`` or the
        platform cache folder (``~/.cache/storm_sc`` on Linux).
    progress
        Show tqdm progress bars for long work.
    """

    def __init__(self) -> None:
        self._data_dir: Path | None = None
        self.progress: bool = True

    @property
    def verbosity(self) -> int:
        # the effective level: a logger left at NOTSET (0) by an application would read back as scanpy's "errors"
        return logger.getEffectiveLevel()

    @verbosity.setter
    def verbosity(self, level: int | str) -> None:
        if isinstance(level, str):
            level = level.upper()
        elif isinstance(level, bool) or not isinstance(level, int | np.integer):
            raise TypeError(f"`verbosity` must be 0-4 (scanpy's scale), a logging level name or number; got {level!r}.")
        elif 0 <= level < len(_SCANPY_LEVELS):
            level = _SCANPY_LEVELS[int(level)]
        elif level < logging.DEBUG:
            raise ValueError(
                f"`verbosity` must be 0-4 (scanpy's scale) or a logging level (10 and above); got {level}."
            )
        logger.setLevel(level if isinstance(level, str) else int(level))

    @property
    def data_dir(self) -> Path:
        if self._data_dir is not None:
            return self._data_dir
        env = os.environ.get(DATA_DIR_ENV)
        if env:
            return Path(env).expanduser()
        import pooch

        return Path(pooch.os_cache("storm_sc"))

    @data_dir.setter
    def data_dir(self, path: str | os.PathLike | None) -> None:
        self._data_dir = None if path is None else Path(path).expanduser()

    def show_progress(self, verbose: bool | None = None) -> bool:
        """Whether a progress bar should be shown, honouring an explicit ``verbose`` first."""
        if verbose is not None:
            return bool(verbose)
        return self.progress and logger.isEnabledFor(logging.INFO)


settings = _Settings()
