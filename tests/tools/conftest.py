"""A small STORM model trained for real on generated slides, shared by the tool tests."""

from __future__ import annotations

import pytest

import storm_sc as st


@pytest.fixture(scope="session")
def toy_sdata_factory():
    def make(seed: int = 0, *, image: bool = True, n_obs: int = 240):
        return st.datasets.toy(n_obs=n_obs, n_genes=40, n_domains=3, image=image, seed=seed)

    return make


@pytest.fixture(scope="session")
def trained_model(toy_sdata_factory):
    train = toy_sdata_factory(seed=11)
    model = st.models.StormModel("storm-tiny", train["table"].var_names, seed=0)
    model.fit([train], max_epochs=10, batch_size=16, val_fraction=0.0, seed=0, verbose=False)
    return model
