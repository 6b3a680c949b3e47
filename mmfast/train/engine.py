"""The training loop: one *stage* (a loss, the parameters it trains, a number of epochs).

Multi-stage recipes (UME-MMA's uni-modal pre-training then fine-tuning, CRMT's two steps)
are sequences of :func:`run_stage` calls made by the method. Each stage

* shuffles with a seed derived from (seed, stage index, epoch) and shards the order per rank;
* runs the loss under autocast (bf16, or fp16 with a gradient scaler), clips the gradient
  norm, steps an AdamW/SGD optimiser over the stage's parameters only;
* logs one JSON line per epoch and writes an atomic checkpoint after it, from which an
  interrupted stage resumes (and a finished one is skipped), giving the same numbers as an
  uninterrupted run;
* optionally (``Stage.select_best``) scores the model after every epoch and ends the stage
  with the state of its best-scoring epoch instead of the last one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmfast.nn.model import MultiModalModel
from mmfast.train.batches import (
    Batch,
    batch_indices,
    dataset_size,
    derive_seed,
    epoch_order,
    inputs_of,
    take,
)
from mmfast.train.checkpoint import load_checkpoint, save_checkpoint
from mmfast.train.config import TrainConfig
from mmfast.train.distributed import DistContext, all_reduce_sums, shard_indices
from mmfast.train.metrics import JsonlLogger, progress

__all__ = ["Stage", "StepInfo", "TrainContext", "run_stage", "evaluate_accuracy", "autocast"]


@dataclass(frozen=True)
class StepInfo:
    """What a loss function may need besides the batch: a deterministic per-step seed."""

    stage: str
    epoch: int
    step: int
    seed: int

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded for this step only (mixup draws, ...), resume-safe."""
        return torch.Generator(device=device).manual_seed(self.seed)


#: loss_fn(module, batch, info) -> (scalar loss, {metric: float}); module may be DDP-wrapped.
LossFn = Callable[[nn.Module, Batch, StepInfo], tuple[Tensor, dict[str, float]]]

#: select_best(model) -> (score, {metric: float}); higher is better, a tuple compares
#: lexicographically (a criterion then its tie-breakers), NaN counts as -inf. The metrics
#: go into the epoch's record. It runs on every rank after every epoch and must give every
#: rank the same score (score the whole validation split, as ``evaluate_accuracy`` does).
SelectFn = Callable[[nn.Module], tuple[float | tuple[float, ...], dict[str, float]]]


@dataclass
class Stage:
    """One training stage. ``params=None`` trains every parameter of the model."""

    name: str
    epochs: int
    loss_fn: LossFn
    params: Sequence[nn.Parameter] | None = None
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = None
    momentum: float = 0.9
    validate: bool = True
    sharded: bool = True  # False: every rank runs the whole stage identically (no DDP)
    #: keep the best epoch: after the last epoch the stage's parameters and the model's
    #: buffers are restored to the epoch with the highest score (the first one on ties);
    #: records get ``best_epoch`` (the best so far; the last record's is the one kept).
    select_best: SelectFn | None = None


@dataclass
class TrainContext:
    """Everything a stage shares with the rest of a fit: config, process, output folder."""

    cfg: TrainConfig
    dist: DistContext
    run_dir: Path | None = None
    logger: JsonlLogger | None = None

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def checkpoint_path(self, stage: str) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints" / f"{stage}.pt"


def autocast(cfg: TrainConfig, device: torch.device):
    """The autocast context of ``cfg.amp`` on ``device`` (a no-op context without amp)."""
    dtype = cfg.amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _make_optimizer(stage: Stage, params: list[nn.Parameter], cfg: TrainConfig):
    lr = stage.lr if stage.lr is not None else cfg.lr
    wd = stage.weight_decay if stage.weight_decay is not None else cfg.weight_decay
    kind = stage.optimizer or cfg.optimizer
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=stage.momentum, weight_decay=wd)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {kind!r}")


