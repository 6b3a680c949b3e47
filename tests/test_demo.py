"""``mmfast demo`` wiring: every default method trained, evaluated and reported (tiny data)."""

from __future__ import annotations

import json

import pytest

from mmfast import cli, demo
from mmfast.eval import EvalConfig
from mmfast.methods import list_methods
from mmfast.train.synthetic import synthetic_split


def test_resolve_methods_expands_all_and_rejects_unknown():
    assert demo.resolve_methods(["all"]) == list_methods()
    assert demo.resolve_methods(["late", "joint", "late"]) == ["late", "joint"]
    with pytest.raises(ValueError, match="--methods"):
        demo.resolve_methods(["nope"])


@pytest.mark.slow
def test_demo_trains_evaluates_and_reports(tmp_path, monkeypatch):
    splits = {"train": synthetic_split(48, seed=0), "val": synthetic_split(16, seed=1),
              "test": synthetic_split(24, seed=2)}
    monkeypatch.setattr(demo, "_ensure_data", lambda root, spec, clock: None)
    monkeypatch.setattr(demo, "_load_splits", lambda root, clock: (splits, {"splits": {}}))
    lines: list[str] = []
    eval_cfg = EvalConfig(attack_eps=(0.0, 1.0), attack_samples=8, gaussian_sigmas=(0.0, 1.0),
                          salt_pepper_densities=(0.0, 0.2), missing_rates=(0.0, 1.0),
                          certify_radii=(0.0, 0.01))
    report = demo.run_demo(tmp_path, "small", demo.DEFAULT_METHODS, device="cpu",
                           eval_cfg=eval_cfg, log=lines.append,
                           train_overrides={"epochs": 1, "max_steps_per_epoch": 2,
                                            "batch_size": 16})
    text = report.read_text()
    for method in demo.DEFAULT_METHODS:
        result = json.loads((tmp_path / "runs" / method / "eval.json").read_text())
        assert result["method"] == method
        assert set(result) >= {"missing_subsets", "missing_rate", "noise", "attack", "certify"}
        assert f"| {method} |" in text
    crmt = json.loads((tmp_path / "runs" / "crmt" / "eval.json").read_text())["certify"]
    assert {e["kind"] for e in crmt["estimators"].values()} == {"sound", "empirical"}
    assert crmt["estimators"]["spectral"]["soundness_check"]["violations"] == 0
    assert report == tmp_path / "report.md"
    assert len(list(tmp_path.glob("*.png"))) == 9  # 7 protocols + smoothing, missing cert.
    assert any("report" in line for line in lines)


def test_cli_has_demo_eval_and_report_verbs(capsys):
    for verb in ("demo", "eval", "report"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([verb, "--help"])
        assert exit_info.value.code == 0
        assert f"mmfast {verb}" in capsys.readouterr().out


def test_long_preset_doubles_the_small_training_budget():
    from mmfast.demo import DEMO_PRESETS
    from mmfast.train import TrainConfig

    small, long = DEMO_PRESETS["small"], DEMO_PRESETS["long"]
    assert long.train_preset == small.train_preset and long.eval_preset == small.eval_preset
    assert long.train["epochs"] == 2 * TrainConfig.preset("small").epochs
