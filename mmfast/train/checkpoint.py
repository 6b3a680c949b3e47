"""Atomic, safely loadable checkpoints: tensors and plain containers only, metadata as JSON.

Files are written to a temporary file in the target directory, flushed to disk, then renamed
over the target, so a crash never leaves a half-written checkpoint. Loading always uses
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mmfast._io import atomic_write, write_bytes_atomic

__all__ = ["atomic_write_bytes", "atomic_write_json", "save_checkpoint", "load_checkpoint"]

_META_KEY = "meta_json"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename)."""
    write_bytes_atomic(path, data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Save ``tensors`` (state dicts: tensors, numbers, strings, lists, dicts) plus ``meta``.

    ``meta`` is stored as a JSON string, so it must be JSON-able: no pickled objects can hide
    in a checkpoint.
    """
    if _META_KEY in tensors:
        raise ValueError(f"tensors must not use the reserved key {_META_KEY!r}")
    payload = dict(tensors)
    payload[_META_KEY] = json.dumps(meta, sort_keys=True)
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, meta) from :func:`save_checkpoint`, loaded with ``weights_only=True``."""
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or _META_KEY not in payload:
        raise ValueError(f"{path} is not an mmfast checkpoint (no {_META_KEY!r} entry)")
    meta = json.loads(payload.pop(_META_KEY))
    return payload, meta
