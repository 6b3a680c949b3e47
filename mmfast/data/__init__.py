"""mmfast.data: the built-in avdigits dataset, manifests, and DALI loaders.

Names are imported lazily, so ``import mmfast.data`` stays cheap and does not load DALI, PyAV
or espeak-ng until they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "AVDigitsConfig": "mmfast.data.avdigits",
    "make_avdigits": "mmfast.data.avdigits",
    "Manifest": "mmfast.data.manifest",
    "Sample": "mmfast.data.manifest",
    "read_manifest": "mmfast.data.manifest",
    "write_manifest": "mmfast.data.manifest",
    "SPLITS": "mmfast.data.manifest",
    "DataSpec": "mmfast.data.specs",
    "VideoSpec": "mmfast.data.specs",
    "AudioSpec": "mmfast.data.specs",
    "ImageSpec": "mmfast.data.specs",
    "MultiModalLoader": "mmfast.data.loader",
    "load_split": "mmfast.data.loader",
    "ReferenceLoader": "mmfast.data.reference_loader",
    "reference_load_split": "mmfast.data.reference_loader",
    "ADAPTERS": "mmfast.data.adapters",
    "measure_difficulty": "mmfast.data.difficulty",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mmfast.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
