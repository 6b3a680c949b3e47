"""The raw CUDA kernels of csrc/cuda, run on the CPU under host emulation, against the reference.

tests/cuda/emulation/ builds the kernel headers as host C++ (nvcc on a .cpp file: no GPU and
no device code involved) with a small emulation of threads, blocks, __syncthreads, warp
shuffles and atomics, and exposes each kernel through ctypes. Each test runs a kernel with the
launch configuration the launcher in csrc/cuda/<op>.cu would pick and with others (one lane
per row, partial warps, grids small enough to loop) and compares with mmfast.ops.reference.
This checks index math, tails, vector paths, tie rules and reductions; it says nothing about
speed, and the launchers themselves (torch types) only run on a GPU. Skipped without nvcc.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import mmap
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from mmfast.ops import reference as ref

HERE = Path(__file__).resolve().parent
CSRC = HERE.parents[1] / "csrc"
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
VECTOR_WIDTH = {torch.float32: 4, torch.float64: 2, torch.float16: 8, torch.bfloat16: 8}
TOLERANCE = {  # (rtol, atol) of kernel output vs reference, in the output's dtype
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-12, 1e-12),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
GRID = 2  # blocks: small, so grid-stride loops run more than once on the larger cases


@pytest.fixture(scope="module")
def emu(tmp_path_factory) -> ctypes.CDLL:
    """Builds tests/cuda/emulation/kernels_capi.cpp into a shared library (about 20 s)."""
    out = tmp_path_factory.mktemp("cuda_emulation") / "libmmfast_cuda_emulation.so"
    cmd = [
        NVCC, "-std=c++20", "-O1", "-shared",
        "-Xcompiler", "-fPIC,-ffp-contract=off,-Wall,-Wno-unknown-pragmas",
        "-D__device__=", "-D__global__=", "-D__host__=", "-D__shared__=",
        f"-I{CSRC}", f"-I{HERE / 'emulation'}",
        str(HERE / "emulation" / "kernels_capi.cpp"), "-o", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    lib = ctypes.CDLL(str(out))
    lib.emu_subset_accuracy.restype = ctypes.c_int64
    return lib


def ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def i64(v: int) -> ctypes.c_int64:
    return ctypes.c_int64(v)


def offset_tensor(offset: int) -> torch.Tensor:
    """The noise op's stream offset as the 0-d int64 tensor the kernels read (contract 1)."""
    return torch.tensor(offset - 2**64 if offset >= 2**63 else offset, dtype=torch.int64)


def opmath(dtype: torch.dtype) -> torch.dtype:
    return ref.opmath_dtype(dtype)


def pow2_lanes(n: int) -> int:
    """next_power_of_two_at_most_32 of csrc/cuda/cuda_utils.cuh."""
    lanes = 1
    while lanes < 32 and lanes < n:
        lanes *= 2
    return lanes


def assert_matches(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str):
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(
        got.double(),
        want.double(),
        rtol=rtol,
        atol=atol,
        equal_nan=True,
        msg=lambda m: f"{what}: {m}",
    )


def vector_modes(row_elems: int, dtype: torch.dtype) -> list[int]:
    """Vectorised (1) only where the launcher would allow it; scalar (0) always."""
    return [0, 1] if row_elems % VECTOR_WIDTH[dtype] == 0 else [0]


# ---------------------------------------------------------------------------- masked_fusion
FUSION_SHAPES = [(5, 3, 16), (3, 8, 33), (33, 2, 8), (4, 2, 0)]


