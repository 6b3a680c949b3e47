"""scripts/gpu_check.sh and the GPU parts of benchmarks/summarize.py, checked without a GPU:
the stage arguments, the build preflight failing cleanly (and deleting nothing) on a machine
without CUDA torch, and the targets table / CUDA-event columns from a synthetic result."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))
import summarize  # noqa: E402


def _run(*args, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args, "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_stage_is_required_and_checked(tmp_path):
    assert _run(tmp_path=tmp_path).returncode == 2
    proc = _run("deploy", tmp_path=tmp_path)
    assert proc.returncode == 2 and "build|test|bench|all" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU preflight failure")
def test_build_preflight_fails_cleanly_without_cuda(tmp_path):
    so_files = sorted((ROOT / "mmfast").glob("_C*.so"))
    proc = _run("build", tmp_path=tmp_path)
    assert proc.returncode == 1
    report = (tmp_path / "build" / "preflight.txt").read_text()
    assert "FAIL: torch.cuda.is_available() is False" in report
    assert ("FAIL: nvcc is not on PATH" in report) == (shutil.which("nvcc") is None)
    assert sorted((ROOT / "mmfast").glob("_C*.so")) == so_files  # nothing deleted


def _bench(group, provider, median, frac, **extra):
    return {"group": group, "stats": {"median": median},
            "extra_info": {"provider": provider, "gb_per_s": 1.0, "fraction_of_copy": frac,
                           "op": group.split("-")[0], **extra}}


def test_targets_table_and_event_columns():
    data = {"benchmarks": [
        _bench("masked_fusion-fwd-torch.float32-(65536, 3, 1024)-cuda", "cuda", 1e-4, 0.5,
               event_ms_per_call=0.09, event_fraction_of_copy=0.93),
        _bench("masked_fusion-fwd-torch.float32-(65536, 3, 1024)-cuda", "triton", 1e-4, 0.6),
        _bench("certified_margin-fwd-(262144, 3, 10)-cuda", "triton", 1e-4, 0.35),
        _bench("subset_accuracy-(65536, 4, 100)-cuda", "loop", 4e-3, 0.01),
        _bench("subset_accuracy-(65536, 4, 100)-cuda", "cuda", 1e-4, 0.5),
    ]}
    table = summarize.targets(data)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "0.93 (cuda) | yes" in rows["masked_fusion forward"]  # event timing preferred
    assert "0.35 (triton) | NO" in rows["certified_margin C = 10"]
    assert "not measured" in rows["certified_margin C = 100"]
    assert "40.00x (cuda) | yes" in rows["subset_accuracy, all 15 subsets of M = 4, "
                                        "x per-subset loop"]
    text = summarize.summarize(data)
    assert "event ms / call" in text and "| 0.0900 | 0.93 |" in text
