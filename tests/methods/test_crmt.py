import math

import pytest
import torch

from mmfast.methods import ModelSpec, create_method
from mmfast.methods.crmt import (
    CRMT,
    certified_radius_loss,
    margin_regularizer,
    mix_margin_regularizer,
    unit_logit_table,
)
from mmfast.methods.lipschitz import (
    empirical_class_lipschitz,
    encoder_lipschitz_bound,
    layer_bound,
    pair_table,
)
from mmfast.nn.heads import normalized_rows
from mmfast.nn.model import CertifiableModel
from mmfast.train import fit_method, load_checkpoint
from mmfast.train.distributed import DistContext
from mmfast.train.engine import TrainContext, evaluate_accuracy
from tests.methods.certify_checks import (
    check_lipschitz_bounds_actual_ratios,
    check_radius_respected,
)


@pytest.fixture(scope="module")
def trained(tiny_data_module, tmp_path_factory):
    from mmfast.train import TrainConfig

    cfg = TrainConfig(epochs=2, batch_size=96, lr=5e-3, widths=(4, 8), feature_dim=8,
                      progress=False, device="cpu")
    run = tmp_path_factory.mktemp("crmt")
    torch.set_num_threads(1)
    model, stats = fit_method("crmt", *tiny_data_module, cfg, run, step2_epochs=5,
                              lip_samples=48)
    return model, stats, run, cfg


@pytest.fixture(scope="module")
def tiny_data_module():
    from mmfast.train.synthetic import synthetic_split

    return synthetic_split(96, seed=1, missing_rate=0.2), synthetic_split(48, seed=2)


def test_normalised_rows_are_zero_mean_unit_norm(trained):
    model = trained[0]
    for m in range(len(model.modalities)):
        w = model.head.normalized_weight(m)
        assert torch.allclose(w.mean(dim=1), torch.zeros(w.shape[0]), atol=1e-6)
        assert torch.allclose(w.norm(dim=1), torch.ones(w.shape[0]), atol=1e-5)
    raw = torch.randn(5, 7) * 10 + 3
    assert torch.allclose(normalized_rows(raw).sum(1), torch.zeros(5), atol=1e-5)


def test_margin_regulariser_matches_the_formula_and_is_stable():
    z = torch.randn(6, 3, 5)
    y = torch.randint(5, (6,))
    mask = torch.ones(6, 3, dtype=torch.bool)
    e = z.exp()
    naive = torch.log((e.sum(2) * torch.exp(-z.gather(2, y.view(-1, 1, 1).expand(-1, 3, 1))
                                            .squeeze(2)) - 1).sum(1) + 1e-5)
    assert torch.allclose(margin_regularizer(z, y, mask), naive, atol=1e-5)
    huge = margin_regularizer(z * 1e4, y, mask)  # exp overflows in the official form
    assert torch.isfinite(huge).all()
    mask[:, 1] = False  # an absent modality contributes nothing
    assert torch.allclose(margin_regularizer(z, y, mask),
                          margin_regularizer(z[:, [0, 2]], y, mask[:, [0, 2]]), atol=1e-6)


def _mix_formula(z, ya, yb, lam, mask):
    """The official CRMT-Mix term written out in float64, one row at a time."""
    out = []
    for b in range(z.shape[0]):
        total = torch.zeros((), dtype=torch.float64)
        for m in range(z.shape[1]):
            if not mask[b, m]:
                continue
            ref = lam * z[b, m, ya[b]] + (1 - lam) * z[b, m, yb[b]]
            for k in range(z.shape[2]):
                if k not in (int(ya[b]), int(yb[b])):
                    total = total + torch.exp(z[b, m, k] - ref)
        out.append(torch.log(total + 1e-5))
    return torch.stack(out)


