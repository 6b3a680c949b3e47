import json

import pytest

from mmfast.cli import main
from mmfast.train.cli import parse_overrides


def test_train_verb_on_synthetic_data(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "crmt", "--synthetic", "64", "--out", str(out), "--epochs", "1",
                 "--batch-size", "32", "--no-progress", "--threads", "1", "--set", "rho=0.5",
                 "--set", "estimator=spectral"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "crmt" and summary["num_parameters"] > 0
    stats = json.loads((out / "train_stats.json").read_text())
    assert stats["hparams"]["rho"] == 0.5 and stats["step2_estimator"] == "spectral"
    assert stats["config"]["epochs"] == 1 and stats["config"]["num_threads"] == 1
    assert (out / "model.pt").exists()


def test_train_help_lists_methods(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    assert "ume_mma" in capsys.readouterr().out


def test_parse_overrides():
    assert parse_overrides(["rho=1.5", "estimator=spectral", "lip_samples=None"]) == {
        "rho": 1.5, "estimator": "spectral", "lip_samples": None}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["rho"])
