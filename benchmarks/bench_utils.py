"""Helpers for benchmarks/bench_<op>.py: which backends to compare, how to build each runner
(eager reference, ``torch.compile`` of the reference, each built backend), and the
``extra_info`` (bytes moved, GB/s, fraction of a copy measured in the same run, the first
call's time (warm-up: compilation, JIT, autotuning), peak memory, device, versions, commit)
recorded with every result. Baselines come from
``mmfast.ops.reference`` so they cannot drift from the tests' ground truth."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import time
from collections.abc import Callable

import pytest
import torch

import mmfast
from mmfast import _extension
from mmfast.ops._dispatch import unavailable_reason

#: Provider names as users think of them (issue 14): ``eager`` is the eager PyTorch expression
#: of the op (mmfast.ops.reference), ``compile`` its torch.compile, ``mmfast-<backend>`` the
#: public op on that backend.
PROVIDERS = ("eager", "compile", "mmfast-cpp", "mmfast-cuda", "mmfast-triton")


def backend_of(provider: str) -> str:
    """The backend behind a provider name: "reference", "compile", "cpp", "cuda", "triton"."""
    return "reference" if provider == "eager" else provider.removeprefix("mmfast-")


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def skip_unless_usable(op: str, provider: str, device: str) -> None:
    backend = backend_of(provider)
    if backend in ("reference", "compile"):
        return
    reason = unavailable_reason(op, backend, torch.device(device))
    if reason is not None:
        pytest.skip(reason)


def runner(op: str, provider: str, reference_fn: Callable, public_fn: Callable) -> Callable:
    """A callable taking the op's arguments: eager reference, compiled reference, or the public
    op forced onto ``provider``."""
    backend = backend_of(provider)
    if backend == "reference":
        return reference_fn
    if backend == "compile":
        return torch.compile(reference_fn, dynamic=False)
    return functools.partial(public_fn, backend=backend)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@functools.cache
def copy_seconds(nbytes: int, device: str) -> float:
    """Median time of copying an ``nbytes`` buffer into another already-touched buffer: the
    yardstick of memory bandwidth (no allocation or first-touch page faults in the timing)."""
    src = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    times = []
    for _ in range(7):
        synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@functools.cache
def _commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_capability() -> str | None:
    """The ISA build of mmfast's CPU kernels in use (None without the extension)."""
    op = getattr(torch.ops.mmfast, "_cpu_capability", None) if _extension.loaded() else None
    return op() if op is not None else None


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def cuda_event_seconds(fn: Callable, calls: int = 50, repeats: int = 5) -> float:
    """Median seconds per call of ``calls`` back-to-back calls of ``fn`` on the current CUDA
    stream, timed with CUDA events (no host sync between calls: launch overhead overlaps the
    previous kernel, as in a training loop), the median over ``repeats`` such runs."""
    per_call = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) / 1e3 / calls)
    return sorted(per_call)[len(per_call) // 2]


@functools.cache
def cuda_event_copy_seconds(nbytes: int) -> float:
    """:func:`copy_seconds` timed as :func:`cuda_event_seconds` (back-to-back copies)."""
    src = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device="cuda")
    dst = torch.zeros_like(src)
    return cuda_event_seconds(lambda: dst.copy_(src))


def cuda_event_info(fn: Callable, moved_bytes: int, input_bytes: int) -> dict:
    """extra_info fields of the CUDA-event timing (MMFAST_BENCH_CUDA_EVENTS=1, set by
    scripts/gpu_check.sh bench): per-call time of back-to-back calls, its bandwidth and its
    fraction of the copy bandwidth timed the same way in this process."""
    event_s = cuda_event_seconds(fn)
    copy_s = cuda_event_copy_seconds(input_bytes)
    gbps = moved_bytes / event_s / 1e9
    copy_gbps = 2 * input_bytes / copy_s / 1e9
    return dict(event_ms_per_call=round(event_s * 1e3, 5), event_gb_per_s=round(gbps, 3),
                event_copy_gb_per_s=round(copy_gbps, 3),
                event_fraction_of_copy=round(gbps / copy_gbps, 4))


def run(benchmark, fn: Callable, device: str, moved_bytes: int, input_bytes: int, **info):
    """Warm up (compiles), benchmark ``fn``, and record bandwidth figures in extra_info."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()  # warm-up: torch.compile, Triton JIT and autotuning, caches
    synchronize(device)
    first_call_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def timed():
        out = fn()
        synchronize(device)
        return out

    benchmark(timed)
    median = benchmark.stats.stats.median
    copy_s = copy_seconds(input_bytes, device)
    gbps = moved_bytes / median / 1e9
    copy_gbps = 2 * input_bytes / copy_s / 1e9
    benchmark.extra_info.update(
        bytes_moved=moved_bytes,
        gb_per_s=round(gbps, 3),
        copy_gb_per_s=round(copy_gbps, 3),
        fraction_of_copy=round(gbps / copy_gbps, 4),
        first_call_s=round(first_call_s, 4),  # what a warm-up costs (compile, JIT, autotune)
        peak_memory_bytes=(torch.cuda.max_memory_allocated() if device == "cuda" else None),
        device=(torch.cuda.get_device_name() if device == "cuda" else platform.processor()
                or platform.machine()),
        threads=torch.get_num_threads(),
        cpu_capability=cpu_capability(),
        torch=torch.__version__,
        mmfast=mmfast.__version__,
        commit=_commit(),
        **info,
    )
    if device == "cuda" and os.environ.get("MMFAST_BENCH_CUDA_EVENTS") == "1":
        benchmark.extra_info.update(cuda_event_info(fn, moved_bytes, input_bytes))
    if "provider" in info:  # the backend name too (summarize.py keys on it)
        benchmark.extra_info["backend"] = backend_of(info["provider"])
