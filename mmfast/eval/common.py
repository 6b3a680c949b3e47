"""Shared pieces of the evaluation protocols: config, registry, batching, atomic JSON.

Every protocol is a function ``(model, data, cfg) -> dict`` registered by name with
:func:`register_protocol`; ``data`` is the in-memory split of ``mmfast.data.load_split``
(per-modality tensors, ``"mask"`` (N, M) bool, ``"label"`` (N,) int64).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmfast._io import write_bytes_atomic, write_text_atomic
from mmfast.nn.model import MODALITIES

__all__ = [
    "EvalConfig",
    "EVAL_PRESETS",
    "PROTOCOLS",
    "register_protocol",
    "list_protocols",
    "model_modalities",
    "split_inputs",
    "drop_modalities",
    "predict",
    "subset_name",
    "protocol_results",
    "write_json_atomic",
    "write_text_atomic",
    "write_bytes_atomic",
    "to_jsonable",
]

Protocol = Callable[[nn.Module, Mapping[str, Tensor], "EvalConfig"], dict]

#: name -> protocol function, in registration order (the order of the report's sections).
PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(name: str) -> Callable[[Protocol], Protocol]:
    """Decorator: make ``fn`` runnable as ``run_protocols(..., cfg.protocols=[name])``."""

    def decorate(fn: Protocol) -> Protocol:
        if name in PROTOCOLS:
            raise ValueError(f"protocol {name!r} is already registered")
        PROTOCOLS[name] = fn
        return fn

    return decorate


#: Report order of the built-in protocols (issue items a-e); others follow in registration order.
_ORDER = ("missing_subsets", "missing_rate", "noise", "attack", "certify")


def list_protocols() -> list[str]:
    """Registered protocol names, built-ins first in the order (a)-(e)."""
    return sorted(PROTOCOLS, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER)))


def protocol_count(cfg) -> int:
    """How many protocols a run under ``cfg`` evaluates (the length of its progress bar)."""
    return len(cfg.protocols if cfg.protocols is not None else list_protocols())


def _tenths() -> tuple[float, ...]:
    return tuple(i / 10 for i in range(11))


@dataclass
class EvalConfig:
    """What every protocol sweeps. Noise sigmas are in units of each modality's standard
    deviation on the evaluated split, so levels compare across modalities; attack budgets and
    certification radii are l2 norms in input space (joint over the attacked modalities)."""

    protocols: tuple[str, ...] | None = None  # None = every registered protocol
    batch_size: int = 256
    device: str = "cpu"
    seed: int = 0
    backend: str | None = None  # mmfast.ops backend (None = auto / $MMFAST_BACKEND)
    missing_rates: tuple[float, ...] = field(default_factory=_tenths)
    gaussian_sigmas: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    salt_pepper_densities: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.4)
    attack_eps: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    attack_steps: int = 4
    attack_samples: int | None = 512  # rows attacked (a seeded random subset); None = all
    clamp: dict[str, tuple[float, float]] | None = None  # valid input range per modality
    certify_radii: tuple[float, ...] = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2,
                                        0.5)
    certify_check_eps: tuple[float, ...] | None = None  # soundness-check PGD budgets (None:
    # attack_eps); a certified radius beyond a misclassified PGD example is a violation
    # mmfast.eval.smoothing.SmoothingConfig overrides; its own defaults are Cohen et al.'s
    # (n0 = 100, n = 100000 draws per row): the default here is a quick budget
    smoothing: dict[str, Any] | None = field(default_factory=lambda: {
        "samples": 64, "n0": 16, "n": 128})

    def __post_init__(self) -> None:
        for name in ("batch_size", "attack_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EvalConfig.{name}: expected an int >= 1, got {value!r}")
        for name in ("missing_rates", "salt_pepper_densities"):
            bad = [v for v in getattr(self, name) if not 0.0 <= v <= 1.0]
            if bad:
                raise ValueError(f"EvalConfig.{name}: expected values in [0, 1], got {bad}")
        for name in ("gaussian_sigmas", "attack_eps", "certify_radii"):
            bad = [v for v in getattr(self, name) if v < 0]
            if bad:
                raise ValueError(f"EvalConfig.{name}: expected values >= 0, got {bad}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> EvalConfig:
        """Named sweeps: "small" (the 15-minute CPU demo) or "gpu" (denser, every row)."""
        if name not in EVAL_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(EVAL_PRESETS)}, got {name!r}")
        return cls(**{**EVAL_PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EvalConfig:
        """Build from JSON-like values (lists become tuples), rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"EvalConfig: unknown keys {unknown}; "
                             f"expected some of {sorted(known)}")
        converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if converted.get("clamp") is not None:
            converted["clamp"] = {m: tuple(r) for m, r in converted["clamp"].items()}
        return cls(**converted)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Named EvalConfig overrides (see :meth:`EvalConfig.preset`).