def _select_trainable(model: nn.Module, params: Sequence[nn.Parameter] | None
                      ) -> tuple[list[nn.Parameter], dict[nn.Parameter, bool]]:
    """Turn requires_grad on for the stage's parameters only (DDP syncs exactly those)."""
    before = {p: p.requires_grad for p in model.parameters()}
    if params is None:
        return [p for p in model.parameters()], before
    chosen = {id(p) for p in params}
    owned = {id(p) for p in model.parameters()}
    if not chosen <= owned:
        raise ValueError("Stage.params must be parameters of the model being trained")
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return [p for p in model.parameters() if id(p) in chosen], before


@torch.no_grad()
def evaluate_accuracy(model: MultiModalModel, data: Mapping[str, Tensor], cfg: TrainConfig,
                      device: torch.device, mask: Tensor | None = None) -> float:
    """Accuracy of the fused prediction on ``data`` with its own (or the given) mask."""
    n = dataset_size(data)
    if n == 0:
        return math.nan
    was_training = model.training
    model.eval()
    correct = 0
    order = torch.arange(n)
    for idx in batch_indices(order, cfg.eval_batch_size):
        batch = take(data, idx, device)
        m = batch["mask"] if mask is None else mask[idx].to(device)
        with autocast(cfg, device):
            logits = model(inputs_of(batch, model.modalities), m).logits
        correct += int((logits.argmax(dim=1) == batch["label"]).sum())
    model.train(was_training)
    return correct / n


@dataclass
class _Best:
    """The best epoch of a ``select_best`` stage so far, with the state to restore."""

    epoch: int
    score: tuple[float, ...]
    state: dict[str, Tensor]

    def meta(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "score": list(self.score)}


def _as_score(score: float | Sequence[float]) -> tuple[float, ...]:
    values = tuple(score) if isinstance(score, (tuple, list)) else (score,)
    return tuple(-math.inf if math.isnan(float(v)) else float(v) for v in values)


def _stage_state(model: nn.Module, params: Sequence[nn.Parameter]) -> dict[str, Tensor]:
    """Copies of what a stage can change: its parameters and every buffer of the model."""
    chosen = {id(p) for p in params}
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()
            if id(v) in chosen or not isinstance(v, nn.Parameter)}


def _track_best(stage: Stage, model: nn.Module, params: Sequence[nn.Parameter],
                record: dict[str, Any], best: _Best | None) -> _Best:
    assert stage.select_best is not None
    score, metrics = stage.select_best(model)
    record.update({k: float(v) for k, v in metrics.items()})
    score = _as_score(score)
    if best is None or score > best.score:
        best = _Best(record["epoch"], score, _stage_state(model, params))
    record["best_epoch"] = best.epoch
    return best


def _resume(stage: Stage, ctx: TrainContext, stage_index: int, model: nn.Module, optimizer,
            scaler) -> tuple[int, list[dict[str, Any]], bool, _Best | None]:
    """(first epoch to run, history so far, whether the stage is already complete, the best
    epoch so far of a ``select_best`` stage)."""
    path = ctx.checkpoint_path(stage.name)
    if not ctx.cfg.resume or path is None or not path.exists():
        return 0, [], False, None
    tensors, meta = load_checkpoint(path, map_location=ctx.device)
    if meta.get("epochs") != stage.epochs:
        raise ValueError(f"checkpoint {path} was written for {meta.get('epochs')} epochs, "
                         f"this stage has {stage.epochs}; use a fresh run directory")
    model.load_state_dict(tensors["model"])  # a completed stage saved its restored best
    history = meta["history"]
    if meta["completed"]:
        return stage.epochs, history, True, None
    best = None
    if stage.select_best is not None:
        if "best" not in tensors:
            raise ValueError(f"checkpoint {path} was written without select_best, this stage "
                             f"selects its best epoch; use a fresh run directory")
        best = _Best(meta["best"]["epoch"], _as_score(meta["best"]["score"]), tensors["best"])
    optimizer.load_state_dict(tensors["optimizer"])
    scaler.load_state_dict(tensors["scaler"])
    done = meta["epoch"]
    if ctx.logger is not None:  # drop lines written after the checkpoint we resume from
        ctx.logger.keep(lambda r: (r.get("stage_index", -1), r.get("epoch", -1))
                        <= (stage_index, done))
    return done + 1, history, False, best


