"""Fixtures of the training tests."""

from __future__ import annotations

import pytest
import torch

import storm_sc as st


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: small models gain nothing from more, and a shared CPU suffers from oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
