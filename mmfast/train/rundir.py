"""A run folder's lock and its record: who writes it, with which config, for how long.

* :func:`run_lock`: one writer per run folder. ``.mmfast.lock`` holds the owner's pid, host
  and command; a second process stops with :class:`RunLockedError` naming them. A lock whose
  pid is dead on this host is stale and taken over.
* :func:`open_record`: the run's identity (method, config, hyper-parameters, data sizes) in
  ``run.json``, written once when the run starts. Re-running with the same identity resumes;
  with a different one it is a :class:`RunConfigError` naming the differing fields, unless
  ``force`` (then the folder's training outputs are discarded and the run starts over).
  Every process that trains the run appends a *part* (its time, peak memory, provenance), so
  a resumed run's train time is the sum of its parts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmfast._io import write_text_atomic

__all__ = ["LOCK_FILE", "RECORD_FILE", "RunLockedError", "RunConfigError", "run_lock",
           "main_process_lock",
           "RunRecord", "open_record", "IGNORED_CONFIG_KEYS", "config_differences"]

LOCK_FILE, RECORD_FILE = ".mmfast.lock", "run.json"

#: TrainConfig fields that do not change what is trained (a resume may change them).
IGNORED_CONFIG_KEYS = frozenset({"progress", "resume", "num_threads", "device"})

#: Files and folders of a run folder that ``force`` discards.
_TRAIN_OUTPUTS = ("model.pt", "train_stats.json", "metrics.jsonl", "checkpoints", RECORD_FILE,
                  "eval.json")


class RunLockedError(RuntimeError):
    """Another live process is writing the run folder."""


class RunConfigError(ValueError):
    """The run folder holds a run with a different config."""


_HELD: dict[Path, int] = {}  # lock path -> nesting depth held by this process


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written or foreign: treated as held by an unknown owner


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``run_dir/.mmfast.lock`` for the block (re-entrant within one process).

    Raises RunLockedError when a live process (or one on another host, which cannot be
    checked) holds it; a lock left by a dead process of this host is taken over.
    """
    path = (Path(run_dir) / LOCK_FILE).resolve()
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield path
        finally:
            _HELD[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
          "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            owner = _read_lock(path)
            if owner is None:
                continue  # released meanwhile: try again
            if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) \
                    and not _pid_alive(owner["pid"]):
                path.unlink(missing_ok=True)  # stale: its owner died without releasing it
                continue
            who = (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
                   f"(since {owner.get('since', '?')}: {owner.get('command', '?')})")
            raise RunLockedError(
                f"run folder {path.parent} is being written by {who}; wait for it to finish "
                f"or use another --out (if that process is gone, delete {path})") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:
        raise RunLockedError(f"could not take the lock {path}: it keeps being re-created")
    _HELD[path] = 1
    try:
        yield path
    finally:
        _HELD.pop(path, None)
        if (_read_lock(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


def main_process_lock(run_dir: str | os.PathLike):
    """:func:`run_lock` in the main process of a torchrun job (env ``RANK`` 0 or unset), a
    no-op context in the other ranks (they write nothing). For commands that lock their
    output folder before loading data, so a second writer stops at once."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext(Path(run_dir) / LOCK_FILE)
    return run_lock(run_dir)


def _normal(value: Any) -> Any:
    """JSON round trip (tuples -> lists), so stored and fresh values compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def config_differences(stored: Mapping[str, Any], fresh: Mapping[str, Any],
                       prefix: str = "") -> list[str]:
    """``["config.lr: 0.003 (stored) vs 0.05 (now)", ...]`` for the keys that differ."""
    out = []
    for key in sorted(set(stored) | set(fresh)):
        if not prefix and key == "config":
            continue
        a, b = stored.get(key, "<absent>"), fresh.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} (stored) vs {b!r} (now)")
    return out


def _identity_differences(stored: Mapping[str, Any], fresh: Mapping[str, Any]) -> list[str]:
    def strip(identity: Mapping[str, Any]) -> dict[str, Any]:
        config = {k: v for k, v in identity.get("config", {}).items()
                  if k not in IGNORED_CONFIG_KEYS}
        return {**{k: v for k, v in identity.items() if k != "config"}, "config": config}

    a, b = strip(stored), strip(fresh)
    return (config_differences(a, b)
            + config_differences(a["config"], b["config"], "config."))


class RunRecord:
    """The ``run.json`` of a run folder: identity plus one entry per training part."""

    def __init__(self, run_dir: Path, data: dict[str, Any], resumed: bool):
        self.run_dir, self.data, self.resumed = run_dir, data, resumed

    @property
    def parts(self) -> list[dict[str, Any]]:
        return self.data.setdefault("parts", [])

    def add_part(self, part: Mapping[str, Any]) -> None:
        """Append one training part (a process's share of the run) and save."""
        self.parts.append(_normal(dict(part)))
        self.save()

    def total_time_s(self) -> float:
        return float(sum(p.get("train_time_s", 0.0) for p in self.parts))

    def save(self) -> None:
        write_text_atomic(self.run_dir / RECORD_FILE,
                          json.dumps(self.data, indent=2, sort_keys=True) + "\n")


def open_record(run_dir: str | os.PathLike, identity: Mapping[str, Any], *,
                force: bool = False, resume: bool = True) -> RunRecord:
    """The run's record, created for ``identity`` or checked against it (see module doc).

    ``force`` or ``resume=False`` discard what the folder holds and start a new record.
    """
    run_dir = Path(run_dir)
    identity = _normal(dict(identity))
    path = run_dir / RECORD_FILE
    stats = run_dir / "train_stats.json"
    stored: dict[str, Any] | None = None
    if path.is_file():
        stored = json.loads(path.read_text())
    elif stats.is_file():  # a run written before run.json existed: its stats hold the config
        old = json.loads(stats.read_text())
        stored = {k: old[k] for k in identity if k in old}
        stored["parts"] = [{"train_time_s": old.get("train_time_s", 0.0), "legacy": True}]
    if force or not resume:  # also an older run's stray checkpoints without a record
        discard_outputs(run_dir)
        stored = None
    if stored is None:
        record = RunRecord(run_dir, {**identity, "parts": []}, resumed=False)
        record.save()
        return record
    keys = [k for k in identity if k in stored]  # a legacy record lacks "data"
    diff = _identity_differences({k: stored[k] for k in keys}, {k: identity[k] for k in keys})
    if diff:
        raise RunConfigError(
            f"run folder {run_dir} holds a {stored.get('method')!r} run with a different "
            f"config: {'; '.join(diff)}. Use the same options to resume it, another --out, "
            f"or --force to discard it and train anew")
    return RunRecord(run_dir, stored, resumed=True)


def discard_outputs(run_dir: str | os.PathLike) -> None:
    """Delete a run folder's training outputs (model, stats, metrics, checkpoints, eval)."""
    run_dir = Path(run_dir)
    for name in _TRAIN_OUTPUTS:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
