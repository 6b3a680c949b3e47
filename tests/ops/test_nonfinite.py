"""The non-finite input policy (DESIGN / BRIEF contract 3) on every backend:

* a modality whose mask is False is never read, forward and backward: NaN / inf there reaches
  no output and no gradient;
* a NaN or infinite lip / sigma / weight is an error (a ValueError from the wrapper for the
  reference backend and with MMFAST_CHECK=1, from the C++ CPU kernels by default; CUDA and
  Triton kernels cannot raise without a sync and poison the affected outputs with NaN);
* certified_margin: a row with a non-finite score among its present modalities gets radius NaN,
  margin NaN, runner_up -1 (never a certificate);
* subset_accuracy: a row whose fused scores contain NaN counts as wrong;
* noisy_modality_dropout: dropped samples are ``fill`` (x is not read there).
"""

from __future__ import annotations

import math

import pytest
import torch

from mmfast import ops
from tests.ops.helpers import require

NAN, INF = math.nan, math.inf
CASES = [("reference", "cpu"), ("cpp", "cpu"), ("triton", "cpu"), ("cuda", "cuda"),
         ("triton", "cuda")]


def backends():
    """Every backend x device (each follows the contract: no expected failures)."""
    return [pytest.param(b, d, id=f"{b}-{d}") for b, d in CASES]


def raises_in_wrapper_or_kernel(backend: str) -> bool:
    """Whether a bad value raises on this backend by default (else it poisons with NaN)."""
    return backend in ("reference", "cpp")


# ------------------------------------------------------------------------ absent modalities
@pytest.mark.parametrize("backend,device", backends())
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("weighted", [False, True])
def test_masked_fusion_never_reads_absent_modalities(backend, device, bad, weighted):
    dev = require("masked_fusion", backend, device)
    B, M, D = 5, 3, 6
    x = torch.randn(B, M, D, device=dev)
    mask = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0], [0, 1, 1]], device=dev).bool()
    clean = torch.where(mask.unsqueeze(-1), x, torch.zeros_like(x))
    dirty = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, bad)).requires_grad_(True)
    w = torch.rand(M, device=dev, requires_grad=True) + 0.5 if weighted else None
    got = ops.masked_fusion(dirty, mask, w, backend=backend)
    want = ops.masked_fusion(clean, mask, w, backend="reference")
    torch.testing.assert_close(got.y, want.y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.denom, want.denom)
    grads = torch.autograd.grad(got.y.sum(), (dirty, w) if weighted else (dirty,))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.all(grads[0][~mask] == 0)


@pytest.mark.parametrize("backend,device", backends())
@pytest.mark.parametrize("rival", ["min", "top"])
def test_certified_margin_never_reads_absent_modalities(backend, device, rival):
    dev = require("certified_margin", backend, device)
    B, M, C = 6, 3, 5
    z = torch.randn(B, M, C, device=dev)
    mask = torch.rand(B, M, device=dev) < 0.6
    mask[:, 1] = True
    target = torch.randint(0, C, (B,), device=dev)
    lip = torch.rand(M, C, C, device=dev) + 0.5
    clean = torch.where(mask.unsqueeze(-1), z, torch.zeros_like(z))
    dirty = torch.where(mask.unsqueeze(-1), z, torch.full_like(z, NAN)).requires_grad_(True)
    got = ops.certified_margin(dirty, target, lip, mask, rival=rival, backend=backend)
    want = ops.certified_margin(clean, target, lip, mask, rival=rival, backend="reference")
    torch.testing.assert_close(got.radius, want.radius, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.margin, want.margin, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.runner_up, want.runner_up)
    (grad,) = torch.autograd.grad(got.radius.sum() + got.margin.sum(), dirty)
    assert torch.isfinite(grad).all() and torch.all(grad[~mask] == 0)


@pytest.mark.parametrize("backend,device", backends())
def test_subset_accuracy_never_reads_absent_modalities(backend, device):
    dev = require("subset_accuracy", backend, device)
    B, M, C = 40, 3, 4
    z = torch.randn(B, M, C, device=dev)
    target = torch.randint(0, C, (B,), device=dev)
    present = torch.rand(B, M, device=dev) < 0.7
    dirty = torch.where(present.unsqueeze(-1), z, torch.full_like(z, NAN))
    got = ops.subset_accuracy(dirty, target, present=present, backend=backend)
    want = ops.subset_accuracy(z, target, present=present, backend="reference")
    torch.testing.assert_close(got, want)


