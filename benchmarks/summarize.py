"""Turn a ``pytest benchmarks --benchmark-only --benchmark-json=FILE`` result into the Markdown
table of benchmarks/README.md (per case, each provider's median time, GB/s, fraction of the
copy bandwidth measured in the same run, first-call time, and speed-up over eager reference and
torch.compile), and, from a GPU run, into the CUDA-vs-Triton order per op and shape class
that ``auto`` dispatch uses (mmfast/ops/cuda_auto_order.json).

    python benchmarks/summarize.py FILE.json
    python benchmarks/summarize.py FILE.json --auto-order mmfast/ops/cuda_auto_order.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from mmfast._io import write_text_atomic

#: GPU backends ``auto`` chooses between; the eager reference is always the last resort.
GPU_BACKENDS = ("cuda", "triton")
#: benchmark op name -> the public ops whose auto choice it decides.
DECIDES = {"subset_accuracy": ("subset_accuracy", "subset_logits")}


def _cases(data: dict) -> dict[str, dict[str, dict]]:
    """group -> provider -> {median, **extra_info}."""
    cases: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = _backend_names(bench["extra_info"])
        cases[bench["group"]][info["provider"]] = {"median": bench["stats"]["median"], **info}
    return cases


def summarize(data: dict) -> str:
    cases = _cases(data)
    events = any("event_ms_per_call" in r for c in cases.values() for r in c.values())
    extra_head = " event ms / call | event fraction of copy |" if events else ""
    lines = ["| case | provider | median (ms) | GB/s | fraction of copy | first call (ms) "
             "| x eager | x compile |" + extra_head,
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if events else "")]
    for case, providers in cases.items():
        eager = providers.get("reference", {}).get("median")
        compiled = providers.get("compile", {}).get("median")
        for name, r in providers.items():
            x_eager = f"{eager / r['median']:.2f}" if eager else "-"
            x_comp = f"{compiled / r['median']:.2f}" if compiled else "-"
            first = r.get("first_call_s")
            first_ms = f"{first * 1e3:.1f}" if first is not None else "-"
            extra = ""
            if events:
                ev_ms, ev_frac = r.get("event_ms_per_call"), r.get("event_fraction_of_copy")
                extra = (f" {ev_ms:.4f} | {ev_frac:.2f} |" if ev_ms is not None
                         else " - | - |")
            lines.append(f"| {case} | {name} | {r['median'] * 1e3:.3f} | {r['gb_per_s']:.2f} | "
                         f"{r['fraction_of_copy']:.2f} | {first_ms} | {x_eager} | {x_comp} |"
                         + extra)
    return "\n".join(lines)


#: The GPU targets of issue #11: (row, group prefix, group must contain, kind, threshold).
#: kind "fraction": the best GPU backend's fraction of the copy bandwidth (CUDA-event timing
#: when recorded, else the per-call wall clock); "speedup": the best GPU backend over the
#: per-subset loop.
GPU_TARGETS = (
    ("masked_fusion forward", "masked_fusion-fwd-", "", "fraction", 0.90),
    ("masked_fusion forward + backward", "masked_fusion-full-", "", "fraction", 0.80),
    ("certified_margin C = 100", "certified_margin-fwd-", ", 100)", "fraction", 0.70),
    ("certified_margin C = 10", "certified_margin-fwd-", ", 10)", "fraction", 0.40),
    ("noisy_modality_dropout bf16", "noisy_modality_dropout-torch.bfloat16", "", "fraction",
     0.75),
    ("subset_accuracy, all 15 subsets of M = 4, x per-subset loop", "subset_accuracy-",
     ", 4, ", "speedup", 30.0),
)


def _fraction(r: dict) -> float:
    return r.get("event_fraction_of_copy", r["fraction_of_copy"])


def _time(r: dict) -> float:
    return r["event_ms_per_call"] / 1e3 if "event_ms_per_call" in r else r["median"]


def targets(data: dict) -> str:
    """The GPU targets table (benchmarks/README.md): per row the best of the cuda and triton
    backends over the matching GPU cases, with the target and whether it is met."""
    cases = {g: c for g, c in _cases(data).items() if g.endswith("-cuda")}
    lines = ["| target | threshold | measured (best backend) | met |", "|---|---|---|---|"]
    for row, prefix, contains, kind, threshold in GPU_TARGETS:
        best = None
        for group, providers in cases.items():
            if not group.startswith(prefix) or contains not in group:
                continue
            for name in GPU_BACKENDS:
                r = providers.get(name)
                if r is None:
                    continue
                if kind == "fraction":
                    value = _fraction(r)
                elif "loop" in providers:
                    value = _time(providers["loop"]) / _time(r)
                else:
                    continue
                if best is None or value > best[0]:
                    best = (value, name)
        shown = "x" if kind == "speedup" else ""
        if best is None:
            lines.append(f"| {row} | {threshold}{shown} | not measured | - |")
        else:
            lines.append(f"| {row} | {threshold}{shown} | {best[0]:.2f}{shown} ({best[1]}) | "
                         f"{'yes' if best[0] >= threshold else 'NO'} |")
    return "\n".join(lines)


def _faster_first(ratios: list[float]) -> tuple[list[str], float]:
    """(order, geometric-mean ratio) from median(triton) / median(cuda) ratios."""
    ratio = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    first, second = ("cuda", "triton") if ratio >= 1.0 else ("triton", "cuda")
    return [first, second, "reference"], ratio


def auto_order(data: dict) -> dict:
    """Per op and shape class (``mmfast.ops._dispatch.shape_class``), CUDA backends ordered by
    the geometric mean over the GPU cases of median(triton) / median(cuda): the faster one
    first, then the other, then the reference; "*" is the order over all of the op's cases
    (used for a shape class no case measured).

    Only cases where both backends ran count; an op without such a case gets no entry (auto
    keeps its default order for it). ``evidence`` records the ratios: per class and per case.
    """
    from mmfast.ops._dispatch import ANY_SHAPE, shape_class

    medians: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    shapes: dict[str, tuple[int, ...]] = {}
    devices = set()
    for bench in data["benchmarks"]:
        info = _backend_names(bench["extra_info"])
        if info.get("provider") in GPU_BACKENDS and bench["group"].endswith("-cuda"):
            medians[info["op"]][bench["group"]][info["provider"]] = bench["stats"]["median"]
            shapes[bench["group"]] = tuple(info.get("shape", ()))
            devices.add(info.get("device", "unknown"))
    orders, evidence = {}, {}
    for op, cases in sorted(medians.items()):
        per_case = {group: c["triton"] / c["cuda"] for group, c in cases.items()
                    if set(GPU_BACKENDS) <= set(c)}
        if not per_case:
            continue
        by_class: dict[str, list[float]] = defaultdict(list)
        for group, ratio in per_case.items():
            by_class[shape_class(op, shapes[group])].append(ratio)
        by_class[ANY_SHAPE] = list(per_case.values())
        op_orders, op_ratios = {}, {}
        for cls, ratios in sorted(by_class.items()):
            op_orders[cls], ratio = _faster_first(ratios)
            op_ratios[cls] = round(ratio, 4)
        for public in DECIDES.get(op, (op,)):
            orders[public] = op_orders
        evidence[op] = {"triton_over_cuda_time": op_ratios,
                        "per_case": {g: round(r, 4) for g, r in per_case.items()}}
    return {"orders": orders, "evidence": evidence, "devices": sorted(devices),
            "source": data.get("datetime", "unknown")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", help="pytest-benchmark JSON output")
    parser.add_argument("--auto-order", type=Path, metavar="OUT",
                        help="also write the per-op CUDA/Triton order of a GPU run to OUT "
                             "(mmfast/ops/cuda_auto_order.json is what auto dispatch reads)")
    args = parser.parse_args(argv)
    with open(args.json_file) as fh:
        data = json.load(fh)
    print(summarize(data))
    if any(b["group"].endswith("-cuda") for b in data["benchmarks"]):
        print("\n" + targets(data))
    if args.auto_order is not None:
        table = auto_order(data)
        if not table["orders"]:
            raise SystemExit(f"{args.json_file} has no GPU case where both cuda and triton ran: "
                             f"nothing written to {args.auto_order}")
        # temp file + rename: a failed run never leaves half a table for dispatch to load
        write_text_atomic(args.auto_order, json.dumps(table, indent=2, sort_keys=True) + "\n")
        print(f"\nauto order written to {args.auto_order}: {table['orders']}")


def _backend_names(info: dict) -> dict:
    """extra_info with ``provider`` as the backend name ("reference", "cpp", "cuda", "triton"):
    the benchmarks name providers as users do ("eager", "mmfast-cpp", ...) and record the backend
    beside it (added by cpukern, issue 14's provider names)."""
    return {**info, "provider": info.get("backend", info.get("provider"))}


if __name__ == "__main__":
    main()
