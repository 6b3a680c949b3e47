"""subset_logits / subset_accuracy Triton launchers: class chunks with ties and NaN across
chunks, empty subsets, M = 1..8, and the per-program count table."""

from __future__ import annotations

import pytest
import torch

from mmfast.kernels import subset_ops_triton as so
from mmfast.ops import reference
from tests.kernels.helpers import assert_close, expected_correct, kernel_device


def _subsets(M, device):
    """Every non-empty subset plus the empty one (scores 0 -> class 0)."""
    empty = torch.zeros(1, M, dtype=torch.bool, device=device)
    return torch.cat([empty, reference.all_subsets(M, device)])


@pytest.mark.parametrize("B, M, C", [(11, 3, 10), (6, 2, 300), (4, 1, 1), (5, 5, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_match_reference(B, M, C, dtype):
    device = kernel_device()
    z = torch.randn(B, M, C, dtype=dtype, device=device)
    acc = reference.opmath_dtype(dtype)
    weight = torch.rand(B, M, dtype=acc, device=device)
    present = torch.rand(B, M, device=device) < 0.7
    target = torch.randint(0, C, (B,), device=device)
    subsets = _subsets(M, device)
    assert_close(so.subset_logits(z, subsets, weight, present),
                 reference.subset_logits(z, subsets, weight, present), dtype)
    correct = so.subset_accuracy(z, target, subsets, weight, present)
    assert correct.dtype == torch.int64
    assert torch.equal(correct, reference.subset_correct(z, target, subsets, weight, present))


@pytest.mark.parametrize("with_nan", [False, True])
def test_argmax_ties_and_nan_across_class_chunks(with_nan):
    device = kernel_device()
    B, M, C = 24, 2, 600  # several class chunks
    z = torch.randint(-1, 2, (B, M, C), device=device).float()
    if with_nan:  # a row with NaN scores counts as wrong (BRIEF contract 3)
        z[0, :, 450] = float("nan")
        z[1, 0, 3] = float("nan")
    target = z.sum(1).argmax(1)  # the tie-broken answer of the full subset
    target[::3] = 0  # class 0 is what an empty subset predicts
    subsets = _subsets(M, device)
    correct = so.subset_accuracy(z, target, subsets, None, None)
    assert torch.equal(correct, expected_correct(z, target, subsets))
    assert torch.equal(correct, reference.subset_correct(z, target, subsets))
    if with_nan:  # torch.argmax picks row 1's NaN class, its target: a hit it no longer is
        naive = (z.sum(1).argmax(1) == target).sum()
        assert correct[-1] < naive


def test_count_table_covers_every_config():
    for B, M, C in [(65536, 4, 100), (3, 8, 5), (1000, 1, 100000)]:
        programs = so._max_programs(B, M, C)
        assert 1 <= programs <= B


def test_empty_inputs():
    device = kernel_device()
    z = torch.empty(0, 3, 4, device=device)
    subsets = reference.all_subsets(3, device)
    assert so.subset_logits(z, subsets, None, None).shape == (7, 0, 4)
    correct = so.subset_accuracy(z, torch.empty(0, dtype=torch.int64, device=device), subsets,
                                 None, None)
    assert torch.equal(correct, torch.zeros(7, dtype=torch.int64, device=device))
