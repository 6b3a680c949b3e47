"""No device-to-host synchronisation on the default call path of any op, forward or backward
(issue #11): every op of every GPU backend runs under torch.cuda.set_sync_debug_mode("error")
after one warm-up call (the warm-up compiles and, with autotuning on, benchmarks configs)."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.helpers import GPU_BACKENDS, op_cases, requires_cuda

pytestmark = requires_cuda
OPS = ["masked_fusion", "certified_margin", "noisy_modality_dropout", "subset_logits",
       "subset_accuracy"]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_no_host_sync(op, backend, monkeypatch):
    monkeypatch.delenv("MMFAST_CHECK", raising=False)  # the value checks are opt-in
    case = next(c for c in op_cases() if c.name == op)
    case.run(backend)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs, grads = case.run(backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(o.is_cuda for o in outs + tuple(grads))
