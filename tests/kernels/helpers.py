"""Shared by the Triton kernel tests: the device the kernels run on here, and tolerances."""

from __future__ import annotations

import os

import pytest
import torch

#: (atol, rtol) against the reference per input dtype: one rounding of a float32 (float64)
#: accumulator to the output dtype.
TOLERANCE = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-6, 2e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def kernel_device() -> torch.device:
    """cuda when there is a GPU, the CPU under TRITON_INTERPRET=1 (set by tests/conftest.py),
    otherwise skip: Triton has no CPU backend."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    return torch.device("cpu")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                 scale: float = 1.0) -> None:
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(actual, expected.to(actual.dtype), atol=atol * scale, rtol=rtol,
                               equal_nan=True)
