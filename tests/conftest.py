"""Test-wide set-up: Triton runs on the CPU under its interpreter when there is no GPU (the
variable must be set before any @triton.jit runs), and every test starts from a fixed seed."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
