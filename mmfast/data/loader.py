"""The multi-modal DALI loader: manifest rows -> batches of per-modality tensors, presence
mask, labels and row indices, on the requested torch device.

A batch is a dict: ``"video"`` float32 (B, T, C, H, W) in [0, 1], ``"audio"`` float32
(B, 1, n_mels, frames) log-mel in [0, 1], ``"image"`` float32 (B, C, H, W) in [0, 1],
``"mask"`` bool (B, M) in the order of ``loader.modalities``, ``"label"`` int64 (B,) and
``"index"`` int64 (B,) (the row in the manifest split). Absent modalities are zero rows with
mask False: files the manifest leaves empty, and files that are missing or undecodable (those
are counted and reported once, as a warning, and listed in ``loader.problems``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from nvidia.dali.tensors import TensorListGPU
from torch import Tensor

from mmfast import progress
from mmfast.data.arrays import read_array
from mmfast.data.base import LoaderBase
from mmfast.data.batch import collate, empty_batch, make_batch
from mmfast.data.dali_pipelines import build_pipeline, uses_frame_indices
from mmfast.data.manifest import Manifest
from mmfast.data.probe import placeholder
from mmfast.data.specs import DataSpec
from mmfast.data.video_io import count_video_frames
from mmfast.nn.model import MODALITIES

DECODE_CHOICES = ("auto", "cpu", "gpu")


def dali_sees_gpu() -> bool:
    """True when torch has CUDA and DALI finds a CUDA device (the GPU decode path works)."""
    if not torch.cuda.is_available():
        return False
    try:
        from nvidia.dali.backend import GetCUDADeviceCount
        return GetCUDADeviceCount() > 0
    except Exception:  # a DALI without CUDA support, or no driver
        return False


def resolve_decode_device(decode_device: str) -> str:
    """"auto" -> "gpu" when :func:`dali_sees_gpu`, else "cpu"; "gpu" without a GPU raises."""
    if decode_device not in DECODE_CHOICES:
        raise ValueError(f"decode_device: expected one of {DECODE_CHOICES}, "
                         f"got {decode_device!r}")
    if decode_device == "auto":
        return "gpu" if dali_sees_gpu() else "cpu"
    if decode_device == "gpu" and not dali_sees_gpu():
        raise ValueError("decode_device: 'gpu' needs CUDA in torch and a GPU visible to DALI; "
                         "none found (use 'cpu' or 'auto')")
    return decode_device


def _read_encoded(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise OSError("empty file")
    return data


class _BatchSource:
    """DALI external source: reads the next batch of the current order, per modality with
    ``readers[m]`` (encoded bytes, or a pre-decoded array).

    The last batch is padded to the pipeline's batch size by repeating a row flagged invalid;
    an absent or unreadable file is replaced by ``stand_ins[m]`` and flagged absent.

    With ``frame_indices=(m, indices)``, a list of ``indices(encoded bytes)`` of column m (the
    video's uniform-sampling frame indices) follows the modality columns; they are computed
    once per file (or stand-in) and cached, and a file whose count fails is a read failure.
    """

    # metadata row layout: index, label, valid, present[0..M)
    def __init__(self, paths: list[list[Path | None]], labels: list[int], batch_size: int,
                 readers: Sequence[Callable[[Path], np.ndarray]],
                 stand_ins: Sequence[np.ndarray], on_read_error,
                 frame_indices: tuple[int, Callable[[np.ndarray], np.ndarray]] | None = None
                 ) -> None:
        self._paths, self._labels, self._batch_size = paths, labels, batch_size
        self._readers, self._stand_ins = tuple(readers), tuple(stand_ins)
        self._on_read_error = on_read_error
        self._frame_indices = frame_indices
        self._index_cache: dict[Path | None, np.ndarray] = {}
        self._order: list[int] = []
        self._pos = 0

    def _indices(self, key: Path | None, data: np.ndarray) -> np.ndarray:
        if key not in self._index_cache:
            self._index_cache[key] = self._frame_indices[1](data)
        return self._index_cache[key]

    def start(self, order: list[int]) -> None:
        self._order, self._pos = order, 0

    def _read(self, row: int, m: int) -> tuple[np.ndarray, bool]:
        path = self._paths[row][m]
        if path is None:
            return self._stand_ins[m], False
        try:
            data = self._readers[m](path)
        except (OSError, ValueError) as exc:
            self._on_read_error(m, row, f"read failed ({exc})")
            return self._stand_ins[m], False
        if self._frame_indices is not None and m == self._frame_indices[0]:
            try:
                self._indices(path, data)
            except Exception as exc:  # any demuxer error: the file cannot be sampled
                self._on_read_error(m, row, f"frame count failed ({type(exc).__name__}: {exc})")
                return self._stand_ins[m], False
        return data, True

    def __call__(self):
        if self._pos >= len(self._order):
            raise StopIteration
        rows = self._order[self._pos:self._pos + self._batch_size]
        self._pos += len(rows)
        columns: list[list[np.ndarray]] = [[] for _ in self._readers]
        if self._frame_indices is not None:
            columns.append([])
        meta = []
        for row in rows:
            present = []
            for m in range(len(self._readers)):
                data, here = self._read(row, m)
                columns[m].append(data)
                present.append(int(here))
                if self._frame_indices is not None and m == self._frame_indices[0]:
                    key = self._paths[row][m] if here else None
                    columns[-1].append(self._indices(key, data))
            meta.append(np.array([row, self._labels[row], 1, *present], dtype=np.int64))
        pad = self._batch_size - len(rows)  # repeat the last row, flagged invalid
        for column in columns:
            column.extend([column[-1]] * pad)
        invalid = meta[-1].copy()
        invalid[2] = 0
        meta.extend([invalid] * pad)
        return (*columns, meta)


def _to_torch(tensor_list, device: torch.device) -> Tensor:
    """A dense DALI TensorList (CPU or GPU) as a torch tensor on ``device``."""
    if isinstance(tensor_list, TensorListGPU):
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
        dense = tensor_list.as_tensor()
        out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype],
                          device=torch.device("cuda", torch.cuda.current_device()))
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream())
        return out.to(device, non_blocking=True)
    return torch.from_numpy(tensor_list.as_array()).to(device, non_blocking=True)


class MultiModalLoader(LoaderBase):
    """Iterates a manifest split through one DALI pipeline with a decode branch per modality.

    Args:
        data: a dataset folder, a manifest file, or a :class:`Manifest`.
        split: "train", "val" or "test".
        batch_size: samples per batch (the last batch is smaller unless ``drop_last``).
        modalities: which modalities to load, in mask-column order.
        spec: output sizes (:class:`DataSpec`).
        shuffle / seed: a new permutation per epoch from (seed, epoch), identical on all ranks.
        rank / world_size: the shard read (default: torch.distributed's, else 0 / 1); shards
            are disjoint and cover the split exactly once.
        decode_device: "auto" (GPU decode when torch has CUDA and DALI sees a GPU), "cpu" or
            "gpu".
        device: torch device of the batches (default: the GPU decode device, else CPU).
        num_threads / prefetch: DALI worker threads and batches decoded ahead.
        check_files: probe every file once at construction (recommended: an undecodable file
            would otherwise stop the pipeline, and a truncated one load unnoticed).
        truncated: a file cut short is loaded as "missing" (default: mask False, listed in
            ``problems``) or "pad" (decoded as far as it goes, padded, listed, warned).
    """

    def __init__(self, data: str | os.PathLike | Manifest, split: str, batch_size: int = 32, *,
                 modalities: Sequence[str] = MODALITIES, spec: DataSpec | None = None,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None,
                 decode_device: str = "auto", device: str | torch.device | None = None,
                 num_threads: int = 2, prefetch: int = 2, check_files: bool = True,
                 truncated: str = "missing") -> None:
        self.decode_device = resolve_decode_device(decode_device)
        super().__init__(data, split, batch_size, modalities=modalities, spec=spec,
                         shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank,
                         world_size=world_size, probe_device=self.decode_device,
                         check_files=check_files, truncated=truncated)
        self._device_id = torch.cuda.current_device() if self.decode_device == "gpu" else None
        if device is None:
            device = f"cuda:{self._device_id}" if self.decode_device == "gpu" else "cpu"
        self.device = torch.device(device)
        self.num_threads, self.prefetch = num_threads, prefetch
        readers = [read_array if m in self.array_shapes else _read_encoded
                   for m in self.modalities]
        stand_ins = [np.zeros(self.array_shapes[m], np.float32) if m in self.array_shapes
                     else placeholder(m) for m in self.modalities]
        frame_indices = None
        if uses_frame_indices(self.modalities, self.spec, self.array_shapes):
            video = self.spec.video
            frame_indices = (self.modalities.index("video"), lambda data: video.frame_indices(
                count_video_frames(data)).astype(np.int32))
        self._source = _BatchSource(
            self.paths, [s.label for s in self.samples], batch_size, readers, stand_ins,
            lambda m, row, reason: self.record_problem(self.modalities[m], row, reason),
            frame_indices)
        self._pipe = None

    def _new_pipeline(self):
        return build_pipeline(self.modalities, self._source, self.spec, self.batch_size,
                              decode_device=self.decode_device, device_id=self._device_id,
                              num_threads=self.num_threads, prefetch=self.prefetch,
                              seed=self.seed,
                              array_ndims={m: len(s) for m, s in self.array_shapes.items()})

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = self.next_epoch_order()
        if not order:
            return
        self._source.start(order)
        # A fresh pipeline per epoch: its prefetch queue then never holds another epoch's rows,
        # even when the previous epoch was abandoned half-way.
        self._pipe = self._new_pipeline()
        bar = progress.bar(total=len(self), desc=f"decode {self.split}", unit="batch")
        try:
            while True:
                try:
                    outputs = self._pipe.run()
                except StopIteration:
                    return
                bar.update(1)
                yield self._to_batch(outputs)
        finally:
            bar.close()
            self._pipe = None

    def _to_batch(self, outputs) -> dict[str, Tensor]:
        meta = torch.from_numpy(outputs[-1].as_array())
        valid = meta[:, 2].bool()
        meta = meta[valid]
        raw = {m: _to_torch(outputs[i], self.device)[valid.to(self.device)]
               for i, m in enumerate(self.modalities)}
        return make_batch(raw, meta[:, 3:].bool(), meta[:, 1], meta[:, 0], self.modalities,
                          self.spec, self.device, self.array_shapes)


def load_split(data: str | os.PathLike | Manifest, split: str, *,
               modalities: Sequence[str] = MODALITIES, spec: DataSpec | None = None,
               batch_size: int = 64, decode_device: str = "auto",
               device: str | torch.device | None = None, num_threads: int = 2,
               truncated: str = "missing", problems: dict | None = None
               ) -> dict[str, Tensor]:
    """Decode a whole split once through the DALI loader into in-memory tensors (the keys of a
    batch, rows in manifest order) that a trainer can then iterate quickly on small data.

    ``problems`` (a dict), when given, receives ``loader.problems``: modality -> [(sample id,
    reason)] for the files loaded as absent or padded (run folders record them)."""
    loader = MultiModalLoader(data, split, batch_size, modalities=modalities, spec=spec,
                              shuffle=False, rank=0, world_size=1, decode_device=decode_device,
                              device=device, num_threads=num_threads, truncated=truncated)
    batches = list(loader)
    if problems is not None:
        problems.update({m: list(p) for m, p in loader.problems.items()})
    if not batches:
        return empty_batch(loader.modalities, loader.spec, loader.device)
    return collate(batches)
