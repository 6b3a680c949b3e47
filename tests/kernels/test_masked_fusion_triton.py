"""masked_fusion Triton launchers at block boundaries (ragged rows and D, several D chunks)."""

from __future__ import annotations

import pytest
import torch

from mmfast.kernels import masked_fusion_triton as mf
from mmfast.ops import reference
from tests.kernels.helpers import assert_close, kernel_device

# (B, M, D): D = 1025 spans two 1024-wide blocks (forward grid, backward chunk loop); B = 17
# leaves a ragged row block; M = 1 and 8 are the extremes; D = 1 is a single lane.
SHAPES = [(17, 3, 1025), (5, 8, 33), (9, 1, 1), (3, 2, 64)]


def _inputs(B, M, D, dtype, weighted, device):
    x = torch.randn(B, M, D, dtype=dtype, device=device)
    mask = torch.rand(B, M, device=device) < 0.6
    mask[0] = False  # a row with nothing present: y = 0, denom = 0
    acc = reference.opmath_dtype(dtype)
    weight = torch.rand(B, M, dtype=acc, device=device) if weighted else None
    return x, mask, weight


@pytest.mark.parametrize("B, M, D", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("normalize", [True, False])
def test_forward_backward_match_reference_autograd(B, M, D, dtype, normalize):
    device = kernel_device()
    weighted = D != 64
    x, mask, weight = _inputs(B, M, D, dtype, weighted, device)
    y, denom = mf.forward(x, mask, weight, normalize)
    y_ref, denom_ref = reference.masked_fusion(x, mask, weight, normalize)
    assert_close(y, y_ref, dtype)
    assert_close(denom, denom_ref, dtype)
    assert torch.all(y[0] == 0)

    acc = reference.opmath_dtype(dtype)
    x_leaf = x.to(acc).requires_grad_(True)
    w_leaf = weight.clone().requires_grad_(True) if weighted else None
    grad_y = torch.randn(B, D, dtype=dtype, device=device)
    out, _ = reference.masked_fusion(x_leaf, mask, w_leaf, normalize)
    out.backward(grad_y.to(acc))
    grad_x, grad_w = mf.backward(grad_y, x, mask, weight, y, denom, normalize, weighted)
    assert grad_x.dtype == dtype and grad_x.shape == x.shape
    assert_close(grad_x, x_leaf.grad, dtype)
    if weighted:
        # a sum over D of products: allow the rounding of D float32 terms
        assert_close(grad_w, w_leaf.grad, torch.float32 if dtype != torch.float64 else dtype,
                     scale=float(D))
    else:
        assert grad_w.shape == (0,)


def test_empty_batch_launches_nothing():
    device = kernel_device()
    x = torch.empty(0, 3, 8, device=device)
    mask = torch.empty(0, 3, dtype=torch.bool, device=device)
    y, denom = mf.forward(x, mask, None, True)
    assert y.shape == (0, 8) and denom.shape == (0,)
    grad_x, grad_w = mf.backward(y, x, mask, None, y, denom, True, False)
    assert grad_x.shape == x.shape and grad_w.shape == (0,)


def test_bad_arguments_raise():
    device = kernel_device()
    x = torch.randn(2, 3, 4, device=device)
    with pytest.raises(TypeError, match="x must have dtype"):
        mf.forward(x.int(), torch.ones(2, 3, dtype=torch.bool, device=device), None, True)
    with pytest.raises(ValueError, match=r"mask must be \(2, 3\), got \(2, 2\)"):
        mf.forward(x, torch.ones(2, 2, dtype=torch.bool, device=device), None, True)
