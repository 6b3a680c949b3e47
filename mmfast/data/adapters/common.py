"""Helpers shared by the real-dataset adapters."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from mmfast.data.manifest import SPLITS


def require_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, or FileNotFoundError saying which folder of the layout is missing."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"src: expected {what} at {path}, found no such folder")
    return path


def split_of_group(group: str, fractions: Sequence[float] = (0.7, 0.15, 0.15),
                   salt: str = "mmfast") -> str:
    """A split for ``group`` (a speaker, a video) from a hash: stable across machines and
    runs, and every sample of a group lands in the same split (no identity leaks)."""
    h = int.from_bytes(hashlib.sha1(f"{salt}:{group}".encode()).digest()[:8], "big") / 2**64
    edges = [sum(fractions[:i + 1]) for i in range(len(fractions))]
    return next((s for s, e in zip(SPLITS, edges) if h < e), SPLITS[-1])


def first_existing(candidates: Iterable[Path]) -> Path | None:
    """The first path that is a file, or None."""
    return next((p for p in candidates if p.is_file()), None)
