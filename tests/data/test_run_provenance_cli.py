"""Data problems and provenance flow from the loader into run folders and the report: a
missing and an undecodable file are counted (with examples) in train_stats.json, eval.json
and report.md, not only in a warning. The commands run in a subprocess, as a user types them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_broken_files_are_recorded_and_reported(tiny_copy, tmp_path):
    rows = [line.split(",") for line in (tiny_copy / "manifest.csv").read_text().splitlines()]
    full = [r for r in rows[1:] if all(r[3:])]  # rows listing every modality
    train = [r for r in full if r[2] == "train"]
    (tiny_copy / train[0][4]).unlink()  # a missing audio file
    (tiny_copy / train[1][5]).write_bytes(b"not a png")  # an undecodable image
    test = [r for r in full if r[2] == "test"]
    (tiny_copy / test[0][4]).unlink()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    mmfast = f"{sys.executable} -m mmfast.cli"
    script = (f"{mmfast} train late --data {tiny_copy} --out runs/late --epochs 1 "
              f"--batch-size 8 --no-progress --threads 1 && "
              f"{mmfast} eval runs/late --data {tiny_copy} --protocols missing_subsets && "
              f"{mmfast} report runs/* --out runs/report")
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    stats = json.loads((tmp_path / "runs/late/train_stats.json").read_text())
    dataset = stats["provenance"]["dataset"]
    assert dataset["name"] == "avdigits" and dataset["path"] == str(tiny_copy.resolve())
    assert dataset["splits"] == {"train": 10, "val": 10}
    assert dataset["problems"]["train"]["audio"]["count"] == 1
    assert dataset["problems"]["train"]["audio"]["examples"][0][0] == train[0][0]
    assert dataset["problems"]["train"]["image"]["examples"][0][0] == train[1][0]
    assert "frames" in dataset["loader"]["video"] and "mels" in dataset["loader"]["audio"]
    assert dataset["chance_accuracy"] == 0.1

    result = json.loads((tmp_path / "runs/late/eval.json").read_text())
    assert result["dataset"]["problems"]["test"]["audio"]["count"] == 1
    assert result["provenance"]["command"].startswith("mmfast eval runs/late")
    assert result["config"]["clamp"] == {"video": [0.0, 1.0], "image": [0.0, 1.0]}

    text = (tmp_path / "runs/report/report.md").read_text()
    assert "## Data problems" in text and "3 loaded as absent" in text
    assert f"| train | audio | 1 | 0 | 0 | {train[0][0]}: " in text
    assert f"| test | audio | 1 | 0 | 0 | {test[0][0]}: " in text
    assert "**Chance level**: 0.100 (10 classes)" in text
    assert "## Provenance" in text and "`mmfast train late --data" in text
    assert "late evaluated by `mmfast eval runs/late --data" in text
