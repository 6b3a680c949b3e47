"""Pre-decoded modalities stored as NumPy arrays (AV-MNIST ships images and spectrograms as
``.npy``). A manifest path ``file.npy#12`` is row 12 of a stacked array; ``file.npy`` alone is
one sample. Such rows need no decoding, so both loaders read them directly and only resize them
to the spec (:func:`finish_array`)."""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
from torch import Tensor

from mmfast.data.specs import DataSpec


def is_array_ref(path: str | os.PathLike | None) -> bool:
    """True for ``.npy`` files and ``.npy#row`` references."""
    return path is not None and (str(path).endswith(".npy") or ".npy#" in str(path))


def split_ref(ref: str | os.PathLike) -> tuple[str, int | None]:
    """``"a/b.npy#12"`` -> ("a/b.npy", 12); ``"a/b.npy"`` -> ("a/b.npy", None)."""
    file, _, row = str(ref).partition("#")
    if row and not row.isdigit():
        raise ValueError(f"ref: expected FILE.npy#ROW with an integer row, got {str(ref)!r}")
    return file, int(row) if row else None


@functools.lru_cache(maxsize=64)
def _open(file: str) -> np.ndarray:
    return np.load(file, mmap_mode="r", allow_pickle=False)


def row_shape(ref: str | os.PathLike) -> tuple[int, ...]:
    """Shape of one sample without reading it (raises if the file or row does not exist)."""
    file, row = split_ref(ref)
    array = _open(file)
    if row is None:
        return tuple(array.shape)
    if not 0 <= row < len(array):
        raise IndexError(f"row {row} out of range for {file} with {len(array)} rows")
    return tuple(array.shape[1:])


def read_array(ref: str | os.PathLike) -> np.ndarray:
    """One sample as float32 (integer arrays are scaled from 0-255 to [0, 1])."""
    file, row = split_ref(ref)
    array = _open(file)
    x = np.asarray(array if row is None else array[row])
    scale = 1.0 / 255.0 if np.issubdtype(x.dtype, np.integer) else 1.0
    return (x.astype(np.float32) * scale).astype(np.float32, copy=False)


def _as_2d(x: Tensor) -> Tensor:
    """(B, H, W) or (B, H*W) with a square H*W -> (B, 1, H, W)."""
    if x.dim() == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"array: a flat sample needs a square size, got {x.shape[1]}")
        x = x.view(-1, side, side)
    if x.dim() != 3:
        raise ValueError(f"array: expected samples of shape (H, W) or (H*W,), got "
                         f"{tuple(x.shape[1:])}")
    return x.unsqueeze(1)


def finish_array(x: Tensor, modality: str, spec: DataSpec) -> Tensor:
    """Stacked float32 samples -> model inputs: images (B, C, H, W), audio features
    (B, 1, n_mels, frames), resized with an antialiased bilinear filter (values kept)."""
    if modality == "video":
        raise ValueError("modality: pre-decoded video arrays are not supported; store clips as "
                         "video files")
    x = _as_2d(x.to(torch.float32))
    if modality == "audio":
        size = (spec.audio.n_mels, spec.audio.num_frames)
    else:
        size = (spec.image.height, spec.image.width)
    if tuple(x.shape[-2:]) != size:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True,
                                            align_corners=False)
    if modality == "image" and spec.image.channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()
