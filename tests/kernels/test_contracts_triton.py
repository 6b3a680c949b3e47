"""BRIEF contracts 1-3 and issue #11's real-GPU hazards in the Triton kernels, checked under
the interpreter (or on a GPU): absent modalities never read, invalid values poison outputs
with NaN instead of raising, the noise offset read from a device tensor, the subset_accuracy
table written whole by every config, 64-bit output offsets, the batch bucket in every
autotune key, and no autotuning inside CUDA-graph capture."""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl

from mmfast.kernels import _common
from mmfast.kernels import certified_margin_triton as cm
from mmfast.kernels import masked_fusion_triton as mf
from mmfast.kernels import noisy_modality_dropout_triton as nd
from mmfast.kernels import subset_ops_triton as so
from mmfast.ops import reference
from tests.kernels.helpers import (
    assert_close,
    expected_correct,
    kernel_device,
    subset_scores_contract,
)

NAN = float("nan")


# ------------------------------------------------------------------ absent never read
def test_masked_fusion_never_reads_absent_modalities():
    device = kernel_device()
    B, M, D = 6, 3, 9
    x = torch.randn(B, M, D, device=device)
    mask = torch.rand(B, M, device=device) > 0.4
    weight = torch.rand(B, M, device=device) + 0.1
    clean = torch.where(mask[:, :, None], x, 0.0)
    poisoned = torch.where(mask[:, :, None], x, NAN)  # NaN / inf only where absent
    poisoned[:, 0][~mask[:, 0]] = math.inf
    y_ref, denom_ref = reference.masked_fusion(clean, mask, weight, True)
    y, denom = mf.forward(poisoned, mask, weight, True)
    assert_close(y, y_ref, torch.float32)
    assert_close(denom, denom_ref, torch.float32)
    gy = torch.randn(B, D, device=device)
    gx, gw = mf.backward(gy, poisoned, mask, weight, y, denom, True, True)
    gx_ref, gw_ref = mf.backward(gy, clean, mask, weight, y, denom, True, True)
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all()
    assert torch.equal(gx, gx_ref) and torch.equal(gw, gw_ref)
    assert torch.all(gw[~mask] == 0) and torch.all(gx[~mask] == 0)


@pytest.mark.parametrize("bad", [NAN, math.inf, -0.5])
def test_masked_fusion_poisons_rows_with_invalid_weight(bad):
    device = kernel_device()
    x = torch.randn(4, 2, 5, device=device)
    mask = torch.ones(4, 2, dtype=torch.bool, device=device)
    mask[2, 1] = False
    weight = torch.rand(4, 2, device=device) + 0.1
    weight[1, 0] = bad
    weight[2, 1] = bad  # invalid even where the modality is absent: an error, not a value
    y, denom = mf.forward(x, mask, weight, True)
    assert torch.isnan(y[[1, 2]]).all() and torch.isnan(denom[[1, 2]]).all()
    assert torch.isfinite(y[[0, 3]]).all() and torch.isfinite(denom[[0, 3]]).all()
    gx, gw = mf.backward(torch.ones(4, 5, device=device), x, mask, weight, y, denom, True, True)
    assert torch.isnan(gx[[1, 2]]).all() and torch.isnan(gw[[1, 2]]).all()
    assert torch.isfinite(gx[[0, 3]]).all() and torch.isfinite(gw[[0, 3]]).all()


def test_subset_ops_never_read_absent_or_unchosen_modalities():
    device = kernel_device()
    B, M, C = 9, 3, 12
    z = torch.randn(B, M, C, device=device)
    present = torch.rand(B, M, device=device) > 0.3
    z[~present] = NAN
    weight = torch.rand(B, M, device=device) + 0.1
    target = torch.randint(0, C, (B,), device=device)
    subsets = torch.cat([torch.zeros(1, M, dtype=torch.bool, device=device),
                         reference.all_subsets(M, device)])
    scores = so.subset_logits(z, subsets, weight, present)
    assert torch.isfinite(scores).all()
    assert_close(scores, subset_scores_contract(z, subsets, weight, present), torch.float32)
    correct = so.subset_accuracy(z, target, subsets, weight, present)
    assert torch.equal(correct, expected_correct(z, target, subsets, weight, present))
    # A NaN in a present modality spoils exactly the subsets that contain it.
    z2 = torch.randn(B, M, C, device=device)
    z2[0, 1, 5] = NAN
    scores = so.subset_logits(z2, subsets, None, None)
    has_1 = subsets[:, 1]
    assert torch.isnan(scores[has_1, 0]).any(dim=1).all()
    assert torch.isfinite(scores[~has_1, 0]).all()


