"""Fixtures of the training tests."""

from __future__ import annotations

import pytest

import storm_sc as st
from tests._torch_threads import one_torch_thread  # noqa: F401  (autouse: one torch thread per module)


@pytest.fixture(autouse=True)
def _quiet():
    level = st.settings.verbosity
    st.settings.verbosity = "WARNING"
    yield
    st.settings.verbosity = level


@pytest.fixture(scope="module")
def small_toy():
    return st.datasets.toy(n_obs=200, n_genes=30, n_domains=3, seed=0)


@pytest.fixture(scope="module")
def toy_pair():
    """Two slides of different 'patients' (different seeds)."""
    return {
        "a": st.datasets.toy(n_obs=150, n_genes=30, n_domains=3, seed=1),
        "b": st.datasets.toy(n_obs=150, n_genes=30, n_domains=3, seed=2),
    }
