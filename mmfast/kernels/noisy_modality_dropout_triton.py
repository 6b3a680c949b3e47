"""Triton kernels of ``noisy_modality_dropout``: the Philox4x32-10 stream of the reference.

Two launches: a tiny per-sample kernel draws keep_b and sigma_used_b from the sample stream
(counter word 1 carries SAMPLE_STREAM_BIT), then the element kernel walks x in flat,
4-aligned blocks: one ``tl.philox`` call yields the four 32-bit words of noise block e // 4,
Box-Muller turns lane pairs (0, 1) and (2, 3) into four normals (hardware cos/sin on a
GPU), and the block, held as (blocks, 4), picks each element's lane with a select. So each
element costs a quarter of a Philox call, x is read once (not at all for dropped rows) and y
written once. Counters, key layout and the uint32 -> uniform map are exactly those of
mmfast/ops/reference.py: keep and sigma_used are bit-identical, and y differs only by the
rounding of log / cos / sin (on a GPU, approximate cos / sin: abs error < 2^-20 times the
Box-Muller radius).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from mmfast.kernels._common import (
    as_bytes,
    autotune,
    cast_for_store,
    check_contiguous,
    check_float_dtype,
    interpreting,
    is_finite,
    on_input_device,
    opmath_tl,
    rows_bucket,
)

__all__ = ["forward"]

_M32 = 0xFFFFFFFF
_GPU_CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4),
    triton.Config({"BLOCK": 2048}, num_warps=4),
    triton.Config({"BLOCK": 2048}, num_warps=8),
    triton.Config({"BLOCK": 4096}, num_warps=8),
]
_INTERPRETER_CONFIG = triton.Config({"BLOCK": 1 << 14})
_SAMPLE_BLOCK_GPU, _SAMPLE_BLOCK_INTERPRETER = 256, 1024


@triton.jit
def _philox_uniform(r):
    """uint32 -> float32 in (0, 1): (r >> 8) * 2^-24 + 2^-25, exact in float32."""
    return (r >> 8).to(tl.float32) * 5.9604644775390625e-08 + 2.98023223876953125e-08


@triton.jit
def _philox_words(seed, index, stream_bit, offset_lo, offset_hi):
    """Philox4x32-10 of counter (index lo, index hi | stream_bit, offset lo, offset hi)."""
    c0 = (index & 0xFFFFFFFF).to(tl.uint32)
    c1 = (((index >> 32) & 0x7FFFFFFF) | stream_bit).to(tl.uint32)
    c2 = tl.zeros(c0.shape, tl.uint32) + offset_lo.to(tl.uint32)
    c3 = tl.zeros(c0.shape, tl.uint32) + offset_hi.to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


# On a GPU cos/sin use the hardware approximations (one MUFU op each, abs error < 2^-20 on
# [-pi, pi]) instead of libdevice's precise versions (~40 instructions each), which would
# make this kernel compute-bound; log stays precise (the approximate one loses relative
# accuracy for u0 near 1). The interpreter cannot call libdevice, so it uses tl.cos / tl.sin.
_FAST_SINCOS = tl.constexpr(not interpreting())


@triton.jit
def _box_muller(u0, u1):
    """(r cos theta, r sin theta), r = sqrt(-2 ln u0), theta = 2 pi u1 taken in [-pi, pi)."""
    radius = tl.sqrt(-2.0 * tl.log(u0))
    theta = 6.283185307179586 * tl.where(u1 >= 0.5, u1 - 1.0, u1)  # u1 - 1 is exact
    if _FAST_SINCOS:
        cos_theta = libdevice.fast_cosf(theta)
        sin_theta = libdevice.fast_sinf(theta)
    else:
        cos_theta = tl.cos(theta)
        sin_theta = tl.sin(theta)
    return radius * cos_theta, radius * sin_theta


@triton.jit
def _offset_words(offset_ptr, offset_lo, offset_hi, OFFSET_IN_TENSOR: tl.constexpr):
    """(lo, hi) 32-bit words of the stream offset: read from the 0-d int64 tensor at
    ``offset_ptr`` on the device (BRIEF contract 1: no host sync, the same graph replays with a
    new offset), or the host-split ``offset_lo`` / ``offset_hi``."""
    if OFFSET_IN_TENSOR:
        offset = tl.load(offset_ptr)
        lo = offset & 0xFFFFFFFF
        hi = (offset >> 32) & 0xFFFFFFFF
    else:
        lo = offset_lo
        hi = offset_hi
    return lo, hi


@triton.jit(do_not_specialize=["seed", "offset_lo", "offset_hi"])
def _sample_kernel(
    p_drop_ptr, sigma_ptr, keep_ptr, sigma_used_ptr, B, K, seed, offset_ptr, offset_lo,
    offset_hi, SIGMA_LEVELS: tl.constexpr, OFFSET_IN_TENSOR: tl.constexpr, BLOCK: tl.constexpr,
):
    # An invalid p_drop (outside [0, 1] or NaN) or sigma (NaN, inf or negative; for levels,
    # the level drawn) poisons the sample: keep = False and sigma_used = NaN, and the element
    # kernel writes NaN for its y (BRIEF contract 2: the kernel cannot raise).
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < B
    lo, hi = _offset_words(offset_ptr, offset_lo, offset_hi, OFFSET_IN_TENSOR)
    r0, r1, _, _ = _philox_words(seed, rows, 0x80000000, lo, hi)
    p = tl.load(p_drop_ptr + rows, mask=ok, other=0)
    if SIGMA_LEVELS:
        level = tl.minimum((_philox_uniform(r1) * K).to(tl.int32), K - 1)
        sigma = tl.load(sigma_ptr + level, mask=ok, other=0)
    else:
        sigma = tl.load(sigma_ptr + rows, mask=ok, other=0)
    valid = (p >= 0) & (p <= 1) & is_finite(sigma) & (sigma >= 0)
    keep = valid & (_philox_uniform(r0) >= p)
    tl.store(keep_ptr + rows, keep.to(tl.uint8), mask=ok)
    tl.store(sigma_used_ptr + rows, tl.where(valid, sigma, float("nan")), mask=ok)


@autotune(_GPU_CONFIGS, _INTERPRETER_CONFIG, key=["ACC", "NUMEL_BUCKET"])
@triton.heuristics({"ROW_SPANS_BLOCK": lambda args: args["row_len"] >= args["BLOCK"]})
@triton.jit(do_not_specialize=["seed", "offset_lo", "offset_hi", "NUMEL_BUCKET"])
def _noise_kernel(
    x_ptr, keep_ptr, sigma_used_ptr, y_ptr, numel, row_len, seed, offset_ptr, offset_lo,
    offset_hi, fill, NUMEL_BUCKET,
    ACC: tl.constexpr, OFFSET_IN_TENSOR: tl.constexpr, BLOCK: tl.constexpr,
    ROW_SPANS_BLOCK: tl.constexpr,
):
    # The block is held as (QUADS, 4): row q is Philox block start / 4 + q, column j its
    # lane, so each thread's four consecutive elements take the four words of one Philox call
    # with a select, no tl.join / reshape (which went through a shared-memory layout
    # conversion). The philox / Box-Muller math runs on (QUADS, 1) tensors.
    QUADS: tl.constexpr = BLOCK // 4
    start = tl.program_id(0).to(tl.int64) * BLOCK
    quads = start // 4 + tl.arange(0, QUADS).to(tl.int64)[:, None]  # (QUADS, 1)
    lane = tl.arange(0, 4)[None, :]  # (1, 4)
    offs = quads * 4 + lane  # (QUADS, 4), contiguous
    ok = offs < numel
    if ROW_SPANS_BLOCK:
        # row_len >= BLOCK: the block touches at most two rows (one division per block), and
        # keep / sigma_used are two scalar loads per row, selected per element.
        row0 = start // row_len
        row1 = tl.minimum(row0 + 1, (numel - 1) // row_len)  # the last block has no next row
        keep0 = tl.load(keep_ptr + row0)
        sigma0 = tl.load(sigma_used_ptr + row0)
        keep1 = tl.load(keep_ptr + row1)
        sigma1 = tl.load(sigma_used_ptr + row1)
        second = offs >= (row0 + 1) * row_len
        keep = ok & (tl.where(second, keep1, keep0) != 0)
        sigma = tl.where(second, sigma1, sigma0)
    else:  # many rows per block: one gather per element (the tiny arrays stay in cache)
        rows = offs // row_len
        keep = tl.load(keep_ptr + rows, mask=ok, other=0) != 0
        sigma = tl.load(sigma_used_ptr + rows, mask=ok, other=0)

    lo, hi = _offset_words(offset_ptr, offset_lo, offset_hi, OFFSET_IN_TENSOR)
    r0, r1, r2, r3 = _philox_words(seed, quads, 0, lo, hi)
    n0, n1 = _box_muller(_philox_uniform(r0), _philox_uniform(r1))
    n2, n3 = _box_muller(_philox_uniform(r2), _philox_uniform(r3))
    noise = tl.where(lane == 0, n0, tl.where(lane == 1, n1, tl.where(lane == 2, n2, n3)))

    x = tl.load(x_ptr + offs, mask=ok & keep, other=0)
    noisy = x.to(ACC) + (sigma * noise).to(ACC)  # noise in float32, the sum in opmath
    # Dropped: fill, or NaN for a poisoned sample (its sigma_used is NaN).
    dropped = tl.where(sigma != sigma, float("nan"), fill)
    y = tl.where(keep, noisy, dropped)
    tl.store(y_ptr + offs, cast_for_store(y, y_ptr), mask=ok)


def _offset_args(offset: int | torch.Tensor, device: torch.device) -> tuple:
    """(offset_ptr, offset_lo, offset_hi) kernel arguments: the tensor and zeros, or None and
    the int's two 32-bit words (two's complement, as the CPU kernel)."""
    if isinstance(offset, torch.Tensor):
        if offset.dim() != 0 or offset.dtype != torch.int64 or offset.device != device:
            raise ValueError(
                "noisy_modality_dropout_triton: offset expected an int or a 0-d int64 tensor on "
                f"{device}, got shape {tuple(offset.shape)} {offset.dtype} on {offset.device}")
        return offset, 0, 0
    offset = int(offset)
    return None, offset & _M32, (offset >> 32) & _M32


def _per_sample(t: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """A scalar or (B,) float32 argument as a contiguous (B,) tensor."""
    if t.numel() not in (1, batch) or t.dim() > 1:
        raise ValueError(f"noisy_modality_dropout_triton: {name} must be a scalar or "
                         f"({batch},), got shape {tuple(t.shape)}")
    return t.to(torch.float32).reshape(-1).expand(batch).contiguous()


@on_input_device
def forward(
    x: torch.Tensor,
    p_drop: torch.Tensor,
    sigma: torch.Tensor,
    sigma_levels: bool,
    seed: int,
    offset: int | torch.Tensor,
    fill: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y x.shape x.dtype, keep (B,) bool, sigma_used (B,) float32).

    keep_b = u_b >= p_drop_b; sigma_used_b = sigma_b, or a level drawn uniformly from the (K,)
    ``sigma`` when ``sigma_levels``; y_b = keep_b ? x_b + sigma_used_b * n_b : fill, with the
    reference's Philox streams keyed by (seed, offset). ``offset`` is an int or a 0-d int64
    tensor on x's device, which the kernels read themselves (no host sync; a CUDA graph
    replays with whatever the tensor holds). A sample with an invalid p_drop or sigma gets
    keep False, sigma_used NaN and y NaN (the kernels cannot raise).
    """
    check_float_dtype(x, "x")
    check_contiguous(x=x)
    if x.dim() == 0:
        raise ValueError("noisy_modality_dropout_triton: x must have a batch dimension, got 0-d")
    B = x.shape[0]
    y = torch.empty_like(x)
    keep = torch.empty((B,), dtype=torch.bool, device=x.device)
    sigma_used = torch.empty((B,), dtype=torch.float32, device=x.device)
    if B == 0:
        return y, keep, sigma_used
    p_drop = _per_sample(p_drop, B, "p_drop")
    if sigma_levels:
        if sigma.numel() == 0:
            raise ValueError("noisy_modality_dropout_triton: sigma levels must be non-empty, "
                             "got 0 levels")
        sigma = sigma.to(torch.float32).reshape(-1).contiguous()
    else:
        sigma = _per_sample(sigma, B, "sigma")
    seed &= (1 << 64) - 1
    offset_args = _offset_args(offset, x.device)
    sample_block = _SAMPLE_BLOCK_INTERPRETER if x.device.type == "cpu" else _SAMPLE_BLOCK_GPU
    _sample_kernel[(triton.cdiv(B, sample_block),)](
        p_drop, sigma, as_bytes(keep), sigma_used, B, sigma.numel(), seed, *offset_args,
        SIGMA_LEVELS=bool(sigma_levels), OFFSET_IN_TENSOR=offset_args[0] is not None,
        BLOCK=sample_block,
    )
    numel = x.numel()
    if numel == 0:
        return y, keep, sigma_used
    row_len = numel // B

    def grid(meta):
        return (triton.cdiv(numel, meta["BLOCK"]),)

    _noise_kernel[grid](
        x, as_bytes(keep), sigma_used, y, numel, row_len, seed, *offset_args, float(fill),
        rows_bucket(numel), ACC=opmath_tl(x.dtype), OFFSET_IN_TENSOR=offset_args[0] is not None,
    )
    return y, keep, sigma_used
