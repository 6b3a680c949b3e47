"""mmfast: fused kernels, methods and evaluation protocols for robust multi-modal learning.

``import mmfast`` is cheap: the subpackages (``mmfast.ops``, ``mmfast.nn``, ...) load on first
attribute access, and neither ``mmfast.ops`` nor ``mmfast.nn`` imports Triton, torch._dynamo or
matplotlib until a Triton kernel, torch.compile or a plot is used.
"""

from __future__ import annotations

import importlib

from mmfast._backends import backends, backends_summary

__version__ = "0.1.0"
#: subpackages loaded on first use (``mmfast.ops.masked_fusion`` works after ``import mmfast``)
SUBPACKAGES = ("ops", "nn", "data", "eval", "methods", "train", "kernels")
__all__ = ["backends", "backends_summary", "__version__", *SUBPACKAGES]


def __getattr__(name: str):
    if name in SUBPACKAGES:
        return importlib.import_module(f"mmfast.{name}")
    raise AttributeError(f"module 'mmfast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBPACKAGES))