def test_mix_margin_matches_the_official_formula_values_and_gradients():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(7, 3, 5, generator=gen, dtype=torch.float64)
    ya = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    yb = torch.tensor([1, 1, 0, 4, 2, 3, 2])  # rows 1 and 6: the same label twice
    mask = torch.ones(7, 3, dtype=torch.bool)
    mask[2, 1] = mask[5, 0] = False
    lam = 0.3
    z1 = z.clone().float().requires_grad_(True)
    z2 = z.clone().requires_grad_(True)
    got = mix_margin_regularizer(z1, ya, yb, lam, mask)
    want = _mix_formula(z2, ya, yb, lam, mask)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(z1.grad.double(), z2.grad, atol=1e-5, rtol=1e-5)
    # Neither mixed label is a rival: its gradient pushes it up (never down, as the old
    # lam reg(y_a) + (1 - lam) reg(y_b) did with the other label).
    rows = torch.arange(7)
    assert (z1.grad[rows, :, ya][mask] <= 0).all() and (z1.grad[rows, :, yb][mask] <= 0).all()
    # With y_a = y_b it is the plain margin term; it stays finite where exp overflows.
    same = mix_margin_regularizer(z.float(), ya, ya, lam, mask)
    torch.testing.assert_close(same, margin_regularizer(z.float(), ya, mask))
    assert torch.isfinite(mix_margin_regularizer(z.float() * 1e4, ya, yb, lam, mask)).all()


def test_mix_step_uses_the_official_margin_term(tiny_data, tiny_cfg, monkeypatch):
    from mmfast.methods import crmt as crmt_module
    from mmfast.train.engine import StepInfo

    method = create_method("crmt_mix")
    model = method.build_model(ModelSpec.from_data(tiny_data[0], tiny_cfg.widths,
                                                   tiny_cfg.feature_dim))
    batch = {k: v[:16] for k, v in tiny_data[0].items()}
    calls = []
    real = crmt_module.mix_margin_regularizer
    monkeypatch.setattr(crmt_module, "margin_regularizer",
                        lambda *a: pytest.fail("the mix step must not use the JT term"))
    monkeypatch.setattr(crmt_module, "mix_margin_regularizer",
                        lambda *a: calls.append(a) or real(*a))
    _, metrics = method.step1_loss(model, batch, StepInfo("s", 0, 0, 3))
    assert len(calls) == 1 and math.isfinite(metrics["margin_reg"])


def test_step2_optimiser_is_recorded_and_the_official_sgd_is_an_option(trained):
    import mmfast.train.engine as engine
    from mmfast.methods.crmt import OFFICIAL_STEP2

    model, stats = trained[0], trained[1]
    assert stats["step2_optimizer"] == {"name": "adamw", "lr": 1e-2, "momentum": 0.9,
                                        "weight_decay": 0.0}
    assert stats["certificate_bounds"] == {"empirical": "triangle",
                                           "spectral": "exact_pairwise"}
    # The stage fit builds gives the engine the official SGD on a alone when asked.
    ctx = TrainContext(trained[3], DistContext())
    stage = create_method("crmt", **OFFICIAL_STEP2).step2_stage(model, ctx)
    opt = engine._make_optimizer(stage, list(stage.params), trained[3])
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD) and group["params"] == [model.head.integration]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (3e-5, 0.9, 1e-2)
    default = create_method("crmt").step2_stage(model, ctx)
    opt = engine._make_optimizer(default, list(default.params), trained[3])
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 1e-2
    with pytest.raises(ValueError, match="step2_optimizer"):
        CRMT(step2_optimizer="lbfgs")


@pytest.mark.parametrize("clamp", [False, True])
def test_at_pixel_clamp_is_an_option(tiny_data, tiny_cfg, clamp):
    method = create_method("crmt_at", at_clamp=clamp, at_eps=0.5)
    train = tiny_data[0]
    model = method.build_model(ModelSpec.from_data(train, tiny_cfg.widths,
                                                   tiny_cfg.feature_dim)).eval()
    names = model.modalities
    n = 16
    inputs = {m: train[m][:n].clone() for m in names}
    inputs["video"] = torch.ones_like(inputs["video"])  # at the top of the pixel range
    mask = torch.ones(n, len(names), dtype=torch.bool)
    adv = method._adversarial(model, inputs, mask, train["label"][:n])
    moved = float((adv["video"] - inputs["video"]).abs().max())
    assert moved > 0  # the attack did perturb the video
    assert bool((adv["video"] <= 1.0).all()) is clamp  # official: no clamp


def test_step2_changes_only_integration_weights_and_raises_the_bound(trained, tiny_data_module):
    model, stats, run, cfg = trained
    assert stats["epochs"] == {"crmt_step1": 2, "crmt_step2": 5}
    assert stats["step2_estimator"] == "empirical" and stats["step2_rival"] == "top"
    after_step1, _ = load_checkpoint(run / "checkpoints" / "crmt_step1.pt")
    final = model.state_dict()
    for key, value in after_step1["model"].items():
        if key.startswith("tau_"):
            continue
        changed = not torch.equal(value, final[key])
        assert changed == (key == "head.integration"), key
    table = unit_logit_table(model, tiny_data_module[0], TrainContext(cfg, DistContext()))
    args = (table["unit_logits"], table["label"], table["mask"], "empirical", "top")
    with torch.no_grad():
        after = -certified_radius_loss(model, *args)
        model.head.integration.copy_(after_step1["model"]["head.integration"])
        before = -certified_radius_loss(model, *args)
        model.head.integration.copy_(final["head.integration"])
    assert after >= before - 1e-6


