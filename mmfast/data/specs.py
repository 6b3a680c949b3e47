"""Output sizes of the loaders: one small frozen spec per modality, shared by the DALI and the
reference loaders so both produce tensors of the same shape from the same parameters.

Defaults suit CPU training: an 8-frame 32x32 grey clip, a 40 x 51 log-mel of one second of
16 kHz audio, a 32x32 grey image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Temporal sampling of a clip (:attr:`VideoSpec.sampling`).
VIDEO_SAMPLINGS = ("head", "uniform")


def _check_positive(owner: str, **values: int | float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{owner}.{name}: expected a positive value, got {value!r}")


def _check_channels(owner: str, channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"{owner}.channels: expected 1 (grey) or 3 (RGB), got {channels!r}")


@dataclass(frozen=True)
class VideoSpec:
    """Clip of ``frames`` frames resized to height x width, grey or RGB, chosen by ``sampling``
    (see :meth:`frame_indices` for the exact rules):

    * ``"head"`` (default): every ``stride``-th frame from the start, 0, stride, 2 * stride, ...
      (the last of them repeats when a clip is shorter). Sees only the clip's beginning.
    * ``"uniform"``: ``frames`` indices spread evenly over the whole clip (TSN-style segment
      centres; ``stride`` is ignored); a clip with fewer frames repeats some of them.
    """

    frames: int = 8
    stride: int = 2
    height: int = 32
    width: int = 32
    channels: int = 1
    sampling: str = "head"

    def __post_init__(self) -> None:
        _check_positive("VideoSpec", frames=self.frames, stride=self.stride,
                        height=self.height, width=self.width)
        _check_channels("VideoSpec", self.channels)
        if self.sampling not in VIDEO_SAMPLINGS:
            raise ValueError(f"VideoSpec.sampling: expected one of {VIDEO_SAMPLINGS}, "
                             f"got {self.sampling!r}")

    def frame_indices(self, num_frames: int) -> np.ndarray:
        """int64 (frames,): the frame indices of a clip of ``num_frames`` frames (n below; a
        clip reported as empty counts as one frame), T = ``frames``.

        * head: ``i * stride`` for i < T, each past the clip replaced by the last one inside it,
          ``((n - 1) // stride) * stride`` (what DALI's ``pad_mode="edge"`` repeats).
        * uniform: ``floor((i + 0.5) * n / T)`` for i < T, computed exactly in integers as
          ``((2 i + 1) n) // (2 T)``: the centre frame of T equal segments. Always in
          [0, n - 1]; spans the clip when n >= T, and repeats frames when n < T (n=5, T=8:
          0 0 1 2 2 3 4 4).
        """
        n = max(int(num_frames), 1)
        i = np.arange(self.frames, dtype=np.int64)
        if self.sampling == "uniform":
            return ((2 * i + 1) * n) // (2 * self.frames)
        return np.minimum(i * self.stride, ((n - 1) // self.stride) * self.stride)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(T, C, H, W) of one sample."""
        return (self.frames, self.channels, self.height, self.width)


@dataclass(frozen=True)
class AudioSpec:
    """Log-mel spectrogram (dB) of the first ``duration_s`` seconds (zero-padded), mono,
    resampled to ``sample_rate``; Hann windows centred every ``hop`` samples."""

    sample_rate: int = 16000
    duration_s: float = 1.0
    n_fft: int = 512
    hop: int = 320
    n_mels: int = 40
    cutoff_db: float = 80.0

    def __post_init__(self) -> None:
        _check_positive("AudioSpec", sample_rate=self.sample_rate, duration_s=self.duration_s,
                        n_fft=self.n_fft, hop=self.hop, n_mels=self.n_mels,
                        cutoff_db=self.cutoff_db)

    @property
    def num_samples(self) -> int:
        """Audio samples per clip after padding or cropping."""
        return int(round(self.sample_rate * self.duration_s))

    @property
    def num_frames(self) -> int:
        """Spectrogram frames (centred windows: one per hop, plus one)."""
        return self.num_samples // self.hop + 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """(1, n_mels, frames) of one sample."""
        return (1, self.n_mels, self.num_frames)


@dataclass(frozen=True)
class ImageSpec:
    """Still image resized to height x width, grey or RGB."""

    height: int = 32
    width: int = 32
    channels: int = 1

    def __post_init__(self) -> None:
        _check_positive("ImageSpec", height=self.height, width=self.width)
        _check_channels("ImageSpec", self.channels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        return (self.channels, self.height, self.width)


@dataclass(frozen=True)
class DataSpec:
    """The three modality specs together (what a loader is asked to produce)."""

    video: VideoSpec = field(default_factory=VideoSpec)
    audio: AudioSpec = field(default_factory=AudioSpec)
    image: ImageSpec = field(default_factory=ImageSpec)

    def shape(self, modality: str) -> tuple[int, ...]:
        """Per-sample tensor shape of ``modality``."""
        return getattr(self, modality).shape
