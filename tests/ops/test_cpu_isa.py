"""The C++ CPU kernels' ISA builds (csrc/cpu/capability.h) and their value contract.

Every op runs on every ISA path this CPU supports (default, avx2, avx512; switched in-process
with ``torch.ops.mmfast._set_cpu_capability``) against the reference; the noise op is bit for bit
the same on every path; ``MMFAST_CPU_CAPABILITY`` selects the path in a fresh process. The
value checks inside the kernels (BRIEF contract 2) and the non-finite policy (contract 3) are
tested on the C++ ops directly, below the Python wrappers' own checks.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from mmfast import _extension
from mmfast.ops import certified_margin, masked_fusion, reference, subset_accuracy, subset_logits
from tests.ops.helpers import assert_close, presence_mask

pytestmark = pytest.mark.skipif(not _extension.loaded(), reason="mmfast._C is not built")

ORDER = ("default", "avx2", "avx512")
OPS = torch.ops.mmfast


def supported() -> list[str]:
    best = OPS._cpu_capability_best()
    return list(ORDER[: ORDER.index(best) + 1])


@pytest.fixture(params=ORDER)
def isa(request):
    """Runs the test on one ISA path (skipped where the CPU lacks it), then restores."""
    if not _extension.loaded() or request.param not in supported():
        pytest.skip(f"this CPU has no {request.param} path")
    previous = OPS._set_cpu_capability(request.param)
    assert OPS._cpu_capability() == request.param
    yield request.param
    OPS._set_cpu_capability(previous)


def _with_nan_in_absent(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with NaN / inf written into every absent modality (which must never be read)."""
    bad = x.detach().clone()
    bad[~mask] = float("nan")
    bad[~mask][..., :1] = float("inf")
    return bad.requires_grad_(x.requires_grad)


# ------------------------------------------------------------------ every op on every ISA path
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(7, 3, 37), (5, 2, 515)])
def test_masked_fusion_every_isa(isa, dtype, shape):
    B, M, D = shape
    x = torch.randn(B, M, D, dtype=dtype)
    mask = presence_mask(B, M, "cpu")
    weight = torch.rand(M, dtype=dtype) + 0.1
    grad_y = torch.randn(B, D, dtype=dtype)
    xr = x.clone().requires_grad_()
    wr = weight.clone().requires_grad_()
    y_ref, den_ref = reference.masked_fusion(xr, mask, wr)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (xr, wr), grad_y)
    xc = _with_nan_in_absent(x, mask).requires_grad_()
    wc = weight.clone().requires_grad_()
    y, den = masked_fusion(xc, mask, wc, backend="cpp")
    gx, gw = torch.autograd.grad(y, (xc, wc), grad_y)
    assert_close(y, y_ref, dtype)
    assert_close(den, den_ref, dtype)
    assert_close(gx, gx_ref, dtype)
    assert_close(gw, gw_ref, dtype, scale=D)
    assert not gx[~mask].any()


