"""Estimate the wall time of ``mmfast demo --methods M --seeds N --preset P`` from short runs.

The demo's cost is, per method and seed, one training (proportional to the epochs: every
recipe's stages scale with ``TrainConfig.epochs``) plus one evaluation (independent of the
epochs). This script trains each method for ``--epochs`` (default 2) epochs on the demo's
data and evaluates it with the demo's evaluation preset, measuring **process CPU time** with
one torch thread (on a machine shared with other jobs the wall time says little; one
thread's CPU time is close to the wall time of the same work on an idle core). Then

    estimate = N * sum_methods (train_cpu * target_epochs / epochs + eval_cpu)

an upper bound for an idle 2-core machine, where the demo's two threads can only be faster
than one (fixed per-training costs such as the Lipschitz estimate are scaled with the epochs
too, which also errs high). One JSON line per method, then the total, go to stdout.

    python scripts/demo_budget.py --data runs/demo/data --methods all --target-epochs 30
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="avdigits folder (mmfast demo's OUT/data)")
    p.add_argument("--methods", nargs="+", default=["all"])
    p.add_argument("--epochs", type=int, default=2, help="epochs of the measured trainings")
    p.add_argument("--target-epochs", type=int, default=30, help="epochs of the estimated run")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the estimated run")
    p.add_argument("--preset", default="long", help="demo preset (train and eval settings)")
    p.add_argument("--eval-methods", nargs="*", default=None, metavar="NAME",
                   help="evaluate only these methods (default: every one; none: --eval-methods "
                   "with no name)")
    args = p.parse_args(argv)

    import torch

    from mmfast.data.loader import load_split
    from mmfast.demo import DEMO_PRESETS, PIXEL_CLAMP, resolve_methods
    from mmfast.eval.common import EvalConfig
    from mmfast.eval.protocols import evaluate_run
    from mmfast.train import TrainConfig, fit_method

    torch.set_num_threads(1)
    spec = DEMO_PRESETS[args.preset]
    splits = {s: load_split(args.data, s) for s in ("train", "val", "test")}
    cfg = TrainConfig.preset(spec.train_preset, device="cpu", progress=False,
                             **{**spec.train, "epochs": args.epochs})
    eval_cfg = dataclasses.replace(EvalConfig.preset(spec.eval_preset, device="cpu"),
                                   clamp=PIXEL_CLAMP)
    scale = args.target_epochs / args.epochs
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in resolve_methods(args.methods):
            run = Path(tmp) / name
            cpu, wall = time.process_time(), time.perf_counter()
            model, _ = fit_method(name, splits["train"], splits["val"], cfg, run)
            train_cpu, train_wall = time.process_time() - cpu, time.perf_counter() - wall
            eval_cpu = eval_wall = 0.0
            shares = {}
            if args.eval_methods is None or name in args.eval_methods:
                cpu, wall = time.process_time(), time.perf_counter()
                path = evaluate_run(run, model, splits["test"], eval_cfg, method=name)
                eval_cpu, eval_wall = time.process_time() - cpu, time.perf_counter() - wall
                timings = json.loads(path.read_text())["timings_s"]  # wall, per protocol
                shares = {k: round(v / max(sum(timings.values()), 1e-9), 3)
                          for k, v in timings.items()}
            estimate = train_cpu * scale + eval_cpu
            total += estimate
            print(json.dumps({"method": name, "epochs": args.epochs, "train_cpu_s":
                              round(train_cpu, 1), "train_wall_s": round(train_wall, 1),
                              "eval_cpu_s": round(eval_cpu, 1), "eval_wall_s": round(eval_wall, 1),
                              "estimate_per_seed_s": round(estimate, 1),
                              "eval_wall_share": shares}), flush=True)
    print(json.dumps({"methods": args.methods, "seeds": args.seeds, "target_epochs":
                      args.target_epochs, "estimate_total_s": round(total * args.seeds, 1),
                      "estimate_total_min": round(total * args.seeds / 60, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
