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
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmfast.data.dali_pipelines import build_pipeline
from mmfast.data.finish import finish_log_mel, finish_pixels
from mmfast.data.manifest import Manifest, read_manifest, shard
from mmfast.data.probe import placeholder, probe
from mmfast.data.specs import DataSpec
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


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world_size) of the initialised torch.distributed group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _BatchSource:
    """DALI external source: reads the encoded files of the next batch of the current order.

    The last batch is padded to the pipeline's batch size by repeating a row flagged invalid;
    a file that cannot be read is replaced by a placeholder and flagged absent.
    """

    # metadata row layout: index, label, valid, present[0..M)
    def __init__(self, paths: list[list[Path | None]], labels: list[int], batch_size: int,
                 modalities: Sequence[str], on_read_error) -> None:
        self._paths, self._labels = paths, labels
        self._batch_size, self._modalities = batch_size, tuple(modalities)
        self._on_read_error = on_read_error
        self._order: list[int] = []
        self._pos = 0

    def start(self, order: list[int]) -> None:
        self._order, self._pos = order, 0

    def _read(self, row: int, m: int) -> tuple[np.ndarray, bool]:
        path = self._paths[row][m]
        if path is None:
            return placeholder(self._modalities[m]), False
        try:
            data = np.fromfile(path, dtype=np.uint8)
            if data.size == 0:
                raise OSError("empty file")
            return data, True
        except OSError as exc:
            self._on_read_error(self._modalities[m], row, f"read failed ({exc})")
            return placeholder(self._modalities[m]), False

    def __call__(self):
        if self._pos >= len(self._order):
            raise StopIteration
        rows = self._order[self._pos:self._pos + self._batch_size]
        self._pos += len(rows)
        valid = [1] * len(rows) + [0] * (self._batch_size - len(rows))
        rows = rows + [rows[-1]] * (self._batch_size - len(rows))
        columns: list[list[np.ndarray]] = [[] for _ in self._modalities]
        meta = []
        for row, ok in zip(rows, valid):
            present = []
            for m in range(len(self._modalities)):
                data, here = self._read(row, m)
                columns[m].append(data)
                present.append(int(here))
            meta.append(np.array([row, self._labels[row], ok, *present], dtype=np.int64))
        return (*columns, meta)


def _to_torch(tensor_list, device: torch.device) -> Tensor:
    """A dense DALI TensorList (CPU or GPU) as a torch tensor on ``device``."""
    if hasattr(tensor_list, "as_cpu") and type(tensor_list).__name__.endswith("GPU"):
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
        dense = tensor_list.as_tensor()
        out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype],
                          device=torch.device("cuda", torch.cuda.current_device()))
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream())
        return out.to(device, non_blocking=True)
    return torch.from_numpy(tensor_list.as_array()).to(device, non_blocking=True)


