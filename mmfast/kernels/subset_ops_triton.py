"""Triton kernels of ``subset_logits`` and ``subset_accuracy``, same contract as csrc/ops.cpp.

Both hold a (BLOCK_B rows x BLOCK_M modalities x BLOCK_C classes) block of z in registers
and loop over the S subsets, so z is read from memory once whatever S is. subset_logits
writes each subset's normalised fusion; subset_accuracy never forms (S, B, C): per subset it
takes the first argmax over classes (NaN first, like torch.argmax; chunked with a running
best when C is wider than one block) and counts hits per program into an (n_programs, S)
int32 table that one small sum turns into (S,) int64 -- deterministic, no atomics. Every
config writes the whole table (see ``_accuracy_kernel``), so autotuning cannot over-count.

With M <= 4 and a row of classes that fits one block, subset_accuracy instead scores every
subset *code* k in [0, 2^M) (``_accuracy_codes_kernel``): the numerator of k is its parent's
(k without its highest modality h) plus w_h z_h, one add per code and class, summed over
modalities in increasing order as the CUDA and C++ kernels do, and the argmax runs on the
numerators (no division per class). Hits are counted per code; (S,) is gathered from them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmfast.kernels._common import (
    active_configs,
    as_bytes,
    autotune,
    cast_for_store,
    check_contiguous,
    check_float_dtype,
    first_argmin,
    is_finite,
    on_input_device,
    opmath_tl,
    replaces_running_min,
    row_tile_heuristics,
    rows_bucket,
    tile_blocks,
)

__all__ = ["subset_logits", "subset_accuracy"]

# TILE counts elements of the (rows x modalities x classes) block of z held in registers. At
# 32 elements per thread subset_accuracy spilled registers for C = 10 on sm_90; at 16 it
# used 96 (C = 100) to 252 (C = 10) registers without spilling.
_GPU_CONFIGS = [
    triton.Config({"TILE": 1024, "WIDTH_CAP": 128}, num_warps=4),
    triton.Config({"TILE": 2048, "WIDTH_CAP": 128}, num_warps=4),
    triton.Config({"TILE": 2048, "WIDTH_CAP": 256}, num_warps=8),
    triton.Config({"TILE": 4096, "WIDTH_CAP": 256}, num_warps=8),
]
_INTERPRETER_CONFIG = triton.Config({"TILE": 1 << 15, "WIDTH_CAP": 256})


@triton.jit
def _fusion_weights(weight_ptr, present_ptr, rows, row_ok, ms, M: tl.constexpr,
                    HAS_WEIGHT: tl.constexpr, HAS_PRESENT: tl.constexpr, ACC: tl.constexpr):
    """(present_bm, w_bm, bad_b) of a (BLOCK_B, BLOCK_M) block: present (False on padding),
    w = present ? weight : 0 (weight None -> 1), selected rather than multiplied, and bad =
    the row has a weight that is not finite or negative (the row is poisoned: NaN scores,
    never counted as correct)."""
    offs = rows[:, None] * M + ms[None, :]
    ok = row_ok[:, None] & (ms < M)[None, :]
    present = ok
    if HAS_PRESENT:
        present = ok & (tl.load(present_ptr + offs, mask=ok, other=0) != 0)
    w = present.to(ACC)
    bad = tl.zeros([rows.shape[0]], tl.int1)
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + offs, mask=ok, other=0).to(ACC)
        w = tl.where(present, weight, 0.0)
        bad = tl.max((ok & ~(is_finite(weight) & (weight >= 0))).to(tl.int32), axis=1) > 0
    return present, w, bad


@triton.jit
def _load_z(z_ptr, rows, row_ok, present, ms, ks, M: tl.constexpr, C, ACC: tl.constexpr):
    """(BLOCK_B, BLOCK_M, BLOCK_C) block of z in ACC; zero outside the tensor and for absent
    modalities, which are never read. Offsets in int64 (rows is int64)."""
    offs = (rows[:, None, None] * M + ms[None, :, None]) * C + ks[None, None, :]
    ok = present[:, :, None] & (ks < C)[None, None, :]
    return tl.load(z_ptr + offs, mask=ok, other=0).to(ACC)


@triton.jit
def _subset_weights(subsets_ptr, s, w, ms, M: tl.constexpr):
    """(chosen_m, ws_bm = chosen_m ? w_bm : 0, divisor_b = denom_b if denom_b > 0 else 1) of
    subset s."""
    chosen = tl.load(subsets_ptr + s * M + ms, mask=ms < M, other=0) != 0
    ws = tl.where(chosen[None, :], w, 0.0)
    denom = tl.sum(ws, axis=1)
    return chosen, ws, tl.where(denom > 0, denom, 1.0)


@triton.jit
def _subset_scores(z, chosen, ws, divisor):
    """(BLOCK_B, BLOCK_C) normalised fusion of the chosen modalities (the others selected out,
    so a NaN in a modality outside the subset cannot leak)."""
    terms = tl.where(chosen[None, :, None], ws[:, :, None] * z, 0.0)
    return tl.sum(terms, axis=1) / divisor[:, None]


@triton.jit
def scores_offset(s, B, C):
    """Element offset of scores[s, 0, 0] in the (S, B, C) output, in int64: S * B * C passes
    2^31 at realistic sizes (15 subsets x 262144 rows x 1000 classes)."""
    return tl.cast(s, tl.int64) * B * C


@autotune(_GPU_CONFIGS, _INTERPRETER_CONFIG,
          key=["C", "M", "HAS_WEIGHT", "HAS_PRESENT", "ROWS_BUCKET"])
@row_tile_heuristics("B", "C", "BLOCK_B", "BLOCK_C", depth="BLOCK_M")
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _logits_kernel(
    z_ptr, subsets_ptr, weight_ptr, present_ptr, out_ptr, B, C, S, ROWS_BUCKET,
    M: tl.constexpr, BLOCK_M: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_PRESENT: tl.constexpr, ACC: tl.constexpr, TILE: tl.constexpr, WIDTH_CAP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    ks = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    ms = tl.arange(0, BLOCK_M)
    row_ok = rows < B
    tile_ok = row_ok[:, None] & (ks < C)[None, :]
    present, w, bad = _fusion_weights(weight_ptr, present_ptr, rows, row_ok, ms, M, HAS_WEIGHT,
                                      HAS_PRESENT, ACC)
    z = _load_z(z_ptr, rows, row_ok, present, ms, ks, M, C, ACC)
    out_offs = rows[:, None] * C + ks[None, :]
    for s in range(S):
        chosen, ws, divisor = _subset_weights(subsets_ptr, s, w, ms, M)
        scores = _subset_scores(z, chosen, ws, divisor)
        if HAS_WEIGHT:
            scores = tl.where(bad[:, None], float("nan"), scores)
        tl.store(out_ptr + scores_offset(s, B, C) + out_offs, cast_for_store(scores, out_ptr),
                 mask=tile_ok)


@autotune(_GPU_CONFIGS, _INTERPRETER_CONFIG,
          key=["C", "M", "HAS_WEIGHT", "HAS_PRESENT", "ROWS_BUCKET"])
@row_tile_heuristics("B", "C", "BLOCK_B", "BLOCK_C", depth="BLOCK_M")
@triton.heuristics({"ONE_CHUNK": lambda args: args["BLOCK_C"] >= args["C"]})
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _accuracy_kernel(
    z_ptr, target_ptr, subsets_ptr, weight_ptr, present_ptr, partial_ptr, B, C, S,
    ROWS_BUCKET,
    M: tl.constexpr, BLOCK_M: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_PRESENT: tl.constexpr, ACC: tl.constexpr, TILE: tl.constexpr, WIDTH_CAP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, ONE_CHUNK: tl.constexpr,
):
    # The grid is the same for every config (the row blocks of the config with the most), and
    # program p writes the whole row p of the (programs, S) table: its counts, or zeros when
    # this config has fewer blocks. So every config writes the whole table, and the
    # autotuner's benchmark runs on it cannot leave counts behind.
    # ONE_CHUNK: the classes fit in one block, so z is loaded once for all subsets.
    # A row counts as wrong when its fused scores contain NaN, when a weight of the row is
    # invalid, or when its target lies outside [0, C) (only compared, never an index).
    pid = tl.program_id(0)
    table_row = partial_ptr + pid.to(tl.int64) * S
    if pid < tl.cdiv(B, BLOCK_B):
        rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
        ms = tl.arange(0, BLOCK_M)
        row_ok = rows < B
        target = tl.load(target_ptr + rows, mask=row_ok, other=-1)
        present, w, bad = _fusion_weights(weight_ptr, present_ptr, rows, row_ok, ms, M,
                                          HAS_WEIGHT, HAS_PRESENT, ACC)
        countable = row_ok & ~bad
        lanes = tl.arange(0, BLOCK_C)  # class indices fit in int32: fewer registers
        if ONE_CHUNK:
            z = _load_z(z_ptr, rows, row_ok, present, ms, lanes, M, C, ACC)
        for s in range(S):
            chosen, ws, divisor = _subset_weights(subsets_ptr, s, w, ms, M)
            best_key = tl.full([BLOCK_B], float("inf"), ACC)
            best_k = tl.full([BLOCK_B], C, tl.int32)
            for c0 in range(0, C, BLOCK_C):
                ks = c0 + lanes
                if not ONE_CHUNK:
                    z = _load_z(z_ptr, rows, row_ok, present, ms, ks, M, C, ACC)
                scores = _subset_scores(z, chosen, ws, divisor)
                valid = row_ok[:, None] & (ks < C)[None, :]
                index = ks[None, :] + tl.zeros([BLOCK_B, BLOCK_C], dtype=tl.int32)
                chunk_key, chunk_k = first_argmin(-scores, valid, index, C)
                take = replaces_running_min(best_key, best_k, chunk_key, chunk_k, C)
                best_key = tl.where(take, chunk_key, best_key)
                best_k = tl.where(take, chunk_k, best_k)
            # A NaN score wins the argmin and stays: best_key is NaN iff the row had one.
            hit = countable & (best_key == best_key) & (best_k.to(tl.int64) == target)
            tl.store(table_row + s, tl.sum(hit.to(tl.int32), axis=0))
    else:
        for s in range(S):
            tl.store(table_row + s, 0)


# The codes kernel holds the whole row of classes (BLOCK_C = C rounded up to a power of two,
# at most CODES_MAX_CLASSES) and M <= CODE_MODALITIES per-modality terms plus the numerators
# still needed as parents, so its tiles are smaller than the subset-loop kernel's.
CODE_MODALITIES = 4
CODES = tl.constexpr(1 << CODE_MODALITIES)
CODES_MAX_CLASSES = 1024
_CODES_GPU_CONFIGS = [
    triton.Config({"TILE": 512, "WIDTH_CAP": CODES_MAX_CLASSES}, num_warps=4),
    triton.Config({"TILE": 1024, "WIDTH_CAP": CODES_MAX_CLASSES}, num_warps=4),
    triton.Config({"TILE": 1024, "WIDTH_CAP": CODES_MAX_CLASSES}, num_warps=8),
    triton.Config({"TILE": 2048, "WIDTH_CAP": CODES_MAX_CLASSES}, num_warps=8),
]
_CODES_INTERPRETER_CONFIG = triton.Config({"TILE": 1 << 13, "WIDTH_CAP": CODES_MAX_CLASSES})
# Relative numerator gap below which two classes' quotients by the same divisor can round to
# the same value (8x the float32 bound 2^-23; float64 needs less), plus an absolute term for
# quotients in the subnormal range.
_NEAR_TIE_REL = tl.constexpr(2.0**-20)
_NEAR_TIE_ABS = tl.constexpr(1e-30)


@triton.jit
def _modality_term(z_ptr, weight_ptr, present_ptr, rows, row_ok, ks, m: tl.constexpr,
                   M: tl.constexpr, C, HAS_WEIGHT: tl.constexpr, HAS_PRESENT: tl.constexpr,
                   ACC: tl.constexpr):
    """(w_m z_m (BLOCK_B, BLOCK_C), w_m, bad_m) of modality m: _fusion_weights over the
    one-modality block [m, m + 1), and z never read where absent (its term is exactly 0)."""
    present, w, bad = _fusion_weights(weight_ptr, present_ptr, rows, row_ok,
                                      m + tl.arange(0, 1), M, HAS_WEIGHT, HAS_PRESENT, ACC)
    z = tl.load(z_ptr + (rows[:, None] * M + m) * C + ks[None, :],
                mask=present & (ks < C)[None, :], other=0).to(ACC)
    return w * z, tl.sum(w, axis=1), bad


@triton.jit
def _code_hits(num, den, index, valid, target, countable, C):
    """Rows of the block whose argmax over classes of num / (den if den > 0 else 1) (NaN
    first, lowest class on ties) is their target, without a division per class: the
    numerators' first argmax is the quotients' unless an earlier class has a quotient that
    rounds to the same value, which needs a numerator within a few ulps; only when some row
    of the block has such a class are the quotients formed."""
    divisor = tl.where(den > 0, den, 1.0)
    neg_key, best = first_argmin(-num, valid, index, C)
    top = -neg_key
    slack = tl.abs(top) * _NEAR_TIE_REL + divisor * _NEAR_TIE_ABS
    near = valid & (index < best[:, None]) & (num >= (top - slack)[:, None])
    if tl.max(tl.max(near.to(tl.int32), axis=1), axis=0) > 0:
        neg_key, best = first_argmin(-(num / divisor[:, None]), valid, index, C)
    # A NaN score wins the argmax: the row is wrong (BRIEF contract 3).
    hit = countable & (neg_key == neg_key) & (best.to(tl.int64) == target)
    return tl.sum(hit.to(tl.int32), axis=0)


@autotune(_CODES_GPU_CONFIGS, _CODES_INTERPRETER_CONFIG,
          key=["C", "M", "HAS_WEIGHT", "HAS_PRESENT", "ROWS_BUCKET"])
@row_tile_heuristics("B", "C", "BLOCK_B", "BLOCK_C")
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _accuracy_codes_kernel(
    z_ptr, target_ptr, weight_ptr, present_ptr, partial_ptr, B, C, ROWS_BUCKET,
    M: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_PRESENT: tl.constexpr, ACC: tl.constexpr,
    TILE: tl.constexpr, WIDTH_CAP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Program p writes row p of the (programs, CODES) table: hits per code k (numerator n_k,
    # normaliser d_k) or zeros, so every config writes the whole table (as _accuracy_kernel).
    # Triton has no arrays of tiles, so the highest-bit DP is spelled out code by code:
    # n_k = n_{k - 2^h} + w_h z_h with h the highest modality of k.
    pid = tl.program_id(0)
    table_row = partial_ptr + pid.to(tl.int64) * CODES
    if pid < tl.cdiv(B, BLOCK_B):
        rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        ks = tl.arange(0, BLOCK_C)
        valid = row_ok[:, None] & (ks < C)[None, :]
        index = ks[None, :] + tl.zeros([BLOCK_B, BLOCK_C], dtype=tl.int32)
        target = tl.load(target_ptr + rows, mask=row_ok, other=-1)
        t0, w0, bad = _modality_term(z_ptr, weight_ptr, present_ptr, rows, row_ok, ks, 0, M, C,
                                     HAS_WEIGHT, HAS_PRESENT, ACC)
        if M > 1:
            t1, w1, bad1 = _modality_term(z_ptr, weight_ptr, present_ptr, rows, row_ok, ks, 1,
                                          M, C, HAS_WEIGHT, HAS_PRESENT, ACC)
            bad = bad | bad1
        if M > 2:
            t2, w2, bad2 = _modality_term(z_ptr, weight_ptr, present_ptr, rows, row_ok, ks, 2,
                                          M, C, HAS_WEIGHT, HAS_PRESENT, ACC)
            bad = bad | bad2
        if M > 3:
            t3, w3, bad3 = _modality_term(z_ptr, weight_ptr, present_ptr, rows, row_ok, ks, 3,
                                          M, C, HAS_WEIGHT, HAS_PRESENT, ACC)
            bad = bad | bad3
        countable = row_ok & ~bad
        # the empty subset scores 0 everywhere: class 0
        tl.store(table_row, tl.sum((countable & (target == 0)).to(tl.int32), axis=0))
        n1 = t0
        tl.store(table_row + 1, _code_hits(n1, w0, index, valid, target, countable, C))
        if M > 1:
            tl.store(table_row + 2, _code_hits(t1, w1, index, valid, target, countable, C))
            n3, d3 = n1 + t1, w0 + w1
            tl.store(table_row + 3, _code_hits(n3, d3, index, valid, target, countable, C))
        if M > 2:
            n4, n5, n6, n7 = t2, n1 + t2, t1 + t2, n3 + t2
            d5, d6, d7 = w0 + w2, w1 + w2, d3 + w2
            tl.store(table_row + 4, _code_hits(n4, w2, index, valid, target, countable, C))
            tl.store(table_row + 5, _code_hits(n5, d5, index, valid, target, countable, C))
            tl.store(table_row + 6, _code_hits(n6, d6, index, valid, target, countable, C))
            tl.store(table_row + 7, _code_hits(n7, d7, index, valid, target, countable, C))
        if M > 3:
            tl.store(table_row + 8, _code_hits(t3, w3, index, valid, target, countable, C))
            tl.store(table_row + 9, _code_hits(n1 + t3, w0 + w3, index, valid, target,
                                               countable, C))
            tl.store(table_row + 10, _code_hits(t1 + t3, w1 + w3, index, valid, target,
                                                countable, C))
            tl.store(table_row + 11, _code_hits(n3 + t3, d3 + w3, index, valid, target,
                                                countable, C))
            tl.store(table_row + 12, _code_hits(n4 + t3, w2 + w3, index, valid, target,
                                                countable, C))
            tl.store(table_row + 13, _code_hits(n5 + t3, d5 + w3, index, valid, target,
                                                countable, C))
            tl.store(table_row + 14, _code_hits(n6 + t3, d6 + w3, index, valid, target,
                                                countable, C))
            tl.store(table_row + 15, _code_hits(n7 + t3, d7 + w3, index, valid, target,
                                                countable, C))
        for k in range(1 << M, CODES):
            tl.store(table_row + k, 0)
    else:
        for k in range(CODES):
            tl.store(table_row + k, 0)


def _check_inputs(z, subsets, weight, present) -> None:
    check_float_dtype(z, "z")
    check_contiguous(z=z, subsets=subsets, weight=weight, present=present)
    if z.dim() != 3:
        raise ValueError(f"subset_ops_triton: z must be (B, M, C), got {tuple(z.shape)}")
    B, M, _ = z.shape
    if subsets.dim() != 2 or subsets.shape[1] != M:
        raise ValueError(f"subset_ops_triton: subsets must be (S, {M}), got "
                         f"{tuple(subsets.shape)}")
    for name, t in (("weight", weight), ("present", present)):
        if t is not None and tuple(t.shape) != (B, M):
            raise ValueError(f"subset_ops_triton: {name} must be ({B}, {M}), got "
                             f"{tuple(t.shape)}")


def _launch(kernel, leading: tuple, z, subsets, weight, present, trailing: tuple,
            grid) -> None:
    """Launches ``kernel[grid](*leading, subsets, weight, present, *trailing, B, C, S,
    ROWS_BUCKET, ...)``; ``leading`` starts with z."""
    B, M, C = z.shape
    kernel[grid](
        *leading, as_bytes(subsets), weight, as_bytes(present), *trailing, B, C,
        subsets.shape[0], rows_bucket(B), M=M, BLOCK_M=triton.next_power_of_2(M),
        HAS_WEIGHT=weight is not None, HAS_PRESENT=present is not None, ACC=opmath_tl(z.dtype),
    )


def _max_programs(B: int, M: int, C: int, configs=(_GPU_CONFIGS, _INTERPRETER_CONFIG),
                  depth: int | None = None) -> int:
    """Most row blocks any active config of a kernel has: the accuracy kernels' grid for every
    config and the height of the partial-count table (each program writes its whole row).
    ``depth``: the modalities a config's tile holds (the subset-loop kernel: BLOCK_M; the codes
    kernel tiles classes only)."""
    depth = triton.next_power_of_2(M) if depth is None else depth
    return max(
        triton.cdiv(B, tile_blocks(B, C, cfg.kwargs["TILE"], cfg.kwargs["WIDTH_CAP"], depth)[0])
        for cfg in active_configs(*configs)
    )


def uses_codes_kernel(M: int, C: int) -> bool:
    """subset_accuracy by subset codes: few modalities, and the classes fit one block."""
    return M <= CODE_MODALITIES and C <= CODES_MAX_CLASSES


def _launch_codes(z, target, weight, present, partial) -> None:
    """_accuracy_codes_kernel with one program per row of the (programs, CODES) table."""
    B, M, C = z.shape
    _accuracy_codes_kernel[(partial.shape[0],)](
        z, target, weight, as_bytes(present), partial, B, C, rows_bucket(B), M=M,
        HAS_WEIGHT=weight is not None, HAS_PRESENT=present is not None, ACC=opmath_tl(z.dtype),
    )


def _accuracy_by_codes(z, target, subsets, weight, present) -> torch.Tensor:
    """correct (S,) from per-code hits: (programs, CODES) int32 table, summed, then gathered
    at each subset's code (sum_m subsets_sm 2^m)."""
    B, M, C = z.shape
    programs = _max_programs(B, M, C, (_CODES_GPU_CONFIGS, _CODES_INTERPRETER_CONFIG), 1)
    partial = torch.empty((programs, CODES.value), dtype=torch.int32, device=z.device)
    _launch_codes(z, target, weight, present, partial)
    bits = torch.arange(M, device=z.device)
    codes = (subsets.to(torch.int64) << bits).sum(dim=1)
    return partial.sum(dim=0, dtype=torch.int64)[codes]


