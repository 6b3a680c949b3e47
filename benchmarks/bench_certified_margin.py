"""certified_margin: eager reference vs torch.compile(reference) vs each built backend."""

import pytest
import torch
from bench_utils import PROVIDERS, devices, nbytes, run, runner, skip_unless_usable

from mmfast import ops
from mmfast.ops import reference

#: CPU: z of 94 MB fp32 (C=10) and 64 MB (C=100); GPU: the issue's H100 cases.
SHAPES = {"cpu": [(786432, 3, 10), (53687, 3, 100)], "cuda": [(262144, 3, 100), (262144, 3, 10)]}
CASES = [(d, s) for d in devices() for s in SHAPES[d]]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "full"])
@pytest.mark.parametrize("device,shape", CASES, ids=lambda v: str(v))
def test_bench_certified_margin(benchmark, provider, mode, device, shape):
    skip_unless_usable("certified_margin", provider, device)
    B, M, C = shape
    z = torch.randn(B, M, C, device=device, requires_grad=(mode == "full"))
    target = torch.randint(0, C, (B,), device=device)
    lip = torch.rand(M, C, C, device=device) + 0.5
    mask = torch.rand(B, M, device=device) < 0.8
    cert = runner("certified_margin", provider, reference.certified_margin, ops.certified_margin)
    benchmark.group = f"certified_margin-{mode}-{shape}-{device}"
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return cert(z, target, lip, mask)
    else:
        def fn():
            radius, _, _ = cert(z, target, lip, mask)
            return torch.autograd.grad(radius.clamp(-1e3, 1e3).sum(), z)
    out_bytes = B * (4 + 4 + 8)
    moved = nbytes(z, target, lip, mask) + out_bytes
    if mode == "full":
        moved += nbytes(z) + nbytes(target, mask) + out_bytes  # bwd reads inputs, writes grad_z
    run(benchmark, fn, device, moved, nbytes(z), op="certified_margin", provider=provider,
        mode=mode, shape=list(shape))
