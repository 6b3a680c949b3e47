"""The reference loader: the same batches as :class:`mmfast.data.loader.MultiModalLoader`,
decoded with PyAV, PIL and numpy in the calling thread (no DALI). It checks that the DALI
branches decode the same content, and is the baseline of ``benchmarks/bench_loaders.py``.

Resizing uses torch's antialiased bilinear filter (the triangle filter of DALI's linear
resize); the log-mel follows DALI's spectrogram, slaney mel filter bank and to_decibels.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence

import av
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmfast.data.arrays import read_array
from mmfast.data.base import LoaderBase
from mmfast.data.batch import collate, empty_batch, make_batch
from mmfast.data.manifest import Manifest
from mmfast.data.probe import probe
from mmfast.data.specs import AudioSpec, DataSpec, ImageSpec, VideoSpec
from mmfast.data.video_io import count_video_frames, decode_video
from mmfast.nn.model import MODALITIES


def resize_pixels(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (..., H, W, 3) -> uint8 (..., height, width, 3), antialiased bilinear."""
    x = torch.from_numpy(np.array(rgb, dtype=np.float32))
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != (height, width):
        x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear",
                                            antialias=True, align_corners=False)
    x = x.permute(0, 2, 3, 1).round_().clamp_(0, 255).to(torch.uint8)
    return x.reshape(*lead, height, width, 3).numpy()


def reference_video(path: str | os.PathLike, spec: VideoSpec) -> np.ndarray:
    """uint8 (T, H, W, 3), resized: the frames :meth:`VideoSpec.frame_indices` picks, as the
    DALI branch does. "head": 0, stride, ... (the last repeated when short) of the decoded
    frames. "uniform": spread over the clip's frame count from :func:`count_video_frames` (the
    count the DALI loader feeds), an index past the decoded frames taking the last one (DALI's
    ``pad_mode="edge"``)."""
    frames = decode_video(path)
    n = count_video_frames(path) if spec.sampling == "uniform" else len(frames)
    chosen = np.minimum(spec.frame_indices(n), len(frames) - 1)
    return resize_pixels(frames[chosen], spec.height, spec.width)


def reference_image(path: str | os.PathLike, spec: ImageSpec) -> np.ndarray:
    """uint8 (H, W, 3) resized."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    return resize_pixels(rgb, spec.height, spec.width)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)),
                    m * (200.0 / 3))


@functools.cache
def mel_filter_bank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular slaney filters, area-normalised (as librosa)."""
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    lower = (fft_freqs[None, :] - mel_pts[:-2, None]) / np.diff(mel_pts)[:-1, None]
    upper = (mel_pts[2:, None] - fft_freqs[None, :]) / np.diff(mel_pts)[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_pts[2:] - mel_pts[:-2]))[:, None]


def log_mel(audio: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """float32 (n_mels, frames): power spectrogram of centred, reflect-padded Hann windows,
    mel filter bank, 10 log10 relative to 1, floored at -cutoff_db."""
    x = np.zeros(spec.num_samples)
    x[:min(len(audio), spec.num_samples)] = audio[:spec.num_samples]
    half = spec.n_fft // 2
    x = np.pad(x, half, mode="reflect")
    starts = np.arange(spec.num_frames) * spec.hop
    windows = x[starts[:, None] + np.arange(spec.n_fft)[None, :]]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(spec.n_fft) / spec.n_fft)
    power = np.abs(np.fft.rfft(windows * hann, axis=1)) ** 2
    mel = mel_filter_bank(spec.sample_rate, spec.n_fft, spec.n_mels) @ power.T
    db = 10.0 * np.log10(np.maximum(mel, 10 ** (-spec.cutoff_db / 10)))
    return db.astype(np.float32)


def reference_audio(path: str | os.PathLike, spec: AudioSpec) -> np.ndarray:
    """float32 log-mel (n_mels, frames) of the file, downmixed and resampled with PyAV."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=spec.sample_rate)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return log_mel(audio, spec)


_DECODERS = {"video": reference_video, "audio": reference_audio, "image": reference_image}


class ReferenceLoader(LoaderBase):
    """Same arguments and batches as :class:`~mmfast.data.loader.MultiModalLoader` (CPU
    decoding; ``device`` only says where batches go)."""

    def __init__(self, data: str | os.PathLike | Manifest, split: str, batch_size: int = 32, *,
                 modalities: Sequence[str] = MODALITIES, spec: DataSpec | None = None,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None,
                 device: str | torch.device = "cpu", check_files: bool = True,
                 truncated: str = "missing") -> None:
        super().__init__(data, split, batch_size, modalities=modalities, spec=spec,
                         shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank,
                         world_size=world_size, probe_device="cpu", check_files=check_files,
                         truncated=truncated)
        self.device = torch.device(device)

    def _decode(self, row: int, m: int) -> np.ndarray | None:
        modality, path = self.modalities[m], self.paths[row][m]
        if path is None:
            return None
        try:
            if modality in self.array_shapes:
                return read_array(path)
            return _DECODERS[modality](path, getattr(self.spec, modality))
        except Exception:
            self.record_problem(modality, row, probe(modality, path) or "decode failed")
            return None

    def _stand_in(self, modality: str) -> np.ndarray:
        if modality in self.array_shapes:
            return np.zeros(self.array_shapes[modality], np.float32)
        s = getattr(self.spec, modality)
        if modality == "audio":
            return np.zeros((s.n_mels, s.num_frames), np.float32)
        lead = (s.frames,) if modality == "video" else ()
        return np.zeros((*lead, s.height, s.width, 3), np.uint8)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = self.next_epoch_order()
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            raw, present = {}, torch.zeros((len(rows), len(self.modalities)), dtype=torch.bool)
            for m, modality in enumerate(self.modalities):
                arrays = []
                for b, row in enumerate(rows):
                    x = self._decode(row, m)
                    present[b, m] = x is not None
                    arrays.append(self._stand_in(modality) if x is None else x)
                raw[modality] = torch.from_numpy(np.stack(arrays))
            labels = torch.tensor([self.samples[r].label for r in rows])
            yield make_batch(raw, present, labels, torch.tensor(rows), self.modalities,
                             self.spec, self.device, self.array_shapes)


def reference_load_split(data: str | os.PathLike | Manifest, split: str, *,
                         modalities: Sequence[str] = MODALITIES, spec: DataSpec | None = None,
                         batch_size: int = 64, device: str | torch.device = "cpu",
                         truncated: str = "missing") -> dict[str, Tensor]:
    """:func:`mmfast.data.loader.load_split` decoded by the reference loader."""
    loader = ReferenceLoader(data, split, batch_size, modalities=modalities, spec=spec,
                             rank=0, world_size=1, device=device, truncated=truncated)
    batches = list(loader)
    return collate(batches) if batches else empty_batch(loader.modalities, loader.spec,
                                                        loader.device)
