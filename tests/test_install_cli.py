"""The ``mmfast`` command as a user meets it: one-line errors naming the flag, ``--debug``,
Ctrl-C, missing extras, ``--version``, help text, ``--quiet`` and the bench modes. Commands
run in subprocesses, as a user runs them."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mmfast
from mmfast import progress
from mmfast.cli import EXIT_INTERRUPTED, EXIT_MISSING_EXTRA, build_parser, main, missing_extra

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
    str(REPO), os.environ.get("PYTHONPATH")])), "MMFAST_PROGRESS": "0"}
ENV.pop("MMFAST_DEBUG", None)


def mmfast_cmd(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmfast.cli", *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout, **kw)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_version():
    proc = mmfast_cmd("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"mmfast {mmfast.__version__} (torch ")


@pytest.mark.parametrize("args, needles", [
    (["train", "joint", "--data", "{tmp}/nowhere", "--out", "{tmp}/run"],
     ["argument --data", "no such dataset folder", "nowhere"]),
    (["train", "joint", "--data", "{tmp}", "--out", "{tmp}/run"],
     ["argument --data", "no manifest.csv"]),
    (["train", "joint", "--synthetic", "8", "--out", "{tmp}/file.txt"],
     ["argument --out", "is an existing file, expected a folder"]),
    (["train", "joint", "--synthetic", "8", "--out", "{tmp}/file.txt/run"],
     ["argument --out", "is a file, expected a folder"]),
    (["train", "no_such_method", "--synthetic", "8", "--out", "{tmp}/run"],
     ["argument method: invalid choice: 'no_such_method'"]),
    (["train", "joint", "--synthetic", "8", "--out", "{tmp}/run", "--epochs", "0"],
     ["argument --epochs: expected a positive integer, got 0"]),
    (["train", "joint", "--synthetic", "8", "--out", "{tmp}/run", "--lr", "fast"],
     ["argument --lr: expected a positive number, got 'fast'"]),
    (["eval", "{tmp}", "--data", "{tmp}"], ["argument RUN", "has no model.pt"]),
    (["demo", "--out", "{tmp}/file.txt"], ["argument --out", "existing file"]),
    (["demo", "--out", "{tmp}/demo", "--methods", "no_such_method"],
     ["mmfast demo: error: --methods:", "'no_such_method'", "--debug"]),
    (["data", "adapt", "avmnist", "--src", "{tmp}/nowhere", "--out", "{tmp}/m"],
     ["argument --src", "no such folder"]),
])
def test_expected_failures_are_one_line_naming_the_flag(tmp_path, args, needles):
    (tmp_path / "file.txt").write_text("not a folder")
    proc = mmfast_cmd(*[a.format(tmp=tmp_path) for a in args])
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo" / "runs").exists()


def test_debug_shows_the_traceback(tmp_path):
    for flags in (["--debug", "demo"], ["demo", "--debug"]):
        proc = mmfast_cmd(*flags, "--out", str(tmp_path), "--methods", "no_such_method")
        assert proc.returncode != 0
        assert "Traceback" in proc.stderr and "ValueError: --methods:" in proc.stderr


@pytest.mark.parametrize("blocked, argv, needles", [
    ("scipy", ["demo", "--out", "{tmp}/demo"], ["mmfast demo: ", "'scipy'", "'mmfast[data]'"]),
    ("matplotlib", ["report", "{tmp}", "--out", "{tmp}/report"],
     ["mmfast report: ", "'matplotlib'", "'mmfast[report]'"]),
])
def test_missing_extra_names_it(tmp_path, blocked, argv, needles):
    """A command without its extra's package (today ``mmfast demo`` died on scipy) says
    which extra to install."""
    argv = [a.format(tmp=tmp_path) for a in argv]
    code = (f"import sys; sys.modules[{blocked!r}] = None; from mmfast.cli import main; "
            f"sys.exit(main({argv!r}))")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == EXIT_MISSING_EXTRA
    line = assert_one_line_error(proc, *needles)
    assert line.startswith(needles[0]) and "pip install" in line


def test_missing_extra_table():
    assert missing_extra(ModuleNotFoundError("x", name="matplotlib.pyplot")) == "report"
    assert missing_extra(ModuleNotFoundError("x", name="nvidia.dali")) == "data"
    assert missing_extra(ModuleNotFoundError("x", name="tqdm")) == "train"
    assert missing_extra(ModuleNotFoundError("x", name="not_an_extra")) is None
    assert missing_extra(ImportError("x")) is None


def test_ctrl_c_during_train_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmfast.cli", "train", "joint", "--synthetic", "256", "--out",
         str(out), "--epochs", "500", "--threads", "1", "--no-progress"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.jsonl").exists():  # after the first epoch's checkpoint
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "mmfast train: interrupted; re-running the same command resumes from the last "
        "finished epoch saved in --out (--no-resume starts over)")


def _all_parsers(parser: argparse.ArgumentParser, prog: str = "mmfast"):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{prog} {name}")


def test_every_flag_of_every_command_has_help():
    missing = [f"{prog}: {action.option_strings or action.dest}"
               for prog, parser in _all_parsers(build_parser())
               for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction)
               and not (action.help and action.help.strip())]
    assert not missing, missing


def test_train_help_describes_every_flag():
    proc = mmfast_cmd("train", "--help")
    assert proc.returncode == 0
    for flag in ("--epochs", "--batch-size", "--lr", "--seed", "--grad-clip", "--threads",
                 "--amp", "--device", "--train-split", "--val-split", "--preset"):
        assert flag in proc.stdout
    assert "default: the preset's" in proc.stdout


def test_quiet_turns_progress_off(monkeypatch):
    monkeypatch.delenv("MMFAST_PROGRESS", raising=False)
    try:
        progress.set_enabled(True)
        assert progress.enabled()
        assert main(["--quiet"]) == 0
        assert not progress.enabled()
        assert isinstance(progress.bar(total=3), progress._NoBar)
        monkeypatch.setenv("MMFAST_PROGRESS", "1")
        assert progress.enabled()
    finally:
        progress.set_enabled(None)


def test_progress_bars_report_steps(monkeypatch, capsys):
    monkeypatch.setenv("MMFAST_PROGRESS", "1")
    log = progress.protocol_log(2, desc="eval joint", echo=print)
    log("  subsets: 1.0 s")
    log("  noise: 2.0 s")
    log.close()
    done = progress.counter("avdigits", unit="sample")
    for i in range(1, 5):
        done(i, 4)
    captured = capsys.readouterr()
    assert "subsets: 1.0 s" in captured.out and "noise: 2.0 s" in captured.out
    assert "eval joint" in captured.err and "avdigits" in captured.err


def test_bench_is_quick_by_default():
    from mmfast.bench import MODES

    parser = build_parser()
    assert parser.parse_args(["bench"]).mode == "quick"
    assert parser.parse_args(["bench", "--full"]).mode == "full"
    assert MODES["quick"][0] * 16 <= MODES["full"][0]
    proc = mmfast_cmd("bench", "--quick", "--full")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
