"""The GPU paths the benchmarks run, against the reference (issue #11): bf16/fp16
masked_fusion with D % 8 == 0 (16-byte vectors) aligned and misaligned, forward and backward;
subset_logits with C % 4 == 0; batches of at least twice the resident grid so grid-stride
loops go round; subset_accuracy with C > 113 (class chunks) and S > 512 (several launches);
a non-default stream; float64; fp32 runner_up with a tie-tolerant rule."""

from __future__ import annotations

import pytest
import torch

from mmfast import ops
from mmfast.ops import reference
from tests.gpu.helpers import GPU_BACKENDS, requires_cuda

pytestmark = requires_cuda
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-5, 2e-5),
       torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def _close(got, want, dtype, scale=1.0):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want.to(got.dtype), atol=atol * scale, rtol=rtol,
                               equal_nan=True)


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t whose data pointer is one element past a 16-byte boundary."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = flat[1:].view_as(t)
    out.copy_(t)
    assert out.data_ptr() % 16 != 0
    return out


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_masked_fusion_half_vector_path(backend, aligned, dtype):
    B, M, D = 257, 3, 64  # D % 8 == 0: the 16-byte vector path when aligned
    x = torch.randn(B, M, D, device="cuda", dtype=dtype)
    x = x if aligned else _misaligned(x)
    x.requires_grad_()
    mask = torch.rand(B, M, device="cuda") > 0.3
    weight = (torch.rand(B, M, device="cuda") + 0.1).requires_grad_()
    gy = torch.randn(B, D, device="cuda", dtype=dtype)
    y, denom = ops.masked_fusion(x, mask, weight, True, backend=backend)
    gx, gw = torch.autograd.grad(y, (x, weight), gy)
    xr = x.detach().clone().requires_grad_()
    wr = weight.detach().clone().requires_grad_()
    yr, dr = reference.masked_fusion(xr, mask, wr, True)
    gxr, gwr = torch.autograd.grad(yr, (xr, wr), gy)
    _close(y, yr, dtype)
    _close(denom, dr, torch.float32)
    _close(gx, gxr, dtype)
    _close(gw, gwr, dtype, scale=8.0)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_subset_logits_vector_path(backend):
    z = torch.randn(300, 4, 64, device="cuda")  # C % 4 == 0
    present = torch.rand(300, 4, device="cuda") > 0.2
    got = ops.subset_logits(z, None, None, present, backend=backend)
    want = reference.subset_logits(z, reference.all_subsets(4, "cuda"), None, present)
    _close(got, want, torch.float32)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_grid_stride_batches(backend):
    """100000 x 3 x 1024 (masked_fusion) and 262144 x 3 x 100 (certified_margin): more rows
    than one resident grid holds, so every grid-stride loop goes round."""
    x = torch.randn(100000, 3, 1024, device="cuda")
    mask = torch.rand(100000, 3, device="cuda") > 0.3
    y, denom = ops.masked_fusion(x, mask, None, True, backend=backend)
    yr, dr = reference.masked_fusion(x, mask, None, True)
    _close(y, yr, torch.float32)
    del x, y, yr
    z = torch.randn(262144, 3, 100, device="cuda")
    target = torch.randint(0, 100, (262144,), device="cuda")
    lip = torch.rand(3, device="cuda") + 0.5
    radius, margin, runner = ops.certified_margin(z, target, lip, None, None, 2.0, "top",
                                                  backend=backend)
    rr, mr, kr = reference.certified_margin(z, target, lip, None, None, 2.0, "top")
    _close(radius, rr, torch.float32, scale=10)
    assert (runner == kr).float().mean() > 0.999  # fp32 ties may break differently


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_subset_accuracy_class_chunks_and_many_subsets(backend):
    B, M, C = 3000, 8, 150  # C > 113: the CUDA kernel stages classes in chunks
    z = torch.randn(B, M, C, device="cuda")
    target = torch.randint(0, C, (B,), device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(1)
    subsets = torch.rand(600, M, device="cuda", generator=gen) > 0.5  # S > 512
    got = ops.subset_accuracy(z, target, subsets, backend=backend)
    want = reference.subset_accuracy(z, target, subsets)
    torch.testing.assert_close(got, want.to(got.dtype), atol=1.5 / B, rtol=0)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize(("C", "dtype"), [(1000, torch.float32), (10, torch.float32),
                                          (104, torch.bfloat16), (33, torch.float64)])
def test_subset_accuracy_codes_path(backend, C, dtype):
    """M <= 4: the CUDA kernel scores every subset code (one add per code and class): 16-byte
    vectors (C % V == 0) and scalar rows, 2 to 32 lanes per row, weights, absent modalities,
    repeated subsets and S > 512 in one launch."""
    B, M = 20000, 4
    gen = torch.Generator(device="cuda").manual_seed(C)
    z = torch.randn(B, M, C, device="cuda", generator=gen).to(dtype)
    target = torch.randint(0, C, (B,), device="cuda", generator=gen)
    present = torch.rand(B, M, device="cuda", generator=gen) > 0.3
    weight = torch.rand(B, M, device="cuda", generator=gen, dtype=reference.opmath_dtype(dtype))
    subsets = torch.cat([reference.all_subsets(M, "cuda"),
                         torch.rand(600, M, device="cuda", generator=gen) > 0.5])
    got = ops.subset_accuracy(z, target, subsets, weight + 0.1, present, backend=backend)
    want = reference.subset_accuracy(z, target, subsets, weight + 0.1, present)
    torch.testing.assert_close(got, want.to(got.dtype), atol=1.5 / B, rtol=0)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_non_default_stream(backend):
    stream = torch.cuda.Stream()
    x = torch.randn(4096, 3, 256, device="cuda")
    mask = torch.rand(4096, 3, device="cuda") > 0.3
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        x2 = x * 2  # produced on the side stream: a kernel on another stream would race it
        y, _ = ops.masked_fusion(x2, mask, None, True, backend=backend)
    stream.synchronize()
    _close(y, reference.masked_fusion(x * 2, mask, None, True)[0], torch.float32)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_float64(backend):
    z = torch.randn(500, 3, 10, device="cuda", dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 10, (500,), device="cuda")
    lip = torch.rand(3, device="cuda", dtype=torch.float64) + 0.5
    mask = torch.rand(500, 3, device="cuda") > 0.3
    r, m, k = ops.certified_margin(z, target, lip, mask, None, 2.0, "min", backend=backend)
    rr, mr, kr = reference.certified_margin(z, target, lip, mask, None, 2.0, "min")
    _close(r, rr, torch.float64)
    assert torch.equal(k, kr)
    y, _ = ops.masked_fusion(z, mask, None, True, backend=backend)
    _close(y, reference.masked_fusion(z, mask, None, True)[0], torch.float64)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fp32_runner_up_tie_tolerant(backend):
    """fp32 sums may order near-ties differently from the reference: the chosen rival must
    be a minimiser of the reference's radii up to rounding, and the radius must match."""
    B, M, C = 4096, 3, 100
    z = torch.randn(B, M, C, device="cuda")
    target = torch.randint(0, C, (B,), device="cuda")
    lip = torch.rand(M, C, C, device="cuda") + 0.5
    r, m, k = ops.certified_margin(z, target, lip, None, None, 2.0, "min", backend=backend)
    rr, _, _ = reference.certified_margin(z, target, lip, None, None, 2.0, "min")
    _close(r, rr, torch.float32, scale=10)
    # the reference radius of the kernel's rival, recomputed in float64
    zd, lipd = z.double(), lip.double()
    rows = torch.arange(B, device="cuda")
    margin_k = (zd[rows, :, target] - zd[rows, :, k]).sum(1)
    den_k = lipd[:, target, k].T.norm(dim=1)
    assert torch.all(k != target) and torch.all((k >= 0) & (k < C))
    torch.testing.assert_close(margin_k / den_k, rr.double(), atol=1e-4, rtol=1e-4)
