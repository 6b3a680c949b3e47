"""Launch helpers shared by the Triton kernels of mmfast.

Why a shared module: every kernel needs the same three decisions -- which launch configs to
try (autotune on a GPU, exactly one fixed config under ``TRITON_INTERPRET=1``, whose
benchmarker needs a driver and fails with two or more configs), how to cut a (rows, width)
problem into tiles, and which dtypes the kernel boundary accepts. It also holds the small
``@triton.jit`` helpers that several kernels use (a first-index argmin that treats NaN like
``torch.argmin``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence

import torch
import triton
import triton.language as tl

__all__ = [
    "FLOAT_DTYPES",
    "interpreting",
    "autotune_enabled",
    "active_configs",
    "autotune",
    "rows_bucket",
    "stream_capturing",
    "snug_width",
    "tile_blocks",
    "row_tile_heuristics",
    "check_float_dtype",
    "check_contiguous",
    "opmath_dtype",
    "opmath_tl",
    "as_bytes",
    "on_input_device",
    "is_finite",
    "first_argmin",
    "replaces_running_min",
    "cast_for_store",
]

#: dtypes the kernels accept for x / z (opmath float32, or float64 for float64 inputs).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def interpreting() -> bool:
    """True when Triton runs on the CPU through its interpreter (tests without a GPU)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotune_enabled() -> bool:
    """False when ``MMFAST_TRITON_AUTOTUNE=0``: every kernel then runs its default config (the
    first of its GPU list) without benchmarking, e.g. in ``scripts/gpu_check.sh test``."""
    return os.environ.get("MMFAST_TRITON_AUTOTUNE", "1") != "0"


def active_configs(
    gpu_configs: Sequence[triton.Config], interpreter_config: triton.Config
) -> list[triton.Config]:
    """The configs a kernel is tuned over here: all of them on a GPU (only the first, its
    default, when :func:`autotune_enabled` is false), one under the interpreter (2+ configs
    make the interpreter's benchmarker ask for a driver; one large tile also keeps the number
    of ~3 ms interpreted program instances small)."""
    if interpreting():
        return [interpreter_config]
    return list(gpu_configs) if autotune_enabled() else [gpu_configs[0]]


def rows_bucket(rows: int) -> int:
    """The batch-size part of an autotune key: ``rows`` rounded up to a power of two, so a
    config tuned on a tiny first batch is not kept for every later, larger one (and a new
    size within the bucket does not re-tune). Kernels take it as ``ROWS_BUCKET``."""
    return triton.next_power_of_2(max(int(rows), 1))


