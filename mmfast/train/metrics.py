"""Metrics as JSON lines, and tqdm progress bars that stay quiet off a terminal."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from mmfast.train.checkpoint import atomic_write_bytes

__all__ = ["JsonlLogger", "progress"]

T = TypeVar("T")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / inf
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


class JsonlLogger:
    """Appends one JSON object per line to ``path`` (disabled when ``path`` is None).

    Only the main process should log; pass ``enabled=False`` elsewhere.
    """

    def __init__(self, path: str | os.PathLike | None, enabled: bool = True):
        self.path = Path(path) if path is not None else None
        self.enabled = enabled and self.path is not None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: _jsonable(v) for k, v in record.items()}, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def read(self) -> list[dict[str, Any]]:
        """Every record logged so far (empty when disabled or absent)."""
        if self.path is None or not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def keep(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite the file atomically with only the records ``predicate`` accepts.

        Used on resume: records written after the checkpoint being resumed are dropped, so the
        log of a resumed run matches an uninterrupted one.
        """
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in self.read() if predicate(r)]
        atomic_write_bytes(self.path, "".join(json.dumps(r, sort_keys=True) + "\n"
                                              for r in kept).encode())


def progress(items: Iterable[T], enabled: bool | None, **kwargs: Any) -> Iterable[T]:
    """A tqdm bar over ``items``; None shows it only when stderr is a terminal."""
    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(items, disable=not show, leave=False, dynamic_ncols=True, **kwargs)
