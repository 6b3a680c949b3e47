"""``mmfast eval RUN... --data DIR``: run the protocols on trained runs -> RUN/eval.json."""

from __future__ import annotations

import argparse
import json

from mmfast import progress
from mmfast.cli_args import dataset_folder, run_folder
from mmfast.eval.common import EVAL_PRESETS, EvalConfig, list_protocols, protocol_count
from mmfast.eval.protocols import EVAL_FILE, evaluate_run

__all__ = ["register", "eval_config_from_args", "add_eval_arguments"]


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``eval`` and ``demo``: preset, protocols, device, JSON overrides."""
    parser.add_argument("--eval-preset", default="small", choices=sorted(EVAL_PRESETS),
                        help="sweep sizes (default: small, the CPU demo's)")
    parser.add_argument("--protocols", nargs="+", metavar="NAME", default=None,
                        choices=list_protocols(),
                        help=f"protocols to run (default: all of {', '.join(list_protocols())})")
    parser.add_argument("--eval-overrides", metavar="JSON", default=None,
                        help='EvalConfig fields as JSON, e.g. \'{"attack_eps": [0, 1]}\'')


def eval_config_from_args(args: argparse.Namespace, device: str) -> EvalConfig:
    overrides = json.loads(args.eval_overrides) if args.eval_overrides else {}
    if not isinstance(overrides, dict):
        raise ValueError(f"--eval-overrides: expected a JSON object, got {overrides!r}")
    cfg = EvalConfig.preset(args.eval_preset, device=device)
    values = {**cfg.to_dict(), **overrides}
    if "clamp" not in overrides:  # eval and demo clamp attacks the same way
        from mmfast.eval.adversarial import default_clamp
        values["clamp"] = default_clamp()
    if args.protocols:
        values["protocols"] = list(args.protocols)
    return EvalConfig.from_dict(values)


def register(subparsers) -> None:
    # eager import so the verb shows as unavailable when the protocols cannot load
    import mmfast.eval.protocols  # noqa: F401

    p = subparsers.add_parser(
        "eval", help="run the robustness protocols on trained runs",
        description="Load each RUN folder's model (mmfast train / demo), run the protocols "
        f"(missing subsets, missing rate, noise, attacks, certification) on a split and "
        f"write RUN/{EVAL_FILE}.")
    p.add_argument("runs", nargs="+", metavar="RUN", type=run_folder("model.pt"),
                   help="run folders holding model.pt")
    p.add_argument("--data", required=True, metavar="DIR", type=dataset_folder,
                   help="dataset folder (mmfast data make avdigits DIR)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_eval_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mmfast.train import load_model
    from mmfast.train.provenance import environment, load_splits
    from mmfast.train.rundir import main_process_lock

    cfg = eval_config_from_args(args, args.device)
    splits, dataset = load_splits(args.data, [args.split])  # + files loaded as absent
    data = splits[args.split]
    facts = {"dataset": dataset, "provenance": environment(args.device)}
    for run in args.runs:
        model = load_model(run, device=args.device)
        meta_method = _method_of(run)
        print(f"[eval] {run} ({meta_method})")
        with main_process_lock(run):  # not while another process writes the run folder
            log = progress.protocol_log(protocol_count(cfg), f"eval {meta_method}", echo=print)
            path = evaluate_run(run, model, data, cfg, method=meta_method, log=log,
                                extra=facts)
        print(f"[eval] wrote {path}")
    return 0


def _method_of(run: str) -> str | None:
    from pathlib import Path

    stats = Path(run) / "train_stats.json"
    return json.loads(stats.read_text()).get("method") if stats.is_file() else None
