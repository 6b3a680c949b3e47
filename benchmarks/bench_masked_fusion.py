"""masked_fusion: eager reference vs torch.compile(reference) vs each built backend."""

import pytest
import torch
from bench_utils import PROVIDERS, devices, nbytes, run, runner, skip_unless_usable

from mmfast import ops
from mmfast.ops import reference

#: CPU: 64 MB of fp32 x; GPU: the issue's H100 case (B=65536, M=3, D=1024).
SHAPES = {"cpu": [(16384, 4, 256)], "cuda": [(65536, 3, 1024)]}
CASES = [(d, s) for d in devices() for s in SHAPES[d]]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("device,shape", CASES, ids=lambda v: str(v))
def test_bench_masked_fusion(benchmark, provider, mode, dtype, device, shape):
    skip_unless_usable("masked_fusion", provider, device)
    B, M, D = shape
    x = torch.randn(B, M, D, device=device, dtype=dtype, requires_grad=(mode == "full"))
    mask = torch.rand(B, M, device=device) < 0.7
    weight = torch.rand(M, device=device)
    fuse = runner("masked_fusion", provider, reference.masked_fusion, ops.masked_fusion)
    grad_y = torch.randn(B, D, device=device, dtype=dtype)
    y_bytes = nbytes(grad_y)
    benchmark.group = f"masked_fusion-{mode}-{dtype}-{shape}-{device}"
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return fuse(x, mask, weight)
        moved = nbytes(x, mask) + y_bytes + 4 * B
    else:
        def fn():
            y, _ = fuse(x, mask, weight)
            return torch.autograd.grad(y, x, grad_y)
        moved = 2 * nbytes(x) + 2 * nbytes(mask) + 2 * y_bytes + 4 * B  # fwd + bwd
    run(benchmark, fn, device, moved, nbytes(x), op="masked_fusion", provider=provider,
        mode=mode, dtype=str(dtype), shape=list(shape))
