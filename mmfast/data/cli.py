"""``mmfast data``: make the built-in dataset, build manifests of real datasets, inspect and
check data. Registered by :mod:`mmfast.cli`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from mmfast.cli_args import existing_folder, output_folder
from mmfast.nn.model import MODALITIES


def _make(args: argparse.Namespace) -> int:
    from mmfast.data.avdigits import AVDigitsConfig, make_avdigits
    from mmfast.data.speech import SpeechUnavailableError

    try:
        config = AVDigitsConfig(num_per_class=args.num_per_class, seed=args.seed,
                                missing_rate=args.missing_rate)
    except ValueError as exc:
        print(f"mmfast data make: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if not args.quiet and (done == total or done % 100 == 0):
            print(f"\r[avdigits] {done}/{total} samples", end="\n" if done == total else "",
                  file=sys.stderr, flush=True)

    try:
        path = make_avdigits(args.out, config, workers=args.workers, progress=progress)
    except SpeechUnavailableError as exc:
        print(f"mmfast data make: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({10 * config.num_per_class} samples) in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def _adapt(args: argparse.Namespace) -> int:
    from mmfast.data.adapters import ADAPTERS

    try:
        path = ADAPTERS[args.dataset](args.src, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"mmfast data adapt: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def describe(root: str) -> dict:
    """Counts per split, label and modality of a dataset (what ``mmfast data info`` prints)."""
    from mmfast.data.manifest import SPLITS, read_manifest

    manifest = read_manifest(root)
    summary: dict = {"manifest": str(manifest.root), "num_classes": manifest.num_classes,
                     "splits": {}}
    for split in SPLITS:
        samples = manifest.split(split)
        summary["splits"][split] = {
            "samples": len(samples),
            "per_label": dict(sorted(Counter(s.label for s in samples).items())),
            "present": {m: sum(1 for s in samples if s.paths.get(m)) for m in MODALITIES},
        }
    if manifest.info:
        summary["info"] = manifest.info
    return summary


def _info(args: argparse.Namespace) -> int:
    from mmfast.data.integrity import scan
    from mmfast.data.manifest import read_manifest

    try:
        summary = describe(args.dir)
        if not args.no_files:
            summary["files"] = scan(read_manifest(args.dir), full=args.check,
                                    progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError) as exc:
        print(f"mmfast data info: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    problems = summary.get("files", {}).get("problems", {})
    if problems:
        counts = ", ".join(f"{m} {p['count']} ({p['truncated']} truncated)"
                           for m, p in problems.items())
        print(f"mmfast data info: files with problems: {counts}; the loaders load them as "
              f"missing (see \"files\" above)", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from mmfast.data.difficulty import measure_difficulty

    acc = measure_difficulty(args.dir, epochs=args.epochs, seed=args.seed,
                             decode_device=args.decode_device)
    print(json.dumps({"test_accuracy": acc}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` verb and its sub-commands."""
    data = subparsers.add_parser(
        "data", help="make, adapt, inspect and check datasets",
        description="Datasets for mmfast: the built-in avdigits data and manifests of real "
                    "audio-visual datasets.")
    data.set_defaults(func=lambda args: (data.print_help(), 0)[1])
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND")

    make = sub.add_parser(
        "make", help="generate a built-in dataset",
        description="Generate the avdigits dataset: per sample a VP9/WebM video of a moving "
                    "handwritten digit, a 16 kHz WAV of the digit spoken by espeak-ng over "
                    "noise, and a PNG of another handwritten sample, with train/val/test "
                    "splits in manifest.csv. Deterministic for a given seed.")
    make.add_argument("dataset", choices=["avdigits"], help="which dataset")
    make.add_argument("--out", required=True, type=output_folder, help="output folder")
    make.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    make.add_argument("--num-per-class", type=int, default=100,
                      help="samples per digit over all splits, cut 60/20/20 (default 100)")
    make.add_argument("--missing-rate", type=float, default=0.0,
                      help="fraction of samples written without one (random) modality "
                           "(default 0)")
    make.add_argument("--workers", type=int, default=1,
                      help="parallel processes (same bytes whatever the number; default 1)")
    make.add_argument("--quiet", action="store_true", help="no progress output")
    make.set_defaults(func=_make)

    adapt = sub.add_parser(
        "adapt", help="write a manifest for a real dataset's folder",
        description="Build manifest.csv (+ info.json) for a real dataset laid out as its "
                    "distribution ships it; files stay where they are. See docs/data.md.")
    adapt.add_argument("dataset", choices=["avmnist", "crema-d", "kinetics-sounds"],
                       help="which dataset's layout --src has")
    adapt.add_argument("--src", required=True, type=existing_folder,
                       help="the dataset's root folder")
    adapt.add_argument("--out", required=True, type=output_folder,
                       help="folder for manifest.csv and info.json")
    adapt.set_defaults(func=_adapt)

    info = sub.add_parser(
        "info", help="print counts per split, label and modality; check the files",
        description="Summarize a dataset folder's manifest as JSON and check that every file "
                    "it lists exists and decodes (header, first frame, and a truncation check "
                    "of the header against the file). Exits 1 when a file has a problem.")
    info.add_argument("dir", help="dataset folder (or manifest file)")
    info.add_argument("--check", action="store_true",
                      help="full pass: decode every frame and sample of every file and compare "
                           "with what the file's header declares (slower)")
    info.add_argument("--no-files", action="store_true",
                      help="counts only, do not open the files")
    info.set_defaults(func=_info)

    check = sub.add_parser(
        "check", help="accuracy of a small CNN per modality and of their fusion",
        description="Train a small CNN per modality on the train split and print test "
                    "accuracy of each alone and of their late fusion (minutes on CPU).")
    check.add_argument("dir", help="dataset folder (or manifest file)")
    check.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    check.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    check.add_argument("--decode-device", choices=["auto", "cpu", "gpu"], default="auto",
                       help="where DALI decodes (default auto)")
    check.set_defaults(func=_check)
