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


# M <= 4 and C <= 1024: the codes kernel; (5, 5, 7) and (3, 4, 1030): the subset loop
@pytest.mark.parametrize("B, M, C", [(11, 3, 10), (6, 2, 300), (4, 1, 1), (5, 5, 7),
                                     (9, 4, 33), (3, 4, 1000), (3, 4, 1030)])
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


def test_codes_kernel_takes_m_up_to_4_and_one_block_of_classes(monkeypatch):
    """M <= 4 with C <= 1024 never runs the subset-loop kernel (it would fail here)."""
    assert so.uses_codes_kernel(4, 1024) and not so.uses_codes_kernel(5, 10)
    assert not so.uses_codes_kernel(4, 1025)
    device = kernel_device()
    monkeypatch.setattr(so, "_accuracy_kernel", None)
    z = torch.randn(5, 4, 12, device=device)
    target = torch.randint(0, 12, (5,), device=device)
    subsets = _subsets(4, device)
    assert torch.equal(so.subset_accuracy(z, target, subsets, None, None),
                       reference.subset_correct(z, target, subsets))


@pytest.mark.parametrize("M", [2, 4])
def test_codes_kernel_any_subset_list(M):
    """Repeats, codes whose parents are not requested, and S > 512, against the reference;
    with ties (z rounded to 0.1) and weights / absent modalities."""
    device = kernel_device()
    gen = torch.Generator().manual_seed(M)
    B, C = 29, 12
    z = torch.randn(B, M, C, generator=gen).round(decimals=1).to(device)
    present = (torch.rand(B, M, generator=gen) > 0.25).to(device)
    weight = (torch.rand(B, M, generator=gen) + 0.1).to(device)
    target = torch.randint(0, C, (B,), generator=gen).to(device)
    one = torch.zeros(1, M, dtype=torch.bool, device=device)
    one[0, ::2] = True
    lists = [one, (torch.rand(600, M, generator=gen) > 0.5).to(device),
             torch.cat([one, one, reference.all_subsets(M, device)])]
    for subsets in lists:
        got = so.subset_accuracy(z, target, subsets, weight, present)
        assert torch.equal(got, reference.subset_correct(z, target, subsets, weight, present))


def test_codes_kernel_keeps_quotient_ties():
    """num_1 > num_0 but num_0 / den == num_1 / den in float32: the reference's argmax over
    the divided scores picks class 0; the codes kernel, which takes the argmax of the
    numerators, must find the near tie and divide (w = (0.9556..., 1.3007...))."""
    device = kernel_device()
    w = torch.tensor([[0.955627977848053, 1.3006994724273682]], device=device)
    z = torch.tensor([[[1.46608567237854, 1.46608567237854],
                       [1.7208302021026611, 1.7208303213119507]]], device=device)
    num = w[0, 0] * z[0, 0] + w[0, 1] * z[0, 1]
    assert num[0] < num[1] and num[0] / w.sum() == num[1] / w.sum()
    subsets = torch.ones(1, 2, dtype=torch.bool, device=device)
    target = torch.zeros(1, dtype=torch.int64, device=device)
    assert int(reference.subset_correct(z, target, subsets, w, None)[0]) == 1
    assert int(so.subset_accuracy(z, target, subsets, w, None)[0]) == 1