def stream_capturing() -> bool:
    """True while the current CUDA stream is being captured into a CUDA graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class _CaptureSafeAutotuner(triton.runtime.autotuner.Autotuner):
    """An Autotuner that never benchmarks inside CUDA-graph capture.

    Benchmarking launches every config many times and synchronises, which is illegal while a
    graph is captured. During capture a key that has not been tuned yet runs the default
    config (``configs[0]``) and stays untuned, so the first eager call tunes it as usual.
    """

    def _tuning_key(self, args: tuple, kwargs: dict) -> tuple:
        # The key Autotuner.run builds (Triton 3.x): the key args, then every tensor's dtype.
        named = {**dict(zip(self.arg_names, args)), **kwargs}
        named = {k: v for k, v in named.items() if k in self.arg_names}
        key = [named[k] for k in self.keys if k in named]
        key += [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
        return tuple(key)

    def run(self, *args, **kwargs):
        if (len(self.configs) > 1 and stream_capturing()
                and self._tuning_key(args, kwargs) not in self.cache):
            config = self.configs[0]
            self.nargs = dict(zip(self.arg_names, args))
            if config.pre_hook is not None:
                config.pre_hook({**self.nargs, **kwargs, **config.all_kwargs()})
            try:
                return self.fn.run(*args, **kwargs, **config.all_kwargs())
            finally:
                self.nargs = None
        return super().run(*args, **kwargs)


def capture_safe(tuner: triton.runtime.autotuner.Autotuner) -> _CaptureSafeAutotuner:
    """``tuner`` (built by ``triton.autotune``) turned into a :class:`_CaptureSafeAutotuner`
    in place: the constructor's signature differs between Triton versions, the class does
    not."""
    tuner.__class__ = _CaptureSafeAutotuner
    return tuner


def autotune(
    gpu_configs: Sequence[triton.Config],
    interpreter_config: triton.Config,
    key: Iterable[str],
    **kwargs,
):
    """``triton.autotune`` over :func:`active_configs`, safe inside CUDA-graph capture.

    Decided when the kernel is decorated, so ``TRITON_INTERPRET`` (and
    ``MMFAST_TRITON_AUTOTUNE``) must be set before the kernel module is imported
    (tests/conftest.py does this). Every autotuned kernel writes each of its outputs with
    plain stores covering the whole output whatever the config (no accumulation across
    programs, no rows left to an earlier config), so benchmarking on the real outputs is
    harmless.
    """
    configs = active_configs(gpu_configs, interpreter_config)
    decorator = triton.autotune(configs=configs, key=list(key), **kwargs)
    return lambda fn: capture_safe(decorator(fn))


def _pow2_at_most(n: int, cap: int) -> int:
    return min(triton.next_power_of_2(max(int(n), 1)), cap)


def snug_width(width: int, width_cap: int, max_padding: float = 0.05) -> int:
    """The widest power-of-two block, at most ``width_cap``, whose chunks cover ``width`` with
    at most ``max_padding`` of it as idle lanes (C = 10 -> 2, C = 100 -> 8, C = 309 -> 64;
    a power of two width is its own block). Rounding C = 10 up to 16 leaves 37.5 % of every
    chunk idle, C = 100 up to 128 22 %; the narrower block loops more often instead."""
    block = _pow2_at_most(width, width_cap)
    while block > 1 and -(-width // block) * block - width > max_padding * width:
        block //= 2
    return block


def tile_blocks(
    rows: int, width: int, tile: int, width_cap: int, depth: int = 1, snug: bool = False
) -> tuple[int, int]:
    """(block_rows, block_width) of a (rows x [depth x] width) problem for one config.

    block_width = the width rounded up to a power of two, capped at width_cap (contiguous,
    vectorised loads along it), or with ``snug`` the :func:`snug_width` that leaves few idle
    lanes; block_rows = tile // (depth * block_width), so a small width (C = 10, D = 64)
    still gives each program a full tile of work; block_rows is also capped at the number of
    rows (rounded up), so tiny batches do not compute empty lanes.
    """
    block_width = snug_width(width, width_cap) if snug else _pow2_at_most(width, width_cap)
    return _pow2_at_most(rows, max(1, tile // (block_width * depth))), block_width


def row_tile_heuristics(
    rows_arg: str, width_arg: str, block_rows: str, block_width: str, depth: str | None = None
):
    """``triton.heuristics`` setting ``block_rows`` / ``block_width`` by :func:`tile_blocks`
    from the config's TILE and WIDTH_CAP (and SNUG, where the config has it); ``depth`` names
    a constexpr (e.g. BLOCK_M) for kernels that hold a (rows x depth x width) block."""

    def blocks(args) -> tuple[int, int]:
        return tile_blocks(args[rows_arg], args[width_arg], args["TILE"], args["WIDTH_CAP"],
                           args[depth] if depth else 1, bool(args.get("SNUG", 0)))

    return triton.heuristics({block_rows: lambda args: blocks(args)[0],
                              block_width: lambda args: blocks(args)[1]})


def check_float_dtype(tensor: torch.Tensor, name: str) -> None:
    """TypeError naming the argument unless it is float16/bfloat16/float32/float64.

    The op wrappers map this TypeError to "use another backend".
    """
    if tensor.dtype not in FLOAT_DTYPES:
        allowed = ", ".join(str(d) for d in FLOAT_DTYPES)
        raise TypeError(
            f"Triton kernel: {name} must have dtype in ({allowed}), got {tensor.dtype}"
        )


def check_contiguous(**tensors: torch.Tensor | None) -> None:
    """ValueError naming the first non-contiguous argument: kernels index raw pointers, so a
    strided view would be read wrongly (the op wrappers pass contiguous tensors)."""
    for name, tensor in tensors.items():
        if tensor is not None and not tensor.is_contiguous():
            raise ValueError(
                f"Triton kernel: {name} must be contiguous, got shape {tuple(tensor.shape)} with "
                f"strides {tensor.stride()}"
            )


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype at the kernel boundary: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def opmath_tl(dtype: torch.dtype):
    """The Triton accumulation dtype for a torch input dtype, passed to kernels as ``ACC``."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def as_bytes(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A bool tensor viewed as uint8 (no copy): Triton loads and stores it as bytes."""
    if tensor is None:
        return None
    return tensor.view(torch.uint8) if tensor.dtype == torch.bool else tensor


