"""The ``mmfast`` console script. Each verb lives in its own module, which exposes
``register(subparsers)`` adding its sub-parser and setting ``func`` (called with the parsed
arguments, returning an exit code)."""

from __future__ import annotations

import argparse
import importlib
import sys

#: verb -> module that registers it
VERBS: dict[str, str] = {
    "data": "mmfast.data.cli",
    "train": "mmfast.train.cli",
    "eval": "mmfast.eval.cli",
    "report": "mmfast.eval.report_cli",
    "demo": "mmfast.demo",
    "bench": "mmfast.bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmfast",
        description="Robust multi-modal learning: data, training, evaluation protocols, "
        "reports and kernel benchmarks.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, module in VERBS.items():
        try:
            importlib.import_module(module).register(sub)
        except ImportError as exc:  # a verb whose optional dependency is missing
            p = sub.add_parser(verb, help=f"(unavailable: {exc})")
            p.set_defaults(func=lambda args, exc=exc: _unavailable(exc))
    return parser


def _unavailable(exc: Exception) -> int:
    print(f"mmfast: this verb is unavailable: {exc}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