def test_model_is_certifiable_with_both_labelled_estimators(trained):
    model = trained[0]
    assert isinstance(model, CertifiableModel)
    assert set(model.lipschitz) == {"empirical", "spectral"}
    for table in model.lipschitz.values():
        assert table.shape == (3, model.num_classes, model.num_classes)
        assert torch.isfinite(table).all() and (table >= 0).all()


def test_spectral_bound_dominates_empirical_and_actual_ratios(trained, tiny_data_module):
    model = trained[0].eval()
    spectral, empirical = model.tau("spectral"), model.tau("empirical")
    assert (spectral >= empirical).all()
    assert (pair_table(spectral, model.head.integration) >=
            pair_table(empirical, model.head.integration)).all()
    check_lipschitz_bounds_actual_ratios(model, tiny_data_module[0])


def test_sound_table_is_the_exact_pairwise_bound(trained):
    model = trained[0].eval()
    a = model.head.integration.detach()
    lip = model.lipschitz["spectral"]
    assert model.lipschitz_bounds == {"empirical": "triangle", "spectral": "exact_pairwise"}
    for i, name in enumerate(model.modalities):
        bound = encoder_lipschitz_bound(model.encoders[name], model.input_shapes[name])
        rows = a[i].unsqueeze(1) * model.head.normalized_weight(i).detach()
        want = bound * torch.cdist(rows.double(), rows.double())
        torch.testing.assert_close(lip[i].double(), want, rtol=1e-3, atol=1e-6)
    # Never looser than the triangle form on the same constants, and strictly tighter for
    # some pairs: the triangle form understated CRMT's radius against the joint model's.
    triangle = pair_table(model.tau("spectral"), a)
    off = ~torch.eye(model.num_classes, dtype=torch.bool)
    assert (lip <= triangle * (1 + 1e-6)).all()
    assert float((triangle[:, off] / lip[:, off]).max()) > 1.05
    # Step 2 can optimise the radius on it: finite gradients in a (also at the diagonal).
    a_var = model.head.integration.detach().clone().requires_grad_(True)
    model.lip_table("spectral", a_var).sum().backward()
    assert torch.isfinite(a_var.grad).all() and a_var.grad.abs().sum() > 0


def test_certification_records_which_bound_each_table_uses(trained, tiny_data_module):
    from mmfast.eval.certify import certify
    from mmfast.eval.common import EvalConfig

    model = trained[0].eval()
    cfg = EvalConfig(device="cpu", batch_size=64, certify_radii=(0.0, 0.1),
                     certify_check_eps=(0.5,), attack_samples=8)
    result = certify(model, tiny_data_module[1], cfg)
    entries = result["estimators"]
    assert entries["spectral"]["bound"]["pairing"] == "exact_pairwise"
    assert entries["empirical"]["bound"]["pairing"] == "triangle"
    assert "||a_y W_y^(m) - a_k W_k^(m)||" in entries["spectral"]["bound"]["formula"]


def test_certified_radius_is_respected_by_perturbations(trained, tiny_data_module):
    check_radius_respected(trained[0].eval(), tiny_data_module[0])


def test_empirical_estimate_resets_gradients_per_class(trained, tiny_data_module):
    model = trained[0].eval()
    data = {k: v[:8] for k, v in tiny_data_module[0].items()}
    tau = empirical_class_lipschitz(model, data, torch.device("cpu"), batch_size=4)
    for k in (0, model.num_classes - 1):  # brute force: a fresh graph per (class, sample)
        for i, m in enumerate(model.modalities):
            best = 0.0
            for b in range(8):
                if not data["mask"][b, i]:
                    continue
                x = {n: data[n][b:b + 1].clone().requires_grad_(n == m) for n in model.modalities}
                unit = model.head.unit_logits(model.features(x))[0, i, k]
                (g,) = torch.autograd.grad(unit, x[m])
                best = max(best, float(g.norm()))
            assert tau[i, k] == pytest.approx(best, rel=1e-4)


