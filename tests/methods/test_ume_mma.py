import torch

from mmfast.methods import ModelSpec, create_method
from mmfast.methods.ume_mma import UniModalView, augmented_cross_entropy, rows_with_modality
from mmfast.train import fit_method, load_checkpoint
from mmfast.train.batches import take
from mmfast.train.engine import StepInfo
from tests.spy_model import SpyModel


def test_unimodal_view_shares_the_modules_of_the_fused_model(tiny_data, tiny_cfg):
    spec = ModelSpec.from_data(tiny_data[0], tiny_cfg.widths, tiny_cfg.feature_dim)
    model = create_method("ume_mma").build_model(spec)
    view = UniModalView(model, "audio")
    assert view.encoder is model.encoders["audio"] and view.head is model.head.heads[1]
    rows = rows_with_modality(tiny_data[0], 1)
    assert rows["mask"].shape[1] == 1 and bool(rows["mask"].all())
    assert rows["label"].numel() == int(tiny_data[0]["mask"][:, 1].sum())


def test_finetuning_starts_from_the_unimodal_weights(tiny_data, tiny_cfg, tmp_path):
    tiny_cfg.epochs = 1
    ume, _ = fit_method("ume", *tiny_data, tiny_cfg, tmp_path / "ume")
    mma, stats = fit_method("ume_mma", *tiny_data, tiny_cfg, tmp_path / "mma")
    assert list(stats["epochs"]) == ["unimodal_video", "unimodal_audio", "unimodal_image",
                                     "ume_mma_finetune"]
    ume_state = ume.state_dict()
    for i, name in enumerate(mma.modalities):
        # the uni-modal stage of UME-MMA ended at exactly UME's weights for that modality ...
        state, _ = load_checkpoint(tmp_path / "mma" / "checkpoints" / f"unimodal_{name}.pt")
        for key, value in state["model"].items():
            owner = f"encoders.{name}." if key.startswith("encoder.") else f"head.heads.{i}."
            full_key = owner + key.split(".", 1)[1]
            assert torch.equal(value, ume_state[full_key]), full_key
    # ... and fine-tuning then moved the shared modules away from them
    moved = [not torch.equal(a, b) for a, b in zip(ume_state.values(), mma.state_dict().values())]
    assert any(moved)


def test_augmentation_drops_modalities_but_keeps_at_least_one(tiny_data):
    spy = SpyModel()
    data = tiny_data[0]
    batch = take(data, torch.arange(64), torch.device("cpu"))
    loss_fn = augmented_cross_entropy(p_drop=0.8, sigma=0.0)
    loss, metrics = loss_fn(spy, batch, StepInfo("ft", 0, 0, seed=123))
    inputs, mask = spy.seen[-1]
    assert bool(mask.any(dim=1).all())  # every sample keeps a modality
    assert bool((mask <= batch["mask"]).all())  # never resurrects an absent one
    assert int(mask.sum()) < int(batch["mask"].sum())  # but drops many at p = 0.8
    for i, m in enumerate(spy.modalities):
        dropped = ~mask[:, i]
        assert inputs[m][dropped].abs().sum() == 0  # dropped inputs are zero-filled
        kept = mask[:, i]
        assert torch.equal(inputs[m][kept], batch[m][kept])  # sigma 0: kept ones untouched
    assert 1.0 <= metrics["kept_modalities"] < 3.0
    # deterministic per step seed, different across steps
    loss_fn(spy, batch, StepInfo("ft", 0, 0, seed=123))
    assert torch.equal(spy.seen[-1][1], mask)
    loss_fn(spy, batch, StepInfo("ft", 0, 1, seed=124))
    assert not torch.equal(spy.seen[-1][1], mask)
