import pytest
import torch
from torch import nn

from mmfast.methods import ModelSpec, create_method, list_methods, method_defaults
from mmfast.nn.encoders import build_encoder
from mmfast.nn.model import MultiModalModel
from mmfast.train import fit_method, load_model

EXPECTED = {"joint", "late", "ume", "ume_mma", "crmt", "crmt_at", "crmt_mix"}


def test_registry_lists_every_method_and_variant():
    assert EXPECTED <= set(list_methods())
    assert method_defaults("crmt_at") == {"variant": "at"}
    assert create_method("ume").finetune is False and create_method("ume_mma").finetune


def test_create_method_rejects_unknown_names_and_hparams():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        create_method("nope")
    with pytest.raises(ValueError, match="no hyper-parameters \\['rhoo'\\]"):
        create_method("crmt", rhoo=1.0)
    with pytest.raises(ValueError, match="variant"):
        create_method("crmt", variant="xx")
    with pytest.raises(ValueError, match="p_drop"):
        create_method("ume_mma", p_drop=1.5)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_method_trains_saves_and_reloads(name, tiny_data, tiny_cfg, tmp_path):
    tiny_cfg.epochs, tiny_cfg.max_steps_per_epoch = 1, 2
    model, stats = fit_method(name, *tiny_data, tiny_cfg, tmp_path)
    assert isinstance(model, MultiModalModel) and stats["method"] == name
    assert stats["train_time_s"] > 0 and stats["peak_memory_bytes"] > 0
    train = tiny_data[0]
    inputs, mask = {m: train[m][:6] for m in model.modalities}, train["mask"][:6]
    model.eval()
    with torch.no_grad():
        out = model(inputs, mask)
        assert out.logits.shape == (6, model.num_classes)
        assert torch.isfinite(out.logits).all()
        again = load_model(tmp_path)(inputs, mask)
    assert torch.allclose(out.logits, again.logits, atol=1e-6)


@pytest.mark.parametrize("name", ["joint", "late", "crmt"])
def test_absent_modalities_do_not_change_the_output(name, tiny_data, tiny_cfg):
    train = tiny_data[0]
    spec = ModelSpec.from_data(train, tiny_cfg.widths, tiny_cfg.feature_dim)
    model = create_method(name).build_model(spec).eval()
    inputs = {m: train[m][:5] for m in model.modalities}
    mask = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    garbage = {m: x + 100 * torch.randn_like(x) * (~mask[:, i]).view(-1, *[1] * (x.dim() - 1))
               for i, (m, x) in enumerate(inputs.items())}
    with torch.no_grad():
        assert torch.allclose(model(inputs, mask).logits, model(garbage, mask).logits, atol=1e-5)
        assert not torch.allclose(model(inputs, mask).logits,
                                  model(inputs, torch.ones_like(mask)).logits)


def test_late_fusion_logits_are_the_mean_of_present_heads(tiny_data, tiny_cfg):
    train = tiny_data[0]
    model = create_method("late").build_model(
        ModelSpec.from_data(train, tiny_cfg.widths, tiny_cfg.feature_dim)).eval()
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = model({m: train[m][:2] for m in model.modalities}, mask)
    z = out.modality_logits
    assert torch.allclose(out.logits[0], (z[0, 0] + z[0, 2]) / 2, atol=1e-6)
    assert torch.allclose(out.logits[1], z[1, 1], atol=1e-6)


class _FlatEncoder(nn.Module):
    """A plug-in encoder of a different kind (an MLP on the flattened image)."""

    def __init__(self, numel: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(numel, 12), nn.ReLU())

    def forward(self, x):
        return self.net(x)


def test_any_module_plugs_in_as_an_encoder(tiny_data, tiny_cfg, tmp_path):
    train = tiny_data[0]
    plug = {"image": _FlatEncoder(train["image"][0].numel())}
    tiny_cfg.epochs, tiny_cfg.max_steps_per_epoch = 1, 1
    model, _ = fit_method("late", *tiny_data, tiny_cfg, tmp_path, encoders=plug)
    assert model.encoders["image"] is plug["image"]
    reloaded = load_model(tmp_path, encoders={"image": _FlatEncoder(train["image"][0].numel())})
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)


def test_encoder_shapes_and_temporal_modes():
    clip = torch.randn(2, 4, 1, 16, 16)
    for temporal in ("stack", "frames"):
        enc = build_encoder((4, 1, 16, 16), (4, 8), 6, stem_stride=2, temporal=temporal)
        assert enc(clip).shape == (2, 6)
    assert build_encoder((1, 16, 20), (4, 8), 6)(torch.randn(3, 1, 16, 20)).shape == (3, 6)
    with pytest.raises(ValueError, match="input_shape"):
        build_encoder((16, 16), (4,), 6)
    with pytest.raises(ValueError, match="temporal"):
        build_encoder((4, 1, 16, 16), (4,), 6, temporal="3d")
