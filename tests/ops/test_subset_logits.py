"""subset_logits / subset_accuracy: subset order, agreement with masked_fusion, every backend
against the reference, ties, empty subsets, empty batch, errors."""

import math

import pytest
import torch

from mmfast.ops import all_subsets, masked_fusion, reference, subset_accuracy, subset_logits
from tests.ops.helpers import (
    BACKENDS,
    DTYPES,
    assert_close,
    misaligned,
    non_contiguous,
    presence_mask,
    require,
)

SHAPES = [(7, 3, 5), (1, 1, 1), (0, 2, 3), (20, 4, 11), (5, 8, 3)]


def test_all_subsets_order():
    s = all_subsets(3)
    assert s.shape == (7, 3)
    codes = (s.long() * torch.tensor([1, 2, 4])).sum(dim=1)
    assert codes.tolist() == list(range(1, 8))


def test_reference_equals_masked_fusion_per_subset():
    z = torch.randn(6, 3, 4)
    present = presence_mask(6, 3, "cpu")
    weight = torch.rand(3)
    scores = subset_logits(z, weight=weight, present=present, backend="reference")
    for s, sub in enumerate(all_subsets(3)):
        y, _ = masked_fusion(z, sub.expand(6, 3) & present, weight, backend="reference")
        torch.testing.assert_close(scores[s], y)


def test_ties_and_empty_subsets_predict_lowest_class():
    z = torch.zeros(2, 2, 3)
    z[0, 0] = torch.tensor([1.0, 1.0, 0.0])  # tie between classes 0 and 1 -> 0
    target = torch.tensor([0, 0])
    present = torch.tensor([[True, False], [False, False]])
    acc = subset_accuracy(z, target, present=present, backend="reference")
    assert acc.tolist() == [1.0, 1.0, 1.0]
    assert math.isnan(subset_accuracy(torch.randn(0, 2, 3), torch.zeros(0, dtype=torch.long))[0])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend, device, dtype, shape):
    dev = require("subset_logits", backend, device)
    require("subset_accuracy", backend, device)
    B, M, C = shape
    z = torch.randn(B, M, C, device=dev, dtype=dtype)
    target = torch.randint(0, C, (B,), device=dev)
    present = presence_mask(B, M, dev)
    weight = torch.rand(B, M, device=dev)
    subsets = all_subsets(M, dev) if M <= 4 else torch.rand(9, M, device=dev) < 0.5
    for kwargs in (dict(), dict(subsets=subsets, weight=weight, present=present)):
        got = subset_logits(z, backend=backend, **kwargs)
        want = reference.subset_logits(z, kwargs.get("subsets", all_subsets(M, dev)),
                                       kwargs.get("weight"), kwargs.get("present"))
        assert got.dtype == dtype
        assert_close(got, want, dtype, scale=M)
        acc = subset_accuracy(z, target, backend=backend, **kwargs)
        acc_ref = subset_accuracy(z, target, backend="reference", **kwargs)
        if dtype == torch.float32:
            torch.testing.assert_close(acc, acc_ref, equal_nan=True)
        else:  # half inputs: the float32 argmax may differ only on near-ties
            assert torch.all((acc - acc_ref).abs().nan_to_num() <= 2 / max(B, 1))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_contiguous_but_misaligned_logits(backend, device):
    """C a multiple of every vector width, so only the pointer forbids 16-byte vectors."""
    dev = require("subset_logits", backend, device)
    z = torch.randn(9, 3, 16, device=dev)
    target = torch.randint(0, 16, (9,), device=dev)
    subsets = all_subsets(3, dev)
    got = subset_logits(misaligned(z), subsets, backend=backend)
    torch.testing.assert_close(got, reference.subset_logits(z, subsets))
    acc = subset_accuracy(misaligned(z), target, backend=backend)
    torch.testing.assert_close(acc, reference.subset_accuracy(z, target, subsets))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous(backend, device):
    dev = require("subset_accuracy", backend, device)
    z = torch.randn(9, 3, 6, device=dev)
    target = torch.randint(0, 6, (9,), device=dev)
    present = presence_mask(9, 3, dev)
    got = subset_accuracy(non_contiguous(z), target, present=non_contiguous(present),
                          backend=backend)
    torch.testing.assert_close(got, reference.subset_accuracy(z, target, all_subsets(3, dev),
                                                              None, present))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    dev = require("subset_logits", backend, device)
    suffix = "_triton" if backend == "triton" else ""
    z = torch.randn(5, 3, 4, device=dev)
    subsets = all_subsets(3, dev)
    present = presence_mask(5, 3, dev)
    torch.library.opcheck(getattr(torch.ops.mmfast, "subset_logits" + suffix),
                          (z, subsets, None, present))
    torch.library.opcheck(getattr(torch.ops.mmfast, "subset_accuracy" + suffix),
                          (z, torch.randint(0, 4, (5,), device=dev), subsets,
                           torch.rand(5, 3, device=dev), None))


def test_gradient_through_subset_logits_uses_reference():
    z = torch.randn(4, 2, 3, requires_grad=True)
    subset_logits(z).sum().backward()
    assert z.grad is not None and torch.all(z.grad > 0)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(subsets=torch.ones(3, 2, dtype=torch.bool)), ValueError,
         r"'subsets' expected shape \(S, 3\), got \(3, 2\)"),
        (dict(subsets=torch.ones(3, 3)), TypeError, r"'subsets' expected dtype torch.bool"),
        (dict(target=torch.tensor([0, 9])), ValueError, r"'target' expected values in \[0, 4\)"),
        (dict(target=torch.tensor([0])), ValueError, r"'target' expected shape \(2,\), got \(1,\)"),
        (dict(present=torch.ones(2, 2, dtype=torch.bool)), ValueError,
         r"'present' expected shape \(2, 3\), got \(2, 2\)"),
        (dict(weight=-torch.ones(3)), ValueError, r"'weight' expected finite non-negative"),
        (dict(weight=torch.full((3,), float("inf"))), ValueError,
         r"'weight' expected finite non-negative values, got inf"),
    ],
)
@pytest.mark.parametrize("mode", ["reference", "MMFAST_CHECK=1"])
def test_bad_input_errors(kwargs, exc, match, mode, monkeypatch):
    args = dict(z=torch.randn(2, 3, 4), target=torch.tensor([0, 1]))
    if mode == "reference":
        args["backend"] = "reference"
    else:
        monkeypatch.setenv("MMFAST_CHECK", "1")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        subset_accuracy(**args)
