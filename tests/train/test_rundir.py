"""Run folders that tell the truth: a finished run's record is never rewritten, a different
config is an error naming the fields (or --force), a resumed run adds the times of all its
parts, one writer per folder (lock with stale-lock takeover), peak memory per training, and
provenance in train_stats.json. CLI checks run ``mmfast train`` in subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmfast.methods import create_method
from mmfast.train import fit_method
from mmfast.train.rundir import LOCK_FILE, RunConfigError, RunLockedError, run_lock

ROOT = Path(__file__).resolve().parents[2]


def _mmfast(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmfast.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _mmfast("train", "late", "--synthetic", "32", "--out", str(out), "--epochs", "1",
                   "--batch-size", "16", "--threads", "1", "--no-progress", *extra,
                   cwd=out.parent)


def test_rerun_keeps_the_record_and_other_config_is_an_error(tmp_path):
    out = tmp_path / "run"
    first = _train(out, "--lr", "0.003", "--seed", "0")
    assert first.returncode == 0, first.stderr
    stats_bytes = (out / "train_stats.json").read_bytes()
    stats = json.loads(stats_bytes)
    assert stats["config"]["lr"] == 0.003 and stats["train_time_s"] > 0

    # provenance: command, code, software, device, date, dataset, seeds, preset
    prov = stats["provenance"]
    assert "train late --synthetic 32" in prov["command"] and "--lr 0.003" in prov["command"]
    assert prov["torch"] == torch.__version__ and prov["mmfast_version"]
    assert bool(prov["git_commit"]) == (ROOT / ".git").exists()  # commit when in a checkout
    assert prov["device"] == "cpu" and prov["date"] and prov["host"] == socket.gethostname()
    assert prov["dataset"]["name"] == "synthetic"
    assert prov["dataset"]["splits"] == {"train": 32, "val": 8}
    assert prov["seeds"] == [0] and prov["preset"] == "small"

    other = _train(out, "--lr", "0.05", "--seed", "7")
    assert other.returncode != 0
    assert "config.lr: 0.003 (stored) vs 0.05 (now)" in other.stderr
    assert "config.seed: 0 (stored) vs 7 (now)" in other.stderr and "--force" in other.stderr
    assert (out / "train_stats.json").read_bytes() == stats_bytes
    assert not (out / LOCK_FILE).exists()


def test_force_discards_the_other_run(tiny_data, tiny_cfg, tmp_path):
    train, val = tiny_data
    fit_method("late", train, val, tiny_cfg, tmp_path)
    (tmp_path / "eval.json").write_text("{}")  # results of the discarded model go too
    cfg = type(tiny_cfg)(**{**tiny_cfg.__dict__, "lr": 0.05, "seed": 7})
    with pytest.raises(RunConfigError, match="config.lr"):
        fit_method("late", train, val, cfg, tmp_path)
    _, stats = fit_method("late", train, val, cfg, tmp_path, force=True)
    stored = json.loads((tmp_path / "train_stats.json").read_text())
    assert stored["config"]["lr"] == 0.05 and stored["config"]["seed"] == 7
    assert len(stats["train_time_parts_s"]) == 1 and not (tmp_path / "eval.json").exists()
    assert len(json.loads((tmp_path / "run.json").read_text())["parts"]) == 1


def test_second_writer_stops_with_the_owner_named(tmp_path):
    out = tmp_path / "run"
    with run_lock(out):  # this process writes the folder
        busy = _train(out)
    assert busy.returncode != 0
    assert f"is being written by pid {os.getpid()} on host {socket.gethostname()}" in busy.stderr
    assert not (out / "train_stats.json").exists()
    assert not (out / LOCK_FILE).exists()  # released when the block ended


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with run_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()


def test_lock_held_by_a_live_process_in_process(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid,
                                                      "host": socket.gethostname()}))
        with pytest.raises(RunLockedError, match=f"pid {sleeper.pid}"):
            with run_lock(tmp_path):
                pass
        assert (tmp_path / LOCK_FILE).exists()  # someone else's lock is left alone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_resume_adds_the_time_of_every_part(tiny_data, tiny_cfg, tmp_path, monkeypatch):
    train, val = tiny_data
    cls = type(create_method("late"))
    real_fit = cls.fit
    calls = []

    def interrupted_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            import time
            time.sleep(0.3)
            raise KeyboardInterrupt
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(cls, "fit", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        fit_method("late", train, val, tiny_cfg, tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()
    _, stats = fit_method("late", train, val, tiny_cfg, tmp_path)
    first, second = stats["train_time_parts_s"]
    assert first >= 0.3 and stats["train_time_s"] == pytest.approx(first + second)
    record = json.loads((tmp_path / "run.json").read_text())
    assert [p["completed"] for p in record["parts"]] == [False, True]
    assert record["parts"][0]["stopped_by"] == "KeyboardInterrupt"

    # a finished run is returned as recorded, not retrained or rewritten
    model, again = fit_method("late", train, val, tiny_cfg, tmp_path)
    assert again == json.loads((tmp_path / "train_stats.json").read_text())
    assert again["train_time_s"] == stats["train_time_s"] and len(calls) == 2
    assert isinstance(model, torch.nn.Module)

    with pytest.raises(RunConfigError, match=r"config\.epochs: 2 \(stored\) vs 3 \(now\)"):
        fit_method("late", train, val, type(tiny_cfg)(**{**tiny_cfg.__dict__, "epochs": 3}),
                   tmp_path)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_memory_is_per_training_not_the_process_maximum(tiny_data, tiny_cfg, tmp_path,
                                                             monkeypatch):
    train, val = tiny_data
    cls = type(create_method("late"))
    real_fit = cls.fit

    def greedy_fit(self, *args, **kwargs):
        big = torch.ones(64 * 2**20)  # 256 MiB, touched
        big.add_(1)
        del big
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(cls, "fit", greedy_fit)
    _, greedy = fit_method("late", train, val, tiny_cfg, tmp_path / "greedy")
    monkeypatch.setattr(cls, "fit", real_fit)
    _, plain = fit_method("late", train, val, tiny_cfg, tmp_path / "plain")
    assert greedy["peak_memory_kind"] == plain["peak_memory_kind"] == \
        "process_peak_rss_since_reset"
    assert greedy["peak_memory_bytes"] - greedy["baseline_memory_bytes"] >= 250 * 2**20
    # the second training does not inherit the first one's peak
    assert plain["peak_memory_bytes"] < greedy["peak_memory_bytes"] - 200 * 2**20


def test_only_the_main_torchrun_rank_takes_the_lock(tmp_path, monkeypatch):
    from mmfast.train.rundir import main_process_lock

    monkeypatch.setenv("RANK", "1")
    with main_process_lock(tmp_path):
        assert not (tmp_path / LOCK_FILE).exists()
    monkeypatch.setenv("RANK", "0")
    with main_process_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_run_folder_from_before_run_json_is_checked_against_its_stats(tiny_data, tiny_cfg,
                                                                         tmp_path):
    train, val = tiny_data
    fit_method("late", train, val, tiny_cfg, tmp_path)
    (tmp_path / "run.json").unlink()  # as written by older mmfast versions
    stats = (tmp_path / "train_stats.json").read_bytes()
    fit_method("late", train, val, tiny_cfg, tmp_path)
    assert (tmp_path / "train_stats.json").read_bytes() == stats
    with pytest.raises(RunConfigError, match=r"config\.lr"):
        fit_method("late", train, val, type(tiny_cfg)(**{**tiny_cfg.__dict__, "lr": 0.5}),
                   tmp_path)


def test_git_commit_only_inside_a_checkout(tmp_path):
    from mmfast.train.provenance import git_commit

    assert git_commit(tmp_path) is None
    commit = git_commit()
    if (ROOT / ".git").exists():  # a git checkout of mmfast (not an unpacked archive)
        assert commit is not None and len(commit.split("-")[0]) == 40
    else:
        assert commit is None
