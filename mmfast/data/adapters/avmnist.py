"""AV-MNIST (Vielzeuf et al. 2018, as packaged by MultiBench): MNIST digits paired with
spoken-digit spectrograms, stored as NumPy arrays.

Layout: ``SRC/image/{train,test}_data.npy`` (N, 28, 28) or (N, 784), ``SRC/audio/
{train,test}_data.npy`` (N, 112, 112) spectrograms, ``SRC/{train,test}_labels.npy`` (N,).
Manifest paths are rows (``image/train_data.npy#17``); the last ``val_fraction`` of the train
rows form the val split, as MultiBench holds out the end of train. No video modality.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmfast.data.adapters.common import require_dir
from mmfast.data.manifest import Sample, relative_to, write_manifest


def build_avmnist_manifest(src: str | os.PathLike, out: str | os.PathLike,
                           val_fraction: float = 1 / 12) -> Path:
    """Write ``OUT/manifest.csv`` + ``info.json`` for an AV-MNIST folder."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a value in [0, 1), got {val_fraction}")
    src = Path(src)
    for sub in ("image", "audio"):
        require_dir(src / sub, f"AV-MNIST's {sub} folder")
    samples = []
    for part in ("train", "test"):
        labels_file = src / f"{part}_labels.npy"
        if not labels_file.is_file():
            raise FileNotFoundError(f"src: expected {labels_file}")
        labels = np.load(labels_file, allow_pickle=False).reshape(-1).astype(np.int64)
        files = {m: src / m / f"{part}_data.npy" for m in ("image", "audio")}
        for f in files.values():
            rows = len(np.load(f, mmap_mode="r", allow_pickle=False))
            if rows != len(labels):
                raise ValueError(f"src: {f} has {rows} rows, expected {len(labels)} "
                                 f"(as {labels_file.name})")
        n_val = int(len(labels) * val_fraction) if part == "train" else 0
        for i, label in enumerate(labels):
            split = "test" if part == "test" else ("val" if i >= len(labels) - n_val else "train")
            samples.append(Sample(f"{part}{i:05d}", int(label), split, {
                "video": None,
                **{m: f"{relative_to(f, out)}#{i}" for m, f in files.items()}}))
    info = {"dataset": "avmnist", "classes": [str(d) for d in range(10)],
            "source": str(src.resolve())}
    return write_manifest(out, samples, info)
