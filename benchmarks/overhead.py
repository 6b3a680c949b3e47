"""Per-call overhead of the mmfast ops at B = 1 (issue 12 item 2): microseconds per call,
forward and forward + backward, C++ CPU backend, side by side with the eager expression a user
would write in place of the op.

At B = 1 the work is a few hundred flops, so the time is the fixed cost of a call: argument
checks, dispatch, the custom-op machinery and (for fwd+bwd) the autograd graph. Run it twice,
once per checkout, to compare before / after:

    PYTHONPATH=<checkout> python benchmarks/overhead.py [--repeats 7] [--json out.json]

Each cell is the best of ``--repeats`` timings of ``--number`` back-to-back calls (best-of,
since a loaded machine only ever adds time).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from mmfast import ops

B, M, D, C = 1, 3, 512, 31


def _best_us(fn, number: int, repeats: int) -> float:
    for _ in range(max(10, number // 10)):  # warm-up
        fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best * 1e6


def cases():
    """(op, mode, mmfast call, eager call) at B = 1."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, M, D, generator=gen, requires_grad=True)
    mask = torch.ones(B, M, dtype=torch.bool)
    maskf = mask.float()
    z = torch.randn(B, M, C, generator=gen, requires_grad=True)
    target = torch.randint(0, C, (B,), generator=gen)
    lip = torch.rand(M, generator=gen) + 0.5
    xn = torch.randn(B, D, generator=gen, requires_grad=True)
    p = torch.full((B,), 0.3)
    subsets = ops.all_subsets(M)

    def fusion_mm():
        return ops.masked_fusion(x, mask, backend="cpp")[0]

    def fusion_eager():
        return (x * maskf[..., None]).sum(1) / maskf.sum(1, keepdim=True)

    def margin_mm():
        return ops.certified_margin(z, target, lip, mask, backend="cpp")[0]

    def margin_eager():  # the sum-of-modalities margin over every rival, l2 (CRMT step 2)
        h = (z * maskf[..., None]).sum(1)
        margin = h.gather(1, target[:, None]) - h
        den = (maskf * lip).square().sum(1, keepdim=True).sqrt()
        radius = margin / den
        radius = radius.scatter(1, target[:, None], math.inf)
        return radius.min(1).values

    def noise_mm():
        return ops.noisy_modality_dropout(xn, p, 0.1, seed=1, offset=3, backend="cpp")[0]

    def noise_eager():
        keep = torch.rand(B) >= p
        return torch.where(keep[:, None], xn + 0.1 * torch.randn_like(xn), 0.0)

    def subsets_mm():
        return ops.subset_accuracy(z.detach(), target, backend="cpp")

    def subsets_eager():
        zd = z.detach()
        out = []
        for s in subsets:
            w = (mask & s).float()
            fused = (zd * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
            out.append((fused.argmax(1) == target).float().mean())
        return torch.stack(out)

    def with_backward(fn):
        def run():
            fn().sum().backward()
        return run

    return [
        ("masked_fusion", "fwd", fusion_mm, fusion_eager),
        ("masked_fusion", "fwd+bwd", with_backward(fusion_mm), with_backward(fusion_eager)),
        ("certified_margin", "fwd", margin_mm, margin_eager),
        ("certified_margin", "fwd+bwd", with_backward(margin_mm), with_backward(margin_eager)),
        ("noisy_modality_dropout", "fwd", noise_mm, noise_eager),
        ("noisy_modality_dropout", "fwd+bwd", with_backward(noise_mm), with_backward(noise_eager)),
        ("subset_accuracy", "fwd", subsets_mm, subsets_eager),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=500, help="calls per timing")
    parser.add_argument("--repeats", type=int, default=7, help="timings per cell (best kept)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = []
    print(f"B={B} M={M} D={D} C={C}  torch {torch.__version__}  threads "
          f"{torch.get_num_threads()}")
    print(f"{'op':<24}{'mode':<9}{'mmfast-cpp us':>14}{'eager us':>10}{'ratio':>8}")
    for op, mode, mm, eager in cases():
        t_mm, t_eager = _best_us(mm, args.number, args.repeats), _best_us(eager, args.number,
                                                                          args.repeats)
        rows.append({"op": op, "mode": mode, "mmfast_cpp_us": t_mm, "eager_us": t_eager})
        print(f"{op:<24}{mode:<9}{t_mm:>14.1f}{t_eager:>10.1f}{t_eager / t_mm:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
