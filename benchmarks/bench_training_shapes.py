"""Training shapes (issue 12 item 1): mmfast against the expression a user writes in its place.

Providers, as users think of them:
  eager          the plain PyTorch expression the op replaces (below: ``eager_fusion``, and
                 ``eager_certified_margin`` = CRMT's step 2: fused logits, fused runner-up,
                 margin over the Lipschitz norm of the pair);
  compile        torch.compile of that expression (static shapes, as a fixed-batch loop gets);
  reference      mmfast.ops.reference (the tests' ground truth);
  mmfast-cpp     the public op on the C++ backend (mmfast-cuda / mmfast-triton on a GPU).
Cases: masked_fusion B in {32, 64, 256, 1024} x M in {2, 3}, D = 512; certified_margin
B in {32, 64, 256, 1024} at C = 31 plus C in {10, 100, 309} at B = 64 and 256; forward ("fwd")
and forward + backward ("full"); and a per-call overhead row at B = 1 ("overhead").

Run (a few minutes on 2 cores; the ratio table: benchmarks/ratios.py):
    pytest benchmarks/bench_training_shapes.py --benchmark-only --benchmark-min-rounds=20 \
        --benchmark-max-time=0.05 --benchmark-json=training.json
    python benchmarks/ratios.py training.json
MMFAST_BENCH_CONTENTION=2 runs the same with two busy processes competing for the cores.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest
import torch
from bench_utils import skip_unless_usable, synchronize

from mmfast import ops
from mmfast.ops import reference

PROVIDERS = ("eager", "compile", "reference", "mmfast-cpp", "mmfast-cuda", "mmfast-triton")
D = 512
FUSION_SHAPES = [(1, 3, D)] + [(B, M, D) for B in (32, 64, 256, 1024) for M in (2, 3)]
MARGIN_SHAPES = ([(1, 3, 31)] + [(B, 3, 31) for B in (32, 64, 256, 1024)]
                 + [(B, 2 if B == 64 else 3, C) for B in (64, 256) for C in (10, 100, 309)])
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", autouse=True)
def _contention():
    """MMFAST_BENCH_CONTENTION=N: N busy-looping processes compete for the cores meanwhile."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(int(os.environ.get("MMFAST_BENCH_CONTENTION", "0")))]
    yield
    for p in procs:
        p.kill()
        p.wait()


# ------------------------------------------------------------------ the user's expressions
def eager_fusion(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the present modalities, as written by hand."""
    m = mask.to(x.dtype)
    return (x * m[..., None]).sum(1) / m.sum(1, keepdim=True)


def eager_certified_margin(z, target, lip, mask, bias):
    """CRMT step 2 as its training code writes it: fused logits h = sum_m mask_m z_m + b, the
    fused runner-up k, margin h_y - h_k and radius margin / ||mask lip[:, y, k]||_2."""
    maskf = mask.to(z.dtype)
    h = (z * maskf[..., None]).sum(1) + bias
    rows = torch.arange(z.shape[0], device=z.device)
    k = h.scatter(1, target[:, None], float("-inf")).argmax(1)
    margin = h[rows, target] - h[rows, k]
    lip_yk = lip[:, target, k].T  # (B, M)
    radius = margin / (maskf * lip_yk).norm(dim=1)
    return radius, margin, k


def _mmfast_fusion(backend):
    return lambda x, mask: ops.masked_fusion(x, mask, backend=backend)[0]


def _mmfast_margin(backend):
    return lambda z, target, lip, mask, bias: ops.certified_margin(
        z, target, lip, mask, bias, 2.0, "top", backend=backend)


def _reference_margin(z, target, lip, mask, bias):
    return reference.certified_margin(z, target, lip, mask, bias, 2.0, "top")


@functools.cache
def _compiled(fn, shape, mode):
    """One static compile per (expression, shape, mode), as a fixed-batch training loop has."""
    del shape, mode  # cache keys only
    return torch.compile(fn, dynamic=False)


def _runner(op: str, provider: str, shape, mode):
    eager, ref, public = {
        "fusion": (eager_fusion, lambda x, m: reference.masked_fusion(x, m)[0], _mmfast_fusion),
        "margin": (eager_certified_margin, _reference_margin, _mmfast_margin),
    }[op]
    if provider == "eager":
        return eager
    if provider == "compile":
        return _compiled(eager, shape, mode)
    if provider == "reference":
        return ref
    return public(provider.removeprefix("mmfast-"))


def _skip(op_name: str, provider: str, device: str):
    if provider.startswith("mmfast-"):
        skip_unless_usable(op_name, provider.removeprefix("mmfast-"), device)


def _time(benchmark, fn, device, **info):
    fn()  # warm-up: compilation, caches
    synchronize(device)

    def timed():
        out = fn()
        synchronize(device)
        return out

    benchmark(timed)
    benchmark.extra_info.update(threads=torch.get_num_threads(), **info)


def _label(shape) -> str:
    return "overhead" if shape[0] == 1 else "train"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "full"])
@pytest.mark.parametrize("shape", FUSION_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("device", DEVICES)
def test_training_masked_fusion(benchmark, provider, mode, shape, device):
    _skip("masked_fusion", provider, device)
    B, M, _ = shape
    x = torch.randn(shape, device=device, requires_grad=mode == "full")
    mask = torch.rand(B, M, device=device) < 0.7
    mask[:, 0] = True  # a present modality per row (the hand-written mean divides by the count)
    grad_y = torch.randn(B, D, device=device)
    fuse = _runner("fusion", provider, shape, mode)
    benchmark.group = f"{_label(shape)}-masked_fusion-{mode}-{shape}-{device}"
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return fuse(x, mask)
    else:
        def fn():
            return torch.autograd.grad(fuse(x, mask), x, grad_y)
    _time(benchmark, fn, device, op="masked_fusion", provider=provider, mode=mode,
          shape=list(shape), kind=_label(shape))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "full"])
@pytest.mark.parametrize("shape", MARGIN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("device", DEVICES)
def test_training_certified_margin(benchmark, provider, mode, shape, device):
    _skip("certified_margin", provider, device)
    B, M, C = shape
    z = torch.randn(shape, device=device, requires_grad=mode == "full")
    target = torch.randint(0, C, (B,), device=device)
    lip = torch.rand(M, C, C, device=device) + 0.5
    mask = torch.rand(B, M, device=device) < 0.8
    mask[:, 0] = True
    bias = 0.1 * torch.randn(C, device=device)
    cert = _runner("margin", provider, shape, mode)
    benchmark.group = f"{_label(shape)}-certified_margin-{mode}-{shape}-{device}"
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return cert(z, target, lip, mask, bias)
    else:
        def fn():
            radius = cert(z, target, lip, mask, bias)[0]
            return torch.autograd.grad(radius.clamp(-1e3, 1e3).mean(), z)
    _time(benchmark, fn, device, op="certified_margin", provider=provider, mode=mode,
          shape=list(shape), kind=_label(shape))
