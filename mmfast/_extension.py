"""Loads the compiled extension ``mmfast._C`` once and remembers why it is missing."""

from __future__ import annotations

import importlib

import torch

try:  # torch must be imported first: the extension links against libc10 / libtorch
    _C = importlib.import_module("mmfast._C")

    LOAD_ERROR: str | None = None
except ImportError as exc:  # not built (no compiler, or an import-only checkout)
    _C = None
    LOAD_ERROR = f"mmfast._C is not built ({exc}); run scripts/setup.sh or pip install -e ."

#: Ops whose schema the extension declares (csrc/ops.cpp).
SCHEMA_OPS = (
    "masked_fusion",
    "_masked_fusion_backward",
    "certified_margin",
    "_certified_margin_backward",
    "noisy_modality_dropout",
    "subset_logits",
    "subset_accuracy",
)


def loaded() -> bool:
    return _C is not None


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``mmfast::<op>`` has a kernel for ``dispatch_key`` ("CPU" or "CUDA")."""
    if _C is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"mmfast::{op}", dispatch_key)
