"""Where the real data lives for the tests, and skipping cleanly when it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# STORM_SC_TEST_DATA overrides where the real public datasets are read from (read-only).
DATA_DIR = Path(os.environ.get("STORM_SC_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))


def real_data(*parts: str) -> Path:
    """Path to a real dataset under the shared data folder, or skip the test with the reason."""
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (set STORM_SC_TEST_DATA to the folder holding it)")
    return path
