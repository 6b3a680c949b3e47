"""Shared by the op tests: backend/device cases, per-dtype tolerances, sample masks."""

from __future__ import annotations

import pytest
import torch

from mmfast.ops._dispatch import unavailable_reason

#: (atol, rtol) of a backend against the reference, per input dtype. Half-precision outputs are
#: rounded once from the float32 accumulator, so one unit in the last place is allowed.
TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

_CASES = [("cpp", "cpu"), ("triton", "cpu"), ("cuda", "cuda"), ("triton", "cuda"),
          ("reference", "cuda")]
#: every non-reference backend x device; unavailable ones skip with the reason.
BACKENDS = [pytest.param(b, d, id=f"{b}-{d}") for b, d in _CASES]


def require(op: str, backend: str, device: str) -> torch.device:
    """Skip unless ``backend`` can run ``op`` on ``device``; returns the torch.device."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    dev = torch.device(device)
    reason = unavailable_reason(op, backend, dev)
    if reason is not None:
        pytest.skip(reason)
    return dev


def assert_close(actual, expected, dtype, scale: float = 1.0):
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(actual, expected, atol=atol * scale, rtol=rtol, equal_nan=True)


def presence_mask(B: int, M: int, device, p_present: float = 0.6) -> torch.Tensor:
    """Random (B, M) presence with row 0 all-missing and (when B > 1) row 1 all-present."""
    mask = torch.rand(B, M, device=device) < p_present
    if B > 0:
        mask[0] = False
    if B > 1:
        mask[1] = True
    return mask


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """The same values, contiguous, but starting one element past the allocation's (16-byte
    aligned) start: kernels that load 16-byte vectors must notice and take their scalar path."""
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buffer[1:].view(t.shape).copy_(t)
    assert out.is_contiguous() and out.data_ptr() % 16 != 0
    return out


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout (a transposed copy transposed back)."""
    if t.dim() < 2:
        return torch.stack([t, t], dim=-1)[..., 0]
    out = t.transpose(0, -1).contiguous().transpose(0, -1)
    assert t.numel() <= 1 or not out.is_contiguous() or t.shape[0] == 1 or t.shape[-1] == 1
    return out
