"""The claims' matched rivals (mmfast/methods/rivals.py): each shares its method's ingredient
and lacks its mechanism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfast.methods import ModelSpec, create_method, list_methods
from mmfast.methods.rivals import RIVALS, BlindJointModel
from mmfast.train import fit_method, load_model
from mmfast.train.engine import StepInfo
from tests.train import conftest as _train_fixtures

# the trainer tests' fixtures: tiny synthetic splits, a tiny config, one thread
_one_thread, tiny_cfg, tiny_data = (_train_fixtures._one_thread, _train_fixtures.tiny_cfg,
                                    _train_fixtures.tiny_data)


def _spec(data, cfg):
    return ModelSpec.from_data(data, cfg.widths, cfg.feature_dim)


def test_every_rival_and_its_methods_are_registered():
    names = set(list_methods())
    for rival, methods in RIVALS.items():
        assert rival in names and set(methods) <= names
    assert create_method("joint_available").blind == tuple(create_method("distill").privileged)
    novirtual = create_method("trml_novirtual")
    assert novirtual.virtual_weight == 0.0 and novirtual.sml_weight == 0.0
    with pytest.raises(ValueError, match="augment"):
        create_method("joint_dropout", augment="cutout")


@pytest.mark.parametrize("name", ["joint_dropout", "joint_available", "udml_static"])
def test_rivals_train_save_and_reload(name, tiny_data, tiny_cfg, tmp_path):
    tiny_cfg.epochs, tiny_cfg.max_steps_per_epoch = 1, 2
    model, stats = fit_method(name, *tiny_data, tiny_cfg, tmp_path)
    train = tiny_data[0]
    inputs, mask = {m: train[m][:6] for m in model.modalities}, train["mask"][:6]
    model.eval()
    with torch.no_grad():
        out = model(inputs, mask)
        again = load_model(tmp_path)(inputs, mask)
    assert torch.allclose(out.logits, again.logits, atol=1e-6)
    if name == "udml_static":  # the recipe switched to dynamic weights; the rival keeps 1
        assert torch.equal(out.aux["fusion_weight"], mask.float())
        assert stats["method"] == "udml_static"


def test_blind_model_never_reads_the_privileged_modality(tiny_data, tiny_cfg):
    train = tiny_data[0]
    model = create_method("joint_available").build_model(_spec(train, tiny_cfg)).eval()
    assert isinstance(model, BlindJointModel)
    inputs = {m: train[m][:5] for m in model.modalities}
    noisy = {**inputs, "video": inputs["video"] + 50 * torch.randn_like(inputs["video"])}
    full = torch.ones(5, 3, dtype=torch.bool)
    no_video = full.clone()
    no_video[:, model.modalities.index("video")] = False
    with torch.no_grad():
        ref = model(inputs, full).logits
        assert torch.allclose(ref, model(noisy, full).logits)
        assert torch.allclose(ref, model(inputs, no_video).logits)
        z, _ = model.certify_scores(noisy, full)
        assert (z[:, model.modalities.index("video")] == 0).all()


class _Spy(torch.nn.Module):
    """Wraps a model and records the masks / inputs each forward receives."""

    def __init__(self, model):
        super().__init__()
        self.module = model
        self.calls = []

    def forward(self, inputs, mask):
        self.calls.append((inputs, mask))
        return self.module(inputs, mask)


def _batch(data, n=16):
    return {k: v[:n] for k, v in data.items()}


def test_joint_dropout_trains_on_one_nonempty_subset_of_the_present_ones(tiny_data, tiny_cfg):
    train = tiny_data[0]
    method = create_method("joint_dropout")
    spy = _Spy(method.build_model(_spec(train, tiny_cfg)))
    batch = _batch(train, 64)
    seen = set()
    for step in range(4):
        method.loss(spy, batch, StepInfo("s", 0, step, seed=step))
        mask = spy.calls[-1][1]
        assert (mask.sum(1) >= 1).all() and not (mask & ~batch["mask"]).any()
        seen |= {tuple(r.tolist()) for r in mask}
    assert len(seen) == 7  # every subset of three modalities occurs


def test_joint_at_trains_on_crmt_at_adversarial_inputs(tiny_data, tiny_cfg, monkeypatch):
    from mmfast.methods.crmt import CRMT

    calls = []

    def fake_attack(self, model, inputs, mask, label):
        calls.append((self.variant, self.at_eps))
        return {m: x + 1.0 for m, x in inputs.items()}

    monkeypatch.setattr(CRMT, "_adversarial", fake_attack)
    train = tiny_data[0]
    method = create_method("joint_at")
    spy = _Spy(method.build_model(_spec(train, tiny_cfg)))
    batch = _batch(train)
    method.loss(spy, batch, StepInfo("s", 0, 0, seed=3))
    assert calls == [("at", create_method("crmt_at").at_eps)]
    assert torch.equal(spy.calls[-1][0]["audio"], batch["audio"] + 1.0)


def test_joint_mix_is_the_mixed_cross_entropy_of_crmt_mix_pairs(tiny_data, tiny_cfg):
    from mmfast.methods.crmt import _mixup

    train = tiny_data[0]
    method = create_method("joint_mix")
    model = method.build_model(_spec(train, tiny_cfg)).eval()
    batch = _batch(train)
    info = StepInfo("s", 0, 0, seed=5)
    loss, _ = method.loss(model, batch, info)
    inputs, mask, ya, yb, lam = _mixup(batch, model.modalities, info)
    logits = model(inputs, mask).logits
    expected = lam * F.cross_entropy(logits, ya) + (1 - lam) * F.cross_entropy(logits, yb)
    assert 0 < lam < 1 and torch.allclose(loss, expected)
