"""Triton kernels of ``masked_fusion`` (forward and backward), same contract as csrc/ops.cpp.

Forward: each program owns a (BLOCK_B rows x BLOCK_D features) tile of y and reads the M
matching tiles of x with contiguous, vectorised loads, so x is read once and y written once
(the op's minimum traffic). Backward: each program owns BLOCK_B rows and walks D in BLOCK_D
chunks, because grad_weight needs a full reduction over D; x is only read when grad_weight
is needed, and y never. Both accumulate in opmath (float32, or float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmfast.kernels._common import (
    as_bytes,
    autotune,
    cast_for_store,
    check_contiguous,
    check_float_dtype,
    is_finite,
    on_input_device,
    opmath_dtype,
    opmath_tl,
    row_tile_heuristics,
    rows_bucket,
)

__all__ = ["forward", "backward"]

# TILE = elements of one (rows x width) tile; WIDTH_CAP = the widest block along D. The
# forward holds ~2 values per element, the backward ~4 (gy, x, grad_x, products): at 16
# float32 elements per thread the backward spilled on sm_90, so its list stops at 8.
_FORWARD_CONFIGS = [
    triton.Config({"TILE": 1024, "WIDTH_CAP": 1024}, num_warps=4),
    triton.Config({"TILE": 2048, "WIDTH_CAP": 1024}, num_warps=4),
    triton.Config({"TILE": 4096, "WIDTH_CAP": 1024}, num_warps=8),
    triton.Config({"TILE": 2048, "WIDTH_CAP": 2048}, num_warps=8),
    triton.Config({"TILE": 4096, "WIDTH_CAP": 512}, num_warps=8),
    triton.Config({"TILE": 8192, "WIDTH_CAP": 2048}, num_warps=16),
]
_BACKWARD_CONFIGS = [
    triton.Config({"TILE": 1024, "WIDTH_CAP": 1024}, num_warps=4),
    triton.Config({"TILE": 2048, "WIDTH_CAP": 1024}, num_warps=8),
    triton.Config({"TILE": 2048, "WIDTH_CAP": 2048}, num_warps=8),
    triton.Config({"TILE": 2048, "WIDTH_CAP": 512}, num_warps=8),
    triton.Config({"TILE": 4096, "WIDTH_CAP": 2048}, num_warps=16),
]
_INTERPRETER_CONFIG = triton.Config({"TILE": 1 << 14, "WIDTH_CAP": 1024})


@triton.jit
def _modality_weight(mask_ptr, weight_ptr, rows, row_ok, m, M: tl.constexpr,
                     HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """(present_bm, w_bm, bad_bm) for the rows of a block: w = mask ? weight : 0 (weight None
    -> 1) in ACC, selected rather than multiplied; bad = weight not finite or negative
    (BRIEF contract 2: the kernel cannot raise, it poisons the row with NaN)."""
    present = tl.load(mask_ptr + rows * M + m, mask=row_ok, other=0) != 0
    w = present.to(ACC)
    bad = tl.zeros(rows.shape, tl.int1)
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + rows * M + m, mask=row_ok, other=0).to(ACC)
        w = tl.where(present, weight, 0.0)
        bad = ~(is_finite(weight) & (weight >= 0))
    return present, w, bad


@triton.jit
def _divisor(denom, NORMALIZE: tl.constexpr):
    """d_b = denom_b if normalize and denom_b > 0 else 1."""
    if NORMALIZE:
        divisor = tl.where(denom > 0, denom, 1.0)
    else:
        divisor = tl.full(denom.shape, 1.0, denom.dtype)
    return divisor


@autotune(_FORWARD_CONFIGS, _INTERPRETER_CONFIG,
          key=["D", "M", "HAS_WEIGHT", "NORMALIZE", "ROWS_BUCKET"])
@row_tile_heuristics("B", "D", "BLOCK_B", "BLOCK_D")
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _forward_kernel(
    x_ptr, mask_ptr, weight_ptr, y_ptr, denom_ptr, B, D, ROWS_BUCKET,
    M: tl.constexpr, HAS_WEIGHT: tl.constexpr, NORMALIZE: tl.constexpr, ACC: tl.constexpr,
    TILE: tl.constexpr, WIDTH_CAP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # An absent modality's x is never loaded (NaN there cannot leak); a row with an invalid
    # weight gets y = NaN and denom = NaN.
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < B
    tile_ok = row_ok[:, None] & (cols < D)[None, :]
    num = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
    denom = tl.zeros([BLOCK_B], dtype=ACC)
    bad = tl.zeros([BLOCK_B], tl.int1)
    for m in tl.static_range(M):
        present, w, bad_m = _modality_weight(mask_ptr, weight_ptr, rows, row_ok, m, M,
                                             HAS_WEIGHT, ACC)
        denom += w
        bad = bad | bad_m
        x = tl.load(x_ptr + (rows * M + m)[:, None] * D + cols[None, :],
                    mask=tile_ok & present[:, None], other=0)
        num += w[:, None] * x.to(ACC)
    y = num / _divisor(denom, NORMALIZE)[:, None]
    if HAS_WEIGHT:
        y = tl.where(bad[:, None], float("nan"), y)
        denom = tl.where(bad, float("nan"), denom)
    tl.store(y_ptr + rows[:, None] * D + cols[None, :], cast_for_store(y, y_ptr),
             mask=tile_ok)
    if pid_d == 0:
        tl.store(denom_ptr + rows, denom, mask=row_ok)


@autotune(_BACKWARD_CONFIGS, _INTERPRETER_CONFIG,
          key=["D", "M", "HAS_WEIGHT", "NORMALIZE", "NEED_GRAD_WEIGHT", "ROWS_BUCKET"])
@row_tile_heuristics("B", "D", "BLOCK_B", "BLOCK_D")
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _backward_kernel(
    grad_y_ptr, x_ptr, mask_ptr, weight_ptr, denom_ptr, grad_x_ptr, grad_w_ptr, B, D,
    ROWS_BUCKET,
    M: tl.constexpr, BLOCK_M: tl.constexpr, HAS_WEIGHT: tl.constexpr, NORMALIZE: tl.constexpr,
    NEED_GRAD_WEIGHT: tl.constexpr, ACC: tl.constexpr, TILE: tl.constexpr,
    WIDTH_CAP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Absent modalities: grad_x = 0 and grad_weight = 0, their x never loaded. A row with an
    # invalid weight gets NaN gradients (as its forward outputs).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    modalities = tl.arange(0, BLOCK_M)
    divisor = _divisor(tl.load(denom_ptr + rows, mask=row_ok, other=1), NORMALIZE)
    bad = tl.zeros([BLOCK_B], tl.int1)
    for m in tl.static_range(M):  # (no `_` names: loop-carried values must keep their type)
        present_m, w_m, bad_m = _modality_weight(mask_ptr, weight_ptr, rows, row_ok, m, M,
                                                 HAS_WEIGHT, ACC)
        bad = bad | bad_m
    poison = tl.where(bad, float("nan"), 0.0).to(ACC)  # added to every output of the row
    dot_x = tl.zeros([BLOCK_B, BLOCK_M], dtype=ACC)  # sum_d gy * x_m
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        tile_ok = row_ok[:, None] & (cols < D)[None, :]
        gy = tl.load(grad_y_ptr + rows[:, None] * D + cols[None, :], mask=tile_ok, other=0)
        gy = gy.to(ACC)
        for m in tl.static_range(M):
            present, w, bad_m = _modality_weight(mask_ptr, weight_ptr, rows, row_ok, m, M,
                                                 HAS_WEIGHT, ACC)
            x_offs = (rows * M + m)[:, None] * D + cols[None, :]
            grad_x = tl.where(present[:, None], gy * (w / divisor)[:, None], 0.0)
            grad_x = grad_x + poison[:, None]
            tl.store(grad_x_ptr + x_offs, cast_for_store(grad_x, grad_x_ptr), mask=tile_ok)
            if NEED_GRAD_WEIGHT:
                x = tl.load(x_ptr + x_offs, mask=tile_ok & present[:, None], other=0).to(ACC)
                part = tl.sum(gy * x, axis=1)
                dot_x += tl.where(modalities[None, :] == m, part[:, None], 0.0)
    if NEED_GRAD_WEIGHT:
        bm_offs = rows[:, None] * M + modalities[None, :]
        bm_ok = row_ok[:, None] & (modalities < M)[None, :]
        present = tl.load(mask_ptr + bm_offs, mask=bm_ok, other=0) != 0
        if NORMALIZE:  # sum_d gy y = sum_m w_m (sum_d gy x_m) / d, exact in opmath
            w = present.to(ACC)
            if HAS_WEIGHT:
                weight = tl.load(weight_ptr + bm_offs, mask=bm_ok, other=0).to(ACC)
                w = tl.where(present, weight, 0.0)
            dot_x -= (tl.sum(w * dot_x, axis=1) / divisor)[:, None]
        grad_w = tl.where(present, dot_x / divisor[:, None], 0.0) + poison[:, None]
        tl.store(grad_w_ptr + bm_offs, grad_w, mask=bm_ok)


def _check_inputs(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None) -> None:
    check_float_dtype(x, "x")
    if x.dim() != 3:
        raise ValueError(f"masked_fusion_triton: x must be (B, M, D), got shape {tuple(x.shape)}")
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"masked_fusion_triton: mask must be {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
        )
    if weight is not None and tuple(weight.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"masked_fusion_triton: weight must be {tuple(x.shape[:2])} (the wrapper expands "
            f"(M,) weights), got {tuple(weight.shape)}"
        )


@on_input_device
def forward(
    x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y (B, D) x.dtype, denom (B,) opmath): y_b = sum_m w_bm x_bm / d_b, w = weight * mask.

    Inputs contiguous, mask bool (B, M), weight None or (B, M) opmath (csrc/ops.cpp).
    """
    _check_inputs(x, mask, weight)
    check_contiguous(x=x, mask=mask, weight=weight)
    B, M, D = x.shape
    y = torch.empty((B, D), dtype=x.dtype, device=x.device)
    denom = torch.empty((B,), dtype=opmath_dtype(x.dtype), device=x.device)
    if B == 0:
        return y, denom
    if D == 0:  # no features: only the denominator is defined
        if weight is None:
            return y, mask.to(denom.dtype).sum(dim=1)
        weight = weight.to(denom.dtype)
        bad = (~torch.isfinite(weight) | (weight < 0)).any(dim=1)
        denom = torch.where(mask, weight, 0.0).sum(dim=1)
        return y, denom.masked_fill(bad, float("nan"))

    def grid(meta):
        return (triton.cdiv(B, meta["BLOCK_B"]), triton.cdiv(D, meta["BLOCK_D"]))

    _forward_kernel[grid](
        x, as_bytes(mask), weight, y, denom, B, D, rows_bucket(B),
        M=M, HAS_WEIGHT=weight is not None, NORMALIZE=bool(normalize), ACC=opmath_tl(x.dtype),
    )
    return y, denom


