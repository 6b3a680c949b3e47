"""Turn a ``pytest benchmarks --benchmark-only --benchmark-json=FILE`` result into the Markdown
table of benchmarks/README.md: per case, each provider's median time, GB/s, fraction of the copy
bandwidth measured in the same run, and its speed-up over eager reference and torch.compile.

    python benchmarks/summarize.py FILE.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def summarize(data: dict) -> str:
    cases: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        cases[bench["group"]][info["provider"]] = {"median": bench["stats"]["median"], **info}
    lines = ["| case | provider | median (ms) | GB/s | fraction of copy | x eager | x compile |",
             "|---|---|---|---|---|---|---|"]
    for case, providers in cases.items():
        eager = providers.get("reference", {}).get("median")
        compiled = providers.get("compile", {}).get("median")
        for name, r in providers.items():
            x_eager = f"{eager / r['median']:.2f}" if eager else "-"
            x_comp = f"{compiled / r['median']:.2f}" if compiled else "-"
            lines.append(f"| {case} | {name} | {r['median'] * 1e3:.2f} | {r['gb_per_s']:.2f} | "
                         f"{r['fraction_of_copy']:.2f} | {x_eager} | {x_comp} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", help="pytest-benchmark JSON output")
    args = parser.parse_args()
    with open(args.json_file) as fh:
        print(summarize(json.load(fh)))


if __name__ == "__main__":
    main()
