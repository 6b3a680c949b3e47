"""Test-wide set-up: Triton runs on the CPU under its interpreter when there is no GPU (the
variable must be set before any @triton.jit runs), and every test starts from a fixed seed."""

import os
from pathlib import Path

# Compilation caches of torch.compile and Triton go inside the checkout (git-ignored .cache/).
_CACHE = Path(__file__).resolve().parents[1] / ".cache"
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_CACHE / "torchinductor"))
os.environ.setdefault("TRITON_CACHE_DIR", str(_CACHE / "triton"))

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
