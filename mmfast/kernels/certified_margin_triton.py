"""Triton kernels of ``certified_margin`` (forward and backward), same contract as csrc/ops.cpp.

Forward: each program owns BLOCK_B rows and walks the classes in BLOCK_C chunks, reading z
once with contiguous loads (and, for a (M, C, C) lip, the rows lip[m, y_b, :], which stay in
cache: lip is small). Per chunk it forms margin_bk, the dual-norm denominator and r_bk, takes
the chunk's first argmin (rival "min") or first argmax of the fused score (rival "top") and
merges it into a running best, so no (B, C) or (B, C, C) intermediate exists. Backward:
grad_z is nonzero only at c = y and c = k*, so each program computes the per-row
coefficients once and writes its whole grad_z tile in one pass (zeros included).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from mmfast.kernels._common import (
    as_bytes,
    autotune,
    cast_for_store,
    check_contiguous,
    check_float_dtype,
    first_argmin,
    is_finite,
    on_input_device,
    opmath_dtype,
    opmath_tl,
    replaces_running_min,
    row_tile_heuristics,
    rows_bucket,
)

__all__ = ["forward", "backward"]

# How the dual norm ||v||_q over modalities is formed (q is the dual exponent).
NORM_SUM = tl.constexpr(0)
NORM_L2 = tl.constexpr(1)
NORM_MAX = tl.constexpr(2)
NORM_POW = tl.constexpr(3)

# 2-4 tile elements per thread: a chunk keeps ~10 (rows x classes) tensors live, which took
# ~130 registers at 4 per thread and ~250 at 8 per thread when compiled for sm_90. The
# backward's configs; the forward's add SNUG variants below.
_GPU_CONFIGS = [
    triton.Config({"TILE": 256, "WIDTH_CAP": 128}, num_warps=2),
    triton.Config({"TILE": 512, "WIDTH_CAP": 128}, num_warps=4),
    triton.Config({"TILE": 512, "WIDTH_CAP": 128}, num_warps=8),
    triton.Config({"TILE": 1024, "WIDTH_CAP": 128}, num_warps=8),
    triton.Config({"TILE": 1024, "WIDTH_CAP": 256}, num_warps=8),
]
# Forward: SNUG = 0 chunks the classes by the next power of two (C = 10 -> 16 lanes, 6 idle;
# C = 100 -> 128, 28 idle); SNUG = 1 by the narrower block of _common.snug_width (C = 10 -> 2,
# C = 100 -> 8: at most 5 % idle lanes, more iterations). Configs at 2 tile elements per thread
# need fewer registers (sm_90 codegen, fp32: about 80 per thread at 2 elements, 104-141 at 4;
# tests/kernels/codegen_sm90.py). The autotuner picks per C on the GPU; the first config,
# 2 elements per thread (80 registers at C = 10 and 100, where the previous default took 136
# at C = 10), is the default when autotuning is off.
_FORWARD_GPU_CONFIGS = [
    triton.Config({"TILE": 512, "WIDTH_CAP": 128, "SNUG": 0}, num_warps=8),
    triton.Config({"TILE": 256, "WIDTH_CAP": 128, "SNUG": 0}, num_warps=2),
    triton.Config({"TILE": 512, "WIDTH_CAP": 128, "SNUG": 0}, num_warps=4),
    triton.Config({"TILE": 1024, "WIDTH_CAP": 128, "SNUG": 0}, num_warps=8),
    triton.Config({"TILE": 1024, "WIDTH_CAP": 256, "SNUG": 0}, num_warps=8),
    triton.Config({"TILE": 256, "WIDTH_CAP": 128, "SNUG": 1}, num_warps=4),
    triton.Config({"TILE": 512, "WIDTH_CAP": 128, "SNUG": 1}, num_warps=4),
    triton.Config({"TILE": 512, "WIDTH_CAP": 128, "SNUG": 1}, num_warps=8),
    triton.Config({"TILE": 1024, "WIDTH_CAP": 128, "SNUG": 1}, num_warps=8),
]
_INTERPRETER_CONFIG = triton.Config({"TILE": 1 << 13, "WIDTH_CAP": 128})
# Under the interpreter the forward runs snug (the narrow, many-chunk path); the backward,
# and the forward at power-of-two C, the single-chunk one.
_FORWARD_INTERPRETER_CONFIG = triton.Config({"TILE": 1 << 13, "WIDTH_CAP": 128, "SNUG": 1})


def norm_kind(q: float) -> int:
    """NORM_* constant for the dual exponent q (1 -> sum, 2 -> l2, inf -> max, else pow)."""
    if q == 1:
        return NORM_SUM.value
    if q == 2:
        return NORM_L2.value
    if math.isinf(q):
        return NORM_MAX.value
    return NORM_POW.value


@triton.jit
def _positive_pow(v, exponent):
    """v ** exponent for v >= 0 (0 -> 0): exp(exponent * log(v)), exponent > 0."""
    safe = tl.where(v > 0, v, 1.0)
    return tl.where(v > 0, tl.exp(exponent * tl.log(safe)), 0.0)


@triton.jit
def _norm_accumulate(acc, v, q, NORM: tl.constexpr):
    """Adds one modality's v >= 0 to a running dual-norm accumulator."""
    if NORM == NORM_MAX:
        out = tl.maximum(acc, v)
    elif NORM == NORM_L2:
        out = acc + v * v
    elif NORM == NORM_POW:
        out = acc + _positive_pow(v, q)
    else:
        out = acc + v
    return out


