"""A fixture shared by the conftests of suites that run many tiny torch models."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread: tiny tensors gain nothing from more, and a shared CPU suffers from oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
