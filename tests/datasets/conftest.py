"""Fixtures for the dataset tests: the real data folder as a read-only data directory."""

from __future__ import annotations

from pathlib import Path

import pytest


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def shared_data(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point STORM_SC_DATA_DIR at the shared real data and fail the test if anything in it was added or changed."""
    monkeypatch.setenv("STORM_SC_DATA_DIR", str(data_dir))
    before = _snapshot(data_dir)
    yield data_dir
    after = _snapshot(data_dir)
    added = sorted(set(after) - set(before))
    changed = sorted(k for k in before if k in after and after[k] != before[k])
    assert not added, f"the loader wrote new files into the shared data: {added}"
    assert not changed, f"the loader changed files in the shared data: {changed}"
