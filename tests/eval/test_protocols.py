"""Protocols (a)-(e) against models whose answers are known by construction."""

from __future__ import annotations

import json

import pytest
import torch

from mmfast import ops
from mmfast.eval import EvalConfig, run_protocols, write_json_atomic
from mmfast.eval.attacks import perturbation_norms, pgd_l2
from mmfast.eval.certify import certify
from mmfast.eval.missing import missing_rate, missing_subsets
from mmfast.eval.noise import noise
from mmfast.nn.model import MODALITIES, MultiModalOutput
from tests.eval.toy_models import (
    CertifiableLinear,
    LinearLate,
    OracleByModality,
    make_inputs,
    oracle_data,
)

N = 96
CFG = EvalConfig(batch_size=40, attack_samples=48, attack_eps=(0.0, 0.5, 3.0),
                 gaussian_sigmas=(0.0, 1.0), salt_pepper_densities=(0.0, 1.0),
                 missing_rates=(0.0, 0.25, 0.5, 1.0), certify_radii=(0.0, 0.1, 0.5))


def _linear_data(model, n=N, seed=3):
    data = make_inputs(n, seed)
    mask = torch.ones(n, 3, dtype=torch.bool)
    with torch.no_grad():
        label = model(data, mask).logits.argmax(1)
    label[::4] = (label[::4] + 1) % model.num_classes
    data.update(mask=mask, label=label, index=torch.arange(n))
    return data


def _acc_by_subset(result) -> dict[str, float]:
    return dict(zip(result["subsets"], result["accuracy"]))


@pytest.mark.parametrize("late", [False, True])
def test_missing_subsets_known_by_construction(late):
    informative = ("audio", "image") if late else ("audio",)
    model = OracleByModality(informative, num_classes=4, late=late)
    acc = _acc_by_subset(missing_subsets(model, oracle_data(N), CFG))
    assert len(acc) == 7
    for name, value in acc.items():
        expected = 1.0 if any(m in name.split("+") for m in informative) else 0.25
        assert value == pytest.approx(expected), name
    path = missing_subsets(model, oracle_data(N), CFG)["path"]
    assert path == ("modality_logits" if late else "masked_inputs")


def test_missing_subsets_falls_back_when_modality_logits_disagree():
    class Contrary(LinearLate):
        def forward(self, inputs, mask):
            out = super().forward(inputs, mask)
            return MultiModalOutput(out.logits, -out.modality_logits)

    model = Contrary(num_classes=3, seed=4)
    result = missing_subsets(model, _linear_data(model), CFG)
    assert result["path"] == "masked_inputs" and "disagrees" in result["path_reason"]


@pytest.mark.parametrize("bias", [False, True])
def test_subset_path_matches_masking_for_a_late_model(bias):
    model = LinearLate(num_classes=3, seed=5, fusion="mean")
    if bias:  # a shared fused bias: modality logits alone cannot reproduce the subsets
        model.bias.data = torch.tensor([0.0, 0.0, 3.0])
    else:
        model.bias.data.zero_()
    data = _linear_data(model)
    fast = missing_subsets(model, data, CFG)
    assert fast["path"] == ("masked_inputs" if bias else "modality_logits")
    slow = [float((model(data, data["mask"] & s).logits.argmax(1) == data["label"])
                  .float().mean()) for s in ops.all_subsets(3)]
    assert fast["accuracy"] == pytest.approx(slow)


def test_missing_rate_endpoints_equal_clean_and_subset_without_modality():
    model = LinearLate(num_classes=3, seed=6)
    data = _linear_data(model)
    rate = missing_rate(model, data, CFG)
    subsets = _acc_by_subset(missing_subsets(model, data, CFG))
    for m in MODALITIES:
        curve = rate["accuracy"][m]
        assert curve[0] == pytest.approx(rate["clean_accuracy"])
        rest = "+".join(x for x in MODALITIES if x != m)
        assert curve[-1] == pytest.approx(subsets[rest])


def test_missing_rate_is_linear_for_the_oracle():
    model = OracleByModality(("audio",), num_classes=4)
    rate = missing_rate(model, oracle_data(N), CFG)
    assert rate["accuracy"]["video"] == [1.0] * 4  # video carries nothing
    audio = rate["accuracy"]["audio"]
    assert audio[0] == 1.0 and audio[-1] == pytest.approx(0.25)
    assert audio[0] > audio[1] > audio[2] > audio[3]


def test_noise_hurts_only_the_modality_the_model_reads():
    model = OracleByModality(("audio",), num_classes=4)
    data = oracle_data(N)
    result = noise(model, data, CFG)
    for kind in ("gaussian", "salt_pepper"):
        acc = result[kind]["accuracy"]
        assert acc["video"] == [1.0, 1.0] and acc["image"] == [1.0, 1.0]
        assert acc["audio"][0] == 1.0 and acc["audio"][1] < 0.9
        assert acc["all"][1] < 0.9
    assert noise(model, data, CFG) == result  # seeded