@on_input_device
def subset_logits(
    z: torch.Tensor,
    subsets: torch.Tensor,
    weight: torch.Tensor | None,
    present: torch.Tensor | None,
) -> torch.Tensor:
    """scores (S, B, C) z.dtype: masked_fusion(z, subsets_s & present, weight, normalize=True).

    z contiguous (B, M, C); subsets bool (S, M); weight None or (B, M) opmath; present None or
    bool (B, M). An empty subset (or a row with nothing present) gives zero scores.
    """
    _check_inputs(z, subsets, weight, present)
    B, M, C = z.shape
    out = torch.empty((subsets.shape[0], B, C), dtype=z.dtype, device=z.device)
    if out.numel() == 0:
        return out

    def grid(meta):
        return (triton.cdiv(B, meta["BLOCK_B"]), triton.cdiv(C, meta["BLOCK_C"]))

    _launch(_logits_kernel, (z,), z, subsets, weight, present, (out,), grid)
    return out


@on_input_device
def subset_accuracy(
    z: torch.Tensor,
    target: torch.Tensor,
    subsets: torch.Tensor,
    weight: torch.Tensor | None,
    present: torch.Tensor | None,
) -> torch.Tensor:
    """correct (S,) int64: rows whose fused argmax (lowest index on ties) equals target.

    One pass over z; the (S, B, C) scores are never stored. An empty subset scores 0 for
    every class, so its prediction is class 0.
    """
    _check_inputs(z, subsets, weight, present)
    B, M, C = z.shape
    S = subsets.shape[0]
    if tuple(target.shape) != (B,):
        raise ValueError(f"subset_ops_triton: target must be ({B},), got {tuple(target.shape)}")
    check_contiguous(target=target)
    if B == 0 or S == 0 or C == 0:
        return torch.zeros((S,), dtype=torch.int64, device=z.device)
    if uses_codes_kernel(M, C):
        return _accuracy_by_codes(z, target, subsets, weight, present)
    programs = _max_programs(B, M, C)
    partial = torch.empty((programs, S), dtype=torch.int32, device=z.device)
    _launch(_accuracy_kernel, (z, target), z, subsets, weight, present, (partial,),
            (programs,))
    return partial.sum(dim=0, dtype=torch.int64)