@pytest.mark.parametrize("p", [2.0, 1.0, float("inf")])
@pytest.mark.parametrize("lip_kind", ["full", "vector"])
@pytest.mark.parametrize("rival", ["min", "top"])
def test_certified_margin_every_isa(isa, p, lip_kind, rival):
    B, M, C = 9, 3, 31
    z = torch.randn(B, M, C)
    target = torch.randint(0, C, (B,))
    lip = torch.rand((M, C, C) if lip_kind == "full" else (M,)) + 0.1
    mask = presence_mask(B, M, "cpu")
    bias = 0.3 * torch.randn(C)
    zr = z.clone().requires_grad_()
    r_ref, m_ref, k_ref = reference.certified_margin(zr, target, lip, mask, bias, p, rival)
    (g_ref,) = torch.autograd.grad(r_ref.clamp(-1e3, 1e3).sum() + m_ref.sum(), zr)
    zc = _with_nan_in_absent(z, mask).requires_grad_()
    r, m, k = certified_margin(zc, target, lip, mask, bias, p, rival, backend="cpp")
    (g,) = torch.autograd.grad(r.clamp(-1e3, 1e3).sum() + m.sum(), zc)
    assert_close(r, r_ref, torch.float32)
    assert_close(m, m_ref, torch.float32)
    assert torch.equal(k, k_ref)
    assert_close(g, g_ref, torch.float32)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_subset_ops_every_isa(isa, dtype):
    B, M, C = 13, 3, 70
    z = torch.randn(B, M, C, dtype=dtype)
    present = presence_mask(B, M, "cpu")
    weight = torch.rand(M) + 0.1
    target = torch.randint(0, C, (B,))
    subsets = reference.all_subsets(M)
    zc = _with_nan_in_absent(z, present)
    scores = subset_logits(zc, subsets, weight, present, backend="cpp")
    assert_close(scores, reference.subset_logits(z, subsets, weight, present), dtype)
    acc = subset_accuracy(zc, target, subsets, weight, present, backend="cpp")
    torch.testing.assert_close(acc, reference.subset_accuracy(z, target, subsets, weight, present))


def test_subset_accuracy_argmax_every_isa(isa):
    """The C++ argmax (a vector max, then the first vector holding it) against torch.argmax:
    exact ties inside a vector, across vectors and across the 64-class chunks, NaN in a later
    chunk, a row of -inf, the maximum in the tail of the last chunk."""
    B, M, C = 40, 2, 150
    z = torch.randint(-3, 4, (B, M, C), generator=torch.Generator().manual_seed(0)).float()
    z[0] = -math.inf
    z[1, 0, 149] = 100.0
    z[2, 1, 100] = math.nan  # wrong for the subsets reading modality 1
    z[3, 0, 5] = z[3, 0, 70] = math.nan
    z[4, :, 63] = z[4, :, 64] = 50.0  # a tie across the chunk boundary: class 63
    subsets = reference.all_subsets(M)
    target = reference.subset_logits(z, subsets)[-1].nan_to_num(nan=0.0).argmax(-1)
    target[::3] = torch.randint(0, C, (len(target[::3]),))
    want = reference.subset_correct(z, target, subsets)
    assert 0 < int(want.min()) and int(want.max()) < B  # hits and misses in every subset
    got = subset_accuracy(z, target, subsets, backend="cpp") * B
    assert torch.equal(got.round().long(), want)


def _noise(x, p_drop, sigma, levels, seed, offset, fill=0.5):
    return OPS.noisy_modality_dropout(x, p_drop, sigma, levels, seed,
                                      torch.tensor(offset, dtype=torch.int64), fill)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_noise_bit_exact_on_every_isa(dtype):
    """Same (seed, offset) -> the same bits on every ISA path (odd sizes: vector tails and
    rows that start mid Philox block), and keep / sigma_used equal to the reference."""
    B = 6
    x = torch.randn(B, 3, 173, dtype=dtype)
    p_drop = torch.full((B,), 0.3)
    sigma = torch.tensor([0.0, 0.5, 2.0])
    outputs = {}
    previous = OPS._cpu_capability()
    try:
        for name in supported():
            OPS._set_cpu_capability(name)
            outputs[name] = _noise(x, p_drop, sigma, True, 1234, 2**40 + 7)
    finally:
        OPS._set_cpu_capability(previous)
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float64: torch.int64}
    y0, keep0, used0 = outputs["default"]
    for name, (y, keep, used) in outputs.items():
        assert torch.equal(y.view(bits[dtype]), y0.view(bits[dtype])), name
        assert torch.equal(keep, keep0) and torch.equal(used, used0), name
    y_ref, keep_ref, used_ref = reference.noisy_modality_dropout(
        x, p_drop, sigma, True, 1234, 2**40 + 7, 0.5)
    assert torch.equal(keep0, keep_ref) and torch.equal(used0, used_ref)
    # the noise itself is float32 (polynomial log / cos / sin): float32 tolerance at most
    assert_close(y0, y_ref, torch.float32 if dtype == torch.float64 else dtype, scale=4)