# ---------------------------------------------------------------- non-finite present scores
@pytest.mark.parametrize("backend,device", backends())
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("rival", ["min", "top"])
def test_certified_margin_row_with_nonfinite_score_gets_no_certificate(backend, device, bad,
                                                                      rival):
    dev = require("certified_margin", backend, device)
    B, M, C = 4, 2, 5
    z = torch.randn(B, M, C, device=dev)
    target = torch.tensor([0, 1, 2, 3], device=dev)
    z[1, 0, 1] = bad  # the target's score
    z[2, 1, 4] = bad  # a rival's score
    lip = torch.ones(M, device=dev)
    got = ops.certified_margin(z, target, lip, rival=rival, backend=backend)
    rows = torch.tensor([False, True, True, False], device=dev)
    assert torch.isnan(got.radius[rows]).all() and torch.isnan(got.margin[rows]).all()
    assert torch.all(got.runner_up[rows] == -1)
    want = ops.certified_margin(z[~rows], target[~rows], lip, rival=rival, backend="reference")
    torch.testing.assert_close(got.radius[~rows], want.radius, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.runner_up[~rows], want.runner_up)
    assert ops.certified_accuracy(got.radius, [0.0])[0] <= 0.5  # NaN rows never count


@pytest.mark.parametrize("backend,device", backends())
def test_subset_accuracy_row_with_nan_scores_counts_as_wrong(backend, device):
    dev = require("subset_accuracy", backend, device)
    B, M, C = 3, 2, 4
    z = torch.zeros(B, M, C, device=dev)
    target = torch.tensor([2, 1, 3], device=dev)
    z[torch.arange(B), :, target] = 5.0  # every subset right on every row ...
    z[0, 0, 2] = NAN  # ... except subsets reading modality 0 of row 0 (NaN at the target)
    got = ops.subset_accuracy(z, target, backend=backend)  # subsets {0}, {1}, {0, 1}
    torch.testing.assert_close(got, torch.tensor([2 / 3, 1.0, 2 / 3], device=dev))


@pytest.mark.parametrize("backend,device", backends())
def test_subset_ops_read_present_modalities_of_weight_zero(backend, device):
    """Present with weight 0 is not absent: its term is 0 * z, NaN for an infinite z, as in the
    reference (the C++ kernel once skipped such modalities and counted the row as right)."""
    dev = require("subset_accuracy", backend, device)
    B, M, C = 3, 2, 4
    z = torch.zeros(B, M, C, device=dev)
    target = torch.tensor([2, 1, 3], device=dev)
    z[torch.arange(B), :, target] = 5.0
    z[0, 1, 0] = INF  # row 0, modality 1 (weight 0 there): its scores are NaN
    weight = torch.tensor([[1.0, 0.0], [1.0, 0.5], [1.0, 0.5]], device=dev)
    subsets = torch.tensor([[True, False], [False, True], [True, True]], device=dev)
    got = ops.subset_accuracy(z, target, subsets, weight, backend=backend)
    torch.testing.assert_close(got, torch.tensor([1.0, 2 / 3, 2 / 3], device=dev))
    scores = ops.subset_logits(z, subsets, weight, backend=backend)
    assert torch.isnan(scores[1:, 0, 0]).all() and torch.isfinite(scores[0]).all()


@pytest.mark.parametrize("backend,device", backends())
def test_masked_fusion_nan_in_a_present_modality_propagates(backend, device):
    dev = require("masked_fusion", backend, device)
    x = torch.randn(3, 2, 4, device=dev)
    x[1, 0, 2] = NAN
    y = ops.masked_fusion(x, backend=backend).y
    assert torch.isnan(y[1, 2]) and torch.isfinite(y[0]).all() and torch.isfinite(y[2]).all()


