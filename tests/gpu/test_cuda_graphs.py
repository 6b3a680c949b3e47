"""Every op works inside CUDA-graph capture (issue #11): forward and backward of each op and
GPU backend are captured once, the inputs are overwritten in place, the graph is replayed, and
the outputs and gradients must equal an eager call on the new inputs. The noise op's offset is
a device tensor (BRIEF contract 1), so a replay with a new offset draws new noise."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.helpers import GPU_BACKENDS, assert_same, op_cases, requires_cuda

pytestmark = requires_cuda
OPS = ["masked_fusion", "certified_margin", "noisy_modality_dropout", "subset_logits",
       "subset_accuracy"]


def _refresh(inputs: dict[str, torch.Tensor]) -> None:
    """New values, same storage: what a training loop does between replays."""
    with torch.no_grad():
        for name, t in inputs.items():
            if name == "offset":
                t.add_(17)
            elif t.is_floating_point() and name not in ("p", "sigma", "lip", "weight"):
                t.copy_(torch.randn_like(t))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_capture_and_replay_match_eager(op, backend):
    case = next(c for c in op_cases() if c.name == op)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside capture (JIT, autotune, allocator)
        for _ in range(2):
            case.run(backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_outs, static_grads = case.run(backend)
    _refresh(case.inputs)
    graph.replay()
    torch.cuda.synchronize()
    want_outs, want_grads = case.run(backend)
    assert_same(static_outs, want_outs, f"{op}/{backend} outputs")
    assert_same(static_grads, want_grads, f"{op}/{backend} grads")
