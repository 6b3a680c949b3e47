"""UDML: the estimator learns the injected noise level, the weights follow the paper's formula
and go through masked_fusion, the reliance statistic is the dropped-modality logit mass."""

import pytest
import torch

from mmfast import ops
from mmfast.methods import create_method
from mmfast.methods.base import ModelSpec
from mmfast.methods.udml import fusion_weights, modality_reliance
from mmfast.train import TrainConfig
from mmfast.train.api import fit_method, load_model
from mmfast.train.distributed import setup
from mmfast.train.engine import TrainContext
from mmfast.train.synthetic import synthetic_split

SIGNAL = {"video": 0.5, "audio": 0.5, "image": 0.5}


def _ctx(cfg):
    return TrainContext(cfg, setup(torch.device("cpu")))


def _model(data, cfg, **hparams):
    method = create_method("udml", **hparams)
    spec = ModelSpec.from_data(data, cfg.widths, cfg.feature_dim)
    torch.manual_seed(0)
    return method, method.build_model(spec)


def test_estimator_predicts_injected_sigma_on_held_out_data(tiny_cfg):
    train = synthetic_split(256, seed=1, signal=SIGNAL)
    held_out = synthetic_split(128, seed=3, signal=SIGNAL)
    cfg = TrainConfig(**{**tiny_cfg.to_dict(), "epochs": 6})
    method, model = _model(train, cfg)
    result = method.fit(model, train, None, _ctx(cfg))
    model.eval()
    names = model.modalities
    noisy, levels = method.inject_noise({m: held_out[m] for m in names}, names,
                                        result.info["noise_unit_std"], seed=12345)
    with torch.no_grad():
        u = model(noisy, held_out["mask"]).aux["uncertainty"]
    corr = [float(torch.corrcoef(torch.stack([u[:, i], levels[:, i]]))[0, 1])
            for i in range(len(names))]
    print(f"UDML held-out corr(u, injected sigma) per modality {names}: "
          f"{[round(c, 3) for c in corr]}")
    assert min(corr) > 0.8
    # The levels really are the op's draws: every value comes from the configured set.
    allowed = torch.tensor(method.noise_levels)
    assert torch.isclose(levels.unsqueeze(-1), allowed, atol=1e-5).any(-1).all()
    assert 0.3 < float((levels == 0).float().mean()) < 0.7  # half the draws are clean


