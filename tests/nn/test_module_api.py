"""The drop-in modules as another project's training code meets them: resumable noise streams,
per-sample drop probabilities, clear errors for wrong arguments, an evaluator that follows
learned fusion weights, and docstrings on every public method."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from mmfast import ops
from mmfast.nn import CertifiedMargin, MaskedFusion, ModalityNoiseDropout, SubsetEvaluator


def _inputs(B=6):
    return {"a": torch.randn(B, 4), "b": torch.randn(B, 3)}


def test_noise_dropout_state_dict_resumes_the_same_stream():
    x = _inputs()
    full = ModalityNoiseDropout(p_drop=0.5, sigma=0.2, seed=11)
    for _ in range(3):
        full(x)
    # a fresh module (another random seed) resumed from a checkpoint after step 3
    resumed = ModalityNoiseDropout(p_drop=0.5, sigma=0.2)
    state = full.state_dict()
    assert int(state["step"]) == 3 and state["_extra_state"] == {"seed": 11}
    resumed.load_state_dict(state)
    assert resumed.seed == 11 and int(resumed.step) == 3
    for _ in range(2):
        (want, want_mask), (got, got_mask) = full(x), resumed(x)
        assert torch.equal(got_mask, want_mask)
        for k in x:
            assert torch.equal(got[k], want[k])


def test_noise_dropout_per_sample_p_drop():
    B = 200
    x = {"a": torch.randn(B, 2), "b": torch.randn(B, 2)}
    module = ModalityNoiseDropout(p_drop=0.0, sigma=0.0, seed=1, min_keep=0)
    p = torch.zeros(B)
    p[: B // 2] = 1.0
    _, mask = module(x, p_drop=p)
    assert not mask[: B // 2].any() and mask[B // 2:].all()
    with pytest.raises(ValueError, match=r"'p_drop' expected shape \(200,\), got \(3,\)"):
        module(x, p_drop=torch.zeros(3))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(p_drop=1.5), ValueError, r"'p_drop' expected a probability in \[0, 1\], got 1.5"),
        (dict(p_drop=math.nan), ValueError, r"'p_drop' expected a probability"),
        (dict(p_drop=torch.zeros(4)), TypeError, r"pass per-sample \(B,\) probabilities to "
                                                  r"forward\(p_drop=...\)"),
        (dict(sigma=-0.1), ValueError, r"'sigma' expected finite non-negative values"),
        (dict(sigma=[0.1, math.inf]), ValueError, r"'sigma' expected finite non-negative"),
        (dict(sigma=[]), ValueError, r"'sigma' expected a number or a non-empty list"),
        (dict(sigma="0.1"), ValueError, r"'sigma' expected a number or a non-empty list"),
        (dict(min_keep=-1), ValueError, r"'min_keep' expected an int >= 0, got -1"),
        (dict(min_keep=1.5), ValueError, r"'min_keep' expected an int >= 0"),
        (dict(seed=-3), ValueError, r"'seed' expected None or an int in \[0, 2\*\*63\)"),
        (dict(modalities="ab"), ValueError, r"'modalities' expected a non-empty sequence"),
        (dict(modalities=("a", "a")), ValueError, r"'modalities' expected .* distinct"),
        (dict(backend="fortran"), ValueError, r"'backend' expected None or one of"),
    ],
)
def test_noise_dropout_constructor_validates(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ModalityNoiseDropout(**kwargs)


def test_noise_dropout_rejects_a_list_of_tensors():
    module = ModalityNoiseDropout(seed=0)
    with pytest.raises(TypeError, match=r"'inputs' expected a mapping of modality name -> "
                                        r"tensor \(e.g. a dict\), got list"):
        module([torch.randn(2, 3), torch.randn(2, 3)])
    with pytest.raises(TypeError, match=r"modality_noise_dropout: argument 'inputs' expected a "
                                        r"mapping"):
        ops.modality_noise_dropout([torch.randn(2, 3)], None, 0.5, 0.1)
    with pytest.raises(ValueError, match=r"'inputs\['b'\]' expected batch size 2"):
        ops.modality_noise_dropout({"a": torch.randn(2, 3), "b": torch.randn(3, 3)}, None, 0.5,
                                   0.1)


def test_subset_evaluator_follows_live_fusion_weights():
    fusion = MaskedFusion(2, learn_weights=True)
    ev = SubsetEvaluator(("a", "b"), fusion=fusion)
    assert not any(k.startswith("fusion") for k in ev.state_dict())
    # modality a says class 0, b says class 1 (a little more sure): equal weights pick 1
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.2]]])
    target = torch.tensor([0])
    assert ev.update(z, target)[2] == 0
    with torch.no_grad():
        fusion.raw_weight.copy_(torch.tensor([3.0, -3.0]))  # a now weighs ~60x more
    assert ev.update(z, target)[2] == 1  # read at this update, not copied at construction
    assert ev.compute()["a+b"] == 0.5
    with pytest.raises(ValueError, match="not both"):
        SubsetEvaluator(("a", "b"), weight=torch.ones(2), fusion=fusion)
    with pytest.raises(TypeError, match="'fusion' expected a MaskedFusion"):
        SubsetEvaluator(("a", "b"), fusion=torch.nn.Linear(2, 2))


def test_subset_evaluator_compute_before_update_is_nan():
    ev = SubsetEvaluator(("a", "b"))
    got = ev.compute()
    assert set(got) == {"a", "b", "a+b"} and all(math.isnan(v) for v in got.values())
    torch.testing.assert_close(ops.subset_accuracy(torch.zeros(0, 2, 3),
                                                   torch.zeros(0, dtype=torch.int64)),
                               torch.full((3,), math.nan), equal_nan=True)


def test_masked_fusion_module_mask_none_and_per_class_weight():
    fuse = MaskedFusion(2)
    x = torch.randn(3, 2, 4)
    torch.testing.assert_close(fuse(x), x.mean(1))
    w = torch.rand(2, 4) + 0.1
    torch.testing.assert_close(fuse(x, None, w), (w * x).sum(1) / w.sum(0))


def test_certified_margin_module_accepts_a_per_class_table():
    z, target = torch.randn(5, 2, 3), torch.randint(0, 3, (5,))
    tau = torch.rand(2, 3) + 0.1
    got = CertifiedMargin(tau)(z, target)
    want = CertifiedMargin(ops.pair_lipschitz(tau))(z, target)
    torch.testing.assert_close(got.radius, want.radius)
    with pytest.raises(ValueError, match="'rival' expected one of"):
        CertifiedMargin(tau, rival="max")


@pytest.mark.parametrize("module", ["mmfast.nn", "mmfast.nn.heads", "mmfast.nn.encoders"])
def test_every_public_method_has_a_docstring(module):
    import importlib

    mod = importlib.import_module(module)
    missing = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if not inspect.isclass(obj):
            continue
        for attr, member in vars(obj).items():
            if attr.startswith("_") and attr != "__init__":
                continue
            if attr == "__init__":
                member = obj  # documented on the class
            fn = member.fget if isinstance(member, property) else member
            if callable(fn) and not inspect.getdoc(fn):
                missing.append(f"{name}.{attr}")
    assert missing == []
