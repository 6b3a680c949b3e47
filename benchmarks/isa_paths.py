"""The C++ kernels' ISA paths side by side in one process (torch.ops.mmfast._set_cpu_capability):
median ms of a 64 MB copy, masked_fusion forward and backward, the noise op and
certified_margin at the large benchmark shapes, per path, in interleaved rounds.

    PYTHONPATH=. python benchmarks/isa_paths.py [--rounds 3]
"""

from __future__ import annotations

import argparse

import torch
from steady_loop_masked_fusion import median_ms  # the same median of timed calls

import mmfast._extension  # noqa: F401  (loads the C++ ops)

ORDER = ("default", "avx2", "avx512")


def cases() -> dict:
    ops = torch.ops.mmfast
    torch.manual_seed(0)
    x, mask, w = torch.randn(16384, 4, 256), torch.rand(16384, 4) < 0.7, torch.rand(16384, 4)
    grad_y, dst = torch.randn(16384, 256), torch.empty(16384, 4, 256)
    xn = torch.randn(64, 8 * 3 * 64 * 128)
    p, levels, offset = torch.full((64,), 0.25), torch.tensor([0.1, 0.2, 0.4]), torch.tensor(1)
    z, target = torch.randn(53687, 3, 100), torch.randint(0, 100, (53687,))
    lip, zmask = torch.rand(3, 100, 100) + 0.5, torch.rand(53687, 3) < 0.8
    return {
        "copy_64MB": lambda: dst.copy_(x),
        "fusion_fwd": lambda: ops.masked_fusion(x, mask, w, True),
        "fusion_bwd": lambda: ops._masked_fusion_backward(grad_y, x, mask, w, grad_y,
                                                          grad_y[:, 0], True, True),
        "noise": lambda: ops.noisy_modality_dropout(xn, p, levels, True, 5, offset, 0.0),
        "margin": lambda: ops.certified_margin(z, target, lip, zmask, None, 2.0, False),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    ops = torch.ops.mmfast
    paths = ORDER[: ORDER.index(ops._cpu_capability_best()) + 1]
    work = cases()
    previous = ops._cpu_capability()
    try:
        for _ in range(args.rounds):
            for isa in paths:
                ops._set_cpu_capability(isa)
                timings = " ".join(f"{k}={median_ms(f, 7):.1f}ms" for k, f in work.items())
                print(f"{isa:8s}", timings, flush=True)
    finally:
        ops._set_cpu_capability(previous)


if __name__ == "__main__":
    main()