def test_layer_bounds_are_upper_bounds_of_the_true_operator_norm():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, stride=2)
    x = torch.randn(1, 3, 12, 12)
    for _ in range(200):  # power iteration on the linear part: a lower estimate of ||conv||
        x = x.detach()
        y = torch.nn.functional.conv2d(x, conv.weight, None, 2, 1)
        x = torch.nn.grad.conv2d_input(x.shape, conv.weight, y, 2, 1)
        x = x / x.norm()
    with torch.no_grad():
        estimate = torch.nn.functional.conv2d(x, conv.weight, None, 2, 1).norm()
    assert layer_bound(conv, (3, 12, 12)) >= float(estimate)
    assert layer_bound(torch.nn.MaxPool2d(2), (3, 8, 8)) == 1.0
    assert layer_bound(torch.nn.AdaptiveAvgPool2d(1), (3, 4, 4)) == pytest.approx(0.25)
    with pytest.raises(TypeError, match="BatchNorm2d"):
        layer_bound(torch.nn.BatchNorm2d(3), (3, 4, 4))
    spec = ModelSpec.from_data({"video": torch.zeros(1, 4, 1, 8, 8), "label": torch.ones(1).long(),
                                "mask": torch.ones(1, 1, dtype=torch.bool)}, (4,), 4,
                               temporal="frames")
    enc = create_method("crmt").build_model(spec).encoders["video"]
    frame = encoder_lipschitz_bound(enc.frame, (1, 8, 8))
    assert encoder_lipschitz_bound(enc, (4, 1, 8, 8)) == pytest.approx(frame / 2)
    assert math.isfinite(frame)


# ---------------------------------------------------------------- step 2 keeps its best epoch
_RUINED_FROM = 3  # step-2 epochs from this one on shrink a through 0, flipping predictions
_EPOCHS = 7


class _Interrupt(Exception):
    pass


def _ruining_step2_loss(crash_at: int | None = None):
    original = CRMT.step2_loss

    def step2_loss(self, model):
        good = original(self, model)

        def loss_fn(module, batch, info):
            if info.epoch == crash_at:
                raise _Interrupt
            loss, metrics = good(module, batch, info)
            if info.epoch >= _RUINED_FROM:  # constant gradient: a falls by ~lr every step
                loss = model.head.integration.sum()
            return loss, metrics
        return loss_fn
    return step2_loss


def _recording_selection(seen: list):
    original = CRMT.step2_selection

    def step2_selection(self, model, val_table):
        select = original(self, model, val_table)

        def recorded(module):
            seen.append(model.head.integration.detach().clone())
            return select(module)
        return recorded
    return step2_selection


def _ruined_fit(data, run, val=True, crash_at=None, seen=None):
    from mmfast.train import TrainConfig

    cfg = TrainConfig(epochs=2, batch_size=24, lr=5e-3, widths=(4, 8), feature_dim=8,
                      progress=False, device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CRMT, "step2_loss", _ruining_step2_loss(crash_at))
        mp.setattr(CRMT, "step2_selection", _recording_selection([] if seen is None else seen))
        model, stats = fit_method("crmt", data[0], data[1] if val else None, cfg, run,
                                  step2_epochs=_EPOCHS, step2_lr=0.1, lip_samples=48)
    return model, stats, cfg


@pytest.fixture(scope="module")
def ruined(tiny_data_module, tmp_path_factory):
    torch.set_num_threads(1)
    run, seen = tmp_path_factory.mktemp("crmt_ruined"), []
    model, stats, cfg = _ruined_fit(tiny_data_module, run, seen=seen)
    return model, stats, seen, run, cfg


def _step2_records(run):
    from mmfast.train.metrics import JsonlLogger

    return [r for r in JsonlLogger(run / "metrics.jsonl").read() if r["stage"] == "crmt_step2"]


