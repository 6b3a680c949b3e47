"""torch.library plumbing shared by the ops: the Triton custom ops, and the fake kernels and
autograd formulas that the C++ op (``mmfast::<op>``, dispatching to its CPU or CUDA kernel) and
the Triton op (``mmfast::<op>_triton``) have in common."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmfast import _extension
from mmfast.ops import _dispatch


def compiled_name(op: str, backend: str) -> str:
    """The torch.ops name that runs ``op`` on ``backend`` ("cpp", "cuda" or "triton")."""
    return f"{op}_triton" if backend == "triton" else op


def call(op: str, backend: str, *args):
    """Run ``op`` through its registered custom op for ``backend``."""
    return getattr(torch.ops.mmfast, compiled_name(op, backend))(*args)


def triton_launcher(op: str, launcher: str) -> Callable:
    """``mmfast.kernels.<family>_triton.<launcher>``, imported lazily (after TRITON_INTERPRET)."""
    module = _dispatch.triton_module(op)
    if module is None or not hasattr(module, launcher):
        raise RuntimeError(f"mmfast.kernels has no Triton launcher {launcher!r} for {op}")
    return getattr(module, launcher)


def register(op: str, fake: Callable, *, setup_context: Callable | None = None,
             backward: Callable[[str], Callable] | None = None) -> None:
    """Fake kernel (and autograd when ``backward`` is given) for the C++ op, when the extension
    is loaded, and for the Triton op. ``backward(suffix)`` builds the backward function that
    calls the private ``_<op>_backward<suffix>`` op of the same backend family."""
    targets = [("_triton", f"mmfast::{op}_triton")]
    if _extension.loaded():
        targets.append(("", f"mmfast::{op}"))
    for suffix, qualname in targets:
        torch.library.register_fake(qualname)(fake)
        if backward is not None and not cpp_autograd(qualname):
            torch.library.register_autograd(qualname, backward(suffix),
                                            setup_context=setup_context)


def cpp_autograd(qualname: str) -> bool:
    """Whether mmfast._C registers ``qualname``'s autograd in C++ (csrc/autograd/): then no
    Python runs per call, forward or backward, and the Python formula serves Triton only."""
    return qualname.startswith("mmfast::") and not qualname.endswith("_triton") and \
        _extension.loaded() and _extension.has_kernel(qualname.split("::")[1], "Autograd")
