"""Fixtures for the io tests."""

from __future__ import annotations

import logging

import pytest


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
