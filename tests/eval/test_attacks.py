"""FGM / PGD-l2: budgets, projections, accuracy monotonicity, hand-checkable directions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfast.eval.attacks import classification_margin, fgm, perturbation_norms, pgd_l2
from mmfast.nn.model import MODALITIES
from tests.eval.toy_models import LinearLate, make_inputs

N = 64


@pytest.fixture
def setup():
    model = LinearLate(num_classes=4, seed=1).eval()
    inputs = make_inputs(N, seed=2)
    mask = torch.ones(N, 3, dtype=torch.bool)
    with torch.no_grad():
        target = model(inputs, mask).logits.argmax(1)
    target[::3] = (target[::3] + 1) % 4  # a third of the rows misclassified
    return model, inputs, mask, target


def _accuracy(model, inputs, mask, target) -> float:
    with torch.no_grad():
        return (model(inputs, mask).logits.argmax(1) == target).float().mean().item()


@pytest.mark.parametrize("eps", [0.05, 0.3, 2.0])
def test_pgd_stays_in_joint_ball_and_never_raises_accuracy(setup, eps):
    model, inputs, mask, target = setup
    adv = pgd_l2(model, inputs, mask, target, eps, keep_best=True)
    joint, _ = perturbation_norms(adv, inputs, MODALITIES)
    assert joint.max().item() <= eps * (1 + 1e-5)
    assert _accuracy(model, adv, mask, target) <= _accuracy(model, inputs, mask, target)


def test_pgd_lowers_accuracy_with_large_budget(setup):
    model, inputs, mask, target = setup
    adv = pgd_l2(model, inputs, mask, target, eps=5.0)
    assert _accuracy(model, adv, mask, target) < 0.1


def test_per_modality_budgets_are_respected(setup):
    model, inputs, mask, target = setup
    budgets = {"video": 0.0, "audio": 0.2, "image": 0.05}
    adv = pgd_l2(model, inputs, mask, target, None, per_modality_eps=budgets)
    _, per = perturbation_norms(adv, inputs, MODALITIES)
    assert torch.equal(adv["video"], inputs["video"])
    for m, e in budgets.items():
        assert per[m].max().item() <= e * (1 + 1e-5) + 1e-7


def test_fgm_is_the_normalised_cross_entropy_gradient(setup):
    model, inputs, mask, target = setup
    eps = 0.1
    adv = fgm(model, inputs, mask, target, eps)
    # Linear model: d CE / d x_m = W_m^T (softmax(h) - onehot(y)), by hand.
    with torch.no_grad():
        p = F.softmax(model(inputs, mask).logits, 1) - F.one_hot(target, 4).float()
    grads = {m: (p @ model.heads[m].detach()).view_as(inputs[m]) for m in MODALITIES}
    norm = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()
    for m in MODALITIES:
        expected = inputs[m] + eps * grads[m] / norm.view(-1, *[1] * (grads[m].dim() - 1))
        torch.testing.assert_close(adv[m], expected, atol=1e-5, rtol=1e-5)


def test_absent_modalities_are_never_perturbed(setup):
    model, inputs, mask, target = setup
    mask = mask.clone()
    mask[: N // 2, 1] = False
    adv = pgd_l2(model, inputs, mask, target, eps=0.5)
    torch.testing.assert_close(adv["audio"][: N // 2], inputs["audio"][: N // 2], rtol=0, atol=0)
    assert not torch.equal(adv["audio"][N // 2:], inputs["audio"][N // 2:])


def test_clamp_and_box_projection(setup):
    model, inputs, mask, target = setup
    adv = pgd_l2(model, inputs, mask, target, eps=0.1, steps=5, step_size=0.02,
                 projection="box", box_radius=0.01, clamp=(0.0, 1.0))
    for m in MODALITIES:
        delta = adv[m] - inputs[m]
        assert delta.abs().max().item() <= 0.01 + 1e-6
        assert adv[m].min().item() >= 0.0 and adv[m].max().item() <= 1.0


def test_zero_gradient_gives_zero_step_not_nan(setup):
    model, inputs, mask, target = setup
    for p in model.parameters():
        p.data.zero_()
    adv = pgd_l2(model, inputs, mask, target, eps=0.5)
    for m in MODALITIES:
        assert torch.equal(adv[m], inputs[m])


def test_parameter_gradients_untouched(setup):
    model, inputs, mask, target = setup
    pgd_l2(model, inputs, mask, target, eps=0.3)
    assert all(p.grad is None for p in model.parameters())


def test_margin_sign_matches_correctness(setup):
    model, inputs, mask, target = setup
    with torch.no_grad():
        logits = model(inputs, mask).logits
    margin = classification_margin(logits, target)
    assert torch.equal(margin > 0, logits.argmax(1) == target)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"eps": -1.0}, "eps"), ({"eps": 0.1, "steps": 0}, "steps"),
     ({"eps": 0.1, "projection": "linf"}, "projection"),
     ({"eps": 0.1, "modalities": ["text"]}, "modalities"),
     ({"eps": None, "per_modality_eps": {"text": 0.1}}, "per_modality_eps")],
)
def test_bad_arguments_raise(setup, kwargs, match):
    model, inputs, mask, target = setup
    with pytest.raises(ValueError, match=match):
        pgd_l2(model, inputs, mask, target, **kwargs)