def run_stage(model: MultiModalModel, stage: Stage, train: Mapping[str, Tensor],
              val: Mapping[str, Tensor] | None, ctx: TrainContext,
              stage_index: int = 0) -> list[dict[str, Any]]:
    """Train ``model`` in place for one stage; returns the per-epoch records (also logged).

    With ``stage.select_best`` the model ends with its best epoch's state (see ``Stage``).
    """
    cfg, device = ctx.cfg, ctx.device
    params, requires_grad_before = _select_trainable(model, stage.params)
    optimizer = _make_optimizer(stage, params, cfg)
    use_scaler = cfg.amp_dtype(device) == torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    start, history, complete, best = _resume(stage, ctx, stage_index, model, optimizer,
                                             scaler)
    try:
        if complete:
            return history
        module = ctx.dist.wrap(model) if stage.sharded else model
        n = dataset_size(train)
        for epoch in range(start, stage.epochs):
            record = _train_epoch(model, module, stage, train, n, optimizer, scaler, params,
                                  ctx, stage_index, epoch)
            if stage.validate and val is not None and dataset_size(val) > 0:
                record["val_acc"] = evaluate_accuracy(model, val, cfg, device)
            if stage.select_best is not None:
                best = _track_best(stage, model, params, record, best)
                if epoch == stage.epochs - 1:  # before the final checkpoint, which keeps it
                    model.load_state_dict(best.state, strict=False)
            history.append(record)
            if ctx.logger is not None:
                ctx.logger.log(record)
            _save(ctx, stage, model, optimizer, scaler, epoch, history, best)
            ctx.dist.barrier()
        return history
    finally:
        for p, flag in requires_grad_before.items():
            p.requires_grad_(flag)


def _train_epoch(model, module, stage, train, n, optimizer, scaler, params, ctx, stage_index,
                 epoch) -> dict[str, Any]:
    cfg, device = ctx.cfg, ctx.device
    model.train()
    order = epoch_order(n, cfg.seed, stage_index, epoch)
    if stage.sharded:
        order = shard_indices(order, ctx.dist.rank, ctx.dist.world_size)
    steps_per_epoch = -(-order.numel() // cfg.batch_size)
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    sums: dict[str, float] = {"samples": 0.0, "loss": 0.0}
    started = time.perf_counter()
    bar = progress(batch_indices(order, cfg.batch_size, steps_per_epoch),
                   cfg.progress if ctx.dist.is_main else False,
                   total=steps_per_epoch, desc=f"{stage.name} {epoch + 1}/{stage.epochs}")
    for i, idx in enumerate(bar):
        step = epoch * steps_per_epoch + i
        rank = ctx.dist.rank if stage.sharded else 0
        info = StepInfo(stage.name, epoch, step, derive_seed(cfg.seed, stage_index, step, rank))
        batch = take(train, idx, device)
        with autocast(cfg, device):
            loss, metrics = stage.loss_fn(module, batch, info)
        if not torch.isfinite(loss):
            value = float(loss.detach())
            raise FloatingPointError(f"stage {stage.name!r}: non-finite loss {value} at "
                                     f"epoch {epoch}, step {step}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        size = float(idx.numel())
        sums["samples"] += size
        sums["loss"] += float(loss.detach()) * size
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * size
    if stage.sharded:
        sums = all_reduce_sums(sums, ctx.dist)
    samples = max(sums.pop("samples"), 1.0)
    record = {"stage": stage.name, "stage_index": stage_index, "epoch": epoch,
              "time_s": time.perf_counter() - started}
    record.update({f"train_{k}": v / samples for k, v in sums.items()})
    return record


def _save(ctx: TrainContext, stage: Stage, model, optimizer, scaler, epoch: int,
          history: list[dict[str, Any]], best: _Best | None = None) -> None:
    path = ctx.checkpoint_path(stage.name)
    if path is None or not ctx.dist.is_main:
        return
    tensors = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scaler": scaler.state_dict()}
    meta = {"stage": stage.name, "epoch": epoch, "epochs": stage.epochs,
            "completed": epoch == stage.epochs - 1, "history": history}
    if best is not None:
        tensors["best"], meta["best"] = best.state, best.meta()
    save_checkpoint(path, tensors, meta)
