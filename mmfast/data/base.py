"""What every mmfast loader shares (DALI-free): argument checks, the manifest split, the
per-epoch shard order, and finding and reporting files that cannot be decoded."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from mmfast.data.arrays import is_array_ref, row_shape
from mmfast.data.integrity import TRUNCATED, quick_check
from mmfast.data.manifest import Manifest, epoch_order, read_manifest, shard
from mmfast.data.specs import DataSpec
from mmfast.nn.model import MODALITIES

#: What a loader does with a file cut short (``truncated=``): load it as absent (mask False,
#: the default) or decode what it holds, padded as the decoders pad (audio with silence, video
#: by repeating its last frame), with a warning. Either way it is listed in ``problems``.
TRUNCATED_POLICIES = ("missing", "pad")
PADDED_NOTE = "; loaded padded (truncated='pad')"


def paddable(modality: str, reason: str) -> bool:
    """Whether a file with this problem can be loaded padded: a truncated video or audio file
    (its decoders pad); a cut image cannot be decoded at all."""
    return reason.startswith(TRUNCATED) and modality != "image"


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world_size) of the initialised torch.distributed group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class LoaderBase:
    """A manifest split read in batches by one rank. Subclasses implement ``__iter__``.

    ``paths[row][m]`` is the file to decode for row ``row`` and modality ``modalities[m]``, or
    None when the modality is absent: left empty by the manifest, or listed but not decodable
    (the latter are in ``problems`` and reported once as a RuntimeWarning). A modality whose
    paths are ``.npy`` rows is in ``array_shapes`` (its per-sample shape) and is read, not
    decoded. Files cut short (:mod:`mmfast.data.integrity`) follow ``truncated``: "missing"
    (default) or "pad" (:data:`TRUNCATED_POLICIES`); both are listed in ``problems``.
    """

    def __init__(self, data: str | os.PathLike | Manifest, split: str, batch_size: int, *,
                 modalities: Sequence[str], spec: DataSpec | None, shuffle: bool, seed: int,
                 drop_last: bool, rank: int | None, world_size: int | None,
                 probe_device: str, check_files: bool, truncated: str = "missing") -> None:
        if truncated not in TRUNCATED_POLICIES:
            raise ValueError(f"truncated: expected one of {TRUNCATED_POLICIES}, "
                             f"got {truncated!r}")
        self.truncated = truncated
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        modalities = tuple(modalities)
        if (not modalities or len(set(modalities)) != len(modalities)
                or any(m not in MODALITIES for m in modalities)):
            raise ValueError(f"modalities: expected distinct names among {MODALITIES}, "
                             f"got {modalities}")
        if spec is not None and not isinstance(spec, DataSpec):
            raise TypeError(f"spec: expected a DataSpec, got {type(spec).__name__}")
        self.manifest = data if isinstance(data, Manifest) else read_manifest(data)
        self.samples = self.manifest.split(split)
        self.split, self.batch_size, self.modalities = split, batch_size, modalities
        self.spec = spec or DataSpec()
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        default_rank, default_world = distributed_rank_world()
        self.world_size = default_world if world_size is None else world_size
        self.rank = default_rank if rank is None else rank
        shard(range(self.world_size), self.rank, self.world_size)  # validates rank, world_size
        #: modality -> [(sample id, reason)] for files that are listed but cannot be decoded
        self.problems: dict[str, list[tuple[str, str]]] = {m: [] for m in self.modalities}
        self._warned = False
        self._epoch = 0
        self.paths: list[list[Path | None]] = [
            [self.manifest.path(s, m) for m in self.modalities] for s in self.samples]
        #: modality -> per-sample array shape, for modalities stored as .npy rows
        self.array_shapes: dict[str, tuple[int, ...]] = {}
        for m, modality in enumerate(self.modalities):
            listed = [row[m] for row in self.paths if row[m] is not None]
            arrays = [is_array_ref(p) for p in listed]
            if any(arrays) and not all(arrays):
                raise ValueError(f"manifest: modality {modality!r} mixes .npy arrays and "
                                 f"encoded files; expected one kind per modality")
            if any(arrays):
                self.array_shapes[modality] = ()  # set by the first readable row
        for row, sample in enumerate(self.samples):
            for m, modality in enumerate(self.modalities):
                path = self.paths[row][m]
                if path is None or (modality not in self.array_shapes and not check_files):
                    continue
                reason = self._check(modality, path, probe_device)
                if reason is None:
                    continue
                if self.truncated == "pad" and paddable(modality, reason):
                    self.problems[modality].append((sample.id, reason + PADDED_NOTE))
                else:
                    self.problems[modality].append((sample.id, reason))
                    self.paths[row][m] = None
        self._warn_problems()

    def _check(self, modality: str, path: Path, probe_device: str) -> str | None:
        if modality not in self.array_shapes:
            return quick_check(modality, path, probe_device)
        try:
            shape = row_shape(path)
        except Exception as exc:
            return f"unreadable array ({type(exc).__name__}: {exc})"
        expected = self.array_shapes[modality] or shape
        self.array_shapes[modality] = expected
        return None if shape == expected else f"array shape {shape}, expected {expected}"

    def record_problem(self, modality: str, row: int, reason: str) -> None:
        """Count a file that failed while loading (e.g. deleted since construction)."""
        self.problems[modality].append((self.samples[row].id, reason))
        self._warn_problems()

    def _warn_problems(self) -> None:
        if self._warned or not any(self.problems.values()):
            return
        self._warned = True
        parts = [f"{m}: {len(p)} (e.g. {p[0][0]}: {p[0][1]})"
                 for m, p in self.problems.items() if p]
        how = ("loaded as absent (mask=False), truncated ones padded" if self.truncated == "pad"
               else "loaded as absent (mask=False)")
        warnings.warn(f"mmfast.data: split {self.split!r} of {self.manifest.root} has files that "
                      f"cannot be decoded or are cut short, {how}: {'; '.join(parts)}. "
                      f"See loader.problems for the full list.", RuntimeWarning, stacklevel=4)

    def problem_summary(self, examples: int = 3) -> dict[str, dict]:
        """{modality: {"count", "truncated", "examples": [{"id", "reason"}]}} of the files
        listed in ``problems`` (what a run records in its JSON and a report shows)."""
        return {m: {"count": len(found),
                    "truncated": sum(1 for _, r in found if r.startswith(TRUNCATED)),
                    "examples": [{"id": i, "reason": r} for i, r in found[:examples]]}
                for m, found in self.problems.items() if found}

    def next_epoch_order(self) -> list[int]:
        """Rows of the split this rank reads in the next epoch (advances the epoch)."""
        order = self.epoch_order(self._epoch)
        self._epoch += 1
        return order

    def epoch_order(self, epoch: int) -> list[int]:
        """Rows of the split this rank reads in ``epoch``."""
        return epoch_order(len(self.samples), epoch, shuffle=self.shuffle, seed=self.seed,
                           rank=self.rank, world_size=self.world_size,
                           drop_last_of=self.batch_size if self.drop_last else None)

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        return len(self.epoch_order(0))

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)
