from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmfast.cli import main
from mmfast.data import MultiModalLoader, read_manifest


def test_make_info_and_adapt(tmp_path, capsys):
    out = tmp_path / "avd"
    code = main(["data", "make", "avdigits", "--out", str(out), "--num-per-class", "3",
                 "--seed", "1", "--missing-rate", "0.5", "--quiet"])
    assert code == 0
    manifest = read_manifest(out)
    assert len(manifest.samples) == 30 and manifest.info["config"]["missing_rate"] == 0.5
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"]["samples"] == 10
    present = summary["splits"]["train"]["present"]
    assert sum(present.values()) == 30 - sum(
        1 for s in manifest.split("train") for p in s.paths.values() if not p)
    assert issubclass(MultiModalLoader, object)  # lazy public API resolves


def test_errors_are_exit_codes(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "none")]) == 1
    assert "no manifest" in capsys.readouterr().err
    assert main(["data", "make", "avdigits", "--out", str(tmp_path), "--missing-rate",
                 "2"]) == 2
    assert "missing_rate" in capsys.readouterr().err
    assert main(["data", "adapt", "crema-d", "--src", str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 1
    assert "AudioWAV" in capsys.readouterr().err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert all(cmd in text for cmd in ("make", "adapt", "info", "check"))


def test_decoding_a_split_shows_a_progress_bar(tiny_root):
    """``load_split`` (what train, eval and demo decode with) draws a bar on stderr when
    bars are on (MMFAST_PROGRESS=1 stands in for a terminal) and none when they are off."""
    repo = Path(__file__).resolve().parents[2]
    code = ("from mmfast.data.loader import load_split; "
            f"print(load_split({str(tiny_root)!r}, 'train')['label'].numel())")
    outs = {}
    for flag in ("1", "0"):
        env = {**os.environ, "PYTHONPATH": str(repo), "MMFAST_PROGRESS": flag}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs[flag] = proc
    assert "decode train" in outs["1"].stderr and "batch" in outs["1"].stderr
    assert "decode train" not in outs["0"].stderr
    assert outs["1"].stdout == outs["0"].stdout
