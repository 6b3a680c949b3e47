"""``fit_method`` (train a registered method into a run directory) and ``load_model``.

A run directory holds:
  model.pt          the fitted model: state dict + JSON metadata (method, hyper-parameters,
                    model spec), loadable with ``torch.load(weights_only=True)``;
  metrics.jsonl     one JSON line per epoch of every stage;
  train_stats.json  method, train_time_s (summed over every part of a resumed run),
                    peak_memory_bytes (+ its kind: of this training, see ``memory``),
                    num_parameters, epochs, config, provenance (command, versions, device,
                    date, dataset) and method-specific facts (e.g. CRMT's estimators);
                    written once when the run finishes and never rewritten by a re-run;
  run.json          the run's identity (method, config, hyper-parameters, data sizes) and one
                    entry per training part (``rundir``);
  checkpoints/      one resumable checkpoint per stage.

While a process trains into the folder it holds ``.mmfast.lock`` (``rundir.run_lock``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmfast.nn.model import MultiModalModel
from mmfast.train import distributed
from mmfast.train.checkpoint import atomic_write_json, load_checkpoint, save_checkpoint
from mmfast.train.config import TrainConfig
from mmfast.train.engine import TrainContext
from mmfast.train.memory import PeakMemory
from mmfast.train.metrics import JsonlLogger
from mmfast.train.provenance import environment
from mmfast.train.rundir import RunRecord, open_record, run_lock

__all__ = ["fit_method", "load_model", "MODEL_FILE", "STATS_FILE", "METRICS_FILE"]

MODEL_FILE, STATS_FILE, METRICS_FILE = "model.pt", "train_stats.json", "metrics.jsonl"


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def fit_method(name: str, train: Mapping[str, Tensor], val: Mapping[str, Tensor] | None,
               cfg: TrainConfig, run_dir: str | os.PathLike | None, *, force: bool = False,
               provenance: Mapping[str, Any] | None = None,
               **overrides: Any) -> tuple[MultiModalModel, dict[str, Any]]:
    """Build and train method ``name`` (``mmfast.methods.create_method(name, **overrides)``).

    Seeded from ``cfg.seed`` (same seed, same data -> same metrics). Under ``torchrun``
    every rank trains on its shard; only rank 0 writes files. Returns (model, stats).

    With ``run_dir``: the folder is locked while training; a finished run with the same
    config is loaded, not retrained, and its record is returned unchanged; an unfinished one
    resumes; a different config raises ``rundir.RunConfigError`` unless ``force`` (start
    over). ``provenance`` adds facts to the record (e.g. "dataset", "preset", "seeds").
    """
    from mmfast.methods import create_method

    method = create_method(name, **overrides)
    ctx_dist = distributed.setup(cfg.resolved_device())
    run_path = Path(run_dir) if run_dir is not None else None
    writes = run_path is not None and ctx_dist.is_main
    lock = run_lock(run_path) if writes else contextlib.nullcontext()
    with lock:
        record = None
        if writes:
            identity = {"method": name, "config": cfg.to_dict(), "hparams": method.hparams(),
                        "data": {"train": _rows(train), "val": _rows(val)}}
            record = open_record(run_path, identity, force=force, resume=cfg.resume)
        ctx_dist.barrier()  # other ranks look at the folder after rank 0 settled it
        if run_path is not None and _finished(run_path) and (record is None or record.resumed):
            stats = json.loads((run_path / STATS_FILE).read_text())
            return load_model(run_path, ctx_dist.device, overrides.get("encoders")), stats
        return _fit(name, method, train, val, cfg, run_path, ctx_dist, record,
                    dict(provenance or {}))


def _rows(data: Mapping[str, Tensor] | None) -> int:
    return int(data["label"].shape[0]) if data is not None and "label" in data else 0


def _finished(run_path: Path) -> bool:
    return (run_path / STATS_FILE).is_file() and (run_path / MODEL_FILE).is_file()


def _fit(name, method, train, val, cfg: TrainConfig, run_path: Path | None, ctx_dist,
         record: RunRecord | None, provenance: dict[str, Any]
         ) -> tuple[MultiModalModel, dict[str, Any]]:
    from mmfast.methods import ModelSpec

    device = ctx_dist.device
    logger = JsonlLogger(run_path / METRICS_FILE if run_path else None, ctx_dist.is_main)
    ctx = TrainContext(cfg, ctx_dist, run_path, logger)
    spec = ModelSpec.from_data(train, cfg.widths, cfg.feature_dim, stem_stride=cfg.stem_stride,
                               temporal=cfg.temporal)
    _seed_everything(cfg.seed)
    model = method.build_model(spec).to(device)
    env = environment(device)
    memory = PeakMemory(device)
    memory.start()
    threads_before = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    load_before = _load_average()
    started = time.perf_counter()
    try:
        result = method.fit(model, train, val, ctx)
    except BaseException as exc:  # Ctrl-C, errors: the part's time still counts on resume
        if record is not None:
            record.add_part({"train_time_s": time.perf_counter() - started, "completed": False,
                             "stopped_by": type(exc).__name__, **memory.stop(),
                             "provenance": env})
        raise
    finally:
        torch.set_num_threads(threads_before)
    elapsed = time.perf_counter() - started
    part = {"train_time_s": elapsed, "completed": True, **memory.stop(),
            "load_average": {"start": load_before, "end": _load_average()},
            "provenance": env}
    parts = [*(record.parts if record is not None else []), part]
    peak = max(parts, key=lambda p: p.get("peak_memory_bytes") or 0)
    stats = {
        "method": name,
        "train_time_s": sum(p.get("train_time_s", 0.0) for p in parts),
        "train_time_parts_s": [p.get("train_time_s", 0.0) for p in parts],
        "train_time_note": "wall-clock seconds of method.fit summed over the run's parts; "
                           "depends on the machine's load (see load_average)",
        "load_average": part["load_average"],
        "peak_memory_bytes": peak.get("peak_memory_bytes"),
        "peak_memory_kind": peak.get("peak_memory_kind"),
        "baseline_memory_bytes": peak.get("baseline_memory_bytes"),
        "num_parameters": sum(p.numel() for p in result.model.parameters()),
        "epochs": _epochs_per_stage(result.history),
        "world_size": ctx_dist.world_size,
        "device": str(device),
        "config": cfg.to_dict(),
        "hparams": method.hparams(),
        "provenance": {**env, **provenance},
        "final": result.history[-1] if result.history else {},
        **result.info,
    }
    if run_path is not None and ctx_dist.is_main:
        save_model(run_path, result.model, name, method.hparams(), spec)
        if record is not None:
            record.add_part(part)
        atomic_write_json(run_path / STATS_FILE, stats)
    ctx_dist.barrier()
    return result.model, stats


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _epochs_per_stage(history: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for record in history:
        out[record["stage"]] = out.get(record["stage"], 0) + 1
    return out


def save_model(run_dir: str | os.PathLike, model: MultiModalModel, method: str,
               hparams: dict[str, Any], spec) -> None:
    """Write ``run_dir/model.pt`` atomically: the state dict plus JSON metadata."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(Path(run_dir) / MODEL_FILE, {"state_dict": state},
                    {"method": method, "hparams": hparams, "spec": spec.to_dict(),
                     "format": 1})


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu",
               encoders: Mapping[str, torch.nn.Module] | None = None) -> MultiModalModel:
    """Rebuild the model of a run directory (``weights_only=True``: no pickled code runs).

    ``encoders`` must repeat any plugged-in encoder modules the model was trained with.
    """
    from mmfast.methods import ModelSpec, create_method

    path = Path(run_dir) / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {MODEL_FILE} in {run_dir}")
    tensors, meta = load_checkpoint(path, map_location="cpu")
    hparams = dict(meta["hparams"])
    if encoders is not None:
        hparams["encoders"] = dict(encoders)
    method = create_method(meta["method"], **hparams)
    model = method.build_model(ModelSpec.from_dict(meta["spec"]))
    model.load_state_dict(tensors["state_dict"])
    return model.to(device).eval()
