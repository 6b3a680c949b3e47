"""Launch helpers of mmfast.kernels._common: config selection, tiling, dtype checks, rounding."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from mmfast.kernels import _common
from tests.kernels.helpers import kernel_device


def test_interpreter_tunes_over_exactly_one_config():
    from mmfast.kernels import masked_fusion_triton as mf

    gpu = [triton.Config({"TILE": 1}), triton.Config({"TILE": 2})]
    one = triton.Config({"TILE": 3})
    chosen = _common.active_configs(gpu, one)
    if _common.interpreting():
        assert chosen == [one]
        assert len(mf._forward_kernel.configs) == 1
    elif _common.autotune_enabled():
        assert chosen == gpu
        assert len(mf._forward_kernel.configs) == len(mf._FORWARD_CONFIGS)
    else:  # MMFAST_TRITON_AUTOTUNE=0: the default (first) config only
        assert chosen == gpu[:1]
        assert len(mf._forward_kernel.configs) == 1


@pytest.mark.parametrize(
    "rows, width, tile, cap, depth, expected",
    [
        (65536, 1024, 4096, 1024, 1, (4, 1024)),  # wide rows: full-width block, few rows
        (65536, 10, 4096, 128, 1, (256, 16)),  # narrow rows: many rows per program
        (3, 10, 4096, 128, 1, (4, 16)),  # tiny batch: rows capped at the batch
        (100, 5000, 2048, 1024, 1, (2, 1024)),  # width wider than the cap: chunked
        (64, 100, 4096, 128, 4, (8, 128)),  # (rows x depth x width) block
        (7, 3000, 1024, 2048, 1, (1, 2048)),  # at least one row
    ],
)
def test_tile_blocks(rows, width, tile, cap, depth, expected):
    assert _common.tile_blocks(rows, width, tile, cap, depth) == expected


@pytest.mark.parametrize(
    "width, cap, expected",
    [(10, 128, 2), (100, 128, 8), (309, 128, 64), (31, 128, 32), (64, 128, 64), (1000, 128, 128),
     (1, 128, 1), (3, 128, 1)],
)
def test_snug_width_leaves_at_most_five_percent_idle(width, cap, expected):
    block = _common.snug_width(width, cap)
    assert block == expected
    padding = -(-width // block) * block - width
    assert padding <= 0.05 * width
    wider = min(2 * block, cap)  # the next wider block (if any) would idle more lanes
    if wider > block:
        assert -(-width // wider) * wider - width > 0.05 * width


def test_tile_blocks_snug_narrows_the_class_block():
    assert _common.tile_blocks(65536, 100, 512, 128) == (4, 128)
    assert _common.tile_blocks(65536, 100, 512, 128, snug=True) == (64, 8)
    assert _common.tile_blocks(65536, 10, 512, 128, snug=True) == (256, 2)


def test_check_float_dtype_names_argument():
    _common.check_float_dtype(torch.zeros(1, dtype=torch.bfloat16), "x")
    with pytest.raises(TypeError, match=r"z must have dtype in .*got torch.int32"):
        _common.check_float_dtype(torch.zeros(1, dtype=torch.int32), "z")


def test_as_bytes_is_a_view():
    mask = torch.tensor([True, False, True])
    view = _common.as_bytes(mask)
    assert view.dtype == torch.uint8 and view.data_ptr() == mask.data_ptr()
    assert _common.as_bytes(None) is None


@triton.jit
def _store_kernel(src_ptr, dst_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(dst_ptr + offs, _common.cast_for_store(tl.load(src_ptr + offs), dst_ptr))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_for_store_rounds_to_nearest_even(dtype):
    """What a GPU stores (torch's rounding), also under the interpreter, which truncates."""
    device = kernel_device()
    src = torch.randn(1024, device=device) * torch.logspace(-3, 3, 1024, device=device)
    src[:4] = torch.tensor([1.0 + 2**-8 + 2**-10, 1.0 + 2**-9, -0.4335937201976776, 65504.0])
    dst = torch.empty(1024, dtype=dtype, device=device)
    _store_kernel[(1,)](src, dst, N=1024)
    torch.testing.assert_close(dst, src.to(dtype), atol=0, rtol=0)


def test_launchers_reject_strided_views():
    """Kernels index raw pointers: a strided view must fail loudly, not be misread."""
    from mmfast.kernels import masked_fusion_triton as mf

    device = kernel_device()
    x = torch.randn(4, 3, 6, device=device).transpose(0, 2).contiguous().transpose(0, 2)
    mask = torch.ones(4, 3, dtype=torch.bool, device=device)
    with pytest.raises(ValueError, match=r"x must be contiguous, got shape \(4, 3, 6\)"):
        mf.forward(x, mask, None, True)
