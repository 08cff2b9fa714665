"""Fixtures of the reliability tests: one briefly trained storm-tiny model and small generated slides."""

from __future__ import annotations

import pytest

import storm_sc as st
from tests._torch_threads import one_torch_thread  # noqa: F401  (autouse: one torch thread per module)

# Small slides: each tool call costs well under a second, so that a corpus of many cases stays fast.
N_OBS = 80
N_GENES = 30


def toy_slide(seed: int = 1, *, image: bool = True, n_obs: int = N_OBS):
    """A generated slide whose genes are the model's vocabulary (``gene_0000`` ...)."""
    return st.datasets.toy(n_obs=n_obs, n_genes=N_GENES, n_domains=3, image=image, seed=seed)


@pytest.fixture(scope="session")
def storm_tiny() -> st.models.StormModel:
    """A storm-tiny trained for one epoch: real weights (not the initialisation) at little cost."""
    train = toy_slide(seed=21, n_obs=120)
    model = st.models.StormModel("storm-tiny", train["table"].var_names, seed=0)
    model.fit([train], max_epochs=1, batch_size=32, val_fraction=0.0, seed=0, verbose=False)
    return model
