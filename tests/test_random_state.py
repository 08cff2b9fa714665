"""Seeded blocks keep the caller's random state and never start CUDA themselves."""

from __future__ import annotations

import torch

from storm_sc._random import forked_cuda_devices, seeded_torch


def test_seeded_blocks_restore_the_callers_state():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeded_torch(0):
        inside = torch.rand(2)
    with seeded_torch(0):
        assert torch.equal(torch.rand(2), inside)
    assert torch.equal(torch.rand(3), expected)


def test_gpu_state_is_forked_only_once_cuda_is_in_use(monkeypatch):
    # Forking every GPU's state creates a CUDA context on each: before CUDA is in use that broke Lightning's forked
    # multi-GPU launch in notebooks. Checked on the logic, since this machine has no GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert forked_cuda_devices() == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert forked_cuda_devices() == [3]
