"""What every method shares: the model spec, the encoder + head model, and the Method base.

A method is a dataclass of its hyper-parameters with two jobs: ``build_model(spec)`` and
``fit(model, train, val, ctx)`` (its training recipe, a sequence of engine stages).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfast.nn.encoders import build_encoders, infer_feature_dim
from mmfast.nn.model import MODALITIES, MultiModalModel, MultiModalOutput
from mmfast.train.batches import Batch, inputs_of
from mmfast.train.engine import StepInfo, TrainContext

__all__ = ["ModelSpec", "FusionModel", "Method", "FitResult", "cross_entropy_loss"]


@dataclass(frozen=True)
class ModelSpec:
    """What a model needs to know about the data and its size; JSON-able (checkpoints)."""

    num_classes: int
    input_shapes: dict[str, tuple[int, ...]]
    widths: tuple[int, ...] = (16, 32, 32)
    feature_dim: int = 64
    stem_stride: int = 1
    temporal: str = "stack"
    input_stats: dict[str, tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"ModelSpec.num_classes must be >= 2, got {self.num_classes}")
        if not self.input_shapes:
            raise ValueError("ModelSpec.input_shapes must name at least one modality")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.input_shapes)

    @classmethod
    def from_data(cls, data: Mapping[str, Tensor], widths: Sequence[int] = (16, 32, 32),
                  feature_dim: int = 64, num_classes: int | None = None,
                  modalities: Sequence[str] = MODALITIES, stem_stride: int = 1,
                  temporal: str = "stack") -> ModelSpec:
        """Shapes and input (mean, std) per modality (over the rows that have it) from a data
        dict; classes = max label + 1 unless given."""
        present = [m for m in modalities if m in data]
        if not present:
            raise ValueError(f"data has none of the modalities {list(modalities)}")
        if num_classes is None:
            num_classes = int(data["label"].max()) + 1 if data["label"].numel() else 2
        stats = {m: _input_stats(data[m], data["mask"][:, i])
                 for i, m in enumerate(present)} if "mask" in data else None
        return cls(num_classes, {m: tuple(data[m].shape[1:]) for m in present}, tuple(widths),
                   feature_dim, stem_stride, temporal, stats)

    def to_dict(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "feature_dim": self.feature_dim,
                "widths": list(self.widths), "stem_stride": self.stem_stride,
                "temporal": self.temporal, "modalities": list(self.modalities),
                "input_stats": None if self.input_stats is None else
                {m: list(v) for m, v in self.input_stats.items()},
                "input_shapes": {m: list(s) for m, s in self.input_shapes.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict` (the "modalities" list keeps the order: JSON objects may
        come back with sorted keys)."""
        order = d.get("modalities", list(d["input_shapes"]))
        return cls(int(d["num_classes"]), {m: tuple(d["input_shapes"][m]) for m in order},
                   tuple(d["widths"]), int(d["feature_dim"]), int(d.get("stem_stride", 1)),
                   str(d.get("temporal", "stack")),
                   {m: tuple(v) for m, v in d["input_stats"].items()}
                   if d.get("input_stats") else None)


def _input_stats(x: Tensor, present: Tensor) -> tuple[float, float]:
    """(mean, std) of the rows where the modality is present ((0, 1) when degenerate)."""
    rows = x[present.bool()] if present.shape[0] == x.shape[0] else x
    if rows.numel() < 2:
        return 0.0, 1.0
    rows = rows.double()
    std = float(rows.std())
    return float(rows.mean()), std if std > 1e-6 else 1.0


class FusionModel(MultiModalModel):
    """Per-modality encoders followed by a fusion head (``mmfast.nn.heads``)."""

    def __init__(self, encoders: nn.ModuleDict, head: nn.Module, num_classes: int):
        super().__init__()
        self.encoders = encoders
        self.head = head
        self.modalities = tuple(encoders.keys())
        self.num_classes = num_classes

    def features(self, inputs: Mapping[str, Tensor]) -> list[Tensor]:
        """Encoder outputs (B, d_m) in modality order."""
        return [self.encoders[m](inputs[m]) for m in self.modalities]

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor) -> MultiModalOutput:
        if mask.dim() != 2 or mask.shape[1] != len(self.modalities):
            raise ValueError(f"mask must be (B, {len(self.modalities)}) for modalities "
                             f"{self.modalities}, got shape {tuple(mask.shape)}")
        logits, modality_logits, aux = self.head(self.features(inputs), mask.bool())
        return MultiModalOutput(logits, modality_logits, aux)


def feature_dims(spec: ModelSpec, encoders: nn.ModuleDict) -> list[int]:
    return [infer_feature_dim(encoders[m], spec.input_shapes[m]) for m in spec.modalities]


def make_encoders(spec: ModelSpec, overrides: Mapping[str, nn.Module] | None = None
                  ) -> nn.ModuleDict:
    return build_encoders(spec.input_shapes, spec.widths, spec.feature_dim, overrides,
                          spec.stem_stride, spec.temporal, spec.input_stats)


def cross_entropy_loss(module: nn.Module, batch: Batch, info: StepInfo
                       ) -> tuple[Tensor, dict[str, float]]:
    """Plain cross entropy of the fused logits with the batch's own mask."""
    out = module(inputs_of(batch, _modalities(module)), batch["mask"])
    loss = F.cross_entropy(out.logits.float(), batch["label"])
    acc = (out.logits.argmax(1) == batch["label"]).float().mean()
    return loss, {"acc": float(acc)}


def _modalities(module: nn.Module) -> tuple[str, ...]:
    return getattr(module, "module", module).modalities


@dataclass
class FitResult:
    """A fitted model, its per-epoch history and method-specific facts for train_stats.json."""

    model: MultiModalModel
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Method:
    """Base of every method. Subclasses are dataclasses whose fields are hyper-parameters.

    ``encoders`` lets a caller plug any nn.Module per modality (not saved in hparams; a model
    with plugged encoders is rebuilt by passing the same modules to load_model).
    """

    registered_name: ClassVar[str] = "method"
    encoders: dict[str, nn.Module] | None = field(default=None, repr=False)

    def build_model(self, spec: ModelSpec) -> MultiModalModel:
        raise NotImplementedError

    def fit(self, model: MultiModalModel, train: Mapping[str, Tensor],
            val: Mapping[str, Tensor] | None, ctx: TrainContext) -> FitResult:
        raise NotImplementedError

    def hparams(self) -> dict[str, Any]:
        """The JSON-able hyper-parameters (what load_model needs to rebuild the model)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "encoders":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def stage_epochs(explicit: int | None, default: int) -> int:
    """An explicit epoch count, or a default derived from TrainConfig.epochs (at least 1)."""
    return max(1, int(default)) if explicit is None else int(explicit)


def check_optional_epochs(method: object, names: Sequence[str], minimum: int = 1) -> None:
    """Raise ValueError unless each named epoch-count field is None (derived from the
    config) or at least ``minimum``."""
    for name in names:
        value = getattr(method, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be None or >= {minimum}, got {value}")


@torch.no_grad()
def copy_module(dst: nn.Module, src: nn.Module) -> None:
    """Copy ``src``'s parameters and buffers into ``dst`` (same architecture)."""
    dst.load_state_dict(src.state_dict())
