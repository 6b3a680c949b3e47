"""Kinetics-Sounds (Arandjelovic & Zisserman 2017): the Kinetics classes with a sound.

Layout: clip folders per split and class, ``SRC/<split>/<class>/<clip>.<mp4|webm|mkv>``
(split folders ``train``, ``val`` or ``validate``, ``test``), and the audio extracted beside it
as ``SRC/audio/<split>/<class>/<clip>.wav`` (or ``<clip>.wav`` next to the clip). Labels index
the sorted class folder names; no image modality.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmfast.data.adapters.common import first_existing, require_dir
from mmfast.data.manifest import Sample, relative_to, write_manifest

SPLIT_FOLDERS: dict[str, str] = {"train": "train", "val": "val", "validate": "val",
                                 "test": "test"}
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv")


def build_kinetics_sounds_manifest(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``OUT/manifest.csv`` + ``info.json`` for a Kinetics-Sounds folder."""
    src = require_dir(src, "the Kinetics-Sounds root")
    split_dirs = [(d, SPLIT_FOLDERS[d.name]) for d in sorted(src.iterdir())
                  if d.is_dir() and d.name in SPLIT_FOLDERS]
    if not split_dirs:
        raise ValueError(f"src: expected split folders among {tuple(SPLIT_FOLDERS)} in {src}")
    classes = sorted({c.name for d, _ in split_dirs for c in d.iterdir() if c.is_dir()})
    samples = []
    for split_dir, split in split_dirs:
        for class_dir in sorted(c for c in split_dir.iterdir() if c.is_dir()):
            for clip in sorted(p for p in class_dir.iterdir() if p.suffix in VIDEO_SUFFIXES):
                audio = first_existing([
                    src / "audio" / split_dir.name / class_dir.name / f"{clip.stem}.wav",
                    clip.with_suffix(".wav")])
                samples.append(Sample(
                    f"{split}/{class_dir.name}/{clip.stem}", classes.index(class_dir.name), split,
                    {"video": relative_to(clip, out), "audio": relative_to(audio, out),
                     "image": None}))
    if not samples:
        raise ValueError(f"src: no clip ({'/'.join(VIDEO_SUFFIXES)}) under {src}")
    info = {"dataset": "kinetics-sounds", "classes": classes, "source": str(src.resolve())}
    return write_manifest(out, samples, info)