def test_fusion_weights_formula():
    u = torch.tensor([[0.5, 1.0, 2.0], [1.0, 3.0, 1.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    d = torch.tensor([2.0, 1.0, 4.0])
    w = fusion_weights(u, mask, d)
    for b in range(2):
        p = mask[b].float()
        count = p.sum()
        inv = u[b].pow(-2) * p
        quality = count * inv / inv.sum()
        corrected = quality / d
        expected = count * corrected / corrected.sum()
        torch.testing.assert_close(w[b], expected)
    assert w[1, 2] == 0 and torch.allclose(w.sum(1), mask.float().sum(1))
    # Noisier (larger u) -> smaller weight; more relied on (larger d) -> smaller weight.
    same = torch.ones(1, 3)
    w_u = fusion_weights(torch.tensor([[1.0, 2.0, 1.0]]), mask[:1], same.squeeze(0))
    assert w_u[0, 1] < w_u[0, 0] == w_u[0, 2]
    w_d = fusion_weights(same, mask[:1], torch.tensor([1.0, 3.0, 1.0]))
    assert w_d[0, 1] < w_d[0, 0]


def test_dynamic_fusion_goes_through_masked_fusion(tiny_data, tiny_cfg, monkeypatch):
    train, _ = tiny_data
    _, model = _model(train, tiny_cfg)
    model.eval()
    model.head.dynamic.fill_(True)
    model.head.reliance.copy_(torch.tensor([0.5, 2.0, 1.0]))
    calls = []
    real = ops.masked_fusion

    def spy(x, mask, weight=None, normalize=True, **kw):
        calls.append((x, mask, weight, normalize))
        return real(x, mask, weight, normalize, **kw)

    monkeypatch.setattr(ops, "masked_fusion", spy)
    batch = {m: train[m][:16] for m in model.modalities}
    mask = train["mask"][:16]
    with torch.no_grad():
        out = model(batch, mask)
    assert len(calls) == 1
    z, seen_mask, weight, normalize = calls[0]
    expected = fusion_weights(out.aux["uncertainty"], mask, model.head.reliance)
    torch.testing.assert_close(weight, 1.0 + expected)
    torch.testing.assert_close(out.aux["fusion_weight"], expected)
    assert normalize is False and torch.equal(seen_mask, mask)
    # fc([(1 + w_1) s_1, ..., (1 + w_M) s_M]) + b, absent modalities contributing nothing.
    by_hand = ((1.0 + expected) * mask).unsqueeze(-1).mul(z).sum(1) + model.head.bias
    torch.testing.assert_close(out.logits, by_hand)
    # Weights fixed to 1 during the warm-up phases.
    model.head.dynamic.fill_(False)
    with torch.no_grad():
        fixed = model(batch, mask)
    torch.testing.assert_close(calls[-1][2], 1.0 + mask.float())
    assert torch.equal(fixed.aux["fusion_weight"], mask.float())


def test_reliance_is_refreshed_in_training_only(tiny_data, tiny_cfg):
    train, _ = tiny_data
    _, model = _model(train, tiny_cfg)
    batch = {m: train[m][:32] for m in model.modalities}
    mask = train["mask"][:32].clone()
    mask[:, 2] = False  # modality 2 absent from the whole batch: its statistic is kept
    model.head.reliance.fill_(7.0)
    model.train()
    out = model(batch, mask)
    uni = out.modality_logits.detach()
    expected = torch.stack([uni[mask[:, m], m].abs().sum(-1).mean() for m in range(2)])
    torch.testing.assert_close(model.head.reliance[:2], expected)
    assert float(model.head.reliance[2]) == 7.0
    torch.testing.assert_close(modality_reliance(uni, mask, torch.full((3,), 7.0)),
                               model.head.reliance)
    before = model.head.reliance.clone()
    model.eval()
    with torch.no_grad():
        model(batch, train["mask"][:32])
    assert torch.equal(model.head.reliance, before)


def test_unimodal_logits_equal_the_fused_head_with_other_modalities_dropped(tiny_data,
                                                                           tiny_cfg):
    train, _ = tiny_data
    _, model = _model(train, tiny_cfg)
    model.eval()
    model.head.dynamic.fill_(True)
    batch = {m: train[m][:8] for m in model.modalities}
    full = torch.ones(8, 3, dtype=torch.bool)
    with torch.no_grad():
        uni = model(batch, full).modality_logits
        for m in range(3):
            only = torch.zeros_like(full)
            only[:, m] = True
            # One present modality: w'' = 1, so the fused logits are 2 z_m + b.
            fused = model(batch, only).logits
            torch.testing.assert_close(fused, 2 * uni[:, m] - model.head.bias)


def test_fit_method_round_trip_keeps_dynamic_weights(tmp_path, tiny_data, tiny_cfg):
    train, val = tiny_data
    cfg = TrainConfig(**{**tiny_cfg.to_dict(), "epochs": 3})
    model, stats = fit_method("udml", train, val, cfg, tmp_path)
    assert stats["epochs"] == {"udml_clean": 1, "udml_dynamic": 2}  # 3 // 6 = 0 fixed epochs
    loaded = load_model(tmp_path)
    assert bool(loaded.head.dynamic)
    torch.testing.assert_close(loaded.head.reliance, model.head.reliance)
    batch = {m: val[m] for m in loaded.modalities}
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch, val["mask"]).logits,
                                   model(batch, val["mask"]).logits)


def test_rejects_bad_hyper_parameters():
    with pytest.raises(ValueError, match="noise_levels"):
        create_method("udml", noise_levels=(-1.0,))
    with pytest.raises(ValueError, match="gamma"):
        create_method("udml", gamma=-1.0)
