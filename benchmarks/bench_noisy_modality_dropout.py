"""noisy_modality_dropout: eager reference vs torch.compile(reference) vs each built backend."""

import pytest
import torch
from bench_utils import PROVIDERS, devices, nbytes, run, runner, skip_unless_usable

from mmfast import ops
from mmfast.ops import reference

#: CPU: 64 MB of fp32 video-like input; GPU: the issue's (256, 8, 3, 112, 112) bf16 case.
SHAPES = {"cpu": [(64, 8, 3, 64, 128)], "cuda": [(256, 8, 3, 112, 112)]}
CASES = [(d, s) for d in devices() for s in SHAPES[d]]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("device,shape", CASES, ids=lambda v: str(v))
def test_bench_noisy_modality_dropout(benchmark, provider, dtype, device, shape):
    skip_unless_usable("noisy_modality_dropout", provider, device)
    x = torch.randn(shape, device=device, dtype=dtype)
    B = shape[0]
    p = torch.full((B,), 0.25, device=device)
    sigma = torch.tensor([0.1, 0.2, 0.4], device=device)
    noise = runner("noisy_modality_dropout", provider,
                   lambda x, p, s: reference.noisy_modality_dropout(x, p, s, True, 5, 1, 0.0),
                   lambda x, p, s, backend: ops.noisy_modality_dropout(
                       x, p, s, 5, 1, sigma_mode="levels", backend=backend))
    benchmark.group = f"noisy_modality_dropout-{dtype}-{shape}-{device}"
    run(benchmark, lambda: noise(x, p, sigma), device, 2 * nbytes(x) + 9 * B, nbytes(x),
        op="noisy_modality_dropout", provider=provider, mode="fwd", dtype=str(dtype),
        shape=list(shape))
