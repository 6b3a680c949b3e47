"""masked_fusion: every backend against the reference (values, gradients, dtypes, odd shapes,
B = 0, all-missing rows, non-contiguous inputs), float64 gradcheck, opcheck, errors."""

import pytest
import torch

from mmfast.ops import masked_fusion, reference
from tests.ops.helpers import (
    BACKENDS,
    DTYPES,
    assert_close,
    misaligned,
    non_contiguous,
    presence_mask,
    require,
)

OP = "masked_fusion"
SHAPES = [(5, 3, 7), (1, 1, 1), (0, 2, 4), (17, 8, 33), (4, 2, 130)]


def sample_inputs(shape, device, dtype, weight_kind, requires_grad=False):
    B, M, D = shape
    x = torch.randn(B, M, D, device=device, dtype=dtype, requires_grad=requires_grad)
    mask = presence_mask(B, M, device)
    weight = None
    wdtype = reference.opmath_dtype(dtype)
    if weight_kind == "per_modality":
        weight = torch.rand(M, device=device, dtype=wdtype) + 0.1
    elif weight_kind == "per_sample":
        weight = torch.rand(B, M, device=device, dtype=wdtype)
    if weight is not None and requires_grad:
        weight.requires_grad_(True)
    return x, mask, weight


def slow_masked_fusion(x, mask, weight, normalize):
    """Loop definition in float64 (checks the reference itself)."""
    B, M, D = x.shape
    y = torch.zeros(B, D, dtype=torch.float64)
    for b in range(B):
        w = [float(mask[b, m]) * (1.0 if weight is None else float(weight.expand(B, M)[b, m]))
             for m in range(M)]
        den = sum(w)
        for m in range(M):
            y[b] += w[m] * x[b, m].double()
        if normalize and den > 0:
            y[b] /= den
    return y