@pytest.mark.parametrize("bad", [NAN, -1.0, math.inf])
def test_subset_ops_poison_rows_with_invalid_weight(bad):
    device = kernel_device()
    B, M, C = 5, 2, 4
    z = torch.randn(B, M, C, device=device)
    weight = torch.rand(B, M, device=device) + 0.1
    weight[3, 1] = bad
    subsets = reference.all_subsets(M, device)
    scores = so.subset_logits(z, subsets, weight, None)
    assert torch.isnan(scores[:, 3]).all()
    assert torch.isfinite(scores[:, [0, 1, 2, 4]]).all()
    target = z.sum(1).argmax(1)
    with_row = so.subset_accuracy(z, target, subsets, weight, None)
    keep = torch.tensor([0, 1, 2, 4], device=device)
    without = so.subset_accuracy(z[keep], target[keep], subsets, weight[keep], None)
    assert torch.equal(with_row, without)  # row 3 never counts


def test_subset_accuracy_target_outside_classes_counts_as_wrong():
    device = kernel_device()
    z = torch.randn(4, 2, 3, device=device)
    target = torch.tensor([-1, 3, 10**12, 0], device=device)
    subsets = reference.all_subsets(2, device)
    correct = so.subset_accuracy(z, target, subsets, None, None)
    assert torch.equal(correct, expected_correct(z[3:], target[3:], subsets))


# ------------------------------------------------------------------ certified_margin
def _margin_inputs(device, B=6, M=3, C=7, full_lip=False):
    z = torch.randn(B, M, C, device=device)
    target = torch.randint(0, C, (B,), device=device)
    lip = torch.rand((M, C, C) if full_lip else (M,), device=device) + 0.5
    mask = torch.ones(B, M, dtype=torch.bool, device=device)
    return z, target, lip, mask


@pytest.mark.parametrize("top", [False, True])
@pytest.mark.parametrize("full_lip", [False, True])
def test_certified_margin_nonfinite_logit_poisons_row(top, full_lip):
    device = kernel_device()
    z, target, lip, mask = _margin_inputs(device, full_lip=full_lip)
    mask[4, 2] = False
    z[1, 0, 3] = NAN
    z[2, 1, int(target[2])] = math.inf
    z[4, 2] = NAN  # absent: never read, row 4 stays certified
    radius, margin, runner_up = cm.forward(z, target, lip, mask, None, 2.0, top)
    for b in (1, 2):
        assert math.isnan(radius[b]) and math.isnan(margin[b]) and runner_up[b] == -1
    clean = z.clone()
    clean[4, 2] = 0.0
    r_ref, m_ref, k_ref = reference.certified_margin(
        clean[[0, 3, 4, 5]], target[[0, 3, 4, 5]], lip, mask[[0, 3, 4, 5]], None, 2.0,
        "top" if top else "min")
    assert torch.equal(runner_up[[0, 3, 4, 5]], k_ref)
    assert_close(radius[[0, 3, 4, 5]], r_ref, torch.float32, scale=4)
    # Backward: poisoned rows (runner_up -1) get zero gradients and read nothing.
    grad_z, grad_lip = cm.backward(torch.ones_like(radius), torch.ones_like(margin), z, target,
                                   lip, mask, margin, runner_up, 2.0)
    assert torch.all(grad_z[[1, 2]] == 0) and torch.all(grad_lip[[1, 2]] == 0)
    assert torch.all(grad_z[4, 2] == 0)


@pytest.mark.parametrize("bad", [NAN, math.inf, -1.0])
@pytest.mark.parametrize("full_lip", [False, True])
def test_certified_margin_invalid_lip_is_never_a_certificate(bad, full_lip):
    device = kernel_device()
    z, target, lip, mask = _margin_inputs(device, full_lip=full_lip)
    mask[:, 1] = False  # an invalid lip of an absent modality is still an error
    if full_lip:
        lip[1] = bad  # every (y, k) of modality 1
    else:
        lip[1] = bad
    radius, margin, runner_up = cm.forward(z, target, lip, mask, None, 2.0, False)
    assert torch.isnan(radius).all() and torch.isnan(margin).all()
    assert torch.all(runner_up == -1)
    assert not torch.isinf(radius).any()


