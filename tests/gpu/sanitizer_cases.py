"""A small case of every CUDA and Triton kernel (forward and backward), run by
test_sanitizer.py under compute-sanitizer memcheck and racecheck. Shapes have ragged tails
(D, C not multiples of the vector width), partial warps and absent modalities."""

from __future__ import annotations

import sys

import torch


def main() -> int:
    from tests.gpu.helpers import GPU_BACKENDS, op_cases

    dtypes = [torch.float32, torch.bfloat16]
    if sys.argv[1:] == ["--fp32"]:  # racecheck: one dtype keeps the (slow) run short
        dtypes = dtypes[:1]
    backends = list(GPU_BACKENDS)
    for backend in backends:
        for dtype in dtypes:
            for case in op_cases(dtype, B=37):
                case.run(backend)
        torch.cuda.synchronize()
    print("sanitizer cases done:", backends)
    return 0


if __name__ == "__main__":
    sys.exit(main())
