"""Shared fixtures."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests._paths import DATA_DIR


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The read-only folder of real public datasets (``../shared/data``)."""
    if not DATA_DIR.exists():
        pytest.skip(f"real data folder not available: {DATA_DIR} (set STORM_SC_TEST_DATA)")
    return DATA_DIR


@pytest.fixture
def datasets_from_shared_data(data_dir):
    """``st.datasets`` loaders read the real data folder (read-only) during the test."""
    import storm_sc as st

    st.settings.data_dir = data_dir
    yield data_dir
    st.settings.data_dir = None


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never let a test write into the user's cache or the shared data: caches go to a temp folder."""
    monkeypatch.setenv("STORM_SC_DATA_DIR", str(tmp_path_factory.getbasetemp() / "storm_cache"))


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each test sees the warnings that are given once per session (storm_sc._settings.warn_once) as new."""
    from storm_sc._settings import _WARNED

    _WARNED.clear()


@pytest.fixture
def storm_log(caplog):
    """caplog that also sees the ``storm_sc`` logger (which does not propagate to the root logger)."""
    logger = logging.getLogger("storm_sc")
    logger.addHandler(caplog.handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old)