class MultiModalLoader:
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
            would otherwise stop the pipeline).
    """

    def __init__(self, data: str | os.PathLike | Manifest, split: str, batch_size: int = 32, *,
                 modalities: Sequence[str] = MODALITIES, spec: DataSpec | None = None,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None,
                 decode_device: str = "auto", device: str | torch.device | None = None,
                 num_threads: int = 2, prefetch: int = 2, check_files: bool = True) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        bad = [m for m in modalities if m not in MODALITIES] or (not modalities and ["<none>"])
        if bad or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities: expected distinct names among {MODALITIES}, "
                             f"got {tuple(modalities)}")
        self.manifest = data if isinstance(data, Manifest) else read_manifest(data)
        self.samples = self.manifest.split(split)
        self.split, self.batch_size, self.modalities = split, batch_size, tuple(modalities)
        self.spec = spec or DataSpec()
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        default_rank, default_world = distributed_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        shard(range(1), 0, self.world_size)  # validates world_size
        shard(range(self.world_size), self.rank, self.world_size)  # validates rank
        self.decode_device = resolve_decode_device(decode_device)
        self._device_id = torch.cuda.current_device() if self.decode_device == "gpu" else None
        if device is None:
            device = f"cuda:{self._device_id}" if self.decode_device == "gpu" else "cpu"
        self.device = torch.device(device)
        self.num_threads, self.prefetch = num_threads, prefetch
        #: modality -> [(sample id, reason)] for files that are listed but cannot be decoded
        self.problems: dict[str, list[tuple[str, str]]] = {m: [] for m in self.modalities}
        self._warned = False
        paths = [[self.manifest.path(s, m) for m in self.modalities] for s in self.samples]
        if check_files:
            paths = self._drop_undecodable(paths)
        self._source = _BatchSource(paths, [s.label for s in self.samples], batch_size,
                                    self.modalities, self._record_read_error)
        self._pipe = None
        self._epoch = 0

    # -- problems -------------------------------------------------------------------------
    def _drop_undecodable(self, paths: list[list[Path | None]]) -> list[list[Path | None]]:
        for row, sample in enumerate(self.samples):
            for m, modality in enumerate(self.modalities):
                if paths[row][m] is None:
                    continue
                reason = probe(modality, paths[row][m], self.decode_device)
                if reason is not None:
                    self.problems[modality].append((sample.id, reason))
                    paths[row][m] = None
        self._warn_problems()
        return paths

    def _record_read_error(self, modality: str, row: int, reason: str) -> None:
        self.problems[modality].append((self.samples[row].id, reason))
        self._warn_problems()

    def _warn_problems(self) -> None:
        if self._warned or not any(self.problems.values()):
            return
        self._warned = True
        parts = [f"{m}: {len(p)} (e.g. {p[0][0]}: {p[0][1]})"
                 for m, p in self.problems.items() if p]
        warnings.warn(f"mmfast.data: split {self.split!r} of {self.manifest.root} has files that "
                      f"cannot be decoded, loaded as absent (mask=False): {'; '.join(parts)}. "
                      f"See loader.problems for the full list.", RuntimeWarning, stacklevel=3)

    # -- iteration ------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> list[int]:
        order = np.arange(len(self.samples))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        mine = shard(order.tolist(), self.rank, self.world_size)
        if self.drop_last:
            mine = mine[:len(mine) - len(mine) % self.batch_size]
        return mine

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        return len(self._epoch_order(0))

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def _new_pipeline(self):
        return build_pipeline(self.modalities, self._source, self.spec, self.batch_size,
                              decode_device=self.decode_device, device_id=self._device_id,
                              num_threads=self.num_threads, prefetch=self.prefetch,
                              seed=self.seed)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = self._epoch_order(self._epoch)
        self._epoch += 1
        if not order:
            return
        self._source.start(order)
        # A fresh pipeline per epoch: its prefetch queue then never holds another epoch's rows,
        # even when the previous epoch was abandoned half-way.
        self._pipe = self._new_pipeline()
        try:
            while True:
                try:
                    outputs = self._pipe.run()
                except StopIteration:
                    return
                yield self._to_batch(outputs)
        finally:
            self._pipe = None

    def _to_batch(self, outputs) -> dict[str, Tensor]:
        meta = torch.from_numpy(outputs[-1].as_array())
        valid = meta[:, 2].bool()
        meta = meta[valid]
        mask = meta[:, 3:].bool()
        batch: dict[str, Tensor] = {}
        for m, modality in enumerate(self.modalities):
            raw = _to_torch(outputs[m], self.device)[valid.to(self.device)]
            if modality == "audio":
                x = finish_log_mel(raw, self.spec.audio.cutoff_db)
            else:
                x = finish_pixels(raw, getattr(self.spec, modality).channels)
            batch[modality] = x.mul_(mask[:, m].to(self.device).view(-1, *[1] * (x.dim() - 1)))
        batch["mask"] = mask.to(self.device)
        batch["label"] = meta[:, 1].to(self.device)
        batch["index"] = meta[:, 0].to(self.device)
        return batch


def collate(batches: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate batches key by key (same keys in every batch)."""
    if not batches:
        raise ValueError("batches: expected at least one batch, got none")
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def empty_batch(modalities: Sequence[str], spec: DataSpec, device: torch.device
                ) -> dict[str, Tensor]:
    """A batch with zero rows (what an empty split loads as)."""
    batch = {m: torch.zeros((0, *spec.shape(m)), device=device) for m in modalities}
    batch["mask"] = torch.zeros((0, len(modalities)), dtype=torch.bool, device=device)
    batch["label"] = torch.zeros(0, dtype=torch.int64, device=device)
    batch["index"] = torch.zeros(0, dtype=torch.int64, device=device)
    return batch


def load_split(data: str | os.PathLike | Manifest, split: str, *,
               modalities: Sequence[str] = MODALITIES, spec: DataSpec | None = None,
               batch_size: int = 64, decode_device: str = "auto",
               device: str | torch.device | None = None, num_threads: int = 2
               ) -> dict[str, Tensor]:
    """Decode a whole split once through the DALI loader into in-memory tensors (the keys of a
    batch, rows in manifest order) that a trainer can then iterate quickly on small data."""
    loader = MultiModalLoader(data, split, batch_size, modalities=modalities, spec=spec,
                              shuffle=False, rank=0, world_size=1, decode_device=decode_device,
                              device=device, num_threads=num_threads)
    batches = list(loader)
    if not batches:
        return empty_batch(loader.modalities, loader.spec, loader.device)
    return collate(batches)
