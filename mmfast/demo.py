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
           "seed_runs", "register"]

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
             log: Callable[[str], None] = print, force: bool = False,
             seeds: int = 1, jobs: int | str = 1) -> Path:
    """Run the whole job into ``out`` (data/, runs/<method>/, provenance.json, report.md +
    PNGs); returns the report path. A run of ``out`` trained with another config is an error
    unless ``force`` (see ``mmfast.train.fit_method``). ``seeds`` > 1 trains every method
    that many times (seeds TrainConfig.seed + 0, 1, ...; runs/<method>/seed<k>/) for the
    report's mean +- sd and the claims' verdicts; one seed gives only indicative claims.
    ``jobs``: trainings run at once (``resolve_jobs``; "auto" = one per CPU core on CPU)."""
    from mmfast.eval.common import EvalConfig, protocol_count
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
    splits, dataset = _load_splits(data_root, clock)
    train_cfg = TrainConfig.preset(spec.train_preset, device=device, progress=False,
                                   **{**spec.train, **(train_overrides or {})})
    train_cfg = dataclasses.replace(train_cfg, progress=_progress.enabled())  # per-epoch bars
    eval_device = str(train_cfg.resolved_device())
    eval_cfg = eval_cfg or EvalConfig.preset(spec.eval_preset, device=eval_device)
    if eval_cfg.clamp is None:
        from mmfast.eval.adversarial import default_clamp
        eval_cfg = dataclasses.replace(eval_cfg, clamp=default_clamp())
    provenance = {"dataset": dataset, "preset": preset,
                  "seeds": [train_cfg.seed + k for k in range(seeds)]}
    tasks = seed_runs(out / "runs", names, seeds, train_cfg.seed)
    workers = resolve_jobs(jobs, train_cfg.resolved_device().type, len(tasks))
    if workers == 1:
        for seed, name, run_dir in tasks:
            cfg = dataclasses.replace(train_cfg, seed=seed)
            model, stats = fit_method(name, splits["train"], splits["val"], cfg, run_dir,
                                      force=force, provenance=provenance)
            clock.step(f"trained {name}{_seed_label(seed, seeds)} ({stats['num_parameters']:,} "
                       f"parameters, {stats['train_time_s']:.0f} s)")
            evaluate_run(run_dir, model, splits["test"], eval_cfg, method=name,
                         log=_progress.protocol_log(protocol_count(eval_cfg), f"eval {name}"))
            clock.step(f"evaluated {name}{_seed_label(seed, seeds)}")
    else:
        _run_parallel(tasks, workers, splits, train_cfg, eval_cfg, seeds, clock,
                      force=force, provenance=provenance)
    run_dirs = [run_dir for _, _, run_dir in tasks]
    _write_provenance(out, provenance, names, train_cfg, eval_cfg)
    report = write_report(run_dirs, out)
    clock.step(f"report: {report}")
    return report


