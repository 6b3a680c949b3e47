"""Dataset manifests: one row per sample (id, label, split, one path per modality, empty where
the modality is missing), stored as CSV or JSONL beside an optional ``info.json`` (class names,
how the data was made). Paths are relative to the manifest's folder unless absolute."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmfast._io import write_text_atomic
from mmfast.nn.model import MODALITIES

SPLITS: tuple[str, ...] = ("train", "val", "test")
MANIFEST_NAME = "manifest.csv"
INFO_NAME = "info.json"
COLUMNS: tuple[str, ...] = ("id", "label", "split", *MODALITIES)


@dataclass(frozen=True)
class Sample:
    """One manifest row; ``paths`` maps each modality to its file path, or None if missing."""

    id: str
    label: int
    split: str
    paths: dict[str, str | None]

    def to_row(self) -> dict[str, str | int]:
        return {"id": self.id, "label": self.label, "split": self.split,
                **{m: self.paths.get(m) or "" for m in MODALITIES}}


@dataclass
class Manifest:
    """All samples of a dataset, with the folder their relative paths start from."""

    root: Path
    samples: list[Sample]
    info: dict = field(default_factory=dict)

    def split(self, name: str) -> list[Sample]:
        """The samples of split ``name`` in manifest order (a sample's row in its split is the
        ``index`` the loaders return)."""
        if name not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {name!r}")
        return [s for s in self.samples if s.split == name]

    def path(self, sample: Sample, modality: str) -> Path | None:
        """Absolute path of a sample's modality file, or None if the manifest has none."""
        p = sample.paths.get(modality)
        if not p:
            return None
        p = Path(p)
        return p if p.is_absolute() else self.root / p

    @property
    def num_classes(self) -> int:
        """Number of classes: from ``info.json`` when it names them, else max label + 1."""
        if "classes" in self.info:
            return len(self.info["classes"])
        return 1 + max((s.label for s in self.samples), default=-1)


def _check_sample(sample: Sample, where: str) -> Sample:
    if sample.split not in SPLITS:
        raise ValueError(f"{where}: split: expected one of {SPLITS}, got {sample.split!r}")
    if sample.label < 0:
        raise ValueError(f"{where}: label: expected a non-negative integer, got {sample.label}")
    if not sample.id:
        raise ValueError(f"{where}: id: expected a non-empty string")
    return sample


def _parse_row(row: dict, where: str) -> Sample:
    missing = [c for c in ("id", "label", "split") if c not in row]
    if missing:
        raise ValueError(f"{where}: expected columns {COLUMNS}, missing {missing}")
    try:
        label = int(row["label"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label: expected an integer, got {row['label']!r}") from None
    paths = {m: (str(row.get(m) or "") or None) for m in MODALITIES}
    return _check_sample(Sample(str(row["id"]), label, str(row["split"]), paths), where)


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest file of ``path``: the path itself, or ``manifest.csv`` inside a folder."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest (``.csv`` or ``.jsonl``, or a folder holding ``manifest.csv``)."""
    file = manifest_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"path: no manifest at {file} (make one with "
                                f"`mmfast data make avdigits --out DIR` or an adapter)")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif file.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        raise ValueError(f"path: expected a .csv or .jsonl manifest, got {file.name!r}")
    samples = [_parse_row(r, f"{file}:{i + 2}") for i, r in enumerate(rows)]
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"path: {file} has duplicate sample ids")
    info_file = file.parent / INFO_NAME
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    return Manifest(file.parent, samples, info)


def write_manifest(path: str | os.PathLike, samples: Iterable[Sample],
                   info: dict | None = None) -> Path:
    """Write ``samples`` atomically as CSV (or JSONL by suffix), plus ``info.json`` beside it
    when ``info`` is given. Returns the manifest file."""
    path = Path(path)
    file = path if path.suffix in (".csv", ".jsonl") else path / MANIFEST_NAME
    samples = [_check_sample(s, f"samples[{i}]") for i, s in enumerate(samples)]
    if file.suffix == ".jsonl":
        text = "".join(json.dumps(s.to_row()) + "\n" for s in samples)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(s.to_row() for s in samples)
        text = buf.getvalue()
    if info is not None:  # info first: a manifest present means the dataset is complete
        write_text_atomic(file.parent / INFO_NAME, json.dumps(info, indent=2) + "\n")
    write_text_atomic(file, text)
    return file


def relative_to(path: str | os.PathLike | None, root: str | os.PathLike) -> str | None:
    """``path`` relative to ``root`` when it lies inside it (portable manifests), else absolute."""
    if path is None:
        return None
    path, root = Path(path).resolve(), Path(root).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def shard(order: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The part of ``order`` that ``rank`` of ``world_size`` reads: every world_size-th item
    from position ``rank``. The shards are disjoint, cover ``order`` exactly once, and differ in
    length by at most one."""
    if world_size < 1:
        raise ValueError(f"world_size: expected >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
    return list(order[rank::world_size])


def epoch_order(n: int, epoch: int, *, shuffle: bool, seed: int, rank: int = 0,
                world_size: int = 1, drop_last_of: int | None = None) -> list[int]:
    """Rows of a split (0..n-1) that ``rank`` reads in ``epoch``: a permutation drawn from
    (seed, epoch) when shuffling (the same on every rank), then :func:`shard`; with
    ``drop_last_of`` = batch size, the rows of a last partial batch are dropped."""
    order = np.arange(n)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(order)
    mine = shard(order.tolist(), rank, world_size)
    if drop_last_of:
        mine = mine[:len(mine) - len(mine) % drop_last_of]
    return mine
