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


def subset_scores_contract(z, subsets, weight=None, present=None) -> torch.Tensor:
    """(S, B, C) reference subset scores under BRIEF contract 3: a modality outside the
    subset or absent is selected out (never read), so NaN there cannot leak."""
    from mmfast.ops import reference

    out = []
    for chosen in subsets:
        mask = chosen[None, :].expand(z.shape[0], -1)
        if present is not None:
            mask = mask & present
        zs = torch.where(mask[:, :, None], z, torch.zeros((), dtype=z.dtype))
        out.append(reference.masked_fusion(zs, mask, weight, True)[0])
    return torch.stack(out) if out else z.new_empty((0, z.shape[0], z.shape[2]))


def expected_correct(z, target, subsets, weight=None, present=None) -> torch.Tensor:
    """(S,) int64 hits under BRIEF contract 3: :func:`subset_scores_contract`, argmax with the
    lowest index on ties, and a row whose scores contain NaN counts as wrong."""
    scores = subset_scores_contract(z, subsets, weight, present)
    hit = (scores.argmax(dim=2) == target[None, :]) & ~scores.isnan().any(dim=2)
    return hit.sum(dim=1)
