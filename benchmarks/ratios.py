"""Ratio tables from a pytest-benchmark JSON file: per case (benchmark group), every provider's
median and each mmfast provider's speed-up over ``eager`` and ``compile`` (> 1: mmfast faster).

    python benchmarks/ratios.py results.json [--markdown]

Works for every benchmark file here (providers eager / compile / reference / mmfast-*; older
files' names reference / cpp / cuda / triton are read as eager / mmfast-*). With --markdown the
tables are markdown, as pasted into benchmarks/README.md; a closing line gives, per mmfast
provider and mode, the worst and the geometric-mean ratio.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict

#: Older result files' provider names -> today's.
LEGACY = {"reference": "eager", "cpp": "mmfast-cpp", "cuda": "mmfast-cuda",
          "triton": "mmfast-triton"}
BASELINES = ("eager", "compile", "reference", "loop")


def load(path: str) -> dict[str, dict[str, float]]:
    """group -> provider -> median seconds."""
    with open(path) as f:
        data = json.load(f)
    cases: dict[str, dict[str, float]] = defaultdict(dict)
    names = {b.get("extra_info", {}).get("provider") for b in data["benchmarks"]}
    legacy = not any(str(n).startswith("mmfast-") for n in names)  # before the renaming
    for bench in data["benchmarks"]:
        provider = bench.get("extra_info", {}).get("provider") or bench["param"]
        if legacy:
            provider = LEGACY.get(provider, provider)
        cases[bench["group"]][provider] = bench["stats"]["median"]
    return cases


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def table(cases: dict[str, dict[str, float]], markdown: bool) -> str:
    mmfast = sorted({p for c in cases.values() for p in c if p.startswith("mmfast-")})
    baselines = [b for b in BASELINES if any(b in c for c in cases.values())]
    header = (["case"] + baselines + mmfast
              + [f"{m} vs {b}" for m in mmfast for b in ("eager", "compile")])
    rows = []
    summary: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for group, provs in cases.items():
        row = [group] + [_fmt_time(provs.get(p)) for p in baselines + mmfast]
        for m in mmfast:
            for b in ("eager", "compile"):
                if m in provs and b in provs:
                    ratio = provs[b] / provs[m]
                    row.append(f"{ratio:.2f}x")
                    mode = "full" if "-full-" in group else "fwd"
                    summary[(m, b, mode)].append(ratio)
                else:
                    row.append("-")
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in [header] + rows]
    lines.append("")
    for (m, b, mode), ratios in sorted(summary.items()):
        gmean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        lines.append(f"{m} vs {b}, {mode}: worst {min(ratios):.2f}x, geometric mean "
                     f"{gmean:.2f}x over {len(ratios)} cases")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="a --benchmark-json file")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    print(table(load(args.json), args.markdown))


if __name__ == "__main__":
    main()
