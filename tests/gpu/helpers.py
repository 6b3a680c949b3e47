"""Shared by the GPU tests (tests/gpu): skip without CUDA, the GPU backends, small inputs and
one callable per op (forward, and a loss for the backward) so every test covers every op."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from mmfast import ops
from mmfast.ops import reference

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="GPU test: needs CUDA (scripts/gpu_check.sh test)")

#: the GPU backends of every op.
GPU_BACKENDS = ("cuda", "triton")


def device() -> torch.device:
    return torch.device("cuda")


@dataclass
class OpCase:
    """One op call on fixed inputs: ``run(backend)`` -> (outputs, grads of the float inputs
    that require grad, or () for ops without a backward)."""

    name: str
    inputs: dict[str, torch.Tensor]
    call: Callable[..., tuple]

    def run(self, backend: str) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        outs = self.call(backend=backend, **self.inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        wrt = [t for t in self.inputs.values() if t.requires_grad]
        floats = [o for o in outs if o.is_floating_point() and o.requires_grad]
        if not wrt or not floats:
            return outs, ()
        loss = sum((o.float() * torch.linspace(0.5, 1.5, o.numel(), device=o.device)
                    .view_as(o)).nan_to_num().sum() for o in floats)
        grads = torch.autograd.grad(loss, wrt)
        return outs, grads


def op_cases(dtype: torch.dtype = torch.float32, B: int = 64) -> list[OpCase]:
    """Every public op once, small, on the GPU; offsets of the noise op as device tensors
    (BRIEF contract 1: no host sync)."""
    dev = device()
    acc = reference.opmath_dtype(dtype)
    M, D, C = 3, 40, 10
    x = torch.randn(B, M, D, device=dev, dtype=dtype, requires_grad=True)
    mask = torch.rand(B, M, device=dev) > 0.3
    weight = (torch.rand(B, M, device=dev, dtype=acc) + 0.1).requires_grad_()
    z = torch.randn(B, M, C, device=dev, dtype=dtype, requires_grad=True)
    target = torch.randint(0, C, (B,), device=dev)
    lip = torch.rand(M, device=dev, dtype=acc) + 0.5
    noise_x = torch.randn(B, 2, 7, device=dev, dtype=dtype, requires_grad=True)
    p = torch.full((B,), 0.3, device=dev)
    sigma = torch.full((B,), 0.5, device=dev)
    offset = torch.tensor(5, dtype=torch.int64, device=dev)
    subsets = reference.all_subsets(M, dev)

    def fusion(x, mask, weight, backend):
        return ops.masked_fusion(x, mask, weight, True, backend=backend)

    def margin(z, target, lip, mask, backend):
        return ops.certified_margin(z, target, lip, mask, None, 2.0, "min", backend=backend)

    def noise(x, p, sigma, offset, backend):
        return ops.noisy_modality_dropout(x, p, sigma, 3, offset, 0.0, backend=backend)

    def logits(z, subsets, backend):
        return ops.subset_logits(z, subsets, backend=backend)

    def accuracy(z, target, subsets, backend):
        return ops.subset_accuracy(z.detach(), target, subsets, backend=backend)

    return [
        OpCase("masked_fusion", dict(x=x, mask=mask, weight=weight), fusion),
        OpCase("certified_margin", dict(z=z, target=target, lip=lip, mask=mask), margin),
        OpCase("noisy_modality_dropout", dict(x=noise_x, p=p, sigma=sigma, offset=offset),
               noise),
        OpCase("subset_logits", dict(z=z, subsets=subsets), logits),
        OpCase("subset_accuracy", dict(z=z, target=target, subsets=subsets), accuracy),
    ]


def case_ids(cases: list[OpCase]) -> list[str]:
    return [c.name for c in cases]


def assert_same(got, want, what: str, atol: float = 0.0, rtol: float = 0.0) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, equal_nan=True,
                                   msg=lambda m, i=i: f"{what} [{i}]: {m}")
