"""``mmfast demo``: the main job, from nothing to the report in one command.

built-in data (avdigits) -> train each method (``mmfast.train.fit_method``) -> every
evaluation protocol (``mmfast.eval.run_protocols`` -> RUN/eval.json) -> report.md + plots.

The "small" preset (default) fits joint, late fusion, UME-MMA and CRMT and runs every
protocol in at most 15 minutes on 2 CPU cores; "gpu" uses more data, larger models and
denser sweeps. Re-running reuses the generated data and resumes finished training stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfast import progress as _progress

__all__ = ["DemoPreset", "DEMO_PRESETS", "DEFAULT_METHODS", "resolve_methods", "run_demo",
           "register"]

#: Valid input range of the avdigits pixel modalities (audio log-mel is not clamped, as in
#: CRMT's rob_test.py): attacks clamp to it.
PIXEL_CLAMP = {"video": (0.0, 1.0), "image": (0.0, 1.0)}

#: The methods of the main job (issue 6); ``--methods all`` adds every registered method.
DEFAULT_METHODS = ("joint", "late", "ume_mma", "crmt")


@dataclass(frozen=True)
class DemoPreset:
    """Sizes of one demo run: data, training preset (``TrainConfig.preset``), eval sweeps."""

    train_preset: str
    eval_preset: str
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    data: dict[str, Any] = field(default_factory=dict)  # AVDigitsConfig overrides
    data_workers: int = 2


DEMO_PRESETS: dict[str, DemoPreset] = {
    "small": DemoPreset("small", "small"),  # TrainConfig "small" is sized for this job
    # Twice the epochs on the same CPU-sized models: the methods that train on dropped
    # modality subsets (DMRNet, MMANet) need it to show their missing-modality gains.
    "long": DemoPreset("small", "small", train={"epochs": 30}),
    "gpu": DemoPreset("gpu", "gpu", data={"num_per_class": 400},
                      data_workers=max(1, min(16, os.cpu_count() or 1))),
}


def resolve_methods(methods: Sequence[str]) -> list[str]:
    """Expand ``all`` to every registered method and reject unknown names."""
    from mmfast.methods import list_methods

    known = list_methods()
    names: list[str] = []
    for m in methods:
        for name in (known if m == "all" else [m]):
            if name not in known:
                raise ValueError(f"--methods: expected names among {known} or 'all', got {m!r}")
            if name not in names:
                names.append(name)
    return names


def run_demo(out: str | os.PathLike, preset: str = "small",
             methods: Sequence[str] = DEFAULT_METHODS, data_dir: str | os.PathLike | None = None,
             device: str = "auto", eval_cfg=None, train_overrides: dict | None = None,
             log: Callable[[str], None] = print) -> Path:
    """Run the whole job into ``out`` (data/, runs/<method>/, report.md + PNGs); returns
    the report path."""
    from mmfast.eval.common import EvalConfig
    from mmfast.eval.protocols import evaluate_run
    from mmfast.eval.report import write_report
    from mmfast.train import TrainConfig, fit_method

    if preset not in DEMO_PRESETS:
        raise ValueError(f"preset: expected one of {sorted(DEMO_PRESETS)}, got {preset!r}")
    spec = DEMO_PRESETS[preset]
    names = resolve_methods(methods)
    out = Path(out)
    clock = _Clock(log)
    data_root = Path(data_dir) if data_dir is not None else out / "data"
    _ensure_data(data_root, spec, clock)
    splits = _load_splits(data_root, clock)
    train_cfg = TrainConfig.preset(spec.train_preset, device=device, progress=False,
                                   **{**spec.train, **(train_overrides or {})})
    train_cfg = dataclasses.replace(train_cfg, progress=_progress.enabled())  # per-epoch bars
    eval_device = str(train_cfg.resolved_device())
    eval_cfg = eval_cfg or EvalConfig.preset(spec.eval_preset, device=eval_device)
    if eval_cfg.clamp is None:
        eval_cfg = dataclasses.replace(eval_cfg, clamp=PIXEL_CLAMP)
    run_dirs = []
    for name in names:
        run_dir = out / "runs" / name
        model, stats = fit_method(name, splits["train"], splits["val"], train_cfg, run_dir)
        clock.step(f"trained {name} ({stats['num_parameters']:,} parameters, "
                   f"{stats['train_time_s']:.0f} s)")
        evaluate_run(run_dir, model, splits["test"], eval_cfg, method=name)
        clock.step(f"evaluated {name}")
        run_dirs.append(run_dir)
    report = write_report(run_dirs, out)
    clock.step(f"report: {report}")
    return report


class _Clock:
    """Logs each step with the time since the previous one and since the start."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.start = log, time.perf_counter()
        self.last = self.start

    def step(self, message: str) -> None:
        now = time.perf_counter()
        self.log(f"[demo {now - self.start:6.0f} s | +{now - self.last:5.0f} s] {message}")
        self.last = now


def _ensure_data(root: Path, spec: DemoPreset, clock: _Clock) -> None:
    if (root / "manifest.csv").is_file():
        clock.step(f"data: reusing {root}")
        return
    from mmfast.data.avdigits import AVDigitsConfig, make_avdigits

    make_avdigits(root, AVDigitsConfig(**spec.data), workers=spec.data_workers,
                  progress=_progress.counter("avdigits", unit="sample"))
    clock.step(f"data: generated avdigits in {root}")


def _load_splits(root: Path, clock: _Clock) -> dict:
    from mmfast.data.loader import load_split

    splits = {s: load_split(root, s) for s in ("train", "val", "test")}
    clock.step("data: decoded " + ", ".join(f"{s} {v['label'].numel()}"
                                            for s, v in splits.items()))
    return splits


def register(subparsers) -> None:
    from mmfast.cli_args import output_folder
    from mmfast.eval.cli import add_eval_arguments

    p = subparsers.add_parser(
        "demo", help="the main job: data -> train methods -> every protocol -> report",
        description="Generate the built-in avdigits data, train each method, run every "
        "evaluation protocol and write OUT/report.md with its PNG plots. The small preset "
        "(default) takes at most 15 minutes on 2 CPU cores.")
    p.add_argument("--out", default="runs/demo", metavar="DIR", type=output_folder,
                   help="output folder (default: runs/demo)")
    p.add_argument("--preset", default="small", choices=sorted(DEMO_PRESETS),
                   help="small: 2 CPU cores, <= 15 min; long: small with twice the epochs; "
                   "gpu: more data, larger models")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="NAME",
                   help=f"methods to train ('all' = every registered method; default: "
                   f"{' '.join(DEFAULT_METHODS)})")
    p.add_argument("--data", default=None, metavar="DIR", type=output_folder,
                   help="existing or target dataset folder (default: OUT/data)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    add_eval_arguments(p)
    p.set_defaults(func=_run, eval_preset=None)


def _run(args: argparse.Namespace) -> int:
    from mmfast.eval.cli import eval_config_from_args
    from mmfast.train import TrainConfig

    preset = DEMO_PRESETS[args.preset]
    if args.eval_preset is None:
        args.eval_preset = preset.eval_preset
    device = str(TrainConfig(device=args.device).resolved_device())
    report = run_demo(args.out, args.preset, args.methods, args.data, args.device,
                      eval_config_from_args(args, device))
    print(f"report: {report}")
    return 0
