"""``mmfast demo`` run folders: provenance.json, per-method records that a re-run does not
rewrite, a different config into the same folder is an error (``force`` retrains)."""

from __future__ import annotations

import json

import pytest

from mmfast import demo
from mmfast.eval import EvalConfig
from mmfast.train.provenance import describe_synthetic
from mmfast.train.rundir import RunConfigError
from mmfast.train.synthetic import synthetic_split

EVAL = EvalConfig(protocols=("missing_subsets",))
TRAIN = {"epochs": 1, "max_steps_per_epoch": 1, "batch_size": 16, "widths": (4,),
         "feature_dim": 8, "num_threads": 1}


@pytest.fixture
def tiny_demo(monkeypatch):
    splits = {"train": synthetic_split(32, seed=0), "val": synthetic_split(8, seed=1),
              "test": synthetic_split(8, seed=2)}
    dataset = describe_synthetic(splits, {"train": 0, "val": 1, "test": 2})
    monkeypatch.setattr(demo, "_ensure_data", lambda root, spec, clock: None)
    monkeypatch.setattr(demo, "_load_splits", lambda root, clock: (splits, dataset))

    def run(out, force=False, **train):
        return demo.run_demo(out, "small", ["late", "joint"], device="cpu", eval_cfg=EVAL,
                             log=lambda line: None, train_overrides={**TRAIN, **train},
                             force=force)
    return run


def test_demo_records_provenance_and_keeps_finished_runs(tiny_demo, tmp_path):
    report = tiny_demo(tmp_path)
    prov = json.loads((tmp_path / demo.PROVENANCE_FILE).read_text())
    assert prov["preset"] == "small" and prov["seeds"] == [0]
    assert prov["methods"] == ["late", "joint"] and prov["torch"]
    assert prov["dataset"]["splits"] == {"train": 32, "val": 8, "test": 8}
    assert prov["eval_config"]["clamp"] == {"video": [0.0, 1.0], "image": [0.0, 1.0]}
    stats = {m: (tmp_path / "runs" / m / "train_stats.json").read_bytes()
             for m in ("late", "joint")}
    for raw in stats.values():
        s = json.loads(raw)
        assert s["provenance"]["dataset"]["name"] == "synthetic"
        assert s["peak_memory_kind"] in ("process_peak_rss_since_reset", "process_max_rss")
    assert "## Provenance" in report.read_text()

    tiny_demo(tmp_path)  # same config: the records stay as they were
    for m, raw in stats.items():
        assert (tmp_path / "runs" / m / "train_stats.json").read_bytes() == raw

    before = (tmp_path / demo.PROVENANCE_FILE).read_text()
    with pytest.raises(RunConfigError, match=r"config\.lr: .* \(stored\) vs 0\.05 \(now\)"):
        tiny_demo(tmp_path, lr=0.05)
    assert (tmp_path / demo.PROVENANCE_FILE).read_text() == before  # the refused run's not
    assert (tmp_path / "runs/late/train_stats.json").read_bytes() == stats["late"]

    tiny_demo(tmp_path, lr=0.05, force=True)
    assert json.loads((tmp_path / "runs/late/train_stats.json").read_text())["config"]["lr"] \
        == 0.05
