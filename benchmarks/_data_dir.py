"""Where the benchmark scripts find the real public datasets."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``$STORM_SC_DATA_DIR``, else ``../shared/data`` next to the repository.

    Returns
    -------
    The folder holding the datasets (``her2st/``, ``dlpfc_151675/``, ``mob/``, ...).

    Examples
    --------
    >>> default_data_dir().name  # doctest: +SKIP
    'data'
    """
    env = os.environ.get("STORM_SC_DATA_DIR")
    return Path(env).expanduser() if env else (REPO_ROOT.parent / "shared" / "data")
