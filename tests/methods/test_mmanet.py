"""MMANet: MAD weights samples by normalised teacher entropy, the teacher stays frozen, and the
weak-combination mining reads only the validation split (never the test split)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from mmfast.methods import create_method, mmanet
from mmfast.methods.base import ModelSpec
from mmfast.methods.mmanet import (
    candidate_combinations,
    mad_loss,
    teacher_entropy_weights,
    weak_set,
)
from mmfast.train.api import fit_method
from mmfast.train.distributed import setup
from mmfast.train.engine import TrainContext
from mmfast.train.synthetic import synthetic_split

SIGNAL = {"video": 0.5, "audio": 0.5, "image": 0.5}


def _model(data, cfg, **hparams):
    method = create_method("mmanet", **hparams)
    torch.manual_seed(0)
    return method, method.build_model(ModelSpec.from_data(data, cfg.widths, cfg.feature_dim))


def test_mad_weights_columns_by_normalised_teacher_entropy():
    torch.manual_seed(0)
    fs, ft, logits = torch.randn(5, 6), torch.randn(5, 6), torch.randn(5, 4)
    p = logits.softmax(1)
    entropy = -(p * p.log()).sum(1)
    w = teacher_entropy_weights(logits)
    torch.testing.assert_close(w, entropy / entropy.sum())
    gs, gt = fs @ fs.t(), ft @ ft.t()
    gs, gt = gs / gs.norm(dim=1, keepdim=True), gt / gt.norm(dim=1, keepdim=True)
    expected = sum(w[j] * (gs[i, j] - gt[i, j]) ** 2 for i in range(5) for j in range(5))
    torch.testing.assert_close(mad_loss(fs, ft, logits), expected)
    # A sample the teacher is certain about (entropy ~ 0) gets (almost) no weight; a sample
    # at the boundary (uniform prediction) gets the most.
    logits = torch.tensor([[50.0, 0, 0, 0], [0.0, 0, 0, 0], [2.0, 0, 0, 0]])
    w = teacher_entropy_weights(logits)
    assert w[0] < 1e-6 and w[1] > w[2] > w[0]
    assert float(w.sum()) == pytest.approx(1.0)


def test_mad_is_zero_when_student_matches_teacher_relations():
    f = torch.randn(8, 5)
    assert float(mad_loss(2.0 * f, f, torch.randn(8, 3))) == pytest.approx(0.0, abs=1e-10)


def test_weak_set_adds_single_modality_members():
    divergence = torch.zeros(7, dtype=torch.float64)
    divergence[4] = 1.0  # row 4 = bitmask 5 = {video, image}
    weak = weak_set(divergence, 3)
    assert weak.nonzero().flatten().tolist() == [0, 3, 4]  # {video}, {image}, {video, image}


def test_only_pairs_compete_by_default_as_the_official_code():
    # rows: 0 {video}, 1 {audio}, 2 {video, audio}, 3 {image}, 4 {video, image},
    # 5 {audio, image}, 6 all three
    divergence = torch.tensor([5.0, 0.0, 0.5, 0.0, 0.0, 1.0, 9.0], dtype=torch.float64)
    assert candidate_combinations(3, "one_missing").nonzero().flatten().tolist() == [2, 4, 5]
    # The single {video} and the full set have larger D_c, but only pairs compete:
    # c* = {audio, image}, plus its single-modality members.
    assert weak_set(divergence, 3).nonzero().flatten().tolist() == [1, 3, 5]
    # "all": every combination but the full set competes ({video} wins, no members).
    assert weak_set(divergence, 3, "all").nonzero().flatten().tolist() == [0]
    with pytest.raises(ValueError, match="mar_candidates"):
        create_method("mmanet", mar_candidates="some")


def test_official_settings_are_an_option_and_defaults_are_the_measured_ones():
    official = create_method("mmanet", **mmanet.OFFICIAL_SETTINGS)
    assert (official.student_from_teacher, official.mar_candidates, official.lambda_kd) == \
        (False, "one_missing", 30.0)
    default = create_method("mmanet")
    # Official where the measurement did not show a need (pairs compete); the teacher start
    # and lambda_kd = 1 are the measured exceptions (module docstring).
    assert (default.student_from_teacher, default.mar_candidates, default.lambda_kd) == \
        (True, "one_missing", 1.0)


def test_teacher_stays_frozen_while_the_student_trains(tiny_data, tiny_cfg):
    train, val = tiny_data
    method, student = _model(train, tiny_cfg, teacher_epochs=1, warmup_epochs=1, main_epochs=1)
    teacher = copy.deepcopy(student)
    ctx = TrainContext(tiny_cfg, setup(torch.device("cpu")))
    method.train_teacher(teacher, train, val, ctx)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    history = method.train_student(student, teacher, train, val, val, ctx)
    assert history[-1]["stage"] == "mmanet_main" and history[-1]["train_mad"] > 0
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items()
               if k.endswith("weight"))


def test_mining_reads_only_the_validation_split(tiny_cfg, monkeypatch):
    # Three disjoint splits; fit gets train and val, and every row any forward pass sees is
    # checked against the test split's rows.
    train = synthetic_split(96, seed=1, signal=SIGNAL, missing_rate=0.2)
    val = synthetic_split(48, seed=2, signal=SIGNAL)
    test = synthetic_split(48, seed=3, signal=SIGNAL)
    mined_on = []
    real_mine = mmanet.mine_weak_combinations

    def spy(model, data, ctx):
        mined_on.append(data)
        seen = []
        handle = model.encoders["audio"].register_forward_pre_hook(
            lambda _m, args: seen.append(args[0].detach().clone()))
        try:
            return real_mine(model, data, ctx)
        finally:
            handle.remove()
            rows = torch.cat(seen).flatten(1)
            assert _rows_within(rows, val["audio"].flatten(1))
            assert not _any_row_within(rows, test["audio"].flatten(1))

    monkeypatch.setattr(mmanet, "mine_weak_combinations", spy)
    seen_everywhere = []
    real_forward = torch.nn.Module.__call__

    def record(self, *args, **kwargs):
        if getattr(self, "modalities", None) and args and isinstance(args[0], dict):
            seen_everywhere.append(args[0]["audio"].detach().flatten(1).clone())
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", record)
    _, stats = fit_method("mmanet", train, val, tiny_cfg, None, teacher_epochs=1,
                          warmup_epochs=2, main_epochs=1)
    monkeypatch.undo()
    assert len(mined_on) == 2 and all(d is val for d in mined_on)
    assert stats["mining_split"] == "validation split"
    assert not _any_row_within(torch.cat(seen_everywhere), test["audio"].flatten(1))
    assert stats["weak_combinations"]


def test_without_validation_mining_uses_a_held_out_part_of_train(tiny_data, tiny_cfg,
                                                                monkeypatch):
    train, _ = tiny_data
    mined_on, trained_on = [], []
    real_mine, real_student = mmanet.mine_weak_combinations, mmanet.MMANet.train_student

    def spy_mine(model, data, ctx):
        mined_on.append(data["index"].clone())
        return real_mine(model, data, ctx)

    def spy_student(self, model, teacher, tr, val, mining, ctx):
        trained_on.append(tr["index"].clone())
        return real_student(self, model, teacher, tr, val, mining, ctx)

    monkeypatch.setattr(mmanet, "mine_weak_combinations", spy_mine)
    monkeypatch.setattr(mmanet.MMANet, "train_student", spy_student)
    _, stats = fit_method("mmanet", train, None, tiny_cfg, None, teacher_epochs=1,
                          warmup_epochs=1, main_epochs=1)
    held_out = set(mined_on[0].tolist())
    assert held_out and not held_out & set(trained_on[0].tolist())
    assert len(held_out) + trained_on[0].numel() == train["label"].numel()
    assert "held out" in stats["mining_split"]


def test_mar_divergence_is_the_kl_of_prediction_histograms(tiny_data, tiny_cfg):
    train, val = tiny_data
    _, model = _model(train, tiny_cfg)
    ctx = TrainContext(tiny_cfg, setup(torch.device("cpu")))
    d = mmanet.mine_weak_combinations(model, val, ctx)
    model.eval()
    names = model.modalities
    with torch.no_grad():
        full = model({m: val[m] for m in names}, val["mask"]).logits.argmax(1)
        only_audio = val["mask"] & torch.tensor([False, True, False])
        rows = only_audio.any(1)
        pred = model({m: val[m][rows] for m in names}, only_audio[rows]).logits.argmax(1)
    hist = [torch.bincount(p, minlength=model.num_classes).double() / p.numel()
            for p in (full, pred)]
    expected = (F.softmax(hist[1], 0) * (F.log_softmax(hist[1], 0)
                                         - F.log_softmax(hist[0], 0))).sum()
    torch.testing.assert_close(d[1], expected)  # row 1 = {audio}
    assert float(d[6]) == pytest.approx(0.0, abs=1e-12)  # the full combination


def _rows_within(rows, pool) -> bool:
    return bool((torch.cdist(rows, pool, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values < 1e-6).all())


def _any_row_within(rows, pool) -> bool:
    return bool((torch.cdist(rows, pool, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values < 1e-6).any())


@pytest.mark.parametrize("from_teacher", [True, False])
def test_student_starts_from_the_trained_teacher(tiny_data, tiny_cfg, monkeypatch,
                                                 from_teacher):
    # The student's first step sees the teacher's trained weights (not the shared random
    # init), so the warm-up mining reads a trained network; False keeps the paper's scratch
    # start.
    train, val = tiny_data
    seen = {}
    real_student = mmanet.MMANet.train_student

    def spy(self, model, teacher, tr, va, mining, ctx):
        seen["student"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["teacher"] = {k: v.clone() for k, v in teacher.state_dict().items()}
        return real_student(self, model, teacher, tr, va, mining, ctx)

    monkeypatch.setattr(mmanet.MMANet, "train_student", spy)
    fit_method("mmanet", train, val, tiny_cfg, None, teacher_epochs=1, warmup_epochs=1,
               main_epochs=1, student_from_teacher=from_teacher)
    student, teacher = seen["student"], seen["teacher"]
    same = all(torch.equal(student[k], teacher[k]) for k in teacher)
    # False: the student is still the shared random init, so the teacher differs: it trained.
    assert same is from_teacher
