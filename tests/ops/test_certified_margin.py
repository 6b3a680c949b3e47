"""certified_margin: the reference against a slow loop, every backend against the reference
(values and gradients w.r.t. z, lip and bias), degenerate cases, opcheck, errors."""

import math

import pytest
import torch

from mmfast.ops import certified_accuracy, certified_margin, reference
from tests.ops.helpers import BACKENDS, DTYPES, assert_close, non_contiguous, presence_mask, require

OP = "certified_margin"
SHAPES = [(6, 3, 5), (1, 1, 1), (0, 2, 3), (9, 8, 4), (5, 2, 37)]
P_VALUES = [2.0, 1.0, math.inf, 3.0]


def sample_inputs(shape, device, dtype, lip_kind="full", with_mask=True, with_bias=True,
                  requires_grad=False):
    B, M, C = shape
    acc = reference.opmath_dtype(dtype)
    z = torch.randn(B, M, C, device=device, dtype=dtype, requires_grad=requires_grad)
    target = torch.randint(0, C, (B,), device=device)
    lip_shape = (M, C, C) if lip_kind == "full" else (M,)
    lip = (torch.rand(lip_shape, device=device, dtype=acc) + 0.1).requires_grad_(requires_grad)
    mask = presence_mask(B, M, device) if with_mask else None
    bias = None
    if with_bias:
        bias = (0.3 * torch.randn(C, device=device, dtype=acc)).requires_grad_(requires_grad)
    return z, target, lip, mask, bias


def slow_certified_margin(z, target, lip, mask, bias, p, rival):
    """Per-row, per-class loop in float64: the definition of DESIGN.md op 2."""
    B, M, C = z.shape
    q = reference.dual_exponent(p)
    out = []
    for b in range(B):
        y = int(target[b])
        mk = [1.0 if mask is None else float(mask[b, m]) for m in range(M)]
        best = None
        h = [sum(mk[m] * float(z[b, m, k]) for m in range(M)) + (0 if bias is None else float(bias[k]))
             for k in range(C)]
        for k in range(C):
            if k == y:
                continue
            marg = sum(mk[m] * float(z[b, m, y] - z[b, m, k]) for m in range(M))
            if bias is not None:
                marg += float(bias[y] - bias[k])
            terms = [mk[m] * float(lip[m] if lip.dim() == 1 else lip[m, y, k]) for m in range(M)]
            den = max(terms) if math.isinf(q) else sum(t**q for t in terms) ** (1 / q)
            r = marg / den if den > 0 else (0.0 if marg == 0 else math.copysign(math.inf, marg))
            key = r if rival == "min" else -h[k]
            if best is None or key < best[0]:
                best = (key, r, marg, k)
        out.append(best[1:] if best else (math.inf, 0.0, -1))
    radius, margin, runner = zip(*out) if out else ((), (), ())
    return (torch.tensor(radius, dtype=torch.float64), torch.tensor(margin, dtype=torch.float64),
            torch.tensor(runner, dtype=torch.int64))


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("rival", ["min", "top"])
@pytest.mark.parametrize("lip_kind", ["full", "scalar"])
def test_reference_matches_loop(p, rival, lip_kind):
    z, target, lip, mask, bias = sample_inputs((7, 3, 5), "cpu", torch.float64, lip_kind)
    got = reference.certified_margin(z, target, lip, mask, bias, p, rival)
    want = slow_certified_margin(z, target, lip, mask, bias, p, rival)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert torch.isinf(got[0][0])  # row 0 has no modality present


def test_degenerate_cases():
    z = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.5, 0.5]]])
    target = torch.zeros(3, dtype=torch.int64)
    radius, margin, runner = certified_margin(z, target, torch.zeros(1))  # lip 0
    assert radius.tolist() == [math.inf, -math.inf, 0.0] and runner.tolist() == [1, 1, 1]
    radius, margin, runner = certified_margin(torch.randn(4, 2, 1), torch.zeros(4, dtype=torch.int64),
                                              torch.ones(2))
    assert torch.all(torch.isinf(radius)) and runner.tolist() == [-1] * 4


def test_certified_accuracy():
    radius = torch.tensor([-1.0, 0.5, 2.0, math.inf])
    acc = certified_accuracy(radius, [0.0, 1.0, 3.0])
    torch.testing.assert_close(acc, torch.tensor([0.75, 0.5, 0.25]))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("lip_kind", ["full", "scalar"])
def test_forward_matches_reference(backend, device, dtype, shape, lip_kind):
    dev = require(OP, backend, device)
    z, target, lip, mask, bias = sample_inputs(shape, dev, dtype, lip_kind)
    for p, rival, m, b in [(2.0, "min", mask, bias), (math.inf, "top", None, None),
                           (1.0, "min", mask, None), (3.0, "top", mask, bias)]:
        got = certified_margin(z, target, lip, m, b, p, rival, backend=backend)
        want = reference.certified_margin(z, target, lip, m, b, p, rival)
        assert got[0].dtype == torch.float32 and got[2].dtype == torch.int64
        torch.testing.assert_close(got[2], want[2])
        assert_close(got[0], want[0], torch.float32, scale=10)
        assert_close(got[1], want[1], torch.float32, scale=10)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs(backend, device):
    dev = require(OP, backend, device)
    z, target, lip, mask, bias = sample_inputs((6, 3, 5), dev, torch.float32)
    got = certified_margin(non_contiguous(z), target, non_contiguous(lip), non_contiguous(mask),
                           bias, backend=backend)
    want = reference.certified_margin(z, target, lip, mask, bias)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("lip_kind", ["full", "scalar"])
