"""``mmfast train``: fit one registered method on a data set and write its run directory.

Examples:
  mmfast train joint --data data/avdigits --out runs/joint
  mmfast train crmt --data data/avdigits --out runs/crmt --preset small --set rho=1.0
  torchrun --nproc_per_node 2 -m mmfast.cli train late --data data/avdigits --out runs/late
  mmfast train ume_mma --synthetic 512 --out runs/smoke --epochs 1     (no data needed)
"""

from __future__ import annotations

import argparse
import ast
import json
from typing import Any

from mmfast.cli_args import (
    dataset_folder,
    non_negative_float,
    output_folder,
    positive_float,
    positive_int,
)

__all__ = ["register", "parse_overrides", "config_from_args"]


#: (flag, type, metavar, help) of the numeric TrainConfig overrides
_NUMERIC_FLAGS = (
    ("epochs", positive_int, "N", "training epochs of each stage"),
    ("batch-size", positive_int, "N", "samples per optimizer step (over all ranks)"),
    ("lr", positive_float, "LR", "learning rate"),
    ("seed", int, "N", "random seed of initialization, shuffling and augmentation"),
    ("grad-clip", non_negative_float, "NORM",
     "clip the gradient's global l2 norm to NORM (0: off)"),
    ("threads", positive_int, "N", "CPU threads of torch and the C++ kernels"),
)


def _preset_names() -> list[str]:
    from mmfast.train.config import PRESETS

    return list(PRESETS)


def _method_names() -> list[str]:
    from mmfast.methods import list_methods

    return list_methods()


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` verb to the ``mmfast`` parser."""
    p = subparsers.add_parser(
        "train", help="train a method (joint, late, ume, ume_mma, crmt, ...) into a run dir",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=_method_names(), help="registered method name")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="DIR", type=dataset_folder,
                        help="dataset folder holding manifest.csv (mmfast data make / adapt)")
    source.add_argument("--synthetic", type=positive_int, metavar="N",
                        help="train on N synthetic samples instead (smoke runs)")
    p.add_argument("--out", required=True, metavar="DIR", type=output_folder,
                   help="run directory (created; resumed if present)")
    p.add_argument("--preset", default="small", choices=sorted(_preset_names()),
                   help="TrainConfig preset: small (2 CPU cores, minutes) or gpu (larger "
                   "models, more epochs); the flags below override its fields (default: small)")
    p.add_argument("--train-split", default="train", metavar="SPLIT",
                   help="manifest split to train on (default: train)")
    p.add_argument("--val-split", default="val", metavar="SPLIT",
                   help="manifest split scored after each epoch ('' for none; default: val)")
    for name, kind, metavar, what in _NUMERIC_FLAGS:
        p.add_argument(f"--{name}", type=kind, default=None, metavar=metavar,
                       help=f"{what} (default: the preset's)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16", "auto"), default=None,
                   help="mixed precision: none, bf16, fp16, or auto (bf16 on a GPU that has "
                   "it, else none; default: the preset's)")
    p.add_argument("--device", default=None,
                   help="auto (CUDA if available), cpu, cuda, cuda:N (default: the preset's)")
    p.add_argument("--no-progress", action="store_true", help="disable tqdm bars")
    p.add_argument("--no-resume", action="store_true",
                   help="ignore existing checkpoints in --out and start over")
    p.add_argument("--force", action="store_true",
                   help="discard a run in --out trained with a different config and train anew "
                   "(without it, a config that differs from the folder's run is an error)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="method hyper-parameter override (Python literal), repeatable")
    p.set_defaults(func=run)
    return p


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["rho=1.0", "estimator=spectral"] -> {"rho": 1.0, "estimator": "spectral"}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw  # a bare string such as estimator=spectral
    return out


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of a parsed command line (preset + explicit flags)."""
    from mmfast.train.config import TrainConfig

    flags = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
             "seed": args.seed, "grad_clip": args.grad_clip, "amp": args.amp,
             "device": args.device, "num_threads": args.threads}
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.no_progress or getattr(args, "quiet", False):
        overrides["progress"] = False
    if args.no_resume:
        overrides["resume"] = False
    return TrainConfig.preset(args.preset, **overrides)


def _load_data(args: argparse.Namespace):
    """(train, val, dataset description for the run's provenance)."""
    from mmfast.train import provenance

    if args.synthetic is not None:
        from mmfast.train.synthetic import synthetic_split

        n = args.synthetic
        train, val = synthetic_split(n, seed=1), synthetic_split(max(n // 4, 1), seed=2)
        return train, val, provenance.describe_synthetic({"train": train, "val": val},
                                                         {"train": 1, "val": 2})
    names = [args.train_split, *([args.val_split] if args.val_split else [])]
    splits, dataset = provenance.load_splits(args.data, names, device="cpu")
    return splits[args.train_split], splits.get(args.val_split), dataset


def run(args: argparse.Namespace) -> int:
    from mmfast.train.api import fit_method
    from mmfast.train.rundir import main_process_lock

    cfg = config_from_args(args)
    with main_process_lock(args.out):  # a second writer stops before decoding any data
        train, val, dataset = _load_data(args)
        _, stats = fit_method(args.method, train, val, cfg, args.out, force=args.force,
                              provenance={"dataset": dataset, "preset": args.preset,
                                          "seeds": [cfg.seed]},
                              **parse_overrides(args.set))
    summary = {k: stats[k] for k in ("method", "train_time_s", "num_parameters", "final")}
    print(json.dumps(summary, indent=2, default=str))
    return 0
