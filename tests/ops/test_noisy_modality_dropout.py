"""noisy_modality_dropout: the Philox stream (known-answer vectors), reproducibility,
statistics, every backend against the reference, gradients, the all-modality helper, errors."""

import math

import pytest
import torch

from mmfast.ops import modality_noise_dropout, noisy_modality_dropout, reference
from tests.ops.helpers import BACKENDS, DTYPES, TOLERANCE, misaligned, non_contiguous, require

OP = "noisy_modality_dropout"


def test_philox_known_answers():
    """Random123's published Philox4x32-10 vectors."""
    zero = torch.zeros(1, dtype=torch.int64)
    ones = torch.full((1,), 0xFFFFFFFF, dtype=torch.int64)
    got = reference.philox4x32((zero,) * 4, 0)
    assert [int(v) for v in got] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    got = reference.philox4x32((ones,) * 4, 0xFFFFFFFFFFFFFFFF)
    assert [int(v) for v in got] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


@pytest.mark.parametrize("backend,device", [("reference", "cpu"), *BACKENDS])
def test_reproducible_and_offset_changes_stream(backend, device):
    dev = require(OP, backend, device)
    x = torch.randn(16, 3, 5, device=dev)
    a = noisy_modality_dropout(x, 0.3, 0.5, seed=7, offset=3, backend=backend)
    b = noisy_modality_dropout(x, 0.3, 0.5, seed=7, offset=3, backend=backend)
    c = noisy_modality_dropout(x, 0.3, 0.5, seed=7, offset=4, backend=backend)
    d = noisy_modality_dropout(x, 0.3, 0.5, seed=8, offset=3, backend=backend)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])