EVAL_PRESETS: dict[str, dict[str, Any]] = {
    "small": {"attack_samples": 100, "attack_eps": (0.0, 0.05, 0.1, 0.2, 0.5),
              "gaussian_sigmas": (0.0, 0.5, 1.0, 2.0),
              "salt_pepper_densities": (0.0, 0.1, 0.2, 0.4)},
    "gpu": {"batch_size": 512, "attack_samples": None,
            "gaussian_sigmas": (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
            "salt_pepper_densities": (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4),
            "attack_eps": (0.0, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)},
}

# Smoothing budgets (mmfast.eval.smoothing; its defaults are Cohen et al.'s n0 = 100,
# n = 100000, alpha = 0.001): the CPU demo certifies a small seeded subset with a few hundred
# draws per row, the GPU preset more rows and draws.
EVAL_PRESETS["small"]["smoothing"] = {"samples": 32, "n0": 8, "n": 100, "draw_batch": 512}
EVAL_PRESETS["gpu"]["smoothing"] = {"samples": 500, "n0": 100, "n": 10_000, "draw_batch": 4096}


# ----------------------------------------------------------------------------- batching
def model_modalities(model: nn.Module) -> tuple[str, ...]:
    """The mask's column order for ``model`` (MODALITIES when it does not say)."""
    return tuple(getattr(model, "modalities", MODALITIES))


def split_inputs(
    model: nn.Module, data: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """(inputs, mask (N, M) bool, label (N,)) from a data dict, validated against the model."""
    names = model_modalities(model)
    for key in ("mask", "label"):
        if key not in data:
            raise ValueError(f"data: expected a {key!r} entry, got keys {sorted(data)}")
    missing = [m for m in names if m not in data]
    if missing:
        raise ValueError(f"data: the model needs modalities {list(names)}, missing {missing}")
    mask, label = data["mask"].bool(), data["label"].long()
    n = label.shape[0]
    if mask.shape != (n, len(names)):
        raise ValueError(f"data['mask']: expected shape ({n}, {len(names)}), "
                         f"got {tuple(mask.shape)}")
    bad = [m for m in names if data[m].shape[0] != n]
    if bad:
        raise ValueError(f"data: modalities {bad} do not have {n} rows like 'label'")
    return {m: data[m] for m in names}, mask, label


def drop_modalities(
    inputs: Mapping[str, Tensor], mask: Tensor, names: tuple[str, ...]
) -> dict[str, Tensor]:
    """Zero the inputs of absent modalities row by row ("missing = zero input", as loaders do)."""
    out = {}
    for j, m in enumerate(names):
        keep = mask[:, j].view(-1, *([1] * (inputs[m].dim() - 1)))
        out[m] = torch.where(keep, inputs[m], torch.zeros((), dtype=inputs[m].dtype,
                                                          device=inputs[m].device))
    return out


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def to_device(inputs: Mapping[str, Tensor], rows: slice, device: str) -> dict[str, Tensor]:
    return {m: x[rows].to(device, non_blocking=True) for m, x in inputs.items()}


@torch.no_grad()
def predict(
    model: nn.Module, inputs: Mapping[str, Tensor], mask: Tensor, cfg: EvalConfig,
    transform: Callable[[dict[str, Tensor], Tensor, int], dict[str, Tensor]] | None = None,
) -> Tensor:
    """Predicted class (N,) on CPU, batch by batch; absent modalities are zeroed first.

    ``transform(batch_inputs, batch_mask, batch_number)`` may corrupt a batch (noise).
    """
    names = model_modalities(model)
    preds = []
    for i, rows in enumerate(batches(mask.shape[0], cfg.batch_size)):
        x = to_device(inputs, rows, cfg.device)
        m = mask[rows].to(cfg.device)
        x = drop_modalities(x, m, names)
        if transform is not None:
            x = transform(x, m, i)
        preds.append(model(x, m).logits.argmax(dim=1).cpu())
    if not preds:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(preds)


def accuracy(pred: Tensor, label: Tensor) -> float:
    return float((pred == label.cpu()).float().mean()) if label.numel() else math.nan


def subset_name(subset: Tensor, names: tuple[str, ...]) -> str:
    """"video+audio" for the bool row (True, True, False)."""
    return "+".join(m for m, present in zip(names, subset.tolist()) if present)


def protocol_results(
    results: Mapping[str, Mapping], protocol: str, include_skipped: bool = False
) -> dict[str, Mapping]:
    """{method: results[method][protocol]} for the methods that ran ``protocol``."""
    return {m: r[protocol] for m, r in results.items()
            if isinstance(r.get(protocol), Mapping)
            and (include_skipped or "skipped" not in r[protocol])}


# ------------------------------------------------------------------------------ output
def to_jsonable(value: Any) -> Any:
    """Tensors -> lists, tuples -> lists, NaN/inf -> None (strict JSON)."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write strict JSON (NaN/inf as null) to ``path`` atomically."""
    text = json.dumps(to_jsonable(payload), indent=2, allow_nan=False)
    return write_text_atomic(path, text + "\n")
