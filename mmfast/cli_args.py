"""Argument types shared by the ``mmfast`` verbs: paths checked at parse time, so that a bad
path is one line naming the flag the user typed (``argument --data: no such folder: ...``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

__all__ = ["existing_folder", "dataset_folder", "output_folder", "run_folder", "positive_int",
           "positive_float", "non_negative_float"]


def _fail(message: str):
    raise argparse.ArgumentTypeError(message)


def existing_folder(value: str) -> str:
    """A folder that exists."""
    path = Path(value)
    if not path.exists():
        _fail(f"no such folder: {value}")
    if not path.is_dir():
        _fail(f"{value} is a file, expected a folder")
    return value


def dataset_folder(value: str) -> str:
    """A dataset folder holding manifest.csv, or a manifest file itself."""
    path = Path(value)
    if not path.exists():
        _fail(f"no such dataset folder: {value} (make one with `mmfast data make avdigits "
              f"--out {value}` or `mmfast data adapt`)")
    if path.is_dir() and not (path / "manifest.csv").is_file():
        _fail(f"{value} has no manifest.csv (make one with `mmfast data make avdigits --out "
              f"DIR` or `mmfast data adapt`)")
    return value


def output_folder(value: str) -> str:
    """A folder to write into: absent (it is created) or a folder, never an existing file."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        _fail(f"{value} is an existing file, expected a folder (created if absent)")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            _fail(f"{parent} (in {value}) is a file, expected a folder")
    return value


def run_folder(required_file: str | None = None) -> Callable[[str], str]:
    """A run folder that exists (and holds ``required_file`` when given)."""

    def check(value: str) -> str:
        existing_folder(value)
        if required_file and not (Path(value) / required_file).exists():
            _fail(f"{value} has no {required_file} (is it a run folder written by "
                  f"`mmfast train` or `mmfast demo`?)")
        return value

    check.__name__ = "run folder"
    return check


def _number(kind: type, what: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            _fail(f"expected {what}, got {value!r}")
        if not ok(number):
            _fail(f"expected {what}, got {value}")
        return number

    parse.__name__ = what
    return parse


#: argparse types for counts and rates (errors name the flag and the expected range)
positive_int = _number(int, "a positive integer", lambda v: v > 0)
positive_float = _number(float, "a positive number", lambda v: v > 0)
non_negative_float = _number(float, "a number >= 0", lambda v: v >= 0)
