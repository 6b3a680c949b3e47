"""Which backends were built and are usable here, and why one is missing.

Backends: ``reference`` (plain PyTorch, always), ``cpp`` (C++ CPU kernels in mmfast._C),
``cuda`` (CUDA kernels in mmfast._C, needs a CUDA torch and a GPU), ``triton`` (Triton kernels;
on a GPU, or on the CPU under ``TRITON_INTERPRET=1`` for testing).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from mmfast import _extension

PUBLIC_OPS = ("masked_fusion", "certified_margin", "noisy_modality_dropout", "subset_logits",
              "subset_accuracy")


@dataclass(frozen=True)
class BackendStatus:
    available: bool
    reason: str

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return "yes" if self.available else f"no ({self.reason})"


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_status() -> BackendStatus:
    if importlib.util.find_spec("triton") is None:
        return BackendStatus(False, "triton is not installed")
    if torch.cuda.is_available():
        return BackendStatus(True, "CUDA device")
    if triton_interpreting():
        return BackendStatus(True, "CPU via TRITON_INTERPRET=1 (slow; for tests)")
    return BackendStatus(False, "no CUDA device (set TRITON_INTERPRET=1 to run on the CPU)")


def _compiled_status(key: str) -> BackendStatus:
    if not _extension.loaded():
        return BackendStatus(False, _extension.LOAD_ERROR or "mmfast._C is not built")
    missing = [op for op in PUBLIC_OPS if not _extension.has_kernel(op, key)]
    if key == "CUDA" and len(missing) == len(PUBLIC_OPS):
        why = "built without CUDA (CPU-only torch or no nvcc)"
        return BackendStatus(False, why)
    if key == "CUDA" and not torch.cuda.is_available():
        return BackendStatus(False, "CUDA kernels built but no CUDA device is visible")
    if missing:
        return BackendStatus(True, f"missing kernels: {', '.join(missing)}")
    return BackendStatus(True, "all ops")


def backends() -> dict[str, BackendStatus]:
    """Status of every backend: ``{"reference": ..., "cpp": ..., "cuda": ..., "triton": ...}``."""
    return {
        "reference": BackendStatus(True, "plain PyTorch"),
        "cpp": _compiled_status("CPU"),
        "cuda": _compiled_status("CUDA"),
        "triton": _triton_status(),
    }


def backends_summary() -> str:
    """One line, e.g. ``reference=yes cpp=yes cuda=no (...) triton=no (...)``."""
    return " ".join(f"{name}={status}" for name, status in backends().items())
