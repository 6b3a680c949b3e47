"""A small case of every CUDA and Triton kernel (forward and backward), run by
test_sanitizer.py under compute-sanitizer memcheck and racecheck. Shapes have ragged tails
(D, C not multiples of the vector width), partial warps and absent modalities."""

from __future__ import annotations

import sys

import torch


def main() -> int:
    from mmfast import ops
    from mmfast.ops import reference
    from tests.gpu.helpers import GPU_BACKENDS, op_cases

    dtypes = [torch.float32, torch.bfloat16]
    if sys.argv[1:] == ["--fp32"]:  # racecheck: one dtype keeps the (slow) run short
        dtypes = dtypes[:1]
    backends = list(GPU_BACKENDS)
    for backend in backends:
        for dtype in dtypes:
            for case in op_cases(dtype, B=37):
                case.run(backend)
            # op_cases has M = 3 (CUDA: the per-code subset_accuracy kernel); M = 6 runs the
            # (row, subset) pairs kernel with its shared-memory tile.
            z = torch.randn(37, 6, 10, device="cuda", dtype=dtype)
            target = torch.randint(0, 10, (37,), device="cuda")
            ops.subset_accuracy(z, target, reference.all_subsets(6, "cuda"), backend=backend)
        torch.cuda.synchronize()
    print("sanitizer cases done:", backends)
    return 0


if __name__ == "__main__":
    sys.exit(main())
