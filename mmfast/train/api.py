"""``fit_method`` (train a registered method into a run directory) and ``load_model``.

A run directory holds:
  model.pt          the fitted model: state dict + JSON metadata (method, hyper-parameters,
                    model spec), loadable with ``torch.load(weights_only=True)``;
  metrics.jsonl     one JSON line per epoch of every stage;
  train_stats.json  method, train_time_s, peak_memory_bytes (+ its kind), num_parameters,
                    epochs, config, and method-specific facts (e.g. CRMT's estimators);
  checkpoints/      one resumable checkpoint per stage.
"""

from __future__ import annotations

import os
import resource
import sys
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
from mmfast.train.metrics import JsonlLogger

__all__ = ["fit_method", "load_model", "MODEL_FILE", "STATS_FILE", "METRICS_FILE"]

MODEL_FILE, STATS_FILE, METRICS_FILE = "model.pt", "train_stats.json", "metrics.jsonl"


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS; it is the process's peak so far.
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def fit_method(name: str, train: Mapping[str, Tensor], val: Mapping[str, Tensor] | None,
               cfg: TrainConfig, run_dir: str | os.PathLike | None,
               **overrides: Any) -> tuple[MultiModalModel, dict[str, Any]]:
    """Build and train method ``name`` (``mmfast.methods.create_method(name, **overrides)``).

    Seeded from ``cfg.seed`` (same seed, same data -> same metrics). Under ``torchrun``
    every rank trains on its shard; only rank 0 writes files. Returns (model, stats).
    """
    from mmfast.methods import ModelSpec, create_method

    method = create_method(name, **overrides)
    ctx_dist = distributed.setup(cfg.resolved_device())
    device = ctx_dist.device
    run_path = Path(run_dir) if run_dir is not None else None
    logger = JsonlLogger(run_path / METRICS_FILE if run_path else None, ctx_dist.is_main)
    ctx = TrainContext(cfg, ctx_dist, run_path, logger)
    spec = ModelSpec.from_data(train, cfg.widths, cfg.feature_dim, stem_stride=cfg.stem_stride,
                               temporal=cfg.temporal)
    _seed_everything(cfg.seed)
    model = method.build_model(spec).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    threads_before = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    started = time.perf_counter()
    try:
        result = method.fit(model, train, val, ctx)
    finally:
        torch.set_num_threads(threads_before)
    elapsed = time.perf_counter() - started
    peak, peak_kind = _peak_memory(device)
    stats = {
        "method": name,
        "train_time_s": elapsed,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "num_parameters": sum(p.numel() for p in result.model.parameters()),
        "epochs": _epochs_per_stage(result.history),
        "world_size": ctx_dist.world_size,
        "device": str(device),
        "config": cfg.to_dict(),
        "hparams": method.hparams(),
        "final": result.history[-1] if result.history else {},
        **result.info,
    }
    if run_path is not None and ctx_dist.is_main:
        save_model(run_path, result.model, name, method.hparams(), spec)
        atomic_write_json(run_path / STATS_FILE, stats)
    ctx_dist.barrier()
    return result.model, stats


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