@on_input_device
def backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor | None,
    y: torch.Tensor,
    denom: torch.Tensor,
    normalize: bool,
    need_grad_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x (B, M, D) x.dtype, grad_weight (B, M) opmath, or (0,) when not needed).

    grad_x = gy * w_bm / d_b; grad_weight_bm = mask_bm (sum_d gy x_bm - [normalize] sum_d gy y)
    / d_b with d_b = normalize && denom_b > 0 ? denom_b : 1 (the autograd of the reference).
    ``y`` is accepted for the schema but not read: sum_d gy y is rebuilt in opmath from the
    sum_d gy x_m the kernel computes anyway, which is exact where a float16/bfloat16 y is not
    (the difference of the two sums cancels) and saves one (B, D) read.
    """
    _check_inputs(x, mask, weight)
    check_contiguous(grad_y=grad_y, x=x, mask=mask, weight=weight, denom=denom)
    B, M, D = x.shape
    grad_x = torch.empty_like(x)
    acc = opmath_dtype(x.dtype)
    grad_weight = torch.empty((B, M) if need_grad_weight else (0,), dtype=acc, device=x.device)
    if B == 0:
        return grad_x, grad_weight
    if D == 0:
        grad_weight.zero_()
        return grad_x, grad_weight

    def grid(meta):
        return (triton.cdiv(B, meta["BLOCK_B"]),)

    _backward_kernel[grid](
        grad_y, x, as_bytes(mask), weight, denom, grad_x, grad_weight, B, D, rows_bucket(B),
        M=M, BLOCK_M=triton.next_power_of_2(M), HAS_WEIGHT=weight is not None,
        NORMALIZE=bool(normalize), NEED_GRAD_WEIGHT=bool(need_grad_weight),
        ACC=opmath_tl(x.dtype),
    )
    return grad_x, grad_weight
