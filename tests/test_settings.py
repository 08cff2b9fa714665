"""st.settings: verbosity on scanpy's scale as well as logging's, progress bars following it."""

from __future__ import annotations

import logging

import pytest

import storm_sc as st
from storm_sc._settings import logger


@pytest.fixture
def restore_level():
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.parametrize(
    ("given", "level"),
    [(0, logging.ERROR), (1, logging.WARNING), (2, logging.INFO), (3, logging.INFO), (4, logging.DEBUG),
     ("warning", logging.WARNING), (logging.DEBUG, logging.DEBUG), (logging.ERROR, logging.ERROR)],
)  # fmt: skip
def test_verbosity_takes_scanpys_scale_and_logging_levels(restore_level, given, level):
    st.settings.verbosity = given
    assert st.settings.verbosity == logger.level == level
    # warnings only (scanpy's 1): no progress bars, which follow the INFO level
    assert st.settings.show_progress() == (level <= logging.INFO and st.settings.progress)


@pytest.mark.parametrize("bad", [5, -1, True, 2.0, "LOUD"])
def test_bad_verbosity_is_refused_and_the_level_kept(restore_level, bad):
    before = logger.level
    with pytest.raises((TypeError, ValueError)):
        st.settings.verbosity = bad
    assert logger.level == before


def test_verbosity_reads_back_as_it_is_set(restore_level):
    import numpy as np

    st.settings.verbosity = np.int64(1)  # numpy integers are integers
    assert st.settings.verbosity == logging.WARNING
    logger.setLevel(logging.NOTSET)  # as an application may leave it: saving and restoring must not mean "errors"
    saved = st.settings.verbosity
    st.settings.verbosity = saved
    assert logger.getEffectiveLevel() == saved != logging.ERROR
