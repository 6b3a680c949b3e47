"""Evaluation: attacks, robustness protocols, certification and the Markdown report.

``run_protocols(model, data, cfg)`` runs every registered protocol and returns JSON-able
results; ``write_report(run_dirs, out_dir)`` turns run folders into report.md + PNG plots.
"""

from mmfast.eval.attacks import fgm, pgd_l2
from mmfast.eval.common import EvalConfig, list_protocols, register_protocol, write_json_atomic
from mmfast.eval.protocols import evaluate_run, run_protocols

__all__ = [
    "EvalConfig",
    "evaluate_run",
    "fgm",
    "list_protocols",
    "pgd_l2",
    "register_protocol",
    "run_protocols",
    "write_json_atomic",
]