def test_noise_offset_tensor_matches_int_stream():
    """The 0-d offset tensor drives the same Philox stream as the integer offset always did
    (the reference takes the int)."""
    x = torch.zeros(4, 64)
    y, keep, _ = _noise(x, torch.zeros(4), torch.ones(4), False, 7, 5, fill=0.0)
    y_ref, keep_ref, _ = reference.noisy_modality_dropout(x, torch.zeros(4), torch.ones(4),
                                                          False, 7, 5)
    assert torch.equal(keep, keep_ref)
    assert_close(y, y_ref, torch.float32, scale=4)
    y_other, _, _ = _noise(x, torch.zeros(4), torch.ones(4), False, 7, 6, fill=0.0)
    assert not torch.equal(y, y_other)


# ----------------------------------------------------------------- the environment variable
def _capability_in_subprocess(value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MMFAST_CPU_CAPABILITY=value)
    code = "import torch, mmfast._extension; print(torch.ops.mmfast._cpu_capability())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=True)


def test_environment_variable_forces_the_default_path():
    assert _capability_in_subprocess("default").stdout.strip() == "default"


def test_environment_variable_unknown_value_warns_and_uses_best():
    out = _capability_in_subprocess("sse9")
    assert out.stdout.strip() == supported()[-1]
    assert "MMFAST_CPU_CAPABILITY: expected one of default, avx2, avx512, got 'sse9'" in out.stderr


def test_set_capability_rejects_unknown_names():
    with pytest.raises(ValueError, match="expected one of default, avx2, avx512, got 'mmx'"):
        OPS._set_cpu_capability("mmx")


# ------------------------------------------------- value checks inside the kernels (contract 2)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_masked_fusion_kernel_rejects_bad_weight(isa, bad):
    x, mask = torch.randn(4, 3, 8), torch.ones(4, 3, dtype=torch.bool)
    weight = torch.ones(4, 3)
    weight[2, 1] = bad
    with pytest.raises(ValueError, match="masked_fusion: argument 'weight' expected finite "
                                         "non-negative values, got"):
        OPS.masked_fusion(x, mask, weight, True)


def test_certified_margin_kernel_value_checks(isa):
    B, M, C = 5, 2, 6
    z, target = torch.randn(B, M, C), torch.randint(0, C, (B,))
    for lip in (torch.tensor([1.0, float("nan")]), torch.tensor([1.0, -2.0])):
        with pytest.raises(ValueError, match="certified_margin: argument 'lip' expected finite "
                                             "non-negative values, got"):
            OPS.certified_margin(z, target, lip, None, None, 2.0, False)
    lip = torch.ones(M, C, C)
    lip[1, target[3], 0] = float("inf")
    with pytest.raises(ValueError, match="argument 'lip' expected finite non-negative values, got inf"):
        OPS.certified_margin(z, target, lip, None, None, 2.0, False)
    bad_target = target.clone()
    bad_target[2] = C
    with pytest.raises(ValueError, match=r"certified_margin: argument 'target' expected values "
                                         r"in \[0, 6\), got 6"):
        OPS.certified_margin(z, bad_target, torch.ones(M), None, None, 2.0, False)


def test_noise_kernel_value_checks(isa):
    x = torch.randn(4, 8)
    cases = [
        (torch.full((4,), 1.5), torch.ones(4), False, "'p_drop' expected probabilities in"),
        (torch.full((4,), float("nan")), torch.ones(4), False, "'p_drop' expected probabilities"),
        (torch.zeros(4), torch.tensor([1.0, float("nan"), 1.0, 1.0]), False,
         "'sigma' expected finite non-negative values, got nan"),
        (torch.zeros(4), torch.tensor([0.5, float("inf")]), True,
         "'sigma' expected finite non-negative values, got inf"),
        (torch.zeros(4), torch.full((4,), -1.0), False, "'sigma' expected finite non-negative"),
    ]
    for p_drop, sigma, levels, match in cases:
        with pytest.raises(ValueError, match=f"noisy_modality_dropout: argument {match}"):
            _noise(x, p_drop, sigma, levels, 0, 0)