@triton.jit
def _norm_finish(acc, q, NORM: tl.constexpr):
    """||v||_q from the accumulator of :func:`_norm_accumulate`."""
    if NORM == NORM_L2:
        out = tl.sqrt(acc)
    elif NORM == NORM_POW:
        out = _positive_pow(acc, 1.0 / q)
    else:
        out = acc
    return out


@triton.jit
def _presence(mask_ptr, rows, row_ok, m, M: tl.constexpr, HAS_MASK: tl.constexpr):
    """mask_bm as bool for the rows of a block (row_ok when the op has no mask)."""
    if HAS_MASK:
        present = row_ok & (tl.load(mask_ptr + rows * M + m, mask=row_ok, other=0) != 0)
    else:
        present = row_ok
    return present


@triton.jit
def _valid_lip(v):
    """A Lipschitz value the kernel may use: finite and >= 0 (BRIEF contract 2)."""
    return is_finite(v) & (v >= 0)


@autotune(_FORWARD_GPU_CONFIGS, _FORWARD_INTERPRETER_CONFIG,
          key=["C", "M", "HAS_MASK", "HAS_BIAS", "LIP_FULL", "NORM", "TOP_RIVAL", "ROWS_BUCKET"])
@row_tile_heuristics("B", "C", "BLOCK_B", "BLOCK_C")
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _forward_kernel(
    z_ptr, target_ptr, lip_ptr, mask_ptr, bias_ptr, radius_ptr, margin_ptr, runner_up_ptr,
    B, C, q, ROWS_BUCKET,
    M: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, LIP_FULL: tl.constexpr,
    NORM: tl.constexpr, TOP_RIVAL: tl.constexpr, ACC: tl.constexpr, TILE: tl.constexpr,
    WIDTH_CAP: tl.constexpr, SNUG: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # SNUG only chooses BLOCK_C (row_tile_heuristics).
    # Poisoned rows (radius NaN, margin NaN, runner_up -1; never a certificate): a target
    # outside [0, C) (never used as an index), a non-finite logit among the present
    # modalities' values read, a lip value read that is NaN, infinite or negative. An absent
    # modality's logits are never loaded.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    y = tl.load(target_ptr + rows, mask=row_ok, other=0)
    y_ok = row_ok & (y >= 0) & (y < C)
    y = tl.where(y_ok, y, 0)
    y32 = y.to(tl.int32)
    bad = row_ok & ~y_ok
    bias_y = tl.zeros([BLOCK_B], dtype=ACC)
    if HAS_BIAS:
        bias_y = tl.load(bias_ptr + y, mask=y_ok, other=0).to(ACC)
    if not LIP_FULL:  # (M,) lip: one denominator per row
        row_norm = tl.zeros([BLOCK_B], dtype=ACC)
        for m in tl.static_range(M):
            present = _presence(mask_ptr, rows, row_ok, m, M, HAS_MASK)
            lip_m = tl.zeros([BLOCK_B], dtype=ACC) + tl.load(lip_ptr + m).to(ACC)
            bad = bad | (row_ok & ~_valid_lip(lip_m))
            row_norm = _norm_accumulate(row_norm, tl.where(present, lip_m, 0.0), q, NORM)
        row_den = _norm_finish(row_norm, q, NORM)

    best_key = tl.full([BLOCK_B], float("inf"), ACC)
    best_k = tl.full([BLOCK_B], C, tl.int32)  # class indices fit in int32: fewer registers
    best_r = tl.zeros([BLOCK_B], dtype=ACC)
    best_margin = tl.zeros([BLOCK_B], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        ks = c0 + tl.arange(0, BLOCK_C)
        tile_ok = y_ok[:, None] & (ks < C)[None, :]
        margin = tl.zeros([BLOCK_B, BLOCK_C], dtype=ACC)
        score = tl.zeros([BLOCK_B, BLOCK_C], dtype=ACC)
        norm = tl.zeros([BLOCK_B, BLOCK_C], dtype=ACC)
        nonfinite = tl.zeros([BLOCK_B, BLOCK_C], dtype=tl.int1)
        for m in tl.static_range(M):
            present = _presence(mask_ptr, rows, row_ok, m, M, HAS_MASK)
            read = tile_ok & present[:, None]
            z_row = z_ptr + (rows * M + m) * C
            z_y = tl.load(z_row + y, mask=y_ok & present, other=0).to(ACC)
            z_k = tl.load(z_row[:, None] + ks[None, :], mask=read, other=0).to(ACC)
            margin += z_y[:, None] - z_k  # zero for absent modalities: nothing loaded
            if TOP_RIVAL:
                score += z_k
            if LIP_FULL:
                lip_row = lip_ptr + (m * C + y) * C  # lip[m, y_b, :]
                lip_yk = tl.load(lip_row[:, None] + ks[None, :], mask=tile_ok, other=0).to(ACC)
                nonfinite = nonfinite | (tile_ok & ~_valid_lip(lip_yk))
                norm = _norm_accumulate(norm, tl.where(present[:, None], lip_yk, 0.0), q, NORM)
        # A non-finite logit read (z_k, or z_y in the column k = y) makes its margin sum
        # non-finite (inf - inf and NaN stay NaN), so one check after the sum replaces a
        # per-modality flag tile (fewer live registers). Finite logits whose margin overflows
        # (|z| ~ 1e38 in float32) are flagged too: a radius from them would be inf or NaN.
        nonfinite = nonfinite | (tile_ok & ~is_finite(margin))
        bad = bad | (tl.max(nonfinite.to(tl.int32), axis=1) > 0)
        if HAS_BIAS:
            bias_k = tl.load(bias_ptr + ks, mask=ks < C, other=0).to(ACC)
            margin += bias_y[:, None] - bias_k[None, :]
            score += bias_k[None, :]
        if LIP_FULL:
            den = _norm_finish(norm, q, NORM)
        else:
            den = row_den[:, None] + tl.zeros([BLOCK_B, BLOCK_C], dtype=ACC)
        positive = den > 0
        sign_inf = tl.where(margin > 0, float("inf"), tl.where(margin < 0, -float("inf"), 0.0))
        degenerate = tl.where(margin != margin, margin, sign_inf)
        r = tl.where(positive, margin / tl.where(positive, den, 1.0), degenerate)
        valid = tile_ok & (ks[None, :] != y32[:, None])
        if TOP_RIVAL:
            key = -score
        else:
            key = r
        index = ks[None, :] + tl.zeros([BLOCK_B, BLOCK_C], dtype=tl.int32)
        chunk_key, chunk_k = first_argmin(key, valid, index, C)
        take = replaces_running_min(best_key, best_k, chunk_key, chunk_k, C)
        hit = ks[None, :] == chunk_k[:, None]
        best_r = tl.where(take, tl.sum(tl.where(hit, r, 0.0), axis=1), best_r)
        best_margin = tl.where(take, tl.sum(tl.where(hit, margin, 0.0), axis=1), best_margin)
        best_key = tl.where(take, chunk_key, best_key)
        best_k = tl.where(take, chunk_k, best_k)
    best_r = tl.where(bad, float("nan"), best_r)
    best_margin = tl.where(bad, float("nan"), best_margin)
    best_k = tl.where(bad, -1, best_k)
    tl.store(radius_ptr + rows, best_r, mask=row_ok)
    tl.store(margin_ptr + rows, best_margin, mask=row_ok)
    tl.store(runner_up_ptr + rows, best_k.to(tl.int64), mask=row_ok)


@autotune(_GPU_CONFIGS, _INTERPRETER_CONFIG,
          key=["C", "M", "HAS_MASK", "LIP_FULL", "NORM", "ROWS_BUCKET"])
@row_tile_heuristics("B", "C", "BLOCK_B", "BLOCK_C")
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _backward_kernel(
    grad_radius_ptr, grad_margin_ptr, target_ptr, lip_ptr, mask_ptr, margin_ptr, runner_up_ptr,
    grad_z_ptr, grad_lip_ptr, B, C, q, ROWS_BUCKET,
    M: tl.constexpr, BLOCK_M: tl.constexpr, HAS_MASK: tl.constexpr, LIP_FULL: tl.constexpr,
    NORM: tl.constexpr, ACC: tl.constexpr, TILE: tl.constexpr, WIDTH_CAP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Rows without a valid (target, runner_up) pair (runner_up -1: C == 1 or a poisoned row)
    # get all-zero gradients and read no lip entry.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    y = tl.load(target_ptr + rows, mask=row_ok, other=0)
    k = tl.load(runner_up_ptr + rows, mask=row_ok, other=0)
    pair_ok = row_ok & (y >= 0) & (y < C) & (k >= 0) & (k < C) & (k != y)
    y = tl.where(pair_ok, y, 0)
    k = tl.where(pair_ok, k, 0)
    g_radius = tl.load(grad_radius_ptr + rows, mask=pair_ok, other=0).to(ACC)
    g_margin = tl.load(grad_margin_ptr + rows, mask=pair_ok, other=0).to(ACC)
    margin = tl.load(margin_ptr + rows, mask=pair_ok, other=0).to(ACC)

    # v_bm = mask_bm * lip_m[y_b, k_b] and den_b = ||v_b||_q, as in the forward.
    ms = tl.arange(0, BLOCK_M)
    bm_ok = pair_ok[:, None] & (ms < M)[None, :]
    if HAS_MASK:
        present = tl.load(mask_ptr + rows[:, None] * M + ms[None, :], mask=bm_ok, other=0) != 0
        present = bm_ok & present
    else:
        present = bm_ok
    if LIP_FULL:
        lip_offs = (ms[None, :] * C + y[:, None]) * C + k[:, None]
    else:
        lip_offs = ms[None, :] + tl.zeros([BLOCK_B, BLOCK_M], dtype=tl.int64)
    v = tl.load(lip_ptr + lip_offs, mask=present, other=0).to(ACC)
    presentf = present.to(ACC)
    if NORM == NORM_MAX:
        den = tl.max(v, axis=1)
        # amax's gradient is shared evenly by tied maxima (as autograd, cpp and CUDA do).
        tied = tl.where(bm_ok & (v == den[:, None]), 1.0, 0.0).to(ACC)
        d_den = tied / tl.maximum(tl.sum(tied, axis=1), 1.0)[:, None]
    elif NORM == NORM_L2:
        den = tl.sqrt(tl.sum(v * v, axis=1))
        d_den = presentf * v / tl.where(den > 0, den, 1.0)[:, None]
    elif NORM == NORM_POW:
        den = _positive_pow(tl.sum(_positive_pow(v, q), axis=1), 1.0 / q)
        d_den = presentf * _positive_pow(v / tl.where(den > 0, den, 1.0)[:, None], q - 1.0)
    else:
        den = tl.sum(v, axis=1)
        d_den = presentf
    positive = den > 0
    safe_den = tl.where(positive, den, 1.0)
    # d radius / d den = -margin / den^2, zero where den == 0 (radius is +-inf or 0 there).
    g_den = tl.where(positive, -g_radius * margin / (safe_den * safe_den), 0.0)
    tl.store(grad_lip_ptr + rows[:, None] * M + ms[None, :],
             tl.where(present, g_den[:, None] * d_den, 0.0),
             mask=row_ok[:, None] & (ms < M)[None, :])

    # grad_z[b, m, c] = mask_bm * g_b * ([c == y_b] - [c == k_b]).
    y32 = y.to(tl.int32)
    g = tl.where(positive, g_radius / safe_den, 0.0) + g_margin
    for c0 in range(0, C, BLOCK_C):
        ks = c0 + tl.arange(0, BLOCK_C)
        tile_ok = row_ok[:, None] & (ks < C)[None, :]
        sign = ((ks[None, :] == y32[:, None]).to(ACC)
                - (ks[None, :] == k.to(tl.int32)[:, None]).to(ACC))
        for m in tl.static_range(M):
            present_m = pair_ok & _presence(mask_ptr, rows, pair_ok, m, M, HAS_MASK)
            coef = tl.where(present_m, g, 0.0)
            offs = (rows * M + m)[:, None] * C + ks[None, :]
            tl.store(grad_z_ptr + offs, cast_for_store(coef[:, None] * sign, grad_z_ptr),
                     mask=tile_ok)


def _check_inputs(z: torch.Tensor, target: torch.Tensor, lip: torch.Tensor,
                  mask: torch.Tensor | None) -> None:
    check_float_dtype(z, "z")
    check_float_dtype(lip, "lip")
    if z.dim() != 3:
        raise ValueError(f"certified_margin_triton: z must be (B, M, C), got {tuple(z.shape)}")
    B, M, C = z.shape
    if tuple(target.shape) != (B,):
        raise ValueError(f"certified_margin_triton: target must be ({B},), got "
                         f"{tuple(target.shape)}")
    if tuple(lip.shape) not in ((M,), (M, C, C)):
        raise ValueError(f"certified_margin_triton: lip must be ({M},) or ({M}, {C}, {C}), got "
                         f"{tuple(lip.shape)}")
    if mask is not None and tuple(mask.shape) != (B, M):
        raise ValueError(f"certified_margin_triton: mask must be ({B}, {M}), got "
                         f"{tuple(mask.shape)}")


@on_input_device
def forward(
    z: torch.Tensor,
    target: torch.Tensor,
    lip: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    q: float,
    top_rival: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(radius (B,) opmath, margin (B,) opmath, runner_up (B,) int64) at the chosen rival.

    q is the dual exponent (p = 2 -> 2, p = 1 -> inf, p = inf -> 1); top_rival picks the
    fused score's runner-up instead of the minimum-radius class (csrc/ops.cpp).
    """
    _check_inputs(z, target, lip, mask)
    check_contiguous(z=z, target=target, lip=lip, mask=mask, bias=bias)
    B, M, C = z.shape
    acc = opmath_dtype(z.dtype)
    radius = torch.empty((B,), dtype=acc, device=z.device)
    margin = torch.empty((B,), dtype=acc, device=z.device)
    runner_up = torch.empty((B,), dtype=torch.int64, device=z.device)
    if B == 0:
        return radius, margin, runner_up
    if C == 1:  # no rival class: nothing can flip the prediction
        return radius.fill_(math.inf), margin.zero_(), runner_up.fill_(-1)

    def grid(meta):
        return (triton.cdiv(B, meta["BLOCK_B"]),)

    _forward_kernel[grid](
        z, target, lip, as_bytes(mask), bias, radius, margin, runner_up, B, C, float(q),
        rows_bucket(B), M=M, HAS_MASK=mask is not None, HAS_BIAS=bias is not None,
        LIP_FULL=lip.dim() == 3, NORM=norm_kind(q), TOP_RIVAL=bool(top_rival),
        ACC=opmath_tl(z.dtype),
    )
    return radius, margin, runner_up


@on_input_device
def backward(
    grad_radius: torch.Tensor,
    grad_margin: torch.Tensor,
    z: torch.Tensor,
    target: torch.Tensor,
    lip: torch.Tensor,
    mask: torch.Tensor | None,
    margin: torch.Tensor,
    runner_up: torch.Tensor,
    q: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_z (B, M, C) z.dtype, grad_lip_sel (B, M) opmath).

    grad_z is +-(grad_radius / den + grad_margin) * mask_bm at c = y / c = k* (no radius term
    where den == 0); grad_lip_sel_bm = -grad_radius * margin / den^2 * d den / d lip_m[y, k*]
    (q = inf: the derivative is shared evenly by the modalities attaining the max).
    """
    _check_inputs(z, target, lip, mask)
    check_contiguous(grad_radius=grad_radius, grad_margin=grad_margin, target=target, lip=lip,
                     mask=mask, margin=margin, runner_up=runner_up)
    B, M, C = z.shape
    acc = opmath_dtype(z.dtype)
    if B == 0 or C == 1:  # C == 1: radius and margin are constants
        return torch.zeros_like(z), torch.zeros((B, M), dtype=acc, device=z.device)
    grad_z = torch.empty_like(z)
    grad_lip = torch.empty((B, M), dtype=acc, device=z.device)

    def grid(meta):
        return (triton.cdiv(B, meta["BLOCK_B"]),)

    _backward_kernel[grid](
        grad_radius, grad_margin, target, lip, as_bytes(mask), margin, runner_up, grad_z,
        grad_lip, B, C, float(q), rows_bucket(B),
        M=M, BLOCK_M=triton.next_power_of_2(M), HAS_MASK=mask is not None,
        LIP_FULL=lip.dim() == 3, NORM=norm_kind(q), ACC=opmath_tl(z.dtype),
    )
    return grad_z, grad_lip
