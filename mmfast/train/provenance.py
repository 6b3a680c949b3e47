"""Where a run came from: command, code, software, device, date, and the data it saw.

``environment()`` describes the process (command line, mmfast version and git commit, Python /
torch / CUDA versions, device, host, date); ``describe_dataset()`` describes a loaded data set
(name, path, split sizes, what the loader produced, input ranges, files loaded as absent);
``load_splits()`` decodes splits and collects that description in one go. Run folders
(``train_stats.json``, ``run.json``) and demo folders (``provenance.json``) store them and the
report prints them.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["environment", "git_commit", "describe_dataset", "describe_synthetic",
           "loader_description", "load_splits", "problem_summary", "MAX_PROBLEM_EXAMPLES"]

#: Examples of data problems kept per modality (the counts are always complete).
MAX_PROBLEM_EXAMPLES = 20


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: the mmfast package), with
    ``-dirty`` when it has uncommitted changes; None outside a checkout or without git."""
    here = Path(path) if path is not None else Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD", "--show-toplevel"], cwd=here,
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        commit, top = head.stdout.split()[:2]
        if path is None and Path(top).resolve() != here.parent:
            return None  # mmfast installed inside some other repository (e.g. a venv in it)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def _device_info(device: str | torch.device | None) -> dict[str, Any]:
    dev = torch.device(device) if device is not None else torch.device("cpu")
    info: dict[str, Any] = {"device": str(dev)}
    if dev.type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(dev)
    else:
        info["device_name"] = platform.processor() or platform.machine()
        info["cpu_count"] = os.cpu_count()
        info["torch_threads"] = torch.get_num_threads()
    return info


