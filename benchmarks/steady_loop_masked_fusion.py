"""masked_fusion forward + backward on the CPU in a steady loop: eager reference, torch.compile
of it and the C++ kernel side by side in one process, the output dropped between calls.

Why beside the pytest-benchmark case: on the CPU the backward's fresh 64 MB grad_x is mostly
first-touch page faults, and how often each provider pays them depended on how the allocator
recycled buffers across pytest-benchmark's rounds (benchmarks/README.md). This loop gives every
provider the same allocation pattern. Run it also with THP_MEM_ALLOC_ENABLE=1 (torch's CPU
allocator then asks for transparent huge pages):

    PYTHONPATH=. python benchmarks/steady_loop_masked_fusion.py [--calls 11] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from mmfast import ops
from mmfast.ops import reference


def median_ms(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    return sorted(times)[calls // 2] * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[16384, 4, 256],
                        metavar=("B", "M", "D"))
    parser.add_argument("--calls", type=int, default=11, help="timed calls per round (median)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    B, M, D = args.shape
    x = torch.randn(B, M, D, requires_grad=True)
    mask, weight, grad_y = torch.rand(B, M) < 0.7, torch.rand(M), torch.randn(B, D)

    def fwd_bwd(fuse):
        def run():
            y, _ = fuse(x, mask, weight)
            return torch.autograd.grad(y, x, grad_y)
        return run

    providers = {"eager": fwd_bwd(reference.masked_fusion),
                 "compile": fwd_bwd(torch.compile(reference.masked_fusion, dynamic=False)),
                 "mmfast-cpp": fwd_bwd(lambda *a: ops.masked_fusion(*a, backend="cpp"))}
    for fn in providers.values():  # warm-up (compilation)
        fn(), fn()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, THP_MEM_ALLOC_ENABLE="
          f"{os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, x {B}x{M}x{D} fp32")
    for r in range(args.rounds):
        print(f"round {r}: " + ", ".join(f"{name} {median_ms(fn, args.calls):.1f} ms"
                                         for name, fn in providers.items()))


if __name__ == "__main__":
    main()
