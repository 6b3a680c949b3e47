"""The ops as a drop-in user meets them: lazy ``import mmfast``, named-tuple results,
``mask=None``, per-class fusion weights, CRMT's per-class Lipschitz table, and no host sync
(no ``.item()``, ``.nonzero()``, ``bool(tensor)``) on the default call path, forward or
backward."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmfast import ops
from mmfast.ops import reference
from tests.ops.helpers import require

ROOT = Path(__file__).resolve().parents[2]


def test_import_mmfast_is_lazy_and_light():
    """``import mmfast`` gives mmfast.ops / mmfast.nn on access; importing them pulls in
    neither Triton, torch._dynamo nor matplotlib."""
    code = (
        "import sys, json, torch\n"
        "before = set(sys.modules)\n"
        "import mmfast\n"
        "lazy = 'mmfast.ops' not in sys.modules and 'mmfast.nn' not in sys.modules\n"
        "f = mmfast.ops.masked_fusion\n"
        "m = mmfast.nn.MaskedFusion\n"
        "heavy = [n for n in ('triton', 'torch._dynamo', 'matplotlib', 'scipy')\n"
        "         if n in sys.modules and n not in before]\n"
        "print(json.dumps({'lazy': lazy, 'heavy': heavy, 'ops': f.__name__}))\n"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"lazy": True, "heavy": [], "ops": "masked_fusion"}


def test_unknown_attribute_of_mmfast_is_an_attribute_error():
    import mmfast

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mmfast.nope  # noqa: B018


def test_results_are_named_tuples():
    B, M, C = 4, 2, 3
    z = torch.randn(B, M, C)
    target = torch.randint(0, C, (B,))
    fused = ops.masked_fusion(z)
    assert isinstance(fused, ops.MaskedFusionResult) and fused.y is fused[0]
    y, denom = fused
    assert y.shape == (B, C) and denom.shape == (B,)
    cert = ops.certified_margin(z, target, torch.ones(M))
    assert isinstance(cert, ops.CertifiedMarginResult)
    assert cert._fields == ("radius", "margin", "runner_up") and cert.runner_up.dtype == torch.int64
    noisy = ops.noisy_modality_dropout(z, 0.5, 0.1)
    assert isinstance(noisy, ops.NoisyDropoutResult) and noisy.keep.dtype == torch.bool
    group = ops.modality_noise_dropout({"a": z, "b": z}, None, 0.5, 0.1)
    assert isinstance(group, ops.ModalityNoiseDropoutResult)
    assert set(group.inputs) == {"a", "b"} and group.mask.shape == (B, 2)
    assert set(group.sigma_used) == {"a", "b"}


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_masked_fusion_mask_none_means_all_present(backend):
    require("masked_fusion", backend, "cpu")
    x = torch.randn(5, 3, 4)
    w = torch.rand(3) + 0.1
    got = ops.masked_fusion(x, None, w, backend=backend)
    want = ops.masked_fusion(x, torch.ones(5, 3, dtype=torch.bool), w, backend=backend)
    torch.testing.assert_close(got.y, want.y)
    torch.testing.assert_close(got.y, (w[:, None] * x).sum(1) / w.sum(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", ["MC", "BMC"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_masked_fusion_per_class_weights(shape, normalize, backend):
    """CRMT's integration weights a_k^(m): y_bk = sum_m mask a_bmk x_bmk (/ sum_m mask a_bmk);
    every backend runs the reference composition for them."""
    require("masked_fusion", backend, "cpu")
    B, M, C = 6, 3, 4
    x = torch.randn(B, M, C, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(B, M) < 0.6
    mask[0] = False
    mask[1] = True
    w = torch.rand(M, C) + 0.1 if shape == "MC" else torch.rand(B, M, C) + 0.1
    w = w.double().requires_grad_(True)
    y, denom = ops.masked_fusion(x, mask, w, normalize, backend=backend)
    wm = w.expand(B, M, C) * mask[..., None]
    want_denom = wm.sum(1)
    want = (wm * x).sum(1)
    if normalize:
        want = want / torch.where(want_denom > 0, want_denom, torch.ones_like(want_denom))
    assert denom.shape == (B, C)
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(denom, want_denom)
    assert torch.autograd.gradcheck(
        lambda x, w: ops.masked_fusion(x, mask, w, normalize, backend=backend).y, (x, w))


def test_masked_fusion_per_class_weights_compile():
    torch._dynamo.reset()
    x, w = torch.randn(4, 2, 3), torch.rand(2, 3)
    fn = torch.compile(lambda x, w: ops.masked_fusion(x, None, w).y, backend="aot_eager",
                       fullgraph=True)
    torch.testing.assert_close(fn(x, w), ops.masked_fusion(x, None, w).y)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_certified_margin_per_class_lipschitz_table(backend):
    """(M, C) tau: pairs bounded by tau_y + tau_k, the same as the expanded (M, C, C) table,
    and differentiable w.r.t. tau."""
    require("certified_margin", backend, "cpu")
    B, M, C = 7, 2, 5
    z = torch.randn(B, M, C, dtype=torch.float64)
    target = torch.randint(0, C, (B,))
    tau = (torch.rand(M, C, dtype=torch.float64) + 0.2).requires_grad_(True)
    got = ops.certified_margin(z, target, tau, backend=backend)
    pairs = tau[:, :, None] + tau[:, None, :]
    want = ops.certified_margin(z, target, pairs, backend="reference")
    torch.testing.assert_close(got.radius, want.radius)
    assert torch.equal(got.runner_up, want.runner_up)
    torch.testing.assert_close(ops.pair_lipschitz(tau), pairs)
    (g,) = torch.autograd.grad(got.radius.sum(), tau)
    (g_want,) = torch.autograd.grad(want.radius.sum(), tau)
    torch.testing.assert_close(g, g_want)


def test_noisy_dropout_offset_tensor_equals_int_offset():
    x = torch.randn(6, 5)
    a = ops.noisy_modality_dropout(x, 0.3, 0.4, seed=2, offset=7)
    b = ops.noisy_modality_dropout(x, 0.3, 0.4, seed=2, offset=torch.tensor(7))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    r = ops.noisy_modality_dropout(x, 0.3, 0.4, seed=2, offset=torch.tensor(7),
                                   backend="reference")
    assert torch.equal(r.keep, a.keep)


# ------------------------------------------------------------------------------ no host sync
SYNC_OPS = ("_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "equal",
            "allclose", "unique")


class _RecordSyncs(TorchDispatchMode):
    """Records every aten op that needs its result on the host (item / bool / nonzero ...)."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.syncs.append(str(func))
        return func(*args, **(kwargs or {}))


