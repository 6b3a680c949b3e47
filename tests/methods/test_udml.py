"""UDML: the estimator learns the injected noise level, the weights follow the paper's formula
and go through masked_fusion, the reliance statistic is the dropped-modality logit mass."""

import pytest
import torch
import torch.nn.functional as F

from mmfast import ops
from mmfast.methods import create_method, udml
from mmfast.methods.base import ModelSpec
from mmfast.methods.udml import fixed_noise_levels, fusion_weights, modality_reliance
from mmfast.train import TrainConfig
from mmfast.train.api import fit_method, load_model
from mmfast.train.batches import derive_seed
from mmfast.train.distributed import setup
from mmfast.train.engine import StepInfo, TrainContext
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
    # Warm-up: quality weights fixed to 1, but still bias-corrected by d (the official
    # model divides its warm-up weights by d too): w''_m = M (1/d_m) / sum_n (1/d_n).
    model.head.dynamic.fill_(False)
    with torch.no_grad():
        fixed = model(batch, mask)
    inv_d = (1.0 / model.head.reliance).unsqueeze(0) * mask
    want = mask.sum(1, keepdim=True) * inv_d / inv_d.sum(1, keepdim=True)
    torch.testing.assert_close(fixed.aux["fusion_weight"], want)
    torch.testing.assert_close(calls[-1][2], 1.0 + want)
    assert not torch.allclose(want[mask], torch.ones(int(mask.sum())))  # d = (0.5, 2, 1)
    model.head.reliance.fill_(3.0)  # equal reliance: the correction is the identity
    with torch.no_grad():
        even = model(batch, mask)
    torch.testing.assert_close(even.aux["fusion_weight"], mask.float())


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


def test_unimodal_logits_are_the_fused_head_on_the_weighted_features(tiny_data, tiny_cfg):
    # The official ConcatFusion_AUXI: fc([(1 + w_a) f_a, 0]), i.e. (1 + w''_m) W_m s_m + b,
    # with the same w'' as the fused prediction.
    train, _ = tiny_data
    _, model = _model(train, tiny_cfg)
    model.eval()
    model.head.dynamic.fill_(True)
    model.head.reliance.copy_(torch.tensor([0.5, 2.0, 1.0]))
    batch = {m: train[m][:8] for m in model.modalities}
    full = torch.ones(8, 3, dtype=torch.bool)
    with torch.no_grad():
        out = model(batch, full)
        w = out.aux["fusion_weight"]
        for m in range(3):
            z_m = model.head.classifiers[m](out.aux["mu"][:, m])  # eval: s = mu
            want = (1.0 + w[:, m:m + 1]) * z_m + model.head.bias
            torch.testing.assert_close(out.modality_logits[:, m], want)
        assert not torch.allclose(w, torch.ones_like(w))
        # The fused logits are the masked sum of the weighted heads (bias once).
        torch.testing.assert_close(out.logits, (out.modality_logits - model.head.bias).sum(1)
                                   + model.head.bias)


def test_auxiliary_loss_and_reliance_use_the_weighted_heads(tiny_data, tiny_cfg):
    train, _ = tiny_data
    method, model = _model(train, tiny_cfg, gamma=1.0, beta=0.0, lambda_u=0.0)
    model.head.reliance.copy_(torch.tensor([0.5, 2.0, 1.0]))
    batch = {k: v[:16] for k, v in train.items()}
    mask = batch["mask"]
    model.train()
    torch.manual_seed(0)
    loss, _ = method.loss(False, {m: 1.0 for m in model.modalities})(
        model, batch, StepInfo("s", 0, 0, 1))
    model.head.reliance.copy_(torch.tensor([0.5, 2.0, 1.0]))
    torch.manual_seed(0)
    out = model({m: batch[m] for m in model.modalities}, mask)
    uni = out.modality_logits.float()
    ce = F.cross_entropy(uni.flatten(0, 1), batch["label"].repeat_interleave(3),
                         reduction="none").view(mask.shape)
    aux = ((ce * mask).sum(0) / mask.sum(0).clamp_min(1)).sum()
    torch.testing.assert_close(loss, F.cross_entropy(out.logits.float(), batch["label"]) + aux)
    # d after the step: the mean logit mass of those weighted heads.
    want = torch.stack([uni[mask[:, m], m].abs().sum(-1).mean() for m in range(3)])
    torch.testing.assert_close(model.head.reliance, want.detach())


def test_official_noise_protocol_fixes_levels_per_sample(tiny_data, tiny_cfg, monkeypatch):
    levels = (0.0, 0.0, 0.5, 1.0, 2.0)
    table = fixed_noise_levels(101, 3, levels, seed=4)
    clean = (table == 0).all(1)
    assert int(clean.sum()) >= 50  # n // 2 clean rows, plus rows that drew 0 everywhere
    assert set(table.unique().tolist()) <= {0.0, 0.5, 1.0, 2.0}
    torch.testing.assert_close(table, fixed_noise_levels(101, 3, levels, seed=4))
    noisy = table[~clean]
    for v in (0.5, 1.0, 2.0):  # the corrupted half draws each distinct level
        assert (noisy == v).any()
    # In training, every step of a sample sees its own fixed levels (as regression targets).
    train, val = tiny_data
    seen = []
    real = udml.UDML.inject_fixed_noise

    def spy(inputs, names, std, lv, seed):
        seen.append(lv.clone())
        return real(inputs, names, std, lv, seed)

    monkeypatch.setattr(udml.UDML, "inject_fixed_noise", staticmethod(spy))
    _, stats = fit_method("udml", train, val, tiny_cfg, None, noise_protocol="official",
                          noise_levels=levels, clean_epochs=0, fixed_epochs=2,
                          dynamic_epochs=1)
    assert stats["noise_protocol"].startswith("levels fixed per sample")
    assert len(seen) >= 3
    fixed = fixed_noise_levels(len(train["label"]), 3, levels,
                               derive_seed(tiny_cfg.seed, 0x0D31))
    rows = {tuple(r) for r in fixed.tolist()}
    assert all(tuple(r) in rows for lv in seen for r in lv.tolist())
    with pytest.raises(ValueError, match="noise_protocol"):
        create_method("udml", noise_protocol="sometimes")


def test_fixed_noise_has_the_sample_std():
    x = {"audio": torch.zeros(4, 1, 50, 50)}
    levels = torch.tensor([[0.0], [0.5], [1.0], [2.0]])
    out = udml.UDML.inject_fixed_noise(x, ["audio"], {"audio": 3.0}, levels, seed=0)
    std = out["audio"].flatten(1).std(dim=1)
    torch.testing.assert_close(std, torch.tensor([0.0, 1.5, 3.0, 6.0]), rtol=0.05, atol=1e-6)


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