def seed_runs(root: Path, names: Sequence[str], seeds: int, base_seed: int = 0
              ) -> list[tuple[int, str, Path]]:
    """(seed, method, run folder) of every training, seed-major (every method of the first
    seed before any of the second: a job stopped early still has complete seeds).

    One seed keeps the folder ``root/<method>``; several use ``root/<method>/seed<k>``.
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds: expected an integer >= 1, got {seeds!r}")
    return [(base_seed + k, name,
             root / name if seeds == 1 else root / name / f"seed{base_seed + k}")
            for k in range(seeds) for name in names]


def resolve_jobs(jobs: int | str, device_type: str, tasks: int) -> int:
    """Worker processes for ``tasks`` trainings: an int >= 1, or "auto" (one per CPU core
    on CPU, each with one torch thread; 1 on an accelerator). Never more than ``tasks``.

    Small CPU models use two intra-op threads poorly; independent trainings (methods x
    seeds) in separate one-thread processes keep every core busy.
    """
    if jobs == "auto":
        jobs = 1 if device_type != "cpu" else max(1, os.cpu_count() or 1)
    if isinstance(jobs, str) and jobs.isdigit():
        jobs = int(jobs)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"--jobs: expected an integer >= 1 or 'auto', got {jobs!r}")
    return max(1, min(jobs, tasks))


_WORKER: dict[str, Any] = {}


def _init_worker(splits, train_cfg, eval_cfg, threads: int, force: bool = False,
                 provenance: dict | None = None) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(splits=splits, train_cfg=train_cfg, eval_cfg=eval_cfg, force=force,
                   provenance=provenance)


def _train_and_evaluate(task: tuple[int, str, Path]) -> tuple[int, str, int, float]:
    """One (seed, method, run folder) in a worker: train, evaluate, write the run folder."""
    from mmfast.eval.protocols import evaluate_run
    from mmfast.train import fit_method

    seed, name, run_dir = task
    splits = _WORKER["splits"]
    cfg = dataclasses.replace(_WORKER["train_cfg"], seed=seed)
    model, stats = fit_method(name, splits["train"], splits["val"], cfg, run_dir,
                              force=_WORKER["force"], provenance=_WORKER["provenance"])
    evaluate_run(run_dir, model, splits["test"], _WORKER["eval_cfg"], method=name)
    return seed, name, int(stats["num_parameters"]), float(stats["train_time_s"])


def _run_parallel(tasks, workers: int, splits, train_cfg, eval_cfg, seeds: int,
                  clock: _Clock, *, force: bool = False, provenance: dict | None = None
                  ) -> None:
    """Every task in ``workers`` spawned processes (one torch thread each on CPU)."""
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    clock.step(f"{len(tasks)} trainings in {workers} processes of {threads} thread(s)")
    init = (splits, train_cfg, eval_cfg, threads, force, provenance)
    with context.Pool(workers, _init_worker, init) as pool:
        for seed, name, params, seconds in pool.imap_unordered(_train_and_evaluate, tasks):
            clock.step(f"trained and evaluated {name}{_seed_label(seed, seeds)} "
                       f"({params:,} parameters, {seconds:.0f} s training)")


def _seed_label(seed: int, seeds: int) -> str:
    return "" if seeds == 1 else f" seed {seed}"


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


def _load_splits(root: Path, clock: _Clock) -> tuple[dict, dict]:
    """(splits, dataset description with the files loaded as absent: see
    ``mmfast.train.provenance``)."""
    from mmfast.train.provenance import load_splits

    splits, dataset = load_splits(root, ("train", "val", "test"))
    clock.step("data: decoded " + ", ".join(f"{s} {v['label'].numel()}"
                                            for s, v in splits.items()))
    if dataset["problem_count"]:
        clock.step(f"data: {dataset['problem_count']} file(s) missing, undecodable or "
                   "truncated (listed in provenance.json and the report)")
    return splits, dataset


#: The demo folder's provenance file (the report reads it when given the demo folder).
PROVENANCE_FILE = "provenance.json"


def _write_provenance(out: Path, run_facts: dict, methods: Sequence[str], train_cfg,
                      eval_cfg) -> None:
    """Write OUT/provenance.json: this demo's command, versions, device, date, dataset,
    seeds, preset (``run_facts``, which each run's train_stats.json repeats) and configs.
    Written once every run is trained, so a refused re-run leaves the previous one."""
    from mmfast.eval.common import write_json_atomic
    from mmfast.train.provenance import environment

    write_json_atomic(out / PROVENANCE_FILE, {
        **environment(train_cfg.resolved_device()), **run_facts, "methods": list(methods),
        "train_config": train_cfg.to_dict(), "eval_config": eval_cfg.to_dict()})


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
    p.add_argument("--force", action="store_true",
                   help="retrain runs in OUT that were trained with a different config "
                   "(without it that is an error)")
    p.add_argument("--jobs", default="auto", metavar="J",
                   help="trainings at once, each in its own process (default auto: one per "
                   "CPU core with one thread each on CPU, 1 on a GPU)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train every method N times (seeds 0..N-1): tables show mean +- sd "
                   "and claims get verdicts (default 1: claims only indicative)")
    add_eval_arguments(p)
    p.set_defaults(func=_run, eval_preset=None)


def _run(args: argparse.Namespace) -> int:
    from mmfast.eval.cli import eval_config_from_args
    from mmfast.train import TrainConfig
    from mmfast.train.rundir import main_process_lock

    preset = DEMO_PRESETS[args.preset]
    if args.eval_preset is None:
        args.eval_preset = preset.eval_preset
    device = str(TrainConfig(device=args.device).resolved_device())
    with main_process_lock(args.out):  # one demo per folder (data, runs, report)
        report = run_demo(args.out, args.preset, args.methods, args.data, args.device,
                          eval_config_from_args(args, device), force=args.force,
                          seeds=args.seeds, jobs=args.jobs)
    print(f"report: {report}")
    return 0
