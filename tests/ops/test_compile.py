"""Every op under torch.compile(fullgraph=True): fake kernels, autograd and dispatch must trace
without graph breaks, and the compiled result must equal eager."""

import pytest
import torch

from mmfast import ops
from tests.ops.helpers import require

ALL_OPS = ("masked_fusion", "certified_margin", "noisy_modality_dropout", "subset_accuracy")


def all_ops_step(x, mask, weight, z, target, lip, backend):
    y, _ = ops.masked_fusion(x, mask, weight, backend=backend)
    noisy, keep, _ = ops.noisy_modality_dropout(y, 0.25, 0.1, seed=3, offset=1, backend=backend)
    radius, margin, _ = ops.certified_margin(z, target, lip, mask, backend=backend)
    acc = ops.subset_accuracy(z, target, present=mask, backend=backend)
    loss = noisy.square().mean() - radius.clamp(-10, 10).mean() + margin.mean()
    return loss, acc, keep


# The reference path under compile is exercised by the benchmarks' "compile" provider; CI
# compiles the kernel backends only (each compile costs tens of seconds on 2 cores).
@pytest.mark.parametrize("backend,device", [("cpp", "cpu"), ("triton", "cpu"), ("cuda", "cuda"),
                                            ("triton", "cuda")])
def test_fullgraph_forward_backward(backend, device):
    for op in ALL_OPS:
        dev = require(op, backend, device)
    torch._dynamo.reset()
    B, M, D, C = 6, 3, 8, 5
    x = torch.randn(B, M, D, device=dev, requires_grad=True)
    mask = torch.rand(B, M, device=dev) < 0.7
    mask[:, 0] = True
    weight = torch.rand(M, device=dev, requires_grad=True)
    z = torch.randn(B, M, C, device=dev, requires_grad=True)
    target = torch.randint(0, C, (B,), device=dev)
    lip = torch.rand(M, C, C, device=dev) + 0.5
    args = (x, mask, weight, z, target, lip, backend)

    eager = all_ops_step(*args)
    eager_grads = torch.autograd.grad(eager[0], (x, weight, z))
    compiled = torch.compile(all_ops_step, fullgraph=True, dynamic=False)(*args)
    compiled_grads = torch.autograd.grad(compiled[0], (x, weight, z))
    torch.testing.assert_close(compiled[0], eager[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled[1], eager[1])
    assert torch.equal(compiled[2], eager[2])
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e, atol=1e-5, rtol=1e-5)