def test_attack_protocol_bounds_and_ignored_modality():
    model = LinearLate(num_classes=3, seed=7)
    with torch.no_grad():
        model.heads["video"].zero_()  # the model ignores video: attacking it does nothing
    data = _linear_data(model)
    result = run_protocols(model, data, EvalConfig(**{**CFG.to_dict(), "protocols": ("attack",)}))
    attack = result["attack"]
    assert attack["num_samples"] == 48
    for kind in ("fgm", "pgd"):
        acc = attack[kind]["accuracy"]
        assert acc["video"] == [attack["clean_accuracy"]] * 3
        assert acc["joint"][0] == attack["clean_accuracy"]
        assert all(a <= attack["clean_accuracy"] for b in acc.values() for a in b)
        assert acc["joint"][2] < attack["clean_accuracy"]


def test_certified_radius_never_exceeds_a_pgd_adversarial_distance():
    model = CertifiableLinear(num_classes=4, seed=8)
    data = _linear_data(model, n=64)
    mask, label = data["mask"], data["label"]
    z, bias = model.certify_scores(data, mask)
    radius, _, rival = ops.certified_margin(z.detach(), label, model.exact_lipschitz(),
                                            mask=mask, bias=bias.detach())
    inputs = {m: data[m] for m in MODALITIES}
    adv = pgd_l2(model, inputs, mask, label, eps=4.0, steps=20, step_size=0.3)
    with torch.no_grad():
        wrong = model(adv, mask).logits.argmax(1) != label
    dist, _ = perturbation_norms(adv, inputs, MODALITIES)
    certified = radius > 0
    assert (wrong & certified).sum() > 10  # the check is not vacuous
    assert torch.all(dist[wrong & certified] >= radius[wrong & certified] * (1 - 1e-5))
    # The bound is exact for a linear model: stepping just past it towards the rival flips.
    w = {m: model.heads[m].detach() for m in MODALITIES}
    rows = torch.nonzero(certified).squeeze(1)
    direction = {m: (w[m][rival[rows]] - w[m][label[rows]]) for m in MODALITIES}
    norm = torch.stack([d.pow(2).sum(1) for d in direction.values()]).sum(0).sqrt()
    moved = {m: inputs[m][rows] + (radius[rows] * 1.001 / norm)[:, None].mul(direction[m])
             .view_as(inputs[m][rows]) for m in MODALITIES}
    with torch.no_grad():
        assert torch.all(model(moved, mask[rows]).logits.argmax(1) != label[rows])


def test_certify_protocol_labels_estimators_and_detects_unsound_tables():
    model = CertifiableLinear(num_classes=3, seed=9)
    model.lipschitz = {"spectral": model.exact_lipschitz(),
                       "empirical": 0.1 * model.exact_lipschitz()}
    data = _linear_data(model)
    cfg = EvalConfig(**{**CFG.to_dict(), "certify_check_eps": (0.1, 0.3, 1.0, 3.0)})
    result = certify(model, data, cfg)
    sound, guess = result["estimators"]["spectral"], result["estimators"]["empirical"]
    assert sound["kind"] == "sound" and guess["kind"] == "empirical"
    clean = float((model(data, data["mask"]).logits.argmax(1) == data["label"]).float().mean())
    assert sound["min"]["certified_accuracy"][0] == pytest.approx(clean)
    assert sound["soundness_check"]["violations"] == 0
    assert guess["soundness_check"]["violations"] > 0
    # top-rival radii are never below the min-rival ones
    for est in (sound, guess):
        assert all(t >= m for t, m in zip(est["top"]["certified_accuracy"],
                                           est["min"]["certified_accuracy"]))
    assert certify(OracleByModality(("audio",)), oracle_data(N), cfg)["skipped"]


def test_run_protocols_writes_strict_json(tmp_path):
    model = CertifiableLinear(num_classes=3, seed=10)
    result = run_protocols(model, _linear_data(model), CFG)
    assert set(result) >= {"missing_subsets", "missing_rate", "noise", "attack", "certify"}
    path = write_json_atomic(tmp_path / "eval.json", result)
    assert json.loads(path.read_text())["clean_accuracy"] == result["clean_accuracy"]
    assert not list(tmp_path.glob(".*tmp"))


def test_bad_config_and_data_raise():
    with pytest.raises(ValueError, match="missing_rates"):
        EvalConfig(missing_rates=(1.5,))
    model = LinearLate()
    with pytest.raises(ValueError, match="protocols"):
        run_protocols(model, _linear_data(model), EvalConfig(protocols=("nope",)))
    data = _linear_data(model)
    del data["label"]
    with pytest.raises(ValueError, match="label"):
        run_protocols(model, data, CFG)