def fusion_inputs(B, M, D, dtype, weighted):
    x = torch.randn(B, M, D, dtype=torch.float64).to(dtype)
    mask = torch.rand(B, M) > 0.4
    mask[0] = False  # a row with no modality
    weight = torch.rand(B, M, dtype=opmath(dtype)) + 0.1 if weighted else None
    return x, mask, weight


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_masked_fusion_forward(emu, dtype):
    acc = opmath(dtype)
    for (B, M, D), weighted, normalize in itertools.product(
        FUSION_SHAPES, [False, True], [True, False]
    ):
        x, mask, weight = fusion_inputs(B, M, D, dtype, weighted)
        y_ref, denom_ref = ref.masked_fusion(x, mask, weight, normalize)
        for vec in vector_modes(D, dtype):
            launcher_lanes = pow2_lanes(-(-D // (VECTOR_WIDTH[dtype] if vec else 1)))
            for lanes in sorted({launcher_lanes, 1}):
                y = torch.full((B, D), math.nan, dtype=dtype)
                denom = torch.full((B,), math.nan, dtype=acc)
                emu.emu_masked_fusion(DTYPE_CODE[dtype], ptr(x), ptr(mask), ptr(weight),
                                      int(normalize), i64(B), M, i64(D), lanes, vec, GRID,
                                      ptr(y), ptr(denom))  # fmt: skip
                what = (
                    f"{(B, M, D)} weighted={weighted} normalize={normalize} vec={vec} lanes={lanes}"
                )
                assert_matches(y, y_ref, dtype, "y " + what)
                assert_matches(denom, denom_ref, acc, "denom " + what)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_masked_fusion_backward_matches_autograd(emu, dtype):
    acc = opmath(dtype)
    for (B, M, D), normalize in itertools.product(FUSION_SHAPES, [True, False]):
        x, mask, weight = fusion_inputs(B, M, D, dtype, weighted=True)
        xg, wg = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        y, denom = ref.masked_fusion(xg, mask, wg, normalize)
        grad_y = torch.randn(B, D, dtype=torch.float64).to(dtype)
        gx_ref, gw_ref = torch.autograd.grad(y, [xg, wg], grad_y)
        y, denom = y.detach(), denom.detach()
        for need_gw, vec in itertools.product([0, 1], vector_modes(D, dtype)):
            lanes = pow2_lanes(-(-D // (VECTOR_WIDTH[dtype] if vec else 1)))
            gx = torch.full((B, M, D), math.nan, dtype=dtype)
            gw = torch.full((B, M), math.nan, dtype=acc)
            emu.emu_masked_fusion_backward(
                DTYPE_CODE[dtype],
                ptr(grad_y),
                ptr(x),
                ptr(mask),
                ptr(weight),
                ptr(y),
                ptr(denom),
                int(normalize),
                need_gw,
                i64(B),
                M,
                i64(D),
                lanes,
                vec,
                GRID,
                ptr(gx),
                ptr(gw) if need_gw else None,
            )
            what = f"{(B, M, D)} normalize={normalize} vec={vec} lanes={lanes}"
            assert_matches(gx, gx_ref, dtype, "grad_x " + what)
            if need_gw:  # the kernel uses the stored y (x.dtype): reduced-dtype tolerance
                assert_matches(gw, gw_ref, dtype, "grad_weight " + what)


# ------------------------------------------------------------------------- certified_margin
NORM_KIND = {1.0: 0, 2.0: 1, math.inf: 2}  # csrc/cuda/certified_margin_kernel.cuh DualNorm


def norm_kind(q: float) -> int:
    return NORM_KIND.get(q, 3)


def margin_inputs(B, M, C, dtype, lip_per_pair, extras):
    acc = opmath(dtype)
    z = torch.randn(B, M, C, dtype=torch.float64).round(decimals=1).to(dtype)  # with ties
    target = torch.randint(0, C, (B,))
    if lip_per_pair:
        lip = torch.rand(M, C, C, dtype=acc) + 0.5
        if C > 1:
            lip[:, target[0], (target[0] + 1) % C] = 0.0  # a zero denominator
    else:
        lip = torch.rand(M, dtype=acc) + 0.5
    mask = bias = None
    if extras:
        mask = torch.rand(B, M) > 0.3
        mask[-1] = False
        bias = torch.randn(C, dtype=acc)
    return z, target, lip, mask, bias


MARGIN_CASES = list(
    itertools.product(
        [(6, 3, 10), (5, 2, 1), (4, 4, 37), (3, 3, 16), (5, 2, 40)],  # C % V == 0: vector loads
        [2.0, 1.0, math.inf, 3.0],
        [True, False],
        [False, True],
    )
)


def misaligned_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` whose data starts one element past a 16-byte boundary, so the
    kernels must take their scalar-load path."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype)[1:]
    out = flat.view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("rival", ["min", "top"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_certified_margin_forward(emu, dtype, rival):
    acc = opmath(dtype)
    for (B, M, C), p, lip_per_pair, extras in MARGIN_CASES:
        z, target, lip, mask, bias = margin_inputs(B, M, C, dtype, lip_per_pair, extras)
        radius_ref, margin_ref, runner_ref = ref.certified_margin(
            z, target, lip, mask, bias, p, rival
        )
        q = ref.dual_exponent(p)
        # The launcher's lanes (one vector of rivals per lane), the previous four per lane, one.
        launcher = pow2_lanes(-(-C // VECTOR_WIDTH[dtype]))
        for lanes, misaligned in sorted({(launcher, False), (pow2_lanes(-(-C // 4)), False),
                                         (1, False), (launcher, True)}):
            z_in = misaligned_copy(z) if misaligned else z
            radius = torch.full((B,), math.nan, dtype=acc)
            margin = torch.full((B,), math.nan, dtype=acc)
            runner = torch.full((B,), -7, dtype=torch.int64)
            emu.emu_certified_margin(
                DTYPE_CODE[dtype],
                ptr(z_in),
                ptr(target),
                ptr(lip),
                int(lip_per_pair),
                ptr(mask),
                ptr(bias),
                norm_kind(q),
                ctypes.c_double(q),
                int(rival == "top"),
                i64(B),
                M,
                i64(C),
                lanes,
                GRID,
                ptr(radius),
                ptr(margin),
                ptr(runner),
            )
            what = (f"{(B, M, C)} p={p} lip_per_pair={lip_per_pair} extras={extras} "
                    f"lanes={lanes} misaligned={misaligned}")
            assert torch.equal(runner, runner_ref), f"runner_up {what}: {runner} vs {runner_ref}"
            assert_matches(radius, radius_ref, acc, "radius " + what)
            assert_matches(margin, margin_ref, acc, "margin " + what)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_certified_margin_backward_matches_autograd(emu, dtype):
    acc = opmath(dtype)
    for (B, M, C), p, lip_per_pair, extras in MARGIN_CASES:
        z, target, lip, mask, bias = margin_inputs(B, M, C, dtype, lip_per_pair, extras)
        zg, lg = z.clone().requires_grad_(True), lip.clone().requires_grad_(True)
        radius, margin, runner = ref.certified_margin(zg, target, lg, mask, bias, p, "min")
        grad_radius = torch.randn(B, dtype=acc) * torch.isfinite(radius.detach())
        grad_margin = torch.randn(B, dtype=acc)
        loss = (radius.nan_to_num(0.0, 0.0, 0.0) * grad_radius).sum() + (margin * grad_margin).sum()
        gz_ref, glip_ref = torch.zeros_like(z), torch.zeros_like(lip)
        if loss.requires_grad:  # C == 1: constant outputs, zero gradients
            gz, glip = torch.autograd.grad(loss, [zg, lg], allow_unused=True)
            gz_ref = gz_ref if gz is None else gz
            glip_ref = glip_ref if glip is None else glip
        q = ref.dual_exponent(p)
        lanes = pow2_lanes(C)
        gz = torch.full((B, M, C), math.nan, dtype=dtype)
        glip_sel = torch.full((B, M), math.nan, dtype=acc)
        emu.emu_certified_margin_backward(
            DTYPE_CODE[dtype],
            ptr(z),
            ptr(target),
            ptr(lip),
            int(lip_per_pair),
            ptr(mask),
            norm_kind(q),
            ctypes.c_double(q),
            i64(B),
            M,
            i64(C),
            ptr(grad_radius),
            ptr(grad_margin),
            ptr(margin.detach()),
            ptr(runner),
            lanes,
            GRID,
            ptr(gz),
            ptr(glip_sel),
        )
        what = f"{(B, M, C)} p={p} lip_per_pair={lip_per_pair} extras={extras}"
        assert_matches(gz, gz_ref, dtype, "grad_z " + what)
        # grad_lip_sel is d loss / d lip_m[y_b, k_b] per row: scatter it onto lip's shape.
        if lip_per_pair:
            glip = torch.zeros_like(lip)
            valid = runner >= 0
            for m in range(M):
                glip[m].index_put_(
                    (target[valid], runner[valid]), glip_sel[valid, m], accumulate=True
                )
        else:
            glip = glip_sel[runner >= 0].sum(0)
        assert_matches(glip, glip_ref, acc, "grad_lip " + what)


# ---------------------------------------------------------------------- noisy_modality_dropout
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noisy_modality_dropout_reproduces_the_reference_stream(emu, dtype):
    shapes = [(4, 3, 5), (6, 1), (5, 16), (2, 7, 3)]  # rows shorter than / not a multiple of 4
    for shape, levels, fill, (seed, offset) in itertools.product(
        shapes, [False, True], [0.0, 0.3], [(0, 0), (1234567890123, 2**33 + 5)]
    ):
        B = shape[0]
        x = torch.randn(*shape, dtype=torch.float64).to(dtype)
        p_drop = torch.rand(B) * 0.6
        sigma = torch.tensor([0.1, 0.5, 1.0]) if levels else torch.rand(B)
        y_ref, keep_ref, used_ref = ref.noisy_modality_dropout(
            x, p_drop, sigma, levels, seed, offset, fill
        )
        keep = torch.zeros(B, dtype=torch.bool)
        used = torch.full((B,), math.nan)
        offset_t = offset_tensor(offset)  # contract 1: read by the kernels from memory
        emu.emu_noise_per_sample(
            ptr(p_drop),
            i64(B),
            ptr(sigma),
            i64(sigma.numel()),
            int(levels),
            ctypes.c_uint64(seed),
            ptr(offset_t),
            i64(B),
            GRID,
            ptr(keep),
            ptr(used),
        )
        what = f"{shape} levels={levels} fill={fill} seed={seed}"
        assert torch.equal(keep, keep_ref), "keep " + what
        assert torch.equal(used, used_ref), "sigma_used " + what
        for vec in [0, 1]:
            y = torch.full_like(x, math.nan)
            emu.emu_noisy_modality_dropout(
                DTYPE_CODE[dtype],
                ptr(x),
                ptr(keep),
                ptr(used),
                ctypes.c_uint64(seed),
                ptr(offset_t),
                ctypes.c_double(fill),
                i64(x.numel()),
                i64(x.numel() // B),
                vec,
                GRID,
                ptr(y),
            )
            # float64 too: the noise itself is float32 (libm vs torch rounding of log/cos/sin).
            tol_dtype = torch.float32 if dtype == torch.float64 else dtype
            assert_matches(y, y_ref, tol_dtype, f"y {what} vec={vec}")


def test_noise_per_sample_shares_one_element_parameters(emu):
    p_drop, sigma = torch.tensor([0.3]), torch.tensor([0.7])
    _, keep_ref, used_ref = ref.noisy_modality_dropout(
        torch.zeros(9, 2), p_drop, sigma, False, 5, 6
    )
    keep = torch.zeros(9, dtype=torch.bool)
    used = torch.zeros(9)
    offset = offset_tensor(6)  # kept alive across the call
    emu.emu_noise_per_sample(ptr(p_drop), i64(1), ptr(sigma), i64(1), 0, ctypes.c_uint64(5),
                             ptr(offset), i64(9), 1, ptr(keep), ptr(used))  # fmt: skip
    assert torch.equal(keep, keep_ref)
    assert torch.equal(used, used_ref)


# ---------------------------------------------------------------------------- subset ops
def subset_inputs(B, M, C, dtype, extras):
    acc = opmath(dtype)
    z = torch.randn(B, M, C, dtype=torch.float64).round(decimals=1).to(dtype)  # with ties
    subsets = torch.cat([ref.all_subsets(M), torch.zeros(1, M, dtype=torch.bool)])  # + empty
    weight = torch.rand(B, M, dtype=acc) + 0.1 if extras else None
    present = torch.rand(B, M) > 0.3 if extras else None
    return z, subsets, weight, present


SUBSET_SHAPES = [(7, 3, 10), (5, 1, 4), (9, 4, 17), (40, 3, 8)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_subset_logits(emu, dtype):
    for (B, M, C), extras in itertools.product(SUBSET_SHAPES, [False, True]):
        z, subsets, weight, present = subset_inputs(B, M, C, dtype, extras)
        S = subsets.shape[0]
        scores_ref = ref.subset_logits(z, subsets, weight, present)
        for vec in vector_modes(C, dtype):
            lanes = pow2_lanes(-(-C // (VECTOR_WIDTH[dtype] if vec else 1)))
            scores = torch.full((S, B, C), math.nan, dtype=dtype)
            emu.emu_subset_logits(DTYPE_CODE[dtype], ptr(z), ptr(subsets), ptr(weight),
                                  ptr(present), i64(B), M, i64(C), i64(S), lanes, vec, GRID,
                                  ptr(scores))  # fmt: skip
            assert_matches(scores, scores_ref, dtype, f"{(B, M, C)} extras={extras} vec={vec}")


CODE_MODALITIES = 4  # kCodeModalities: the launcher's subset_accuracy_codes_kernel bound


def snug_lanes(emu, units: int) -> int:
    """snug_lanes of csrc/cuda/cuda_utils.cuh: the launchers' own rule, not a copy."""
    return int(emu.emu_snug_lanes(i64(units)))


def test_snug_lanes_values(emu):
    """The widest power of two <= 32 leaving at most 5 % of the lanes idle."""
    assert [snug_lanes(emu, n) for n in (1, 3, 10, 25, 32, 100, 250, 1000)] == [
        1, 1, 2, 2, 32, 8, 32, 32]


def accuracy_launches(emu, dtype, M: int, C: int, S: int):
    """(name, kernel args) of every CUDA subset_accuracy launch to check for this shape: the
    pairs kernel (subset_accuracy_kernel) with the launcher's tile, several class chunks and
    one row x one class at a time; for M <= 4 also the codes kernel with the launcher's lanes
    and vector mode, one lane per row, and a whole warp per row (lanes without classes)."""
    launcher_rows = min(32, -(-256 // min(S, 512)))
    out = [(f"pairs rows={rows} classes={classes}", ("pairs", rows, classes))
           for rows, classes in [(launcher_rows, C), (3, 4), (1, 1)]]
    if M <= CODE_MODALITIES:
        vec = 1 if C % VECTOR_WIDTH[dtype] == 0 else 0
        launcher = snug_lanes(emu, -(-C // (VECTOR_WIDTH[dtype] if vec else 1)))
        for lanes, v in {(launcher, vec), (1, 0), (32, 0), (4, vec)}:
            out.append((f"codes lanes={lanes} vec={v}", ("codes", lanes, v)))
    return out


def run_accuracy(emu, launch, dtype, z, target, subsets, weight, present, grid=GRID):
    """correct (S,) int64 from one emulated subset_accuracy launch (see accuracy_launches)."""
    B, M, C = z.shape
    S = subsets.shape[0]
    correct = torch.zeros(S, dtype=torch.int64)
    kind, a, b = launch
    if kind == "pairs":
        used = emu.emu_subset_accuracy(DTYPE_CODE[dtype], ptr(z), ptr(target), ptr(subsets),
                                       ptr(weight), ptr(present), i64(B), M, i64(C), S, a, b,
                                       grid, ptr(correct))  # fmt: skip
        assert used > 0
    else:
        emu.emu_subset_accuracy_codes(DTYPE_CODE[dtype], ptr(z), ptr(target), ptr(subsets),
                                      ptr(weight), ptr(present), i64(B), M, i64(C), i64(S), a,
                                      b, grid, ptr(correct))  # fmt: skip
    return correct


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_subset_accuracy_counts(emu, dtype):
    for (B, M, C), extras in itertools.product(SUBSET_SHAPES, [False, True]):
        z, subsets, weight, present = subset_inputs(B, M, C, dtype, extras)
        target = torch.randint(0, C, (B,))
        correct_ref = ref.subset_correct(z, target, subsets, weight, present)
        for name, launch in accuracy_launches(emu, dtype, M, C, subsets.shape[0]):
            correct = run_accuracy(emu, launch, dtype, z, target, subsets, weight, present)
            what = f"{(B, M, C)} extras={extras} {name}"
            assert torch.equal(correct, correct_ref), f"{what}: {correct} vs {correct_ref}"


@pytest.mark.parametrize("M", [2, 4])
def test_subset_accuracy_codes_any_subset_list(emu, M):
    """The codes kernel takes any list of subsets: repeats, the empty subset, codes whose
    parents are not requested (built through the closure), and more than 512 subsets (one
    launch, where the pairs kernel needs slices)."""
    torch.manual_seed(M)
    B, C = 37, 12
    z = torch.randn(B, M, C, dtype=torch.float64).round(decimals=1).float()  # with ties
    present = torch.rand(B, M) > 0.25
    weight = torch.rand(B, M) + 0.1
    target = torch.randint(0, C, (B,))
    full = torch.zeros(1, M, dtype=torch.bool)
    full[0, ::2] = True  # {0, 2} (M = 4) / {0}: parents {0} / empty never requested alone
    lists = [full, torch.rand(600, M) > 0.5, torch.cat([full, full, ref.all_subsets(M)])]
    for subsets in lists:
        correct_ref = ref.subset_correct(z, target, subsets, weight, present)
        for lanes, vec in [(snug_lanes(emu, C // 4), 1), (2, 0), (16, 0)]:
            correct = run_accuracy(emu, ("codes", lanes, vec), torch.float32, z, target,
                                   subsets, weight, present)
            assert torch.equal(correct, correct_ref), (subsets.shape, lanes, vec)


def test_subset_accuracy_codes_lane_merge_ties(emu):
    """Equal maxima in classes owned by different lanes: the merge keeps the lowest class
    whatever lane holds it, and a NaN in any lane's classes makes the row wrong."""
    B, M, C = 4, 2, 16
    z = torch.zeros(B, M, C)
    z[:, :, [3, 6, 13]] = 1.0  # the maximum of every subset at classes 3, 6 and 13
    target = torch.tensor([3, 6, 3, 3])
    z[2, 1, 9] = math.nan  # row 2: NaN in modality 1 only
    subsets = ref.all_subsets(M)  # {0}, {1}, {0, 1} in reference order
    correct_ref = ref.subset_correct(z, target, subsets)
    # class 3 wins every row without NaN: rows 0 and 3 hit; row 2 hits only without modality 1
    assert correct_ref.tolist() == [2 + int(not s[1]) for s in subsets]
    for lanes in (1, 2, 4, 8, 16):
        for vec in (0, 1):
            correct = run_accuracy(emu, ("codes", lanes, vec), torch.float32, z, target,
                                   subsets, None, None)
            assert torch.equal(correct, correct_ref), (lanes, vec, correct, correct_ref)


# ------------------------------------------------- BRIEF contracts 2-3 in the CUDA kernels
# Absent modalities are never read (NaN there cannot leak); invalid weight / lip / p_drop /
# sigma / target values poison the affected outputs with NaN (runner_up -1, never counted):
# the kernels cannot raise without a host sync.
def run_fusion(emu, x, mask, weight, vec=0, lanes=4):
    B, M, D = x.shape
    y = torch.full((B, D), math.nan)
    denom = torch.full((B,), -1.0)
    emu.emu_masked_fusion(0, ptr(x), ptr(mask), ptr(weight), 1, i64(B), M, i64(D), lanes, vec,
                          GRID, ptr(y), ptr(denom))  # fmt: skip
    gy = torch.ones(B, D)
    gx = torch.full_like(x, -1.0)
    gw = torch.full((B, M), -1.0)
    emu.emu_masked_fusion_backward(0, ptr(gy), ptr(x), ptr(mask), ptr(weight), ptr(y),
                                   ptr(denom), 1, 1, i64(B), M, i64(D), lanes, vec, GRID,
                                   ptr(gx), ptr(gw))  # fmt: skip
    return y, denom, gx, gw


def test_contract_masked_fusion_absent_never_read_and_invalid_weight_poisons(emu):
    B, M, D = 5, 3, 8
    x = torch.randn(B, M, D)
    mask = torch.rand(B, M) > 0.4
    mask[1] = True
    weight = torch.rand(B, M) + 0.1
    clean = torch.where(mask[:, :, None], x, 0.0)
    dirty = torch.where(mask[:, :, None], x, math.nan)
    for vec in (0, 1):
        want = run_fusion(emu, clean, mask, weight, vec)
        got = run_fusion(emu, dirty, mask, weight, vec)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        assert torch.isfinite(got[0]).all() and torch.all(got[3][~mask] == 0)
    bad_weight = weight.clone()
    bad_weight[1, 2] = -0.5
    bad_weight[3, 0] = math.inf
    y, denom, gx, gw = run_fusion(emu, clean, mask, bad_weight)
    for t in (y, denom, gx, gw):
        assert torch.isnan(t[[1, 3]]).all() and torch.isfinite(t[[0, 2, 4]]).all()


def run_margin(emu, z, target, lip, mask, top=False, lanes=4):
    B, M, C = z.shape
    radius = torch.zeros(B)
    margin = torch.zeros(B)
    runner = torch.full((B,), -7, dtype=torch.int64)
    emu.emu_certified_margin(0, ptr(z), ptr(target), ptr(lip), int(lip.dim() == 3), ptr(mask),
                             None, norm_kind(2.0), ctypes.c_double(2.0), int(top), i64(B), M,
                             i64(C), lanes, GRID, ptr(radius), ptr(margin),
                             ptr(runner))  # fmt: skip
    return radius, margin, runner


@pytest.mark.parametrize("top", [False, True])
@pytest.mark.parametrize("lip_per_pair", [False, True])
def test_contract_certified_margin_poisoned_rows(emu, top, lip_per_pair):
    B, M, C = 7, 3, 9
    z = torch.randn(B, M, C)
    target = torch.randint(0, C, (B,))
    lip = torch.rand((M, C, C) if lip_per_pair else (M,)) + 0.5
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[5, 1] = False
    z[5, 1] = math.nan  # absent: never read
    clean = z.clone()
    clean[5, 1] = 0.0
    want = run_margin(emu, clean, target, lip, mask, top)
    z[1, 0, (int(target[1]) + 1) % C] = math.nan  # a present rival logit
    z[2, 2, int(target[2])] = -math.inf  # the target logit
    target[4] = C  # outside [0, C): never an index
    radius, margin, runner = run_margin(emu, z, target, lip, mask, top)
    for b in (1, 2, 4):
        assert math.isnan(radius[b]) and math.isnan(margin[b]) and runner[b] == -1, b
    ok = [0, 3, 5, 6]
    assert torch.equal(runner[ok], want[2][ok]) and torch.equal(radius[ok], want[0][ok])
    bad_lip = lip.clone()
    bad_lip[1] = math.nan  # NaN lip must never give +inf
    radius, margin, runner = run_margin(emu, clean, target, bad_lip, mask, top)
    assert torch.isnan(radius).all() and torch.all(runner == -1)


def test_contract_subset_ops_absent_never_read_nan_rows_wrong(emu):
    B, M, C, S = 6, 3, 5, 7
    z = torch.randn(B, M, C)
    subsets = ref.all_subsets(M)
    present = torch.rand(B, M) > 0.3
    present[0] = True
    weight = torch.rand(B, M) + 0.1
    target = torch.randint(0, C, (B,))
    z_dirty = torch.where(present[:, :, None], z, math.nan)
    z_clean = torch.where(present[:, :, None], z, 0.0)
    scores_ref = ref.subset_logits(z_clean, subsets, weight, present)
    scores = torch.full((S, B, C), -1.0)
    emu.emu_subset_logits(0, ptr(z_dirty), ptr(subsets), ptr(weight), ptr(present), i64(B), M,
                          i64(C), i64(S), 4, 0, GRID, ptr(scores))  # fmt: skip
    assert_matches(scores, scores_ref, torch.float32, "absent NaN")
    correct_ref = ref.subset_correct(z_clean, target, subsets, weight, present)
    launches = accuracy_launches(emu, torch.float32, M, C, S)
    for name, launch in launches:
        correct = run_accuracy(emu, launch, torch.float32, z_dirty, target, subsets, weight,
                               present)
        assert torch.equal(correct, correct_ref), name
    # A NaN in row 0's modality 0 makes row 0 wrong for the subsets containing modality 0;
    # an invalid weight in row 1 and a target outside [0, C) in row 2 make them always wrong.
    z_nan = z_clean.clone()
    z_nan[0, 0, 1] = math.nan
    bad_weight = weight.clone()
    bad_weight[1, 2] = math.nan
    target2 = target.clone()
    target2[2] = -1
    target2[0] = int(z_clean[0].sum(0).argmax())
    keep = torch.ones(B, dtype=torch.bool)
    keep[[1, 2]] = False
    expect = ref.subset_correct(z_clean[keep], target2[keep], subsets, weight[keep],
                                present[keep])
    hits0 = ref.subset_correct(z_clean[:1], target2[:1], subsets, weight[:1], present[:1])
    expect = expect - hits0 * subsets[:, 0].long()
    for name, launch in launches:
        correct = run_accuracy(emu, launch, torch.float32, z_nan, target2, subsets, bad_weight,
                               present)
        assert torch.equal(correct, expect), (name, correct, expect)


def test_contract_noise_invalid_values_poison_samples(emu):
    B = 6
    p_drop = torch.tensor([0.2, 1.5, math.nan, 0.2, 0.2, 0.0])
    sigma = torch.tensor([0.5, 0.5, 0.5, -1.0, math.inf, 0.5])
    offset = offset_tensor(3)
    keep = torch.ones(B, dtype=torch.bool)
    used = torch.zeros(B)
    emu.emu_noise_per_sample(ptr(p_drop), i64(B), ptr(sigma), i64(B), 0, ctypes.c_uint64(1),
                             ptr(offset), i64(B), 1, ptr(keep), ptr(used))  # fmt: skip
    assert not keep[1:5].any() and torch.isnan(used[1:5]).all() and bool(keep[5])
    x = torch.randn(B, 4)
    y = torch.zeros(B, 4)
    emu.emu_noisy_modality_dropout(0, ptr(x), ptr(keep), ptr(used), ctypes.c_uint64(1),
                                   ptr(offset), ctypes.c_double(0.0), i64(x.numel()), i64(4), 1,
                                   1, ptr(y))  # fmt: skip
    assert torch.isnan(y[1:5]).all() and torch.isfinite(y[[0, 5]]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_noise_grid_stride_tracks_rows_incrementally(emu, dtype):
    """One block, so every thread takes several chunks: the row of each chunk start is
    tracked by adding the grid stride (no division per chunk), across rows longer and
    shorter than a chunk and a stride that is not a multiple of the row."""
    for shape in [(37, 53), (700, 3), (5, 1031)]:
        B = shape[0]
        x = torch.randn(*shape, dtype=torch.float64).to(dtype)
        p_drop = torch.rand(B) * 0.6
        sigma = torch.rand(B)
        y_ref, keep_ref, used_ref = ref.noisy_modality_dropout(x, p_drop, sigma, False, 9, 4, 0.5)
        offset = offset_tensor(4)
        y = torch.full_like(x, math.nan)
        emu.emu_noisy_modality_dropout(DTYPE_CODE[dtype], ptr(x), ptr(keep_ref), ptr(used_ref),
                                       ctypes.c_uint64(9), ptr(offset), ctypes.c_double(0.5),
                                       i64(x.numel()), i64(x.numel() // B), 1, 1,
                                       ptr(y))  # fmt: skip
        assert_matches(y, y_ref, dtype, f"{shape}")


def test_subset_accuracy_argmax_without_division_keeps_quotient_ties(emu):
    """num_1 > num_0 but num_0 / den == num_1 / den in float32: the reference's argmax over the
    divided scores picks class 0, and so must the kernel, which divides only when a strictly
    larger numerator appears (found by search: w = (0.9556..., 1.3007...))."""
    w = torch.tensor([[0.955627977848053, 1.3006994724273682]])
    z = torch.tensor([[[1.46608567237854, 1.46608567237854],
                       [1.7208302021026611, 1.7208303213119507]]])
    num = (w[0, 0] * z[0, 0] + w[0, 1] * z[0, 1])
    assert num[0] < num[1] and num[0] / w.sum() == num[1] / w.sum()
    subsets = torch.ones(1, 2, dtype=torch.bool)
    target = torch.zeros(1, dtype=torch.int64)
    assert int(ref.subset_correct(z, target, subsets, w, None)[0]) == 1
    # pairs: flat staging, and one class per chunk; codes: one lane (the lazy division) and two
    # lanes (classes 0 and 1 in different lanes: the merge compares quotients)
    for launch in [("pairs", 1, 2), ("pairs", 1, 1), ("codes", 1, 0), ("codes", 2, 0)]:
        correct = run_accuracy(emu, launch, torch.float32, z, target, subsets, w, None, grid=1)
        assert int(correct[0]) == 1, launch


def test_certified_margin_lip_offsets_past_2_31(emu):
    """64-bit offsets without allocating gigabytes: a (3, 30000, 30000) float32 lip (10.8 GB
    of address space) is an untouched private anonymous mapping, so only the rows the kernel
    reads, lip[m, y_b, :], get pages. For m = 2 and y near C the offset (m C + y) C + k passes
    2^31; 32-bit arithmetic would read other (zero) pages and change the radii."""
    M, C = 3, 30000
    assert (2 * C + C - 1) * C > 2**31
    nbytes = M * C * C * 4
    try:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)
    except OSError as exc:  # MAP_NORESERVE refused (strict overcommit): nothing to check here
        pytest.skip(f"cannot reserve {nbytes} bytes of address space: {exc}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frombuffer warns about the writable buffer
        lip = torch.frombuffer(buf, dtype=torch.float32).view(M, C, C)
    target = torch.tensor([C - 1, C - 2])
    for y in target.tolist():
        for m in range(M):
            lip[m, y] = torch.rand(C) + 0.5 + m  # touches one row per (m, y)
    z = torch.randn(2, M, C)
    radius = torch.zeros(2)
    margin = torch.zeros(2)
    runner = torch.zeros(2, dtype=torch.int64)
    emu.emu_certified_margin(0, ptr(z), ptr(target), ptr(lip), 1, None, None, norm_kind(2.0),
                             ctypes.c_double(2.0), 0, i64(2), M, i64(C), 32, 1, ptr(radius),
                             ptr(margin), ptr(runner))  # fmt: skip
    for b, y in enumerate(target.tolist()):
        rows = torch.stack([lip[m, y] for m in range(M)]).double()  # (M, C)
        marg = (z[b, :, y:y + 1] - z[b]).double().sum(0)
        r = marg / rows.norm(dim=0)
        r[y] = math.inf
        assert int(runner[b]) == int(r.argmin())
        torch.testing.assert_close(radius[b].double(), r.min(), rtol=1e-5, atol=1e-6)
    del lip
    buf.close()