def test_step2_restores_the_best_validation_epoch(ruined, tiny_data_module):
    model, stats, seen, run, cfg = ruined
    records = _step2_records(run)
    assert len(records) == len(seen) == _EPOCHS
    scores = [(r["val_acc"], r["val_mean_radius"]) for r in records]
    best = scores.index(max(scores))  # the first of equal scores
    # the scenario: neither the first nor the last epoch is the best, the last is far worse
    assert 0 < best < _EPOCHS - 1 and scores[-1][0] < scores[best][0] - 0.2, scores
    assert stats["step2_best_epoch"] == best == records[-1]["best_epoch"]
    assert stats["step2_selection"] == "val_acc, then val_mean_radius"
    assert [r["best_epoch"] for r in records] == [max(range(e + 1), key=scores.__getitem__)
                                                   for e in range(_EPOCHS)]
    assert torch.equal(model.head.integration.detach(), seen[best])
    assert not torch.equal(seen[-1], seen[best])
    # the table-based score is the model's own validation accuracy (masked fused logits)
    val = tiny_data_module[1]
    assert evaluate_accuracy(model, val, cfg, torch.device("cpu")) == pytest.approx(
        records[best]["val_acc"])
    with torch.no_grad():
        table = unit_logit_table(model, val, TrainContext(cfg, DistContext()))
        radius = -certified_radius_loss(model, table["unit_logits"], table["label"],
                                        table["mask"], "empirical", "top")
    assert float(radius) == pytest.approx(records[best]["val_mean_radius"], rel=1e-5)
    # the completed checkpoint holds the restored weights (a resumed run skips the stage)
    final, _ = load_checkpoint(run / "checkpoints" / "crmt_step2.pt")
    assert torch.equal(final["model"]["head.integration"], seen[best])


def test_step2_best_epoch_survives_a_resumed_run(ruined, tiny_data_module, tmp_path):
    model, stats, _, run, _ = ruined
    with pytest.raises(_Interrupt):  # crash after the best epoch and a ruined one
        _ruined_fit(tiny_data_module, tmp_path, crash_at=_RUINED_FROM + 1)
    seen = []
    resumed, resumed_stats, _ = _ruined_fit(tiny_data_module, tmp_path, seen=seen)
    assert len(seen) == _EPOCHS - (_RUINED_FROM + 1)  # only the remaining epochs ran
    assert resumed_stats["step2_best_epoch"] == stats["step2_best_epoch"]
    assert torch.equal(resumed.head.integration, model.head.integration)
    drop = ("time_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in _step2_records(tmp_path)] \
        == [{k: v for k, v in r.items() if k not in drop} for r in _step2_records(run)]


def test_step2_without_validation_keeps_the_last_epoch(tiny_data_module, tmp_path,
                                                       monkeypatch):
    ends = []  # a at the first step of every epoch = a at the end of the previous one
    original = CRMT.step2_loss

    def step2_loss(self, model):
        loss_fn = original(self, model)

        def recorded(module, batch, info):
            if info.epoch == len(ends):
                ends.append(model.head.integration.detach().clone())
            return loss_fn(module, batch, info)
        return recorded

    monkeypatch.setattr(CRMT, "step2_loss", step2_loss)  # _ruined_fit wraps it
    model, stats, _ = _ruined_fit(tiny_data_module, tmp_path, val=False)
    assert stats["step2_best_epoch"] is None
    assert stats["step2_selection"] == "last epoch (no val data)"
    records = _step2_records(tmp_path)
    assert len(records) == len(ends) == _EPOCHS
    assert all("best_epoch" not in r and "val_acc" not in r for r in records)
    final = model.head.integration.detach()
    assert all(not torch.equal(final, a) for a in ends[1:])  # no earlier epoch's weights
    assert (final < ends[-1]).all()  # the last (ruining) epoch's steps were kept


def test_select_best_compares_lexicographically_and_keeps_the_first_tie(tiny_data, tiny_cfg):
    from mmfast.train import Stage, run_stage

    train, _ = tiny_data
    spec = ModelSpec.from_data(train, tiny_cfg.widths, tiny_cfg.feature_dim)
    model = create_method("crmt").build_model(spec)
    a = model.head.integration
    scores = iter([(0.5, 9.0), (0.75, 0.0), (0.75, 1.0), (0.75, 1.0), (math.nan, 0.0),
                   (0.5, 5.0)])
    seen = []

    def select(module):
        seen.append(a.detach().clone())
        return next(scores), {}

    def loss_fn(module, batch, info):
        return a.sum(), {}

    tiny_cfg.max_steps_per_epoch = 1
    stage = Stage("s", 6, loss_fn, params=[a], lr=0.1, optimizer="sgd", momentum=0.0,
                  select_best=select)
    history = run_stage(model, stage, train, None, TrainContext(tiny_cfg, DistContext()))
    assert [r["best_epoch"] for r in history] == [0, 1, 2, 2, 2, 2]
    assert torch.equal(a.detach(), seen[2]) and not torch.equal(seen[2], seen[3])