@pytest.mark.parametrize("backend,device", [("reference", "cpu"), *BACKENDS])
def test_statistics_on_a_large_draw(backend, device):
    dev = require(OP, backend, device)
    B, N, p, sigma = 4000, 256, 0.3, 0.7
    x = torch.zeros(B, N, device=dev)
    y, keep, sigma_used = noisy_modality_dropout(x, p, sigma, seed=1, offset=0, fill=-5.0,
                                                 backend=backend)
    rate = keep.float().mean().item()
    assert abs(rate - (1 - p)) < 4 * math.sqrt(p * (1 - p) / B)
    assert torch.all(y[~keep] == -5.0) and torch.all(sigma_used == sigma)
    noise = y[keep].flatten() / sigma
    n = noise.numel()
    assert abs(noise.mean().item()) < 5 / math.sqrt(n)
    assert abs(noise.std().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs((noise.abs() < 1).float().mean().item() - 0.6827) < 0.005  # Gaussian, not uniform


def test_sigma_levels_drawn_uniformly():
    levels = [0.0, 1.0, 2.0, 3.0]
    _, _, used = noisy_modality_dropout(torch.zeros(8000, 2), 0.0, levels, seed=3)
    counts = torch.stack([(used == v).sum() for v in levels]).float()
    assert counts.sum() == 8000 and torch.all((counts - 2000).abs() < 4 * math.sqrt(8000 * 0.1875))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("shape", [(9, 3, 5), (1, 1), (0, 4), (6, 2, 3, 7)], ids=str)
@pytest.mark.parametrize("sigma", [0.5, "per_sample", "levels"])
def test_matches_reference(backend, device, dtype, shape, sigma):
    dev = require(OP, backend, device)
    x = torch.randn(shape, device=dev, dtype=dtype)
    B = shape[0]
    if sigma == "per_sample":
        sigma = torch.rand(B, device=dev)
    elif sigma == "levels":
        sigma = torch.tensor([0.1, 0.5, 1.0], device=dev)
    p = torch.rand(B, device=dev)
    got = noisy_modality_dropout(x, p, sigma, seed=11, offset=5, fill=0.25, backend=backend)
    want = noisy_modality_dropout(x, p, sigma, seed=11, offset=5, fill=0.25, backend="reference")
    assert got[0].dtype == dtype and got[0].shape == x.shape
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(got[0], want[0], atol=max(atol, 1e-5), rtol=max(rtol, 1e-5))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_contiguous_but_misaligned_input(backend, device, dtype):
    """Rows a multiple of every vector width, so only the pointer forbids 16-byte vectors."""
    dev = require(OP, backend, device)
    x = torch.randn(12, 4, 8, device=dev, dtype=dtype)
    y, keep, _ = noisy_modality_dropout(misaligned(x), 0.5, 0.3, seed=5, backend=backend)
    want, want_keep, _ = noisy_modality_dropout(x, 0.5, 0.3, seed=5, backend="reference")
    assert torch.equal(keep, want_keep)
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(y, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_and_gradient(backend, device):
    dev = require(OP, backend, device)
    base = torch.randn(12, 4, 6, device=dev)
    x = non_contiguous(base).requires_grad_(True)
    y, keep, _ = noisy_modality_dropout(x, 0.5, 0.1, seed=2, backend=backend)
    want, _, _ = noisy_modality_dropout(base, 0.5, 0.1, seed=2, backend="reference")
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(grad, g * keep.view(-1, 1, 1))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    dev = require(OP, backend, device)
    op = getattr(torch.ops.mmfast, OP + ("_triton" if backend == "triton" else ""))
    x = torch.randn(6, 5, device=dev, requires_grad=True)
    p = torch.full((6,), 0.3, device=dev)
    offset = torch.tensor(1, device=dev)
    torch.library.opcheck(op, (x, p, torch.full((6,), 0.2, device=dev), False, 3, offset, 0.0))
    torch.library.opcheck(op, (x.detach(), p, torch.tensor([0.1, 0.2], device=dev), True, 3,
                               offset, 0.0))


def test_modality_noise_dropout_keeps_at_least_one():
    B = 500
    inputs = {"video": torch.randn(B, 3, 4), "audio": torch.randn(B, 6), "image": torch.randn(B, 2)}
    present = torch.rand(B, 3) < 0.8
    present[:, 1] |= ~present.any(dim=1)  # every sample has something
    out, kept, sigma_used = modality_noise_dropout(inputs, present, 0.7, 0.0, seed=5, offset=9)
    assert torch.all(kept.sum(dim=1) >= 1) and torch.all(kept <= present)
    assert 0.2 < kept.float().sum() / present.float().sum() < 0.6  # many drops happened
    for m, name in enumerate(["video", "audio", "image"]):
        rows = kept[:, m]
        assert torch.equal(out[name][rows], inputs[name][rows])  # sigma 0: untouched
        assert torch.all(out[name][~rows] == 0)
        assert sigma_used[name].shape == (B,)
    again = modality_noise_dropout(inputs, present, 0.7, 0.0, seed=5, offset=9)
    assert torch.equal(again[1], kept)
    out0, kept0, _ = modality_noise_dropout(inputs, present, 0.0, 0.0, seed=5)
    assert torch.equal(kept0, present)
    _, kept2, _ = modality_noise_dropout(inputs, None, 1.0, 0.0, seed=1, min_keep=2)
    assert torch.all(kept2.sum(dim=1) == 2)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(p_drop=1.5), ValueError, r"'p_drop' expected a probability in \[0, 1\], got 1.5"),
        (dict(p_drop=torch.full((4,), -0.1)), ValueError, r"'p_drop' expected probabilities"),
        (dict(p_drop=torch.full((3,), 0.1)), ValueError, r"'p_drop' expected shape \(4,\), got \(3,\)"),
        (dict(sigma=-1.0), ValueError, r"'sigma' expected finite non-negative values"),
        (dict(sigma=math.nan), ValueError, r"'sigma' expected finite non-negative values, got nan"),
        (dict(sigma=torch.full((4,), math.inf)), ValueError,
         r"'sigma' expected finite non-negative values, got inf"),
        (dict(sigma=[0.1, -0.5]), ValueError, r"'sigma' expected finite non-negative values"),
        (dict(offset=torch.tensor(1.0)), TypeError, r"'offset' expected dtype torch.int64"),
        (dict(offset=torch.tensor([1])), ValueError, r"'offset' expected shape \(\)"),
        (dict(sigma=torch.ones(4, 2)), ValueError, r"'sigma' expected a number"),
        (dict(sigma=[]), ValueError, r"'sigma' expected at least one level"),
        (dict(seed=-1), ValueError, r"'seed' expected an int in \[0, 2\*\*63\)"),
        (dict(x=torch.ones(4, 3, dtype=torch.int32)), TypeError, r"'x' expected dtype"),
        (dict(sigma_mode="gauss"), ValueError, r"'sigma_mode' expected one of"),
    ],
)
@pytest.mark.parametrize("mode", ["reference", "MMFAST_CHECK=1"])
def test_bad_input_errors(kwargs, exc, match, mode, monkeypatch):
    """Value checks run in the wrapper for the reference backend and with MMFAST_CHECK=1 (the
    kernels' own checks: tests/ops/test_nonfinite.py)."""
    args = dict(x=torch.randn(4, 3), p_drop=0.2, sigma=0.1)
    if mode == "reference":
        args["backend"] = "reference"
    else:
        monkeypatch.setenv("MMFAST_CHECK", "1")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        noisy_modality_dropout(**args)
