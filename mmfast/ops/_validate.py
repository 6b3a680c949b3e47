"""Argument checks shared by the public ops. Every error names the op, the argument, what was
expected and what was given. Shape/dtype/device checks always run. Checks that read tensor
values (negative or non-finite weights, out-of-range targets) force a device sync, so they run
only where :func:`value_checks` says so: the reference backend, or ``MMFAST_CHECK=1`` (the
kernels check values in their own pass)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mmfast.ops._env import getenv

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_MODALITIES = 8
#: Set to 1 to run the wrappers' value checks on every backend (debugging; syncs the device).
CHECK_ENV = "MMFAST_CHECK"


def _fmt_shape(shape: Sequence) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def tensor(op: str, name: str, value, *, dims: Sequence[str | int | None] | None = None,
           dtypes: Sequence[torch.dtype] | None = None, device: torch.device | None = None,
           dtype_hint: str | None = None) -> Tensor:
    """Check a tensor argument. ``dims`` lists the expected sizes: an int must match, a string
    names a free size (shown in the message), None matches anything."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{op}: argument '{name}' must be a torch.Tensor, got {type(value).__name__}"
        )
    if dims is not None:
        if value.dim() != len(dims) or any(
            isinstance(d, int) and value.shape[i] != d for i, d in enumerate(dims)
        ):
            expected = _fmt_shape([d if d is not None else "*" for d in dims])
            raise ValueError(
                f"{op}: argument '{name}' expected shape {expected}, got {_fmt_shape(value.shape)}"
            )
    if dtypes is not None and value.dtype not in dtypes:
        want = dtype_hint or " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{op}: argument '{name}' expected dtype {want}, got {value.dtype}")
    if device is not None and value.device != device:
        raise ValueError(f"{op}: argument '{name}' expected device {device}, got {value.device}")
    return value


def floating(op: str, name: str, value, dims, device=None) -> Tensor:
    return tensor(op, name, value, dims=dims, dtypes=FLOAT_DTYPES, device=device,
                  dtype_hint="float16, bfloat16, float32 or float64")


def boolean(op: str, name: str, value, dims, device=None) -> Tensor:
    return tensor(op, name, value, dims=dims, dtypes=(torch.bool,), device=device,
                  dtype_hint="torch.bool")


def modality_count(op: str, name: str, m: int) -> None:
    if not 1 <= m <= MAX_MODALITIES:
        raise ValueError(
            f"{op}: argument '{name}' expected 1..{MAX_MODALITIES} modalities, got {m}"
        )


def eager() -> bool:
    """True when value checks may run (not while torch.compile traces)."""
    return not torch.compiler.is_compiling()


def value_checks(backend: str) -> bool:
    """Whether the wrapper checks tensor values (BRIEF contract 2): for the reference backend,
    or anywhere with ``MMFAST_CHECK=1``; never while torch.compile traces. A value check reads
    the tensor on the host (a device sync), so the kernels check values in their own pass
    instead (the C++ CPU kernels raise, CUDA / Triton kernels poison outputs with NaN)."""
    if torch.compiler.is_compiling():
        return False
    return backend == "reference" or getenv(CHECK_ENV) == "1"


def finite_nonnegative(op: str, name: str, value: Tensor) -> None:
    """Raise unless every value is finite and >= 0 (weights, Lipschitz constants, sigma)."""
    if not value.numel():
        return
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = value[~finite][0].item()
        raise ValueError(f"{op}: argument '{name}' expected finite non-negative values, "
                         f"got {bad}")
    if bool((value < 0).any()):
        raise ValueError(f"{op}: argument '{name}' expected finite non-negative values, "
                         f"got minimum {value.min().item():g}")


def finite_nonnegative_number(op: str, name: str, value: float) -> None:
    """The same check for a Python number (free: no tensor is read)."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{op}: argument '{name}' expected finite non-negative values, "
                         f"got {value}")


def probabilities(op: str, name: str, value: Tensor) -> None:
    """Raise unless every value is in [0, 1] (NaN is not)."""
    if value.numel() and not bool(((value >= 0) & (value <= 1)).all()):
        raise ValueError(f"{op}: argument '{name}' expected probabilities in [0, 1], got "
                         f"values in [{value.min().item():g}, {value.max().item():g}]")


def index_range(op: str, name: str, value: Tensor, high: int) -> None:
    """Raise unless every value is in [0, high) (class targets)."""
    if value.numel():
        lo, hi = int(value.min()), int(value.max())
        if lo < 0 or hi >= high:
            raise ValueError(f"{op}: argument '{name}' expected values in [0, {high}), "
                             f"got values in [{lo}, {hi}]")


def weight_tensor(op: str, weight, device) -> Tensor:
    """A floating weight tensor on ``device`` (any shape; the caller checks it)."""
    return tensor(op, "weight", weight, dtypes=FLOAT_DTYPES, device=device,
                  dtype_hint="a floating dtype")


def modality_weight(op: str, weight, b: int, m: int, device, acc: torch.dtype,
                    check: bool = False) -> Tensor | None:
    """None, (M,) or (B, M) non-negative floats -> contiguous (B, M) in ``acc`` (or None).
    ``check``: also check the values (finite, >= 0; see :func:`value_checks`)."""
    if weight is None:
        return None
    w = weight_tensor(op, weight, device)
    if w.dim() == 1 and w.shape[0] == m:
        w = w.unsqueeze(0)
    elif not (w.dim() == 2 and w.shape[0] == b and w.shape[1] == m):
        raise ValueError(f"{op}: argument 'weight' expected shape ({m},) or ({b}, {m}), "
                         f"got {_fmt_shape(w.shape)}")
    if check:
        finite_nonnegative(op, "weight", w)
    return w.to(acc).expand(b, m).contiguous()
