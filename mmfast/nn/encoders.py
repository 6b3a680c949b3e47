"""Per-modality encoders for the built-in data: small CNNs that are fast on two CPU cores.

Each encoder maps one modality's batch to features (B, feature_dim). They are plain
``nn.Sequential`` stacks of Conv2d / ReLU / MaxPool2d / global average pooling / Linear, so a
sound Lipschitz bound can be read off their layers (``mmfast.methods.lipschitz``). Any
``nn.Module`` with the same input/output contract can replace them (``build_encoders(...,
overrides=...)``); only the spectral Lipschitz bound needs the known layer types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["ConvEncoder", "FrameEncoder", "Standardize", "TEMPORAL_MODES", "build_encoder",
           "build_encoders", "infer_feature_dim", "stacked_frame_encoder"]


class Standardize(nn.Module):
    """(x - mean) / std with fixed scalars taken from the training data (no learnt state).

    Inputs in [0, 1] with a large offset train very slowly without normalisation layers; a
    fixed affine map fixes that and keeps the Lipschitz bound exact (1 / std).
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        if not std > 0:
            raise ValueError(f"Standardize needs std > 0, got {std}")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: Tensor) -> Tensor:
        """(x - mean) / std, elementwise."""
        return (x - self.mean) / self.std


class ConvEncoder(nn.Sequential):
    """(B, C, H, W) -> (B, feature_dim): optional standardisation, ``len(widths)`` [conv3x3,
    ReLU, maxpool2] blocks (the last without pooling), global max pooling (position-invariant
    and 1-Lipschitz), then a linear projection. The first
    convolution has stride ``stem_stride`` (2 quarters the cost of everything after it: on two
    CPU cores that is what makes the demo fit in minutes).

    No normalisation layers: missing modalities are zero-filled inputs during augmentation and
    would corrupt BatchNorm statistics, and a normalisation layer has no global Lipschitz bound.
    """

    def __init__(self, in_channels: int, widths: Sequence[int] = (16, 32, 32),
                 feature_dim: int = 64, stem_stride: int = 1,
                 stats: tuple[float, float] | None = None):
        if in_channels < 1 or not widths or feature_dim < 1:
            raise ValueError(
                f"ConvEncoder needs in_channels >= 1, non-empty widths and feature_dim >= 1, "
                f"got {in_channels}, {tuple(widths)}, {feature_dim}"
            )
        layers: list[nn.Module] = [] if stats is None else [Standardize(*stats)]
        previous = in_channels
        for i, width in enumerate(widths):
            stride = stem_stride if i == 0 else 1
            layers += [nn.Conv2d(previous, width, 3, stride=stride, padding=1), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            previous = width
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(previous, feature_dim)]
        super().__init__(*layers)
        self.feature_dim = feature_dim


class FrameEncoder(nn.Module):
    """(B, T, C, H, W) -> (B, feature_dim): a 2D encoder on every frame, averaged over time.

    The time average is what keeps the Lipschitz bound simple: ||mean_t f(x_t) - mean_t f(x'_t)||
    <= L / sqrt(T) * ||x - x'|| when f is L-Lipschitz.
    """

    def __init__(self, frame_encoder: nn.Module):
        super().__init__()
        self.frame = frame_encoder
        self.feature_dim = getattr(frame_encoder, "feature_dim", None)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, feature_dim): the frame encoder's features, averaged over T."""
        if x.dim() != 5:
            raise ValueError(
                f"FrameEncoder expects (B, T, C, H, W) input, got shape {tuple(x.shape)}"
            )
        b, t = x.shape[:2]
        features = self.frame(x.reshape(b * t, *x.shape[2:]))
        return features.view(b, t, -1).mean(dim=1)


TEMPORAL_MODES = ("stack", "frames")


def stacked_frame_encoder(frames: int, channels: int, widths: Sequence[int] = (16, 32, 32),
                          feature_dim: int = 64, stem_stride: int = 1,
                          stats: tuple[float, float] | None = None) -> nn.Sequential:
    """(B, T, C, H, W) -> (B, feature_dim) with the T frames stacked as T*C input channels
    (early temporal fusion): one 2D CNN pass per clip instead of T, ~T times cheaper."""
    encoder = nn.Sequential(nn.Flatten(1, 2),
                            *ConvEncoder(frames * channels, widths, feature_dim, stem_stride,
                                         stats))
    encoder.feature_dim = feature_dim
    return encoder


def build_encoder(input_shape: Sequence[int], widths: Sequence[int] = (16, 32, 32),
                  feature_dim: int = 64, stem_stride: int = 1, temporal: str = "stack",
                  stats: tuple[float, float] | None = None) -> nn.Module:
    """An encoder for one sample shape: (C, H, W) -> ConvEncoder; (T, C, H, W) -> frames
    stacked as channels (``temporal="stack"``) or a per-frame CNN averaged over time
    (``temporal="frames"``, :class:`FrameEncoder`). ``stats`` = (mean, std) standardises the
    input first."""
    shape = tuple(int(s) for s in input_shape)
    if temporal not in TEMPORAL_MODES:
        raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {temporal!r}")
    if len(shape) == 4:
        if temporal == "stack":
            return stacked_frame_encoder(shape[0], shape[1], widths, feature_dim, stem_stride,
                                         stats)
        return FrameEncoder(ConvEncoder(shape[1], widths, feature_dim, stem_stride, stats))
    if len(shape) == 3:
        return ConvEncoder(shape[0], widths, feature_dim, stem_stride, stats)
    raise ValueError(f"input_shape must be (T, C, H, W) or (C, H, W), got {shape}")


def build_encoders(input_shapes: Mapping[str, Sequence[int]], widths: Sequence[int] = (16, 32, 32),
                   feature_dim: int = 64, overrides: Mapping[str, nn.Module] | None = None,
                   stem_stride: int = 1, temporal: str = "stack",
                   stats: Mapping[str, tuple[float, float]] | None = None) -> nn.ModuleDict:
    """One encoder per modality (dict order kept); ``overrides`` plugs in any module by name;
    ``stats`` maps a modality to the (mean, std) its encoder standardises with."""
    stats = dict(stats or {})
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(input_shapes)
    if unknown:
        raise ValueError(f"overrides name unknown modalities {sorted(unknown)}; "
                         f"expected a subset of {list(input_shapes)}")
    return nn.ModuleDict({
        name: overrides.get(name)
        or build_encoder(shape, widths, feature_dim, stem_stride, temporal, stats.get(name))
        for name, shape in input_shapes.items()
    })


@torch.no_grad()
def infer_feature_dim(encoder: nn.Module, input_shape: Sequence[int]) -> int:
    """Output width of ``encoder`` on one zero sample (for plugged-in modules)."""
    dim = getattr(encoder, "feature_dim", None)
    if isinstance(dim, int):
        return dim
    return int(encoder(torch.zeros(1, *input_shape)).shape[-1])
