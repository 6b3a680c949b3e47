"""``mmfast demo --seeds N``: every method trained N times, the report grouped by seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmfast import cli, demo
from mmfast.eval import EvalConfig
from mmfast.train.synthetic import synthetic_split


def test_seed_runs_are_seed_major_and_keep_one_seed_in_the_old_folder():
    root = Path("runs")
    assert demo.seed_runs(root, ["a", "b"], 1) == [(0, "a", root / "a"), (0, "b", root / "b")]
    assert demo.seed_runs(root, ["a", "b"], 2, base_seed=5) == [
        (5, "a", root / "a" / "seed5"), (5, "b", root / "b" / "seed5"),
        (6, "a", root / "a" / "seed6"), (6, "b", root / "b" / "seed6")]
    with pytest.raises(ValueError, match="--seeds"):
        demo.seed_runs(root, ["a"], 0)


def test_demo_cli_passes_seeds(monkeypatch, tmp_path):
    seen = {}

    def fake_run_demo(out, preset, methods, data, device, eval_cfg, force=False, seeds=1,
                      jobs=1):
        seen.update(seeds=seeds, jobs=jobs, force=force)
        return Path(out) / "report.md"

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert cli.main(["demo", "--out", str(tmp_path), "--seeds", "3", "--device", "cpu"]) == 0
    assert seen == {"seeds": 3, "jobs": "auto", "force": False}


def test_resolve_jobs(monkeypatch):
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    assert demo.resolve_jobs("auto", "cpu", 54) == 2
    assert demo.resolve_jobs("auto", "cuda", 54) == 1
    assert demo.resolve_jobs("3", "cpu", 2) == 2  # never more than the trainings
    for bad in (0, "x", 1.5):
        with pytest.raises(ValueError, match="--jobs"):
            demo.resolve_jobs(bad, "cpu", 4)


@pytest.mark.slow
def test_demo_with_two_seeds_in_two_processes_trains_each_method_twice(
        tmp_path, monkeypatch):
    splits = {"train": synthetic_split(48, seed=0), "val": synthetic_split(16, seed=1),
              "test": synthetic_split(24, seed=2)}
    monkeypatch.setattr(demo, "_ensure_data", lambda root, spec, clock: None)
    monkeypatch.setattr(demo, "_load_splits", lambda root, clock: (splits, {"splits": {}}))
    eval_cfg = EvalConfig(protocols=("missing_subsets",), batch_size=64)
    lines: list[str] = []
    report = demo.run_demo(tmp_path, "small", ["ume_mma", "ume"], device="cpu",
                           eval_cfg=eval_cfg, log=lines.append, seeds=2, jobs=2,
                           train_overrides={"epochs": 1, "max_steps_per_epoch": 1,
                                            "batch_size": 16})
    for method in ("ume_mma", "ume"):
        for seed in (0, 1):
            stats = json.loads((tmp_path / "runs" / method / f"seed{seed}" /
                                "train_stats.json").read_text())
            assert stats["method"] == method and stats["config"]["seed"] == seed
    text = report.read_text()
    assert "Training seeds per method: ume_mma [0, 1], ume [0, 1]" in text
    rows = [line for line in text.splitlines() if line.startswith("| UME-MMA | Missing-")]
    assert rows and all("(n=2)" in r for r in rows)
    assert any("4 trainings in 2 processes" in line for line in lines)
