"""Each adapter on a tiny fixture written in its dataset's folder layout, loaded end to end."""

from __future__ import annotations

import shutil
import wave

import numpy as np
import pytest
import torch

from mmfast.data.adapters import (
    build_avmnist_manifest,
    build_cremad_manifest,
    build_kinetics_sounds_manifest,
)
from mmfast.data.adapters.common import split_of_group
from mmfast.data.loader import load_split
from mmfast.data.manifest import SPLITS, read_manifest
from mmfast.data.reference_loader import reference_load_split
from mmfast.data.video_io import encode_webm

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _wav(path, seconds=0.5, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes())


def _webm(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_webm(np.full((4, 16, 16), value, np.uint8)))


def test_avmnist(tmp_path):
    src = tmp_path / "avmnist"
    rng = np.random.default_rng(0)
    for part, n in (("train", 12), ("test", 4)):
        (src / "image").mkdir(parents=True, exist_ok=True)
        (src / "audio").mkdir(parents=True, exist_ok=True)
        np.save(src / "image" / f"{part}_data.npy",
                rng.integers(0, 256, (n, 784)).astype(np.uint8))
        np.save(src / "audio" / f"{part}_data.npy", rng.random((n, 112, 112), np.float32))
        np.save(src / f"{part}_labels.npy", np.arange(n) % 10)
    manifest = read_manifest(build_avmnist_manifest(src, tmp_path / "out", val_fraction=0.25))
    assert [len(manifest.split(s)) for s in SPLITS] == [9, 3, 4]
    assert manifest.num_classes == 10
    data = load_split(tmp_path / "out", "train", modalities=("audio", "image"),
                      decode_device="cpu")
    assert data["image"].shape == (9, 1, 32, 32) and data["audio"].shape == (9, 1, 40, 51)
    first = np.load(src / "image" / "train_data.npy")[0].reshape(28, 28) / 255.0
    expected = torch.nn.functional.interpolate(
        torch.tensor(first, dtype=torch.float32)[None, None], size=(32, 32), mode="bilinear",
        antialias=True, align_corners=False)[0]
    torch.testing.assert_close(data["image"][0], expected)
    assert data["label"].tolist() == list(range(9))
    ref = reference_load_split(tmp_path / "out", "train", modalities=("audio", "image"))
    for key in data:
        torch.testing.assert_close(data[key], ref[key])
    with pytest.raises(FileNotFoundError, match="audio"):
        shutil.rmtree(src / "audio")
        build_avmnist_manifest(src, tmp_path / "out2")


def test_cremad(tmp_path):
    src = tmp_path / "crema"
    actors = [f"10{i:02d}" for i in range(1, 13)]
    for actor in actors:
        for emotion in ("ANG", "SAD"):
            stem = f"{actor}_IEO_{emotion}_HI"
            _wav(src / "AudioWAV" / f"{stem}.wav")
            if actor != actors[0]:  # the first actor's clips have no video
                _webm(src / "VideoWebM" / f"{stem}.webm")
    manifest = read_manifest(build_cremad_manifest(src, tmp_path / "out"))
    assert len(manifest.samples) == 24 and manifest.num_classes == 6
    assert {s.label for s in manifest.samples} == {0, 5}
    for s in manifest.samples:  # an actor's clips are in one split
        assert s.split == split_of_group(s.id.split("_")[0])
        assert (s.paths["video"] is None) == s.id.startswith(actors[0])
        assert s.paths["image"] is None
    split = next(s for s in SPLITS if manifest.split(s))
    data = load_split(tmp_path / "out", split, modalities=("video", "audio"),
                      decode_device="cpu")
    assert data["mask"][:, 1].all()
    assert data["video"][data["mask"][:, 0]].mean().item() == pytest.approx(128 / 255, abs=0.02)
    (src / "AudioWAV" / "bad_name.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="emotion"):
        build_cremad_manifest(src, tmp_path / "out")


def test_kinetics_sounds(tmp_path):
    src = tmp_path / "ks"
    for split in ("train", "validate", "test"):
        for cls in ("playing drums", "singing"):
            for k in range(2):
                _webm(src / split / cls / f"clip{k}.webm", value=40 if cls == "singing" else 200)
                if k == 0:
                    _wav(src / "audio" / split / cls / f"clip{k}.wav")
                else:
                    _wav(src / split / cls / f"clip{k}.wav")
    manifest = read_manifest(build_kinetics_sounds_manifest(src, tmp_path / "out"))
    assert manifest.info["classes"] == ["playing drums", "singing"]
    assert [len(manifest.split(s)) for s in SPLITS] == [4, 4, 4]
    assert all(s.paths["video"] and s.paths["audio"] for s in manifest.samples)
    data = load_split(tmp_path / "out", "val", modalities=("video", "audio"),
                      decode_device="cpu")
    bright = data["video"].flatten(1).mean(1) > 0.5
    assert bright.tolist() == (data["label"] == 0).tolist()
    with pytest.raises(ValueError, match="split folders"):
        build_kinetics_sounds_manifest(src / "audio" / "train", tmp_path / "o")


def test_split_of_group_is_stable_and_spread():
    splits = [split_of_group(f"actor{i}") for i in range(300)]
    assert splits == [split_of_group(f"actor{i}") for i in range(300)]
    counts = {s: splits.count(s) for s in SPLITS}
    assert 150 < counts["train"] < 270 and counts["val"] > 20 and counts["test"] > 20