def test_subset_kernels_value_checks(isa):
    z, subsets = torch.randn(4, 2, 5), reference.all_subsets(2)
    weight = torch.tensor([[1.0, float("nan")]] * 4)
    with pytest.raises(ValueError, match="subset_logits: argument 'weight' expected finite"):
        OPS.subset_logits(z, subsets, weight, None)
    with pytest.raises(ValueError, match=r"subset_accuracy: argument 'target' expected values "
                                         r"in \[0, 5\), got -1"):
        OPS.subset_accuracy(z, torch.tensor([0, 1, -1, 2]), subsets, None, None)


# ----------------------------------------------------------- non-finite policy (contract 3)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("lip_kind", ["full", "vector"])
def test_certified_margin_nonfinite_present_logit_is_never_a_certificate(isa, bad, lip_kind):
    B, M, C = 6, 3, 7
    z = torch.randn(B, M, C)
    target = torch.randint(0, C, (B,))
    lip = torch.rand((M, C, C) if lip_kind == "full" else (M,)) + 0.1
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[4, 2] = False
    z[1, 0, 3] = bad  # present: row 1 has no certificate
    z[2, 1, target[2]] = bad  # present, at the target
    z[4, 2, :] = bad  # absent: never read, row 4 is certified as usual
    for top in (False, True):
        radius, margin, runner = OPS.certified_margin(z, target, lip, mask, None, 2.0, top)
        for b in (1, 2):
            assert torch.isnan(radius[b]) and torch.isnan(margin[b]) and runner[b] == -1
        clean = z.clone()
        clean[1:3] = 0.0
        clean[4, 2] = 0.0
        r_ref, m_ref, k_ref = reference.certified_margin(clean, target, lip, mask, None, 2.0,
                                                         "top" if top else "min")
        keep = torch.tensor([0, 3, 4, 5])
        assert_close(radius[keep], r_ref[keep], torch.float32)
        assert torch.equal(runner[keep], k_ref[keep])
        grad_z, _ = OPS._certified_margin_backward(torch.ones(B), torch.ones(B), z, target, lip,
                                                   mask, margin, runner, 2.0)
        assert torch.isfinite(grad_z).all() and not grad_z[1:3].any()


def test_subset_accuracy_row_with_nan_scores_counts_as_wrong(isa):
    B, M, C = 4, 2, 5
    z = torch.zeros(B, M, C)
    target = torch.tensor([1, 2, 3, 4])
    z[torch.arange(B), :, target] = 5.0  # every row right on every subset
    z[2, 0, 0] = float("nan")  # row 2 wrong on subsets containing modality 0
    subsets = reference.all_subsets(M)  # {0}, {1}, {0, 1}
    correct = OPS.subset_accuracy(z, target, subsets, None, None)
    assert correct.tolist() == [3, 4, 3]


# ------------------------------------------------------- large outputs on transparent huge pages
def _anon_huge_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read()
    except OSError:
        return ""


@pytest.mark.skipif("[madvise]" not in _thp_mode() or not os.path.exists("/proc/self/smaps_rollup"),
                    reason="needs Linux with transparent huge pages in madvise mode")
def test_large_output_is_advised_onto_huge_pages():
    """A fresh 32 MB grad_x is faulted in as 2 MiB pages (csrc/cpu/cpu_utils.h empty_output):
    without the advice, THP in madvise mode gives none."""
    B, M, D = 8192, 4, 256
    x, mask, grad_y = torch.randn(B, M, D), torch.ones(B, M, dtype=torch.bool), torch.randn(B, D)
    before = _anon_huge_kb()
    grad_x, _ = OPS._masked_fusion_backward(grad_y, x, mask, None, grad_y, grad_y[:, 0], True,
                                            False)
    assert _anon_huge_kb() - before >= 8 * 1024, "expected >= 8 MiB of the output on huge pages"
    del grad_x
