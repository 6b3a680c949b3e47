"""``mmfast bench``: run each fused op on every usable backend, check it against the reference
and print a table of timings. A quick health check of an installation (``--quick``, the
default: small sizes, seconds; ``--full``: the moderate sizes, minutes on a CPU); the rigorous,
side-by-side numbers come from ``pytest benchmarks --benchmark-only``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from mmfast import backends_summary, ops
from mmfast._io import write_text_atomic
from mmfast.ops._dispatch import unavailable_reason

BACKEND_ORDER = ("reference", "cpp", "cuda", "triton")

#: (batch, timed repeats) of each mode; the plain-PyTorch reference of noisy_modality_dropout
#: dominates a CPU run (seconds per call at the full size)
MODES: dict[str, tuple[int, int]] = {"quick": (256, 3), "full": (1024 * 16, 5)}


def _cases(device: str, batch: int) -> dict[str, tuple[Callable, Callable]]:
    """op -> (call(backend), bytes moved) at batch size ``batch``."""
    B = batch
    x = torch.randn(B, 3, 256, device=device)
    mask = torch.rand(B, 3, device=device) < 0.7
    z = torch.randn(B, 3, 20, device=device)
    target = torch.randint(0, 20, (B,), device=device)
    lip = torch.rand(3, 20, 20, device=device) + 0.5
    frames = torch.randn(max(B // 8, 1), 8, 3, 32, 32, device=device)
    z4 = torch.randn(B, 4, 20, device=device)

    def size(*ts):
        return sum(t.numel() * t.element_size() for t in ts)

    return {
        "masked_fusion": (lambda b: ops.masked_fusion(x, mask, backend=b)[0],
                          size(x, mask) + size(x) // 3),
        "certified_margin": (lambda b: ops.certified_margin(z, target, lip, mask, backend=b)[0],
                             size(z, target, lip, mask) + 16 * B),
        "noisy_modality_dropout": (
            lambda b: ops.noisy_modality_dropout(frames, 0.3, 0.1, seed=1, backend=b)[0],
            2 * size(frames)),
        "subset_accuracy": (lambda b: ops.subset_accuracy(z4, target, backend=b),
                            size(z4, target)),
    }


def _time(fn: Callable, device: str, repeats: int, warm: bool = False) -> float:
    if not warm:
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run(device: str = "cpu", batch: int = MODES["quick"][0],
        repeats: int = MODES["quick"][1]) -> list[dict]:
    """One row per (op, backend): median ms, GB/s, max |error| vs the reference, speed-up."""
    rows = []
    for op, (call, moved) in _cases(device, batch).items():
        want = call("reference")
        ref_s = None
        for backend in BACKEND_ORDER:
            reason = unavailable_reason(op, backend, torch.device(device))
            if reason is not None and "runs on" in reason:
                continue  # a backend for another device type
            if reason is not None:
                rows.append({"op": op, "backend": backend, "status": f"skipped: {reason}"})
                continue
            got = call(backend)
            err = (got.double() - want.double()).nan_to_num(posinf=0, neginf=0).abs().max()
            seconds = _time(lambda b=backend, c=call: c(b), device, repeats,
                            warm=backend == "reference")  # just ran: ``want``
            ref_s = seconds if backend == "reference" else ref_s
            rows.append({"op": op, "backend": backend, "status": "ok",
                         "ms": round(seconds * 1e3, 3), "gb_per_s": round(moved / seconds / 1e9, 2),
                         "max_abs_error": float(err),
                         "speedup_vs_reference": round(ref_s / seconds, 2)})
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'op':<24}{'backend':<11}{'ms':>10}{'GB/s':>9}{'x ref':>8}{'max err':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['op']:<24}{r['backend']:<11}  {r['status']}")
            continue
        lines.append(f"{r['op']:<24}{r['backend']:<11}{r['ms']:>10.3f}{r['gb_per_s']:>9.2f}"
                     f"{r['speedup_vs_reference']:>8.2f}{r['max_abs_error']:>11.2e}")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch, repeats = MODES[args.mode]
    if args.scale is not None:
        batch = 1024 * args.scale
    repeats = args.repeats if args.repeats is not None else repeats
    print(f"mmfast backends: {backends_summary()}")
    print(f"device={device} threads={torch.get_num_threads()} mode={args.mode} batch={batch} "
          f"repeats={repeats}\n")
    rows = run(device, batch, repeats)
    print(format_table(rows))
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time every fused op on every usable backend (quick check)",
        description="Runs each fused op on every usable backend (--quick: small sizes, the "
        "default; --full: moderate sizes), checks it "
        "against the reference and prints median time, GB/s, speed-up and max error. For "
        "side-by-side numbers with torch.compile use `pytest benchmarks --benchmark-only`.")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help=f"small sizes, seconds (the default: batch {MODES['quick'][0]}, "
                      f"{MODES['quick'][1]} repeats)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help=f"moderate sizes, minutes on a CPU (batch {MODES['full'][0]}, "
                      f"{MODES['full'][1]} repeats)")
    p.add_argument("--scale", type=int, default=None, metavar="K",
                   help="batch = 1024 * K instead of the mode's")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="timed repeats per case, median reported (default: the mode's)")
    p.add_argument("--json", metavar="FILE", help="also write the rows to this JSON file")
    p.set_defaults(mode="quick")
    p.set_defaults(func=_main)