def test_certified_margin_target_outside_classes_poisons_row():
    device = kernel_device()
    z, target, lip, mask = _margin_inputs(device)
    target[0], target[3] = -2, 7  # C = 7
    bias = torch.randn(7, device=device)
    radius, margin, runner_up = cm.forward(z, target, lip, mask, bias, 2.0, True)
    assert torch.isnan(radius[[0, 3]]).all() and torch.all(runner_up[[0, 3]] == -1)
    assert torch.isfinite(radius[[1, 2, 4, 5]]).all()
    grad_z, grad_lip = cm.backward(torch.ones_like(radius), torch.ones_like(margin), z, target,
                                   lip, mask, margin, runner_up, 2.0)
    assert torch.all(grad_z[[0, 3]] == 0) and torch.all(grad_lip[[0, 3]] == 0)


# ------------------------------------------------------------------ noise
def test_noise_offset_from_device_tensor_matches_int():
    device = kernel_device()
    x = torch.randn(5, 7, device=device)
    p = torch.full((5,), 0.3, device=device)
    sigma = torch.full((5,), 0.5, device=device)
    for offset in (0, 3, 2**33 + 7, 2**63 - 1):
        want = nd.forward(x, p, sigma, False, 11, offset, 0.0)
        got = nd.forward(x, p, sigma, False, 11,
                         torch.tensor(offset, dtype=torch.int64, device=device), 0.0)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="0-d int64 tensor"):
        nd.forward(x, p, sigma, False, 11, torch.tensor([1], device=device), 0.0)


@pytest.mark.parametrize("levels", [False, True])
def test_noise_invalid_p_or_sigma_poisons_sample(levels):
    device = kernel_device()
    B = 6
    x = torch.randn(B, 5, device=device)
    p = torch.full((B,), 0.2, device=device)
    p[1], p[2] = 1.5, NAN
    if levels:
        sigma = torch.tensor([NAN], device=device)  # the only level: every sample draws it
        y, keep, sigma_used = nd.forward(x, p, sigma, True, 3, 0, 0.0)
        assert torch.isnan(y).all() and torch.isnan(sigma_used).all() and not keep.any()
        return
    sigma = torch.full((B,), 0.5, device=device)
    sigma[3], sigma[4] = -0.1, math.inf
    y, keep, sigma_used = nd.forward(x, p, sigma, False, 3, 0, 0.0)
    bad = torch.tensor([1, 2, 3, 4], device=device)
    assert torch.isnan(y[bad]).all() and torch.isnan(sigma_used[bad]).all()
    assert not keep[bad].any()
    good = torch.tensor([0, 5], device=device)
    assert torch.isfinite(y[good]).all() and torch.equal(sigma_used[good], sigma[good])


# ------------------------------------------------------------------ issue #11 GPU hazards
def test_subset_accuracy_every_config_writes_the_whole_table():
    """Programs beyond a config's row blocks write zeros, so a table left dirty by another
    config (the autotuner benchmarks every config on it) cannot over-count."""
    device = kernel_device()
    B, M, C = 10, 2, 5
    z = torch.randn(B, M, C, device=device)
    target = z.sum(1).argmax(1)
    subsets = reference.all_subsets(M, device)
    S = subsets.shape[0]
    programs = so._max_programs(B, M, C) + 3  # more programs than this config has blocks
    partial = torch.full((programs, S), 7, dtype=torch.int32, device=device)
    so._launch(so._accuracy_kernel, (z, target), z, subsets, None, None, (partial,),
               (programs,))
    assert torch.all(partial[-3:] == 0)
    assert torch.equal(partial.sum(0, dtype=torch.int64), expected_correct(z, target, subsets))