@pytest.mark.parametrize("rival", ["min", "top"])
def test_gradients_match_reference(backend, device, p, lip_kind, rival):
    dev = require(OP, backend, device)
    z, target, lip, mask, bias = sample_inputs((8, 3, 6), dev, torch.float32, lip_kind,
                                               requires_grad=True)
    g_r, g_m = torch.randn(8, device=dev), torch.randn(8, device=dev)

    def grads(fn):
        radius, margin, _ = fn(z, target, lip, mask, bias, p, rival)
        finite = torch.isfinite(radius)
        loss = (torch.where(finite, radius, torch.zeros_like(radius)) * g_r).sum() + (margin * g_m).sum()
        return torch.autograd.grad(loss, (z, lip, bias))

    got = grads(lambda *a: certified_margin(*a, backend=backend))
    want = grads(reference.certified_margin)
    for g, w in zip(got, want):
        assert_close(g, w, torch.float32, scale=10)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("lip_kind", ["full", "scalar"])
def test_p1_tied_lipschitz_constants_share_the_gradient(backend, device, lip_kind):
    """p = 1 (q = inf): den = max_m lip_m. With tied maxima every backend splits d den / d lip
    evenly among them, as autograd of the reference's amax does (not all to the first)."""
    dev = require(OP, backend, device)
    z, target, lip, _, _ = sample_inputs((5, 3, 4), dev, torch.float32, lip_kind)
    with torch.no_grad():
        lip.fill_(0.5)
        lip[2] = 0.25  # modalities 0 and 1 tie at the max, modality 2 is below
    lip.requires_grad_(True)
    mask = torch.ones(5, 3, dtype=torch.bool, device=dev)
    mask[4, 0] = False  # this row has a single maximum (modality 1)

    def grad_lip(fn):
        radius, _, _ = fn(z, target, lip, mask, None, 1.0, "min")
        return torch.autograd.grad(radius.sum(), lip)[0]

    got = grad_lip(lambda *a: certified_margin(*a, backend=backend))
    want = grad_lip(reference.certified_margin)
    assert_close(got, want, torch.float32)
    per_modality = want.flatten(1).sum(1) if lip_kind == "full" else want
    assert per_modality[2] == 0 and per_modality[0] != 0
    assert not torch.allclose(per_modality[0], per_modality[1])  # row 4 goes to modality 1 only


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
@pytest.mark.parametrize("p", [2.0, math.inf])
def test_gradcheck_float64(backend, p):
    require(OP, backend, "cpu")
    z, target, lip, mask, bias = sample_inputs((5, 3, 4), "cpu", torch.float64, requires_grad=True)
    mask[:, 0] = True  # every row certifiable (finite radius)
    assert torch.autograd.gradcheck(
        lambda z, lip, bias: certified_margin(z, target, lip, mask, bias, p, backend=backend)[:2],
        (z, lip, bias))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    dev = require(OP, backend, device)
    op = getattr(torch.ops.mmfast, "certified_margin" + ("_triton" if backend == "triton" else ""))
    for requires_grad in (False, True):
        z, target, lip, mask, bias = sample_inputs((6, 3, 5), dev, torch.float32,
                                                   requires_grad=requires_grad)
        torch.library.opcheck(op, (z, target, lip, mask, bias, 2.0, False))
        torch.library.opcheck(op, (z, target, lip.detach()[:, 0, 0].contiguous(), None, None,
                                   math.inf, True))


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (dict(target=torch.tensor([0, 1, 7])), ValueError,
         r"'target' expected values in \[0, 5\), got values in \[0, 7\]"),
        (dict(target=torch.tensor([0.0, 1.0, 2.0])), TypeError, r"'target' expected dtype torch.int64"),
        (dict(lip=torch.ones(3, 5)), ValueError,
         r"'lip' expected shape \(2,\), \(2, 5\) or \(2, 5, 5\), got \(3, 5\)"),
        (dict(lip=-torch.ones(2)), ValueError, r"'lip' expected finite non-negative values"),
        (dict(lip=torch.tensor([1.0, math.nan])), ValueError,
         r"'lip' expected finite non-negative values, got nan"),
        (dict(lip=torch.full((2, 5), math.inf)), ValueError,
         r"'lip' expected finite non-negative values, got inf"),
        (dict(z=torch.randn(3, 5)), ValueError, r"'z' expected shape \(B, M, C\), got \(3, 5\)"),
        (dict(mask=torch.ones(3, 2)), TypeError, r"'mask' expected dtype torch.bool"),
        (dict(bias=torch.ones(4)), ValueError, r"'bias' expected shape \(5,\), got \(4,\)"),
        (dict(p=0.5), ValueError, r"'p' expected a number >= 1"),
        (dict(rival="max"), ValueError, r"'rival' expected one of"),
    ],
)
@pytest.mark.parametrize("mode", ["reference", "MMFAST_CHECK=1"])
def test_bad_input_errors(change, exc, match, mode, monkeypatch):
    args = dict(z=torch.randn(3, 2, 5), target=torch.tensor([0, 1, 2]), lip=torch.ones(2),
                mask=None, bias=None, p=2.0, rival="min")
    if mode == "reference":
        args["backend"] = "reference"
    else:
        monkeypatch.setenv("MMFAST_CHECK", "1")
    args.update(change)
    with pytest.raises(exc, match=match):
        certified_margin(**args)
