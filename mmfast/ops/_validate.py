"""Argument checks shared by the public ops. Every error names the op, the argument, what was
expected and what was given. Shape/dtype/device checks always run; checks that read tensor
values (negative weights, out-of-range targets) run in eager mode only, since they would force a
device sync and a graph break under torch.compile."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_MODALITIES = 8


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
        expected = _fmt_shape([d if d is not None else "*" for d in dims])
        if value.dim() != len(dims) or any(
            isinstance(d, int) and value.shape[i] != d for i, d in enumerate(dims)
        ):
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


def nonnegative(op: str, name: str, value: Tensor) -> None:
    if eager() and value.numel() and bool((value < 0).any()):
        raise ValueError(f"{op}: argument '{name}' expected non-negative values, "
                         f"got minimum {value.min().item():g}")


def index_range(op: str, name: str, value: Tensor, high: int) -> None:
    if eager() and value.numel():
        lo, hi = int(value.min()), int(value.max())
        if lo < 0 or hi >= high:
            raise ValueError(f"{op}: argument '{name}' expected values in [0, {high}), "
                             f"got values in [{lo}, {hi}]")


def modality_weight(op: str, weight, b: int, m: int, device, acc: torch.dtype) -> Tensor | None:
    """None, (M,) or (B, M) non-negative floats -> contiguous (B, M) in ``acc`` (or None)."""
    if weight is None:
        return None
    w = tensor(op, "weight", weight, dtypes=FLOAT_DTYPES, device=device,
               dtype_hint="a floating dtype")
    if w.dim() == 1 and w.shape[0] == m:
        w = w.unsqueeze(0)
    elif not (w.dim() == 2 and w.shape[0] == b and w.shape[1] == m):
        raise ValueError(f"{op}: argument 'weight' expected shape ({m},) or ({b}, {m}), "
                         f"got {_fmt_shape(w.shape)}")
    nonnegative(op, "weight", w)
    return w.to(acc).expand(b, m).contiguous()
