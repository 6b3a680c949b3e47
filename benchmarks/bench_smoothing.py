"""Randomized smoothing: draws per second of (noise + forward) vs the forward alone.

The model is the demo's late-fusion model (small preset widths) on avdigits-shaped inputs
(video 8x1x32x32, audio 1x40x51, image 1x32x32); one batch of ``DRAW_BATCH`` draws, the small
eval preset's ``draw_batch``. Modes, on the same batch:

- ``forward``: the model on the batch (what a smoothed classifier cannot avoid);
- ``noise+forward``: ``noisy_modality_dropout`` on every modality, then the model;
- ``smoothing``: ``SmoothedClassifier.counts`` (gather the rows, noise, forward, count) for
  the same number of draws.

Goal: noise+forward at >= 0.9 of the forward's draws per second. On a machine shared with
other jobs, pytest-benchmark's sequential groups drift; ``python benchmarks/bench_smoothing.py``
interleaves the modes round by round and prints the median ratio (what benchmarks/README.md
reports).
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytest
import torch

from mmfast import ops
from mmfast.eval.smoothing import SmoothedClassifier
from mmfast.methods.base import ModelSpec
from mmfast.methods.late import build_late_fusion_model

SHAPES = {"video": (8, 1, 32, 32), "audio": (1, 40, 51), "image": (1, 32, 32)}
DRAW_BATCH = 512
SIGMA = 0.12
MODES = ("forward", "noise+forward", "smoothing")


def make_case(batch: int = DRAW_BATCH, widths=(16, 32), feature_dim: int = 32):
    """(model, batch inputs, mask, smoother, rows inputs, rows mask, draws per row)."""
    torch.manual_seed(0)
    spec = ModelSpec(10, SHAPES, tuple(widths), feature_dim)
    model = build_late_fusion_model(spec).eval()
    x = {m: torch.rand(batch, *s) for m, s in SHAPES.items()}
    mask = torch.ones(batch, len(SHAPES), dtype=torch.bool)
    smoother = SmoothedClassifier(model, dict.fromkeys(SHAPES, SIGMA), draw_batch=batch)
    rows = 8
    return model, x, mask, smoother, {m: v[:rows] for m, v in x.items()}, mask[:rows], batch // rows


def step(mode: str, case) -> None:
    model, x, mask, smoother, rows_x, rows_mask, per_row = case
    with torch.no_grad():
        if mode == "forward":
            model(x, mask).logits.argmax(1)
        elif mode == "noise+forward":
            noisy = {m: ops.noisy_modality_dropout(v, 0.0, SIGMA, seed=0, offset=j)[0]
                     for j, (m, v) in enumerate(x.items())}
            model(noisy, mask).logits.argmax(1)
        else:
            smoother.counts(rows_x, rows_mask, per_row, 1)


@pytest.mark.parametrize("mode", MODES)
def test_bench_smoothing(benchmark, mode):
    case = make_case()
    step(mode, case)  # warm-up
    benchmark.group = f"smoothing-draws-{DRAW_BATCH}"
    benchmark.extra_info.update(mode=mode, draws=DRAW_BATCH, threads=torch.get_num_threads())
    benchmark(step, mode, case)
    benchmark.extra_info["draws_per_second"] = DRAW_BATCH / benchmark.stats.stats.median


def interleaved(rounds: int, batch: int) -> dict[str, float]:
    """Median seconds per batch of each mode, the modes alternating within every round."""
    case = make_case(batch)
    for mode in MODES:
        step(mode, case)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(rounds):
        for mode in MODES:
            start = time.perf_counter()
            step(mode, case)
            times[mode].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=DRAW_BATCH)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    median = interleaved(args.rounds, args.batch)
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, rounds {args.rounds}")
    for mode, seconds in median.items():
        print(f"{mode:14s} {seconds * 1e3:8.1f} ms/batch {args.batch / seconds:9.0f} draws/s "
              f"{median['forward'] / seconds:5.2f} of forward alone")


if __name__ == "__main__":
    main()
