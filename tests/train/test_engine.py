import json
import math

import pytest
import torch

from mmfast.methods import ModelSpec, create_method
from mmfast.methods.base import cross_entropy_loss
from mmfast.train import Stage, TrainContext, fit_method, load_model, run_stage
from mmfast.train.distributed import DistContext
from mmfast.train.metrics import JsonlLogger


def _without_times(history):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in history]


def _model(tiny_data, tiny_cfg, name="late"):
    torch.manual_seed(0)
    spec = ModelSpec.from_data(tiny_data[0], tiny_cfg.widths, tiny_cfg.feature_dim)
    return create_method(name).build_model(spec)


def _ctx(cfg, run_dir=None):
    logger = JsonlLogger(run_dir / "metrics.jsonl") if run_dir else None
    return TrainContext(cfg, DistContext(), run_dir, logger)


def test_fit_writes_run_dir_and_reloads(tiny_data, tiny_cfg, tmp_path):
    model, stats = fit_method("joint", *tiny_data, tiny_cfg, tmp_path)
    for name in ("model.pt", "metrics.jsonl", "train_stats.json", "checkpoints/joint.pt"):
        assert (tmp_path / name).exists(), name
    on_disk = json.loads((tmp_path / "train_stats.json").read_text())
    for key in ("method", "train_time_s", "peak_memory_bytes", "num_parameters", "epochs"):
        assert key in on_disk
    assert on_disk["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert on_disk["epochs"] == {"joint": 2} and stats["method"] == "joint"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
    raw = torch.load(tmp_path / "model.pt", weights_only=True)  # safe loading works
    assert "state_dict" in raw
    again = load_model(tmp_path)
    train = tiny_data[0]
    inputs = {m: train[m][:8] for m in again.modalities}
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(inputs, train["mask"][:8]).logits,
                              again(inputs, train["mask"][:8]).logits)


def test_same_seed_same_metrics_other_seed_differs(tiny_data, tiny_cfg):
    _, a = fit_method("late", *tiny_data, tiny_cfg, None)
    _, b = fit_method("late", *tiny_data, tiny_cfg, None)
    tiny_cfg.seed = 1
    _, c = fit_method("late", *tiny_data, tiny_cfg, None)
    assert _without_times([a["final"]]) == _without_times([b["final"]])
    assert a["final"]["train_loss"] != c["final"]["train_loss"]


class _Interrupt(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(tiny_data, tiny_cfg, tmp_path):
    tiny_cfg.epochs = 3
    train, val = tiny_data
    full = _model(tiny_data, tiny_cfg)
    ref = run_stage(full, Stage("s", 3, cross_entropy_loss), train, val,
                    _ctx(tiny_cfg, tmp_path / "a"))

    def crash_in_epoch_2(module, batch, info):
        if info.epoch == 2:
            raise _Interrupt
        return cross_entropy_loss(module, batch, info)

    run_b = tmp_path / "b"
    part = _model(tiny_data, tiny_cfg)
    with pytest.raises(_Interrupt):
        run_stage(part, Stage("s", 3, crash_in_epoch_2), train, val, _ctx(tiny_cfg, run_b))
    resumed = _model(tiny_data, tiny_cfg)  # a fresh process would rebuild the model
    hist = run_stage(resumed, Stage("s", 3, cross_entropy_loss), train, val,
                     _ctx(tiny_cfg, run_b))
    assert _without_times(hist) == _without_times(ref)
    for (k, v), w in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k
    logged = JsonlLogger(run_b / "metrics.jsonl").read()
    assert _without_times(logged) == _without_times(ref)
    # a completed stage is skipped and its weights restored
    again = _model(tiny_data, tiny_cfg)
    run_stage(again, Stage("s", 3, crash_in_epoch_2), train, val, _ctx(tiny_cfg, run_b))
    assert all(torch.equal(v, w) for v, w in zip(full.state_dict().values(),
                                                  again.state_dict().values()))


def test_gradient_clipping_bounds_the_update(tiny_data, tiny_cfg):
    tiny_cfg.grad_clip, tiny_cfg.max_steps_per_epoch, tiny_cfg.weight_decay = 0.5, 1, 0.0
    model = _model(tiny_data, tiny_cfg)
    before = [p.detach().clone() for p in model.parameters()]

    def huge_loss(module, batch, info):
        loss, metrics = cross_entropy_loss(module, batch, info)
        return loss * 1e6, metrics

    stage = Stage("clip", 1, huge_loss, optimizer="sgd", lr=1.0, momentum=0.0, validate=False)
    run_stage(model, stage, tiny_data[0], None, _ctx(tiny_cfg))
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert 0 < step.norm() <= 0.5 * 1.0001  # lr * clip


def test_stage_trains_only_its_parameters_and_restores_flags(tiny_data, tiny_cfg):
    model = _model(tiny_data, tiny_cfg)
    only = list(model.head.parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run_stage(model, Stage("head", 1, cross_entropy_loss, params=only), tiny_data[0], None,
              _ctx(tiny_cfg))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != n.startswith("head."), n
        assert p.requires_grad


@pytest.mark.parametrize("amp", ["bf16", "fp16"])  # fp16 goes through the gradient scaler
def test_autocast_trains_on_cpu(amp, tiny_data, tiny_cfg):
    tiny_cfg.amp, tiny_cfg.max_steps_per_epoch = amp, 2
    model, stats = fit_method("crmt", *tiny_data, tiny_cfg, None)
    assert math.isfinite(stats["final"]["train_mean_radius"])
    assert stats["epochs"] == {"crmt_step1": 2, "crmt_step2": 1}
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_non_finite_loss_fails_loudly(tiny_data, tiny_cfg):
    def nan_loss(module, batch, info):
        loss, m = cross_entropy_loss(module, batch, info)
        return loss * float("nan"), m

    with pytest.raises(FloatingPointError, match="non-finite loss"):
        run_stage(_model(tiny_data, tiny_cfg), Stage("nan", 1, nan_loss), tiny_data[0], None,
                  _ctx(tiny_cfg))


def test_small_preset_learns_better_than_chance(tiny_cfg):
    from mmfast.train.synthetic import synthetic_split

    train, val = synthetic_split(512, seed=1), synthetic_split(128, seed=2)
    tiny_cfg.epochs, tiny_cfg.lr = 4, 1e-2
    model, stats = fit_method("joint", train, val, tiny_cfg, None)
    assert stats["final"]["val_acc"] > 0.6  # 4 classes: chance is 0.25
