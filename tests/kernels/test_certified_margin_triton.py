"""certified_margin Triton launchers: class chunks (C wider than one block), ties across
chunks, degenerate denominators, every dual norm, and the backward against autograd."""

from __future__ import annotations

import math

import pytest
import torch

from mmfast.kernels import certified_margin_triton as cm
from mmfast.ops import reference
from tests.kernels.helpers import assert_close, kernel_device

P_NORMS = [2.0, 1.0, math.inf, 3.0]  # dual exponents 2, inf, 1 and 1.5


def _inputs(B, M, C, dtype, full_lip, device, integer_scores=False):
    acc = reference.opmath_dtype(dtype)
    if integer_scores:  # many exact ties, also between classes in different chunks
        z = torch.randint(-2, 3, (B, M, C), device=device).to(dtype)
    else:
        z = torch.randn(B, M, C, dtype=dtype, device=device)
    target = torch.randint(0, C, (B,), device=device)
    shape = (M, C, C) if full_lip else (M,)
    lip = torch.rand(shape, dtype=acc, device=device) + 0.1
    mask = torch.rand(B, M, device=device) < 0.7
    mask[0] = False  # den = 0: radius +-inf / 0 by the margin's sign
    bias = torch.randn(C, dtype=acc, device=device)
    return z, target, lip, mask, bias


@pytest.mark.parametrize("B, M, C", [(13, 3, 300), (6, 8, 10), (5, 1, 2)])
@pytest.mark.parametrize("p", P_NORMS)
@pytest.mark.parametrize("rival", ["min", "top"])
def test_forward_matches_reference(B, M, C, p, rival):
    device = kernel_device()
    z, target, lip, mask, bias = _inputs(B, M, C, torch.float32, C != 10, device)
    radius, margin, runner_up = cm.forward(z, target, lip, mask, bias, reference.dual_exponent(p),
                                           rival == "top")
    r_ref, m_ref, k_ref = reference.certified_margin(z, target, lip, mask, bias, p, rival)
    torch.testing.assert_close(runner_up, k_ref, atol=0, rtol=0)
    assert_close(radius, r_ref, torch.float32)
    assert_close(margin, m_ref, torch.float32)
    assert torch.isinf(radius[0]) or radius[0] == 0  # the all-missing row


@pytest.mark.parametrize("rival", ["min", "top"])
def test_ties_across_chunks_pick_the_lowest_class(rival):
    device = kernel_device()
    z, target, lip, mask, bias = _inputs(16, 2, 300, torch.float32, False, device, True)
    out = cm.forward(z, target, torch.ones_like(lip), None, None, 2.0, rival == "top")
    expected = reference.certified_margin(z, target, torch.ones_like(lip), None, None, 2.0, rival)
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("p", P_NORMS)
@pytest.mark.parametrize("full_lip", [True, False])
def test_backward_matches_autograd(dtype, p, full_lip):
    device = kernel_device()
    B, M, C = 7, 3, 150
    z, target, lip, mask, bias = _inputs(B, M, C, dtype, full_lip, device)
    q = reference.dual_exponent(p)
    radius, margin, runner_up = cm.forward(z, target, lip, mask, bias, q, False)
    acc = reference.opmath_dtype(dtype)
    z_leaf = z.to(acc).requires_grad_(True)
    lip_leaf = lip.clone().requires_grad_(True)
    r_ref, m_ref, _ = reference.certified_margin(z_leaf, target, lip_leaf, mask, bias, p)
    finite = torch.isfinite(r_ref)
    grad_r = torch.randn(B, dtype=acc, device=device) * finite
    grad_m = torch.randn(B, dtype=acc, device=device)
    (r_ref[finite] * grad_r[finite]).sum().add((m_ref * grad_m).sum()).backward()

    grad_z, grad_lip_sel = cm.backward(grad_r, grad_m, z, target, lip, mask, margin, runner_up, q)
    assert grad_z.dtype == dtype and grad_lip_sel.shape == (B, M)
    assert_close(grad_z, z_leaf.grad, dtype)
    if full_lip:  # grad_lip_sel_bm is the gradient w.r.t. lip[m, y_b, k*_b]
        grad_lip = torch.zeros_like(lip)
        rows = torch.arange(M, device=device)
        for b in range(B):
            grad_lip[rows, target[b], runner_up[b]] += grad_lip_sel[b]
    else:
        grad_lip = grad_lip_sel.sum(dim=0)
    assert_close(grad_lip, lip_leaf.grad, acc)


def test_single_class_and_empty_batch():
    device = kernel_device()
    z = torch.randn(3, 2, 1, device=device)
    target = torch.zeros(3, dtype=torch.int64, device=device)
    lip = torch.ones(2, device=device)
    radius, margin, runner_up = cm.forward(z, target, lip, None, None, 2.0, False)
    assert torch.all(torch.isposinf(radius)) and torch.all(margin == 0)
    assert torch.all(runner_up == -1)
    grad_z, grad_lip = cm.backward(torch.ones(3, device=device), torch.ones(3, device=device), z,
                                   target, lip, None, margin, runner_up, 2.0)
    assert torch.all(grad_z == 0) and torch.all(grad_lip == 0)
    empty = cm.forward(z[:0], target[:0], lip, None, None, 2.0, True)
    assert [t.shape for t in empty] == [(0,), (0,), (0,)]


def test_bad_lip_shape_raises():
    device = kernel_device()
    z = torch.randn(2, 3, 4, device=device)
    target = torch.zeros(2, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match=r"lip must be \(3,\) or \(3, 4, 4\), got \(2,\)"):
        cm.forward(z, target, torch.ones(2, device=device), None, None, 2.0, False)
