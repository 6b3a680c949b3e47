"""The ``mmfast`` console script. Each verb lives in its own module, which exposes
``register(subparsers)`` adding its sub-parser and setting ``func`` (called with the parsed
arguments, returning an exit code).

Expected failures (a bad path, an unknown name, a missing optional dependency, Ctrl-C) print
one line on stderr and exit non-zero; ``--debug`` (anywhere on the command line) or
``MMFAST_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
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

#: top-level module of an optional dependency -> the extra that installs it (pyproject.toml)
EXTRAS: dict[str, str] = {
    "av": "data", "PIL": "data", "scipy": "data", "sklearn": "data",
    "espeakng_loader": "data", "nvidia": "data",
    "matplotlib": "report",
    "tqdm": "train",
    "triton": "triton",
}

#: module -> package name, where they differ
DISTRIBUTIONS: dict[str, str] = {
    "PIL": "pillow", "sklearn": "scikit-learn", "espeakng_loader": "espeakng-loader",
    "nvidia": "nvidia-dali-cuda130",
}

#: exit codes: 1 an expected failure, 2 a usage error (argparse's), 3 a missing extra,
#: 130 interrupted (the shell's code for SIGINT)
EXIT_ERROR, EXIT_USAGE, EXIT_MISSING_EXTRA, EXIT_INTERRUPTED = 1, 2, 3, 130

#: exceptions that are expected failures (bad input or environment), shown as one line
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError)

#: what Ctrl-C prints per verb, after "interrupted"
RESUME_HINTS: dict[str, str] = {
    "train": "re-running the same command resumes from the last finished epoch saved in "
             "--out (--no-resume starts over)",
    "demo": "re-running the same command resumes: generated data and finished training "
            "stages in --out are reused",
}


class CLIParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``prog: error: ... (see prog --help)``)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    from mmfast import __version__

    try:
        import torch

        torch_version = f"torch {torch.__version__}"
    except ImportError:
        torch_version = "torch not installed"
    return f"mmfast {__version__} ({torch_version}, Python {sys.version.split()[0]})"


def missing_extra(exc: BaseException) -> str | None:
    """The extra whose installation fixes ``exc`` (a ModuleNotFoundError), else None."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    return EXTRAS.get(exc.name.split(".")[0])


def missing_extra_message(exc: ModuleNotFoundError, extra: str) -> str:
    module = exc.name.split(".")[0]
    return (f"needs the optional package {DISTRIBUTIONS.get(module, module)!r} (module "
            f"{exc.name!r} is missing): pip install 'mmfast[{extra}]' (or 'mmfast[all]')")


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(
        prog="mmfast",
        description="Robust multi-modal learning: data, training, evaluation protocols, "
        "reports and kernel benchmarks.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: MMFAST_DEBUG=1)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (they show only on a terminal anyway)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, module in VERBS.items():
        try:
            importlib.import_module(module).register(sub)
        except ImportError as exc:  # a verb whose optional dependency is missing
            p = sub.add_parser(verb, help=f"(unavailable: {exc})", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=lambda args, exc=exc: _raise(exc))
    _add_everywhere(parser)
    return parser


def _raise(exc: BaseException) -> int:
    raise exc


def _add_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--debug`` and ``--quiet`` on every sub-command too (``mmfast train ... --debug``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                known = {s for a in sub._actions for s in a.option_strings}
                if "--debug" not in known:
                    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                     help="show the full traceback of an error")
                if "--quiet" not in known:
                    sub.add_argument("--quiet", action="store_true",
                                     default=argparse.SUPPRESS, help="no progress bars")
                _add_everywhere(sub)


def _say(verb: str | None, message: str) -> None:
    print(f"mmfast{' ' + verb if verb else ''}: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(args.debug) or os.environ.get("MMFAST_DEBUG") == "1"
    if args.quiet:
        from mmfast import progress

        progress.set_enabled(False)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    verb = args.verb
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        hint = RESUME_HINTS.get(verb)
        _say(verb, "interrupted" + (f"; {hint}" if hint else ""))
        return EXIT_INTERRUPTED
    except ImportError as exc:
        extra = missing_extra(exc)
        if debug or extra is None:
            raise
        _say(verb, missing_extra_message(exc, extra))
        return EXIT_MISSING_EXTRA
    except EXPECTED_ERRORS as exc:
        if debug:
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        _say(verb, f"error: {text} (--debug shows the traceback)")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