def test_subset_accuracy_codes_every_config_writes_the_whole_table():
    """The codes kernel's (programs, 16) table likewise: zeros past this config's row blocks
    and in the codes >= 2^M, the per-code hits elsewhere."""
    device = kernel_device()
    B, M, C = 10, 2, 5
    z = torch.randn(B, M, C, device=device)
    target = z.sum(1).argmax(1)
    configs = (so._CODES_GPU_CONFIGS, so._CODES_INTERPRETER_CONFIG)
    programs = so._max_programs(B, M, C, configs, 1) + 3
    partial = torch.full((programs, so.CODES.value), 7, dtype=torch.int32, device=device)
    so._launch_codes(z, target, None, None, partial)
    assert torch.all(partial[-3:] == 0) and torch.all(partial[:, 1 << M:] == 0)
    subsets = torch.tensor([[False, False], [True, False], [False, True], [True, True]],
                           device=device)  # codes 0, 1, 2, 3
    assert torch.equal(partial.sum(0, dtype=torch.int64)[: 1 << M],
                       expected_correct(z, target, subsets))


@triton.jit
def _scores_offset_probe(out_ptr, s, B, C):
    tl.store(out_ptr, so.scores_offset(s, B, C))


def test_subset_logits_output_offset_is_64_bit():
    """s * B * C of the last subset passes 2^31 at (S, B, C) = (15, 262144, 1000); computed
    by the kernel's own offset helper with int32 arguments, without the 15 GB output."""
    device = kernel_device()
    out = torch.zeros(1, dtype=torch.int64, device=device)
    for s, B, C in [(14, 262144, 1000), (255, 2**20, 2**10 - 1), (3, 2**31 - 1, 1)]:
        _scores_offset_probe[(1,)](out, s, B, C)
        assert s * B * C > 2**31 - 1
        assert int(out) == s * B * C


@triton.jit
def _row_offset_probe(out_ptr, rows_start, M: tl.constexpr, D):
    rows = tl.full([2], rows_start, tl.int64) + tl.arange(0, 2)
    tl.store(out_ptr + tl.arange(0, 2), (rows * M + (M - 1)) * D + (D - 1))


def test_row_offsets_are_64_bit():
    """The (rows * M + m) * D offsets of masked_fusion / certified_margin / subset ops with
    rows taken in int64 from the program id: the last element of (100000, 3, 1024) x fp32
    sits past 2^31 elements only for larger batches, so probe a batch of 2^21 rows."""
    device = kernel_device()
    out = torch.zeros(2, dtype=torch.int64, device=device)
    B, M, D = 2**21, 3, 1024
    _row_offset_probe[(1,)](out, B - 2, M, D)
    assert out.tolist() == [((B - 2) * M + M - 1) * D + D - 1, ((B - 1) * M + M - 1) * D + D - 1]
    assert out[1] > 2**31


def test_every_autotune_key_has_the_batch_bucket():
    for kernel in (mf._forward_kernel, mf._backward_kernel, cm._forward_kernel,
                   cm._backward_kernel, so._logits_kernel, so._accuracy_kernel,
                   so._accuracy_codes_kernel):
        assert "ROWS_BUCKET" in kernel.keys, kernel
    assert "NUMEL_BUCKET" in nd._noise_kernel.keys
    assert [_common.rows_bucket(n) for n in (0, 1, 3, 64, 65, 100000)] == [1, 1, 4, 64, 128,
                                                                        131072]


def test_autotuner_uses_the_default_config_inside_graph_capture(monkeypatch):
    """Two configs: outside capture the interpreter's benchmarker would need a driver; during
    capture the default config runs without benchmarking and the key stays untuned."""
    device = kernel_device()

    @triton.jit
    def _fill(out_ptr, n, ROWS_BUCKET, VALUE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.full([BLOCK], VALUE, tl.int32), mask=offs < n)

    configs = [triton.Config({"VALUE": 1, "BLOCK": 16}), triton.Config({"VALUE": 2,
                                                                       "BLOCK": 16})]
    tuner = _common.capture_safe(triton.autotune(configs=configs, key=["n", "ROWS_BUCKET"])(
        _fill))
    monkeypatch.setattr(_common, "stream_capturing", lambda: True)
    out = torch.zeros(8, dtype=torch.int32, device=device)
    tuner[(1,)](out, 8, _common.rows_bucket(8))
    assert torch.all(out == 1)  # configs[0]
    assert tuner.cache == {}
