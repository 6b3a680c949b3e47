"""Run the evaluation protocols on one model and one split: ``run_protocols``.

Importing this module registers the built-in protocols (missing subsets, missing rate,
noise, attack, certify, smoothing, missing_certificate); a new protocol registers itself with
:func:`mmfast.eval.common.register_protocol` and joins every run and report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from mmfast.eval import (  # noqa: F401  (registration)
    adversarial,
    certify,
    missing,
    missing_certificate,
    noise,
    smoothing,
)
from mmfast.eval.common import (
    PROTOCOLS,
    EvalConfig,
    accuracy,
    list_protocols,
    predict,
    split_inputs,
    to_jsonable,
    write_json_atomic,
)

__all__ = ["run_protocols", "evaluate_run", "EVAL_FILE"]


def run_protocols(
    model: nn.Module, data: Mapping[str, Tensor], cfg: EvalConfig | None = None,
    log=None,
) -> dict:
    """Evaluate ``model`` on ``data`` with every protocol in ``cfg.protocols`` (default all).

    Returns a JSON-able dict: "clean_accuracy", "num_samples", "config", "timings_s" and one
    key per protocol. The model is put in eval mode on ``cfg.device`` (its mode is restored).
    ``log`` (e.g. ``print``) receives one line per finished protocol.
    """
    cfg = cfg or EvalConfig()
    names = list(cfg.protocols) if cfg.protocols is not None else list_protocols()
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"cfg.protocols: expected names among {list_protocols()}, got {unknown}")
    was_training = model.training
    model.to(cfg.device).eval()
    try:
        inputs, mask, label = split_inputs(model, data)
        result: dict = {"num_samples": int(label.numel()), "config": cfg.to_dict(),
                        "clean_accuracy": accuracy(predict(model, inputs, mask, cfg), label),
                        "timings_s": {}}
        for name in names:
            start = time.perf_counter()
            result[name] = PROTOCOLS[name](model, data, cfg)
            result["timings_s"][name] = round(time.perf_counter() - start, 3)
            if log is not None:
                log(f"  {name}: {result['timings_s'][name]:.1f} s")
    finally:
        model.train(was_training)
    return to_jsonable(result)


#: The file ``run_protocols`` results are stored in, inside a run folder.
EVAL_FILE = "eval.json"


def evaluate_run(
    run_dir: str | os.PathLike, model: nn.Module, data: Mapping[str, Tensor],
    cfg: EvalConfig | None = None, method: str | None = None, log=None,
    extra: Mapping | None = None,
) -> Path:
    """``run_protocols`` and write the results to ``run_dir/eval.json`` atomically;
    ``extra`` adds facts (e.g. "dataset", "provenance": ``mmfast.train.provenance``)."""
    result = run_protocols(model, data, cfg, log=log)
    if method is not None:
        result = {"method": method, **result}
    if extra:
        result = {**result, **to_jsonable(dict(extra))}
    return write_json_atomic(Path(run_dir) / EVAL_FILE, result)