@pytest.mark.parametrize("weight_kind", [None, "per_modality", "per_sample"])
@pytest.mark.parametrize("normalize", [True, False])
def test_reference_matches_loop(weight_kind, normalize):
    x, mask, weight = sample_inputs((6, 3, 4), "cpu", torch.float64, weight_kind)
    y, denom = reference.masked_fusion(x, mask, weight, normalize)
    torch.testing.assert_close(y, slow_masked_fusion(x, mask, weight, normalize))
    assert torch.all(y[0] == 0) and denom[0] == 0  # the all-missing row


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("weight_kind", [None, "per_sample"])
def test_forward_matches_reference(backend, device, dtype, shape, weight_kind):
    dev = require(OP, backend, device)
    x, mask, weight = sample_inputs(shape, dev, dtype, weight_kind)
    for normalize in (True, False):
        y, denom = masked_fusion(x, mask, weight, normalize, backend=backend)
        y_ref, denom_ref = reference.masked_fusion(x, mask, weight, normalize)
        assert y.dtype == dtype and y.shape == (shape[0], shape[2])
        assert denom.dtype == torch.float32
        assert_close(y, y_ref, dtype, scale=shape[1])
        torch.testing.assert_close(denom, denom_ref)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_contiguous_but_misaligned_inputs(backend, device, dtype):
    """D a multiple of every vector width, so only the pointer forbids 16-byte vectors."""
    dev = require(OP, backend, device)
    x, mask, weight = sample_inputs((6, 3, 16), dev, dtype, "per_sample")
    x_mis = misaligned(x).requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    y, _ = masked_fusion(x_mis, mask, weight, backend=backend)
    y_ref, _ = reference.masked_fusion(x_ref, mask, weight)
    assert_close(y, y_ref, dtype)
    g = torch.randn_like(y_ref)
    assert_close(torch.autograd.grad(y, x_mis, g)[0], torch.autograd.grad(y_ref, x_ref, g)[0],
                 dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs(backend, device):
    dev = require(OP, backend, device)
    x, mask, weight = sample_inputs((6, 3, 10), dev, torch.float32, "per_sample")
    y, _ = masked_fusion(non_contiguous(x), non_contiguous(mask), non_contiguous(weight),
                         backend=backend)
    assert_close(y, reference.masked_fusion(x, mask, weight)[0], torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("weight_kind", [None, "per_modality", "per_sample"])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradients_match_reference(backend, device, weight_kind, normalize):
    dev = require(OP, backend, device)
    x, mask, weight = sample_inputs((7, 3, 9), dev, torch.float32, weight_kind, True)
    if weight is not None:  # a zero-weight present row exercises the denom == 0 branch
        with torch.no_grad():
            weight.view(-1, 3)[-1].zero_() if weight.dim() == 2 else None
    grad_y = torch.randn(7, 9, device=dev)
    leaves = [x] if weight is None else [x, weight]
    y, _ = masked_fusion(x, mask, weight, normalize, backend=backend)
    got = torch.autograd.grad(y, leaves, grad_y)
    y_ref, _ = reference.masked_fusion(x, mask, weight, normalize)
    want = torch.autograd.grad(y_ref, leaves, grad_y)
    for g, w in zip(got, want):
        assert_close(g, w, torch.float32)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_gradcheck_float64(backend):
    require(OP, backend, "cpu")
    x, mask, weight = sample_inputs((4, 3, 5), "cpu", torch.float64, "per_sample", True)
    with torch.no_grad():
        weight += 0.05  # keep away from the non-differentiable point denom = 0
    for normalize in (True, False):
        assert torch.autograd.gradcheck(
            lambda x, w, n=normalize: masked_fusion(x, mask, w, n, backend=backend)[0],
            (x, weight))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    dev = require(OP, backend, device)
    op = torch.ops.mmfast.masked_fusion_triton if backend == "triton" else torch.ops.mmfast.masked_fusion
    for requires_grad in (False, True):
        x, mask, weight = sample_inputs((5, 3, 6), dev, torch.float32, "per_sample", requires_grad)
        torch.library.opcheck(op, (x, mask, weight, True))
        torch.library.opcheck(op, (x, mask, None, False))


def test_auto_backend_prefers_cpp_on_cpu():
    from mmfast.ops import choose_backend

    name = choose_backend(OP, torch.device("cpu"))
    assert name == ("cpp" if require_or_none("cpp") else "reference")


def require_or_none(backend):
    from mmfast.ops._dispatch import unavailable_reason

    return unavailable_reason(OP, backend, torch.device("cpu")) is None


def test_explicit_unavailable_backend_fails_loudly():
    x, mask, _ = sample_inputs((2, 2, 3), "cpu", torch.float32, None)
    with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable"):
        masked_fusion(x, mask, backend="cuda")
    with pytest.raises(RuntimeError, match="unknown backend"):
        masked_fusion(x, mask, backend="fortran")


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: (torch.randn(3, 4), torch.ones(3, 4, dtype=torch.bool), None),
         ValueError, r"'x' expected shape \(B, M, D\), got \(3, 4\)"),
        (lambda: (torch.randn(3, 2, 4), torch.ones(3, 3, dtype=torch.bool), None),
         ValueError, r"'mask' expected shape \(3, 2\), got \(3, 3\)"),
        (lambda: (torch.randn(3, 2, 4), torch.ones(2, 2, dtype=torch.bool), None),
         ValueError, r"'mask' expected shape \(3, 2\), got \(2, 2\)"),
        (lambda: (torch.randint(0, 3, (3, 2, 4)), torch.ones(3, 2, dtype=torch.bool), None),
         TypeError, r"'x' expected dtype float16, bfloat16, float32 or float64, got torch.int64"),
        (lambda: (torch.randn(3, 2, 4), torch.ones(3, 2), None),
         TypeError, r"'mask' expected dtype torch.bool, got torch.float32"),
        (lambda: (torch.randn(3, 2, 4), torch.ones(3, 2, dtype=torch.bool), torch.tensor([1.0, -1.0])),
         ValueError, r"'weight' expected finite non-negative values, got minimum -1"),
        (lambda: (torch.randn(3, 2, 4), torch.ones(3, 2, dtype=torch.bool),
                  torch.tensor([1.0, float("nan")])),
         ValueError, r"'weight' expected finite non-negative values, got nan"),
        (lambda: (torch.randn(3, 2, 4), torch.ones(3, 2, dtype=torch.bool),
                  torch.full((2, 4), -1.0)),
         ValueError, r"'weight' expected finite non-negative values, got minimum -1"),
        (lambda: (torch.randn(3, 2, 4), torch.ones(3, 2, dtype=torch.bool), torch.ones(3)),
         ValueError, r"'weight' expected shape \(2,\) or \(3, 2\) per modality, or \(2, 4\) "
                     r"or \(3, 2, 4\) per class, got \(3,\)"),
        (lambda: (torch.randn(3, 9, 4), torch.ones(3, 9, dtype=torch.bool), None),
         ValueError, r"'x' expected 1..8 modalities, got 9"),
    ],
)
@pytest.mark.parametrize("mode", ["reference", "MMFAST_CHECK=1"])
def test_bad_input_errors(make, exc, match, mode, monkeypatch):
    x, mask, weight = make()
    backend = "reference" if mode == "reference" else None
    if backend is None:
        monkeypatch.setenv("MMFAST_CHECK", "1")
    with pytest.raises(exc, match=match):
        masked_fusion(x, mask, weight, backend=backend)