def _default_path_calls(dev):
    B, M, C = 5, 3, 4
    z = torch.randn(B, M, C, device=dev, requires_grad=True)
    mask = torch.rand(B, M, device=dev) < 0.7
    w = (torch.rand(M, device=dev) + 0.1).requires_grad_(True)
    lip = (torch.rand(M, C, C, device=dev) + 0.5).requires_grad_(True)
    bias = torch.zeros(C, device=dev, requires_grad=True)
    target = torch.randint(0, C, (B,), device=dev)
    step = torch.zeros((), dtype=torch.int64, device=dev)
    return [
        ("masked_fusion", lambda: ops.masked_fusion(z, mask, w).y.sum()),
        ("certified_margin", lambda: sum(ops.certified_margin(z, target, lip, mask, bias)[:2]
                                         ).sum()),
        ("certified_margin", lambda: ops.certified_margin(z, target, lip[:, 0], mask,
                                                          rival="top").radius.sum()),
        ("noisy_modality_dropout", lambda: ops.noisy_modality_dropout(
            z, torch.full((B,), 0.3, device=dev), torch.full((B,), 0.2, device=dev),
            seed=1, offset=step).y.sum()),
        ("noisy_modality_dropout", lambda: ops.modality_noise_dropout(
            {"a": z, "b": z * 2, "c": z}, mask, 0.3, [0.1, 0.2], seed=1, offset=step)
            .inputs["a"].sum()),
        ("subset_accuracy", lambda: ops.subset_accuracy(z.detach(), target, weight=w.detach(),
                                                        present=mask)),
    ]


