"""noisy_modality_dropout Triton launcher: the reference Philox streams bit for bit (keep,
sigma_used), y up to float32 rounding, in both row-lookup paths and at ragged ends."""

from __future__ import annotations

import pytest
import torch

from mmfast.kernels import noisy_modality_dropout_triton as nd
from mmfast.ops import reference
from tests.kernels.helpers import assert_close, kernel_device

CASES = [
    # (shape, dtype, sigma_levels, seed, offset)
    ((7, 3, 5), torch.float32, False, 42, 0),  # rows of 15: numel not a multiple of 4
    ((3, 20001), torch.bfloat16, True, 2**40 + 5, 2**33 + 7),  # rows longer than a block
    ((5, 2, 8192), torch.float32, False, 3, 9),  # rows of exactly one interpreter block
    ((33, 2), torch.float64, True, 2**63 + 11, 3),  # seed above int64: uint64 key
    ((4, 1), torch.float16, False, 0, 2**32 - 1),  # offset fills the low counter word
]


@pytest.mark.parametrize("shape, dtype, sigma_levels, seed, offset", CASES)
def test_matches_reference_stream(shape, dtype, sigma_levels, seed, offset):
    device = kernel_device()
    x = torch.randn(shape, dtype=dtype, device=device)
    B = shape[0]
    p_drop = torch.rand(B, device=device) * 0.6
    sigma = torch.rand(5 if sigma_levels else B, device=device) + 0.1
    y, keep, sigma_used = nd.forward(x, p_drop, sigma, sigma_levels, seed, offset, -1.5)
    y_ref, keep_ref, sigma_ref = reference.noisy_modality_dropout(x, p_drop, sigma, sigma_levels,
                                                                  seed, offset, -1.5)
    assert torch.equal(keep, keep_ref)
    assert torch.equal(sigma_used, sigma_ref)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.all(y[~keep] == -1.5)
    # log / cos / sin may round differently: float32 noise, then the output dtype
    assert_close(y, y_ref, dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32,
                 scale=4.0)


def test_offset_and_seed_change_the_stream_and_repeat_exactly():
    device = kernel_device()
    x = torch.zeros(4, 64, device=device)
    p_drop = torch.zeros(4, device=device)
    sigma = torch.ones(4, device=device)
    first = nd.forward(x, p_drop, sigma, False, 7, 0, 0.0)[0]
    assert torch.equal(first, nd.forward(x, p_drop, sigma, False, 7, 0, 0.0)[0])
    assert not torch.equal(first, nd.forward(x, p_drop, sigma, False, 7, 1, 0.0)[0])
    assert not torch.equal(first, nd.forward(x, p_drop, sigma, False, 8, 0, 0.0)[0])
    assert 0.5 < first.std().item() < 1.5  # standard normal noise


def test_empty_batch_and_empty_rows():
    device = kernel_device()
    y, keep, sigma_used = nd.forward(torch.empty(0, 3, device=device),
                                     torch.empty(0, device=device), torch.ones(1, device=device),
                                     False, 1, 0, 0.0)
    assert y.shape == (0, 3) and keep.shape == (0,) and sigma_used.shape == (0,)
    x = torch.empty(3, 0, device=device)
    p_drop = torch.full((3,), 0.5, device=device)
    _, keep, _ = nd.forward(x, p_drop, torch.ones(3, device=device), False, 1, 0, 0.0)
    _, keep_ref, _ = reference.noisy_modality_dropout(x, p_drop, torch.ones(3, device=device),
                                                      False, 1, 0, 0.0)
    assert torch.equal(keep, keep_ref)


def test_bad_sigma_shape_raises():
    device = kernel_device()
    with pytest.raises(ValueError, match=r"sigma must be a scalar or \(3,\), got shape \(2,\)"):
        nd.forward(torch.zeros(3, 4, device=device), torch.zeros(3, device=device),
                   torch.ones(2, device=device), False, 0, 0, 0.0)
