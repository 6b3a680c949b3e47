"""subset_accuracy (every missing-modality pattern): a per-subset loop of eager masked_fusion,
the batched reference (einsum), torch.compile of it, and each built backend."""

import pytest
import torch
from bench_utils import PROVIDERS, devices, nbytes, run, runner, skip_unless_usable

from mmfast import ops
from mmfast.ops import all_subsets, reference

#: CPU: z of 100 MB fp32; GPU: the issue's H100 case (all 15 subsets, B=65536, M=4, C=100).
SHAPES = {"cpu": [(65536, 4, 100)], "cuda": [(65536, 4, 100)]}
CASES = [(d, s) for d in devices() for s in SHAPES[d]]


def per_subset_loop(z, target, subsets):
    """What evaluation code usually does: one masked_fusion + argmax per pattern."""
    B = z.shape[0]
    out = []
    for sub in subsets:
        y, _ = reference.masked_fusion(z, sub.expand(B, -1))
        out.append((y.argmax(-1) == target).float().mean())
    return torch.stack(out)


@pytest.mark.parametrize("provider", ("loop",) + PROVIDERS)
@pytest.mark.parametrize("device,shape", CASES, ids=lambda v: str(v))
def test_bench_subset_accuracy(benchmark, provider, device, shape):
    if provider != "loop":
        skip_unless_usable("subset_accuracy", provider, device)
    B, M, C = shape
    z = torch.randn(B, M, C, device=device)
    target = torch.randint(0, C, (B,), device=device)
    subsets = all_subsets(M, device)
    if provider == "loop":
        acc = per_subset_loop
    else:
        acc = runner("subset_accuracy", provider, reference.subset_accuracy, ops.subset_accuracy)
    benchmark.group = f"subset_accuracy-{shape}-{device}"

    def fn():
        with torch.no_grad():
            return acc(z, target, subsets)

    run(benchmark, fn, device, nbytes(z, target) + 8 * len(subsets), nbytes(z),
        op="subset_accuracy", provider=provider, mode="fwd", shape=list(shape),
        subsets=len(subsets))