@pytest.mark.parametrize("backend,device", [("cpp", "cpu"), ("cuda", "cuda")])
def test_default_path_has_no_host_sync(backend, device, monkeypatch):
    """Forward and backward of every op, as a training loop calls them (auto backend),
    without an op whose result the host waits for."""
    dev = require("masked_fusion", backend, device)
    monkeypatch.delenv("MMFAST_CHECK", raising=False)
    monkeypatch.delenv("MMFAST_BACKEND", raising=False)
    for op, call in _default_path_calls(dev):
        require(op, backend, device)
        with _RecordSyncs() as rec:
            out = call()
            if out.requires_grad:
                out.backward()
        assert rec.syncs == [], (op, rec.syncs)


def test_reference_and_check_mode_do_sync(monkeypatch):
    """The recorder sees the value checks (so the test above would catch one)."""
    z, target = torch.randn(3, 2, 4), torch.tensor([0, 1, 2])
    with _RecordSyncs() as rec:
        ops.certified_margin(z, target, torch.ones(2), backend="reference")
    assert rec.syncs
    monkeypatch.setenv("MMFAST_CHECK", "1")
    with _RecordSyncs() as rec:
        ops.certified_margin(z, target, torch.ones(2))
    assert rec.syncs


def test_reference_masked_fusion_per_modality_unchanged():
    """The reference's per-modality path (used by every backend's tests) still matches the
    textbook formula."""
    x, mask, w = torch.randn(4, 3, 2), torch.rand(4, 3) < 0.5, torch.rand(4, 3)
    y, denom = reference.masked_fusion(x, mask, w)
    wm = w * mask
    want = (wm[..., None] * x).sum(1) / torch.where(wm.sum(1) > 0, wm.sum(1), 1)[:, None]
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(denom, wm.sum(1))


# ------------------------------------------------------------------------ C++ autograd
@pytest.mark.parametrize("op", ["masked_fusion", "certified_margin", "noisy_modality_dropout"])
def test_cpp_ops_have_their_autograd_in_cpp(op):
    """The C++ ops' backward is a C++ node (csrc/autograd/<op>.cpp): no Python per call; the
    Python formula is registered for the Triton op only. Gradients are checked against the
    reference in tests/ops/test_<op>.py (gradcheck included)."""
    from mmfast.ops import _registry

    require(op, "cpp", "cpu")
    assert _registry.cpp_autograd(f"mmfast::{op}")
    assert not _registry.cpp_autograd(f"mmfast::{op}_triton")
    z = torch.randn(4, 2, 3, requires_grad=True)
    if op == "masked_fusion":
        out = ops.masked_fusion(z, backend="cpp").y
    elif op == "certified_margin":
        out = ops.certified_margin(z, torch.tensor([0, 1, 2, 0]), torch.ones(2),
                                   backend="cpp").radius
    else:
        out = ops.noisy_modality_dropout(z, 0.5, 0.1, backend="cpp").y
    assert "CppNode" in out.grad_fn.name(), out.grad_fn.name()


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("lip_shape", ["M", "MCC"])
def test_cpp_certified_margin_gradients_with_and_without_mask(with_mask, lip_shape):
    """The C++ autograd maps gradients to the right inputs whichever optional tensors are
    given (autograd counts tensor arguments only)."""
    require("certified_margin", "cpp", "cpu")
    B, M, C = 6, 3, 4
    z = torch.randn(B, M, C, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, C, (B,))
    shape = (M,) if lip_shape == "M" else (M, C, C)
    lip = (torch.rand(shape, dtype=torch.float64) + 0.5).requires_grad_(True)
    bias = torch.randn(C, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(B, M) < 0.7) | (torch.arange(M) == 0) if with_mask else None
    grads = {}
    for backend in ("cpp", "reference"):
        r, m, _ = ops.certified_margin(z, target, lip, mask, bias, backend=backend)
        grads[backend] = torch.autograd.grad((r * 0.7 + m).sum(), (z, lip, bias))
    for got, want in zip(grads["cpp"], grads["reference"]):
        torch.testing.assert_close(got, want)
