"""Shared benchmark plumbing (pytest-benchmark): backends, the copy-bandwidth yardstick and the
``extra_info`` every result carries. Run: ``pytest benchmarks --benchmark-only``."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "0")  # never benchmark the Triton interpreter


@pytest.fixture(autouse=True)
def _threads_and_seed():
    torch.manual_seed(0)
    yield
