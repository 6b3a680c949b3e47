"""Run by test_distributed.py under torchrun: a tiny DDP fit, then a record of which samples
this rank trained on. Writes OUT/rank<r>.pt."""

import os
import sys

import torch

from mmfast.methods.base import cross_entropy_loss
from mmfast.train import Stage, TrainConfig, fit_method, run_stage
from mmfast.train.distributed import setup
from mmfast.train.engine import TrainContext
from mmfast.train.synthetic import synthetic_split


def main(out: str) -> None:
    torch.set_num_threads(1)
    train, val = synthetic_split(64, seed=1), synthetic_split(16, seed=2)
    cfg = TrainConfig(epochs=1, batch_size=8, widths=(4, 8), feature_dim=8, progress=False,
                      device="cpu")
    model, stats = fit_method("late", train, val, cfg, os.path.join(out, "run"))
    seen = []

    def recording_loss(module, batch, info):
        seen.append(batch["index"].clone())
        return cross_entropy_loss(module, batch, info)

    ctx = TrainContext(cfg, setup(torch.device("cpu")))
    run_stage(model, Stage("record", 1, recording_loss, validate=False), train, None, ctx, 5)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save({"params": flat, "indices": torch.cat(seen), "world": stats["world_size"]},
               os.path.join(out, f"rank{ctx.dist.rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
