"""CREMA-D (Cao et al. 2014): 7442 clips of 91 actors speaking 12 sentences with 6 emotions.

Layout as distributed: ``SRC/AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav`` and
``SRC/VideoFlash/<same stem>.flv``. The .flv clips are H.264, which DALI decodes only on a GPU;
for CPU decoding transcode them to VP9 (``VideoWebM/<stem>.webm``, preferred when present).
Label: the emotion; splits: by actor (no actor in two splits); no image modality.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmfast.data.adapters.common import first_existing, require_dir, split_of_group
from mmfast.data.manifest import Sample, relative_to, write_manifest

EMOTIONS: tuple[str, ...] = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
VIDEO_FOLDERS: tuple[tuple[str, str], ...] = (
    ("VideoWebM", ".webm"), ("VideoMP4", ".mp4"), ("VideoFlash", ".flv"))


def build_cremad_manifest(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``OUT/manifest.csv`` + ``info.json`` for a CREMA-D folder; returns the manifest."""
    src = Path(src)
    audio_dir = require_dir(src / "AudioWAV", "CREMA-D's AudioWAV folder")
    samples = []
    for wav in sorted(audio_dir.glob("*.wav")):
        parts = wav.stem.split("_")
        if len(parts) != 4 or parts[2] not in EMOTIONS:
            raise ValueError(f"src: expected AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav "
                             f"with emotion in {EMOTIONS}, got {wav.name!r}")
        video = first_existing(src / folder / f"{wav.stem}{ext}" for folder, ext in VIDEO_FOLDERS)
        samples.append(Sample(wav.stem, EMOTIONS.index(parts[2]), split_of_group(parts[0]),
                              {"video": relative_to(video, out), "audio": relative_to(wav, out),
                               "image": None}))
    if not samples:
        raise ValueError(f"src: no .wav file in {audio_dir}")
    info = {"dataset": "crema-d", "classes": list(EMOTIONS), "split_by": "actor",
            "source": str(src.resolve())}
    return write_manifest(out, samples, info)