# ---------------------------------------------------------------------- dropped samples
@pytest.mark.parametrize("backend,device", backends())
def test_noisy_dropout_never_reads_dropped_samples(backend, device):
    dev = require("noisy_modality_dropout", backend, device)
    B = 8
    p = torch.tensor([1.0, 0.0] * (B // 2), device=dev)  # even rows dropped
    x = torch.randn(B, 5, device=dev)
    x[0::2] = NAN
    x.requires_grad_(True)
    y, keep, _ = ops.noisy_modality_dropout(x, p, 0.1, seed=1, fill=-2.0, backend=backend)
    assert torch.equal(keep, p == 0)
    assert torch.all(y[0::2] == -2.0) and torch.isfinite(y).all()
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.all(grad[0::2] == 0) and torch.all(grad[1::2] == 1)


# ------------------------------------------------------------ non-finite lip / sigma / weight
def _bad_value(backend: str, call, poisoned, match: str) -> None:
    """By default: ValueError on reference / cpp, NaN-poisoned outputs on CUDA / Triton."""
    if raises_in_wrapper_or_kernel(backend):
        with pytest.raises(ValueError, match=match):
            call()
    else:
        assert poisoned(call())


@pytest.mark.parametrize("backend,device", backends())
@pytest.mark.parametrize("bad", [NAN, INF])
def test_certified_margin_nonfinite_lip(backend, device, bad):
    dev = require("certified_margin", backend, device)
    z = torch.randn(4, 2, 3, device=dev)
    target = torch.tensor([0, 1, 2, 0], device=dev)
    lip = torch.ones(2, 3, 3, device=dev)
    lip[1] = bad
    _bad_value(backend, lambda: ops.certified_margin(z, target, lip, backend=backend),
               lambda r: bool(torch.isnan(r.radius).all()),
               r"certified_margin: argument 'lip' expected finite non-negative values")


@pytest.mark.parametrize("backend,device", backends())
@pytest.mark.parametrize("bad", [NAN, INF, -1.0])
def test_masked_fusion_bad_weight(backend, device, bad):
    dev = require("masked_fusion", backend, device)
    x = torch.randn(3, 2, 4, device=dev)
    w = torch.tensor([1.0, bad], device=dev)
    _bad_value(backend, lambda: ops.masked_fusion(x, None, w, backend=backend),
               lambda r: bool(torch.isnan(r.y).all()),
               r"masked_fusion: argument 'weight' expected (finite )?non-negative values")


@pytest.mark.parametrize("backend,device", backends())
@pytest.mark.parametrize("bad", [NAN, INF])
def test_noisy_dropout_nonfinite_sigma_tensor(backend, device, bad):
    dev = require("noisy_modality_dropout", backend, device)
    x = torch.randn(4, 3, device=dev)
    sigma = torch.tensor([0.1, bad, 0.1, 0.1], device=dev)
    _bad_value(backend, lambda: ops.noisy_modality_dropout(x, 0.0, sigma, backend=backend),
               lambda r: bool(torch.isnan(r.y[1]).all()),
               r"noisy_modality_dropout: argument 'sigma' expected finite non-negative values")


@pytest.mark.parametrize("backend,device", backends())
def test_target_out_of_range(backend, device):
    dev = require("certified_margin", backend, device)
    z = torch.randn(3, 2, 4, device=dev)
    target = torch.tensor([0, 4, 1], device=dev)
    _bad_value(backend, lambda: ops.certified_margin(z, target, torch.ones(2, device=dev),
                                                     backend=backend),
               lambda r: bool(torch.isnan(r.radius[1]) and r.runner_up[1] == -1),
               r"certified_margin: argument 'target' expected values in \[0, 4\)")


@pytest.mark.parametrize("sigma", [NAN, INF, -0.5, [0.1, NAN]])
def test_noisy_dropout_nonfinite_python_sigma_always_raises(sigma):
    """A Python number (or list) is checked for free on every backend."""
    with pytest.raises(ValueError, match=r"'sigma' expected finite non-negative values"):
        ops.noisy_modality_dropout(torch.randn(2, 3), 0.1, sigma)


# ------------------------------------------------------------------------ MMFAST_CHECK=1
@pytest.mark.parametrize("backend,device", backends())
def test_check_mode_raises_on_every_backend(backend, device, monkeypatch):
    """MMFAST_CHECK=1: the wrapper checks values before any kernel runs (a device sync)."""
    dev = require("certified_margin", backend, device)
    monkeypatch.setenv("MMFAST_CHECK", "1")
    z = torch.randn(3, 2, 4, device=dev)
    target = torch.tensor([0, 1, 2], device=dev)
    cases = [
        (lambda: ops.certified_margin(z, target, torch.tensor([1.0, NAN], device=dev),
                                      backend=backend), r"'lip' expected finite non-negative"),
        (lambda: ops.certified_margin(z, torch.tensor([0, 9, 1], device=dev),
                                      torch.ones(2, device=dev), backend=backend),
         r"'target' expected values in \[0, 4\)"),
        (lambda: ops.masked_fusion(z, None, torch.tensor([INF, 1.0], device=dev),
                                   backend=backend), r"'weight' expected finite non-negative"),
        (lambda: ops.noisy_modality_dropout(z, torch.full((3,), 1.5, device=dev), 0.1,
                                            backend=backend),
         r"'p_drop' expected probabilities in \[0, 1\]"),
        (lambda: ops.noisy_modality_dropout(z, 0.5, torch.tensor([0.1, NAN, 0.2], device=dev),
                                            backend=backend),
         r"'sigma' expected finite non-negative"),
        (lambda: ops.subset_accuracy(z, torch.tensor([0, 1, -1], device=dev), backend=backend),
         r"'target' expected values in \[0, 4\)"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