# The interpreter truncates float32 -> bfloat16 (Triton 3.9); a GPU rounds to nearest even.
_BF16_ROUND_BY_HAND = tl.constexpr(interpreting())


def on_input_device(launcher: Callable) -> Callable:
    """Runs ``launcher`` with its first tensor argument's CUDA device made current.

    Triton launches on the current device, while an op's tensors may live on another GPU.
    """

    @functools.wraps(launcher)
    def wrapper(*args, **kwargs):
        tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if tensor is None or tensor.device.type != "cuda":
            return launcher(*args, **kwargs)
        with torch.cuda.device(tensor.device):
            return launcher(*args, **kwargs)

    return wrapper


@triton.jit
def cast_for_store(value, ptr):
    """``value`` converted to ``ptr``'s element type with round-to-nearest-even, as on a GPU.

    Under the interpreter float32 -> bfloat16 is rounded by hand on the bit pattern, so the
    CPU tests see the numbers a GPU would store.
    """
    out = value.to(ptr.dtype.element_ty)
    if _BF16_ROUND_BY_HAND:
        if ptr.dtype.element_ty == tl.bfloat16:
            bits = value.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            out = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return out


@triton.jit
def is_finite(v):
    """Elementwise: neither NaN nor +-inf."""
    return tl.abs(v) < float("inf")


@triton.jit
def first_argmin(key, valid, index, sentinel):
    """Per row of a 2-D block: (min key, its lowest index) over the ``valid`` lanes.

    NaN counts as smaller than everything, as in ``torch.argmin`` / ``torch.argmax`` (pass
    -score for an argmax). Rows without a valid lane give (+inf, sentinel).
    """
    is_nan = (key != key) & valid
    has_nan = tl.max(is_nan.to(tl.int32), axis=1) > 0
    lowest = tl.min(tl.where(valid, key, float("inf")), axis=1)
    hit = valid & tl.where(has_nan[:, None], is_nan, key == lowest[:, None])
    best = tl.min(tl.where(hit, index, sentinel), axis=1)
    best_key = tl.where(has_nan, float("nan"), lowest)
    return best_key, best


@triton.jit
def replaces_running_min(best_key, best_index, key, index, sentinel):
    """Rows where a later chunk's (key, index) from :func:`first_argmin` replaces the running
    (best_key, best_index) of a loop over chunks in increasing index order.

    Strictly smaller keys win, NaN beats any number and the earlier index wins ties, so the
    loop ends at the same (key, index) as one ``first_argmin`` over the whole row.
    """
    best_is_nan = best_key != best_key
    better = (key != key) | (key < best_key)
    return (index != sentinel) & ((best_index == sentinel) | (~best_is_nan & better))
