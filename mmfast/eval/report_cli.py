"""``mmfast report RUN... --out DIR``: report.md + PNG plots comparing evaluated runs."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write report.md and PNG plots comparing evaluated runs",
        description="Read each RUN folder's eval.json and train_stats.json and write "
        "OUT/report.md with plots per protocol (methods side by side), each method's "
        "training time, peak memory and parameter count, the papers' claims marked "
        "holds / within noise / does not hold with the numbers, the chance level, units, "
        "data problems and provenance. Runs of one method with different training seeds are "
        "grouped (mean +- sd; claims paired by seed); one seed per method gives only "
        "indicative claims. A demo folder (mmfast demo --out DIR) stands for its runs, and "
        "report folders are skipped, so `mmfast report runs/* --out runs/report` works.")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folders holding eval.json, or demo folders (DIR/runs/*)")
    p.add_argument("--out", default="report", metavar="DIR", help="output folder (default: report)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mmfast.eval.report import write_report

    path = write_report(args.runs, args.out)
    print(f"[report] wrote {path}")
    return 0
