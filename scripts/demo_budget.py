"""Estimate the wall time of ``mmfast demo --methods M --seeds N --preset P`` from short runs.

The demo's cost is, per method and seed, one training (proportional to the epochs: every
recipe's stages scale with ``TrainConfig.epochs``) plus one evaluation (independent of the
epochs). This script trains each method for ``--epochs`` (default 2 and 6) epochs on the demo's
data and evaluates it once with the demo's evaluation preset, measuring **process CPU time**
with one torch thread (on a machine shared with other jobs the wall time says little; one
thread's CPU time is close to the wall time of the same work on an idle core). The two
trainings give each method's fixed cost (Lipschitz estimates, CRMT's step 2, ...) and its
cost per epoch; then

    one process  = seeds * sum_methods (fixed + target_epochs * per_epoch + eval_cpu)
    W processes  = one process / W   (the demo's --jobs; W = cores, one thread each)

One JSON line per method, then the totals, go to stdout.

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
    p.add_argument("--epochs", type=int, nargs="+", default=[2, 6],
                   help="epochs of the measured trainings (two values: fixed + per-epoch fit)")
    p.add_argument("--target-epochs", type=int, default=30, help="epochs of the estimated run")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the estimated run")
    p.add_argument("--workers", type=int, default=2, help="parallel trainings (demo --jobs)")
    p.add_argument("--preset", default="long", help="demo preset (train and eval settings)")
    p.add_argument("--eval-methods", nargs="*", default=None, metavar="NAME",
                   help="evaluate only these methods (default: every one; none: --eval-methods "
                   "with no name; the others take the largest measured evaluation)")
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
    eval_cfg = dataclasses.replace(EvalConfig.preset(spec.eval_preset, device="cpu"),
                                   clamp=PIXEL_CLAMP)
    epochs = sorted(set(args.epochs))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in resolve_methods(args.methods):
            row = {"method": name, "train_cpu_s": {}}
            for e in epochs:
                cfg = TrainConfig.preset(spec.train_preset, device="cpu", progress=False,
                                         **{**spec.train, "epochs": e})
                run = Path(tmp) / f"{name}-{e}"
                cpu = time.process_time()
                model, _ = fit_method(name, splits["train"], splits["val"], cfg, run)
                row["train_cpu_s"][e] = round(time.process_time() - cpu, 2)
            if args.eval_methods is None or name in args.eval_methods:
                cpu = time.process_time()
                path = evaluate_run(run, model, splits["test"], eval_cfg, method=name)
                row["eval_cpu_s"] = round(time.process_time() - cpu, 2)
                timings = json.loads(path.read_text())["timings_s"]  # wall, per protocol
                row["eval_wall_share"] = {k: round(v / max(sum(timings.values()), 1e-9), 3)
                                          for k, v in timings.items()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    measured = [r["eval_cpu_s"] for r in rows if "eval_cpu_s" in r]
    fallback = max(measured) if measured else 0.0
    total = 0.0
    for r in rows:
        t = r["train_cpu_s"]
        if len(t) >= 2:  # least squares would do; two points: slope and intercept
            lo, hi = epochs[0], epochs[-1]
            slope = (t[hi] - t[lo]) / (hi - lo)
            fixed = max(0.0, t[lo] - lo * slope)
        else:
            slope, fixed = t[epochs[0]] / epochs[0], 0.0
        total += fixed + args.target_epochs * slope + r.get("eval_cpu_s", fallback)
    one = total * args.seeds
    print(json.dumps({"methods": len(rows), "seeds": args.seeds, "target_epochs":
                      args.target_epochs, "one_process_min": round(one / 60, 1),
                      f"{args.workers}_processes_min": round(one / args.workers / 60, 1)}),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
