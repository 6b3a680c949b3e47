"""Backend choice for one op call: explicit (argument or MMFAST_BACKEND) fails loudly when
unavailable; ``auto`` picks the fastest built backend for the tensor's device."""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from mmfast import _backends, _extension
from mmfast.ops._env import getenv

BACKENDS = ("cuda", "triton", "cpp", "reference")
ENV_VAR = "MMFAST_BACKEND"

#: auto order per device type. On CPU, Triton runs only under the (slow) interpreter, so it
#: is never chosen automatically. On CUDA, per-op orders come from the GPU benchmarks.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cpu": ("cpp", "reference"),
                                          "cuda": ("cuda", "triton", "reference")}
#: Written by ``benchmarks/summarize.py RESULTS.json --auto-order`` from a GPU benchmark run.
CUDA_AUTO_ORDER_FILE = Path(__file__).with_name("cuda_auto_order.json")
#: Shape classes of the auto choice: the width of a row (the innermost dimension the kernels
#: tile and vectorise: D, C, or a noise sample's element count) below / from this many elements.
NARROW_BELOW = 32
SHAPE_CLASSES = ("narrow", "wide")
ANY_SHAPE = "*"  # the op's order over all its benchmarked shapes


def shape_class(op: str, shape: Sequence[int]) -> str:
    """"narrow" or "wide": the row width of ``op``'s main input of this shape.

    Kernels tile and vectorise along that width, so which backend wins can flip with it
    (issue 5 benchmarks certified_margin at C = 100 and C = 10).
    """
    if op == "noisy_modality_dropout":
        width = math.prod(shape[1:])
    else:  # masked_fusion x (B, M, D); certified_margin / subset_* z (B, M, C)
        width = shape[-1] if len(shape) else 0
    return "narrow" if width < NARROW_BELOW else "wide"


def load_cuda_auto_order(path: Path = CUDA_AUTO_ORDER_FILE
                         ) -> dict[str, dict[str, tuple[str, ...]]]:
    """{op: {shape class or "*": order}} measured by the GPU benchmarks ({} when none were).

    A malformed file is an error naming the file: a silently ignored table would make auto
    pick a backend the benchmarks showed to be slower.
    """
    if not path.exists():
        return {}
    orders = json.loads(path.read_text()).get("orders", {})
    table: dict[str, dict[str, tuple[str, ...]]] = {}
    for op, by_class in orders.items():
        if not isinstance(by_class, dict) or not set(by_class) <= {ANY_SHAPE, *SHAPE_CLASSES}:
            raise ValueError(f"{path}: orders[{op!r}] must map shape classes from "
                             f"{(ANY_SHAPE, *SHAPE_CLASSES)} to orders, got {by_class!r}")
        for cls, order in by_class.items():
            if not isinstance(order, list) or not order or not set(order) <= set(BACKENDS):
                raise ValueError(f"{path}: orders[{op!r}][{cls!r}] must be a non-empty list of "
                                 f"backends from {BACKENDS}, got {order!r}")
        table[op] = {cls: tuple(order) for cls, order in by_class.items()}
    return table


AUTO_ORDER_CUDA_PER_OP: dict[str, dict[str, tuple[str, ...]]] = load_cuda_auto_order()


def triton_module(op: str):
    """The module ``mmfast.kernels.<op>_triton``, or None when Triton is unusable here."""
    family = "subset_ops" if op.startswith("subset_") else op
    try:
        return importlib.import_module(f"mmfast.kernels.{family}_triton")
    except ImportError:
        return None


def unavailable_reason(op: str, backend: str, device: torch.device) -> str | None:
    """None if ``backend`` can run ``op`` on ``device``, else a sentence saying why not."""
    if backend == "reference":
        return None
    if backend in ("cpp", "cuda"):
        want = "cpu" if backend == "cpp" else "cuda"
        if device.type != want:
            return f"the {backend} backend runs on {want} tensors, got {device.type} tensors"
        if not _extension.loaded():
            return _extension.LOAD_ERROR
        key = "CPU" if backend == "cpp" else "CUDA"
        if not _extension.has_kernel(op, key):
            return f"mmfast._C has no {key} kernel for {op}"
        return None
    if backend == "triton":
        status = _backends.backends()["triton"]
        if not status.available:
            return status.reason
        if device.type == "cpu" and not _backends.triton_interpreting():
            return "Triton on CPU tensors needs TRITON_INTERPRET=1"
        if device.type not in ("cpu", "cuda"):
            return f"Triton does not run on {device.type} tensors"
        if triton_module(op) is None:
            return f"mmfast.kernels has no Triton kernel for {op}"
        return None
    return f"unknown backend {backend!r}; expected one of auto, {', '.join(BACKENDS)}"


def choose_backend(op: str, device: torch.device, requested: str | None = None,
                   shape: Sequence[int] = ()) -> str:
    """Resolve ``requested`` (or $MMFAST_BACKEND, default auto) to a usable backend name;
    ``shape`` (of the op's main input) selects the shape class of the auto order on CUDA.
    Decisions are cached (an eager call costs one dict lookup)."""
    cls = shape_class(op, tuple(shape)) if device.type == "cuda" else ANY_SHAPE
    if torch.compiler.is_compiling():  # constant-folded at trace time, see _choose
        return _choose(op, str(device), requested or os.environ.get(ENV_VAR) or "auto", cls)
    requested = requested or getenv(ENV_VAR) or "auto"
    name = _DECIDED_BY_DEVICE.get((op, device, requested, cls))
    if name is None:
        name = _DECIDED_BY_DEVICE[(op, device, requested, cls)] = _choose(
            op, str(device), requested, cls)
    return name


#: eager fast path: (op, torch.device, requested, shape class) -> backend
_DECIDED_BY_DEVICE: dict[tuple[str, torch.device, str, str], str] = {}
#: decisions already made: (op, device, requested, shape class) -> backend
_DECIDED: dict[tuple[str, str, str, str], str] = {}


def _choose(op: str, device_name: str, requested: str, cls: str = ANY_SHAPE) -> str:
    key = (op, device_name, requested, cls)
    name = _DECIDED.get(key)
    if name is None:
        name = _DECIDED[key] = _resolve(op, torch.device(device_name), requested, cls)
    return name


# Resolved once at trace time under torch.compile (no graph break). This is what
# ``torch._dynamo.assume_constant_result`` does; set by hand so that importing mmfast.ops does
# not import torch._dynamo (and Triton with it).
_choose._dynamo_marked_constant = True  # type: ignore[attr-defined]


@functools.cache
def _resolve(op: str, device: torch.device, requested: str, cls: str = ANY_SHAPE) -> str:
    choice = requested.lower()
    if choice != "auto":
        reason = unavailable_reason(op, choice, device)
        if reason is not None:
            raise RuntimeError(f"mmfast.ops.{op}: backend {choice!r} is unavailable: {reason}")
        return choice
    order = AUTO_ORDER.get(device.type, ("reference",))
    if device.type == "cuda":
        by_class = AUTO_ORDER_CUDA_PER_OP.get(op, {})
        order = by_class.get(cls) or by_class.get(ANY_SHAPE) or order
    for name in order:
        if unavailable_reason(op, name, device) is None:
            return name
    return "reference"


def clear_cache() -> None:
    """Forget earlier decisions (after changing TRITON_INTERPRET or loading kernels)."""
    _DECIDED.clear()
    _DECIDED_BY_DEVICE.clear()
    _resolve.cache_clear()