def environment(device: str | torch.device | None = None,
                command: Sequence[str] | None = None) -> dict[str, Any]:
    """The process's provenance: command line, code version, software, device, host, date."""
    import mmfast

    argv = list(command) if command is not None else list(sys.argv)
    if argv and argv[0].endswith(("cli.py", "__main__.py")):
        argv[0] = "mmfast"
    elif argv:
        argv[0] = Path(argv[0]).name
    return {
        "command": shlex.join(argv),
        "cwd": os.getcwd(),
        "mmfast_version": getattr(mmfast, "__version__", None),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        **_device_info(device),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def problem_summary(problems: Mapping[str, Mapping[str, Sequence]] | None
                    ) -> dict[str, dict[str, Any]]:
    """{split: {modality: {"count": n, "truncated": t, "padded": p, "examples": [[sample id,
    reason], ...]}}} for the modalities with problems (at most MAX_PROBLEM_EXAMPLES examples
    each). Reasons starting "truncated" are cut files; those ending "loaded padded ..." were
    kept, padded (``truncated="pad"``); every other file was loaded as absent."""
    out: dict[str, dict[str, Any]] = {}
    for split, per_modality in (problems or {}).items():
        kept = {m: {"count": len(p),
                    "truncated": sum(1 for _, why in p if str(why).startswith("truncated")),
                    "padded": sum(1 for _, why in p if "loaded padded" in str(why)),
                    "examples": [list(x) for x in p[:MAX_PROBLEM_EXAMPLES]]}
                for m, p in per_modality.items() if p}
        if kept:
            out[split] = kept
    return out


def _ranges(split: Mapping[str, Tensor], modalities: Sequence[str]) -> dict[str, list[float]]:
    """Observed [min, max] of each modality's present rows."""
    out = {}
    for j, m in enumerate(modalities):
        x = split.get(m)
        if not isinstance(x, Tensor) or x.numel() == 0:
            continue
        present = split["mask"][:, j].bool() if "mask" in split else None
        rows = x[present] if present is not None and present.any() else x
        out[m] = [float(rows.min()), float(rows.max())]
    return out


def _modalities(split: Mapping[str, Tensor]) -> list[str]:
    from mmfast.nn.model import MODALITIES

    return [m for m in MODALITIES if m in split]


def describe_dataset(root: str | os.PathLike | None, splits: Mapping[str, Mapping[str, Tensor]],
                     *, name: str | None = None, loader: Mapping[str, Any] | None = None,
                     problems: Mapping[str, Mapping[str, Sequence]] | None = None
                     ) -> dict[str, Any]:
    """Name, path, split sizes, per-sample shapes, observed input ranges, what the loader did
    (``loader``) and the files loaded as absent (``problems``, see :func:`problem_summary`)."""
    first = next((s for s in splits.values() if s), {})
    modalities = _modalities(first)
    info: dict[str, Any] = {}
    if root is not None and (Path(root) / "info.json").is_file():
        import json
        info = json.loads((Path(root) / "info.json").read_text())
    ranges: dict[str, list[float]] = {}
    for split in splits.values():
        for m, (lo, hi) in _ranges(split, modalities).items():
            old = ranges.get(m, [lo, hi])
            ranges[m] = [min(old[0], lo), max(old[1], hi)]
    labels = [int(s["label"].max()) + 1 for s in splits.values()
              if "label" in s and s["label"].numel()]
    num_classes = (len(info["classes"]) if isinstance(info.get("classes"), list)
                   else max(labels, default=None))
    summary = problem_summary(problems)
    return {
        "name": (name or info.get("name") or info.get("dataset")
                 or (Path(root).name if root is not None else None)),
        "path": str(Path(root).resolve()) if root is not None else None,
        "splits": {k: int(v["label"].numel()) for k, v in splits.items() if "label" in v},
        "modalities": modalities,
        "num_classes": num_classes,
        "chance_accuracy": (1.0 / num_classes) if num_classes else None,
        "sample_shapes": {m: list(first[m].shape[1:]) for m in modalities},
        "input_ranges": ranges,
        "loader": dict(loader or {}),
        "problems": summary,
        "problem_count": sum(v["count"] for per in summary.values() for v in per.values()),
    }


def loader_description(spec=None, decode_device: str | None = None) -> dict[str, Any]:
    """What ``mmfast.data.load_split`` does with a spec: frames, resolution, audio features."""
    from mmfast.data.specs import DataSpec

    spec = spec or DataSpec()
    v, a, i = spec.video, spec.audio, spec.image
    return {
        "loader": "mmfast.data.load_split (DALI)",
        "decode_device": decode_device,
        "video": f"{v.frames} frames ({v.sampling} sampling, stride {v.stride}), "
                 f"{v.height}x{v.width}, {v.channels} channel(s), pixels scaled to [0, 1]",
        "audio": f"log-mel, {a.n_mels} mels x {a.num_frames} frames of the first "
                 f"{a.duration_s:g} s at {a.sample_rate} Hz (n_fft {a.n_fft}, hop {a.hop}), "
                 f"dB clipped at -{a.cutoff_db:g} and scaled to [0, 1]",
        "image": f"{i.height}x{i.width}, {i.channels} channel(s), pixels scaled to [0, 1]",
        "spec": dataclasses.asdict(spec),
        "file_problems": "missing, undecodable or truncated files load as absent (mask "
                         "False, input zero; truncated ones padded instead when asked), "
                         "counted in 'problems'",
    }


def describe_synthetic(splits: Mapping[str, Mapping[str, Tensor]],
                       seeds: Mapping[str, int]) -> dict[str, Any]:
    """The description of ``mmfast.train.synthetic`` splits (no files)."""
    return describe_dataset(None, splits, name="synthetic", loader={
        "loader": "mmfast.train.synthetic.synthetic_split (class gratings + Gaussian noise, "
                  "in memory)", "seeds": dict(seeds)})


def load_splits(root: str | os.PathLike, names: Sequence[str], **kwargs: Any
                ) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """Decode ``names`` splits of ``root`` with ``mmfast.data.load_split`` (``kwargs`` passed
    on); returns (splits, :func:`describe_dataset` of them, data problems included)."""
    from mmfast.data.loader import load_split, resolve_decode_device

    splits: dict[str, dict[str, Tensor]] = {}
    problems: dict[str, dict[str, list]] = {}
    for name in names:
        problems[name] = {}
        splits[name] = load_split(root, name, problems=problems[name], **kwargs)
    decode = resolve_decode_device(kwargs.get("decode_device", "auto"))
    description = describe_dataset(root, splits, problems=problems, loader=loader_description(
        kwargs.get("spec"), decode))
    return splits, description
