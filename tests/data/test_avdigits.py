from __future__ import annotations

import hashlib
import wave

import av
import numpy as np
import pytest
from PIL import Image

from mmfast.data import speech
from mmfast.data.avdigits import AVDigitsConfig, _digit_pools, make_avdigits
from mmfast.data.manifest import SPLITS, read_manifest
from mmfast.nn.model import MODALITIES


def test_manifest_splits_and_labels(tiny_root, tiny_config):
    manifest = read_manifest(tiny_root)
    counts = tiny_config.split_counts()
    assert manifest.num_classes == 10
    for split in SPLITS:
        labels = [s.label for s in manifest.split(split)]
        assert sorted(labels) == sorted(list(range(10)) * counts[split])
    assert len({s.id for s in manifest.samples}) == len(manifest.samples)


def test_files_are_real_media(tiny_root, tiny_config):
    manifest = read_manifest(tiny_root)
    sample = next(s for s in manifest.samples if all(s.paths.values()))
    with av.open(str(manifest.path(sample, "video"))) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "vp9"
        frames = list(c.decode(stream))
    assert len(frames) == tiny_config.video_frames
    assert (frames[0].width, frames[0].height) == (tiny_config.video_size, tiny_config.video_size)
    with wave.open(str(manifest.path(sample, "audio"))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    assert len(audio) == 16000 and np.abs(audio).max() > 1000
    with Image.open(manifest.path(sample, "image")) as img:
        assert img.size == (tiny_config.image_size, tiny_config.image_size) and img.mode == "L"


def test_missing_rate_drops_at_most_one_modality(tiny_root, tmp_path):
    manifest = read_manifest(tiny_root)
    missing = [[m for m in MODALITIES if not s.paths[m]] for s in manifest.samples]
    assert all(len(m) <= 1 for m in missing)
    n_missing = sum(1 for m in missing if m)
    assert 0 < n_missing < len(missing)
    for s in manifest.samples:
        for m in MODALITIES:
            if not s.paths[m]:
                assert not list(tiny_root.glob(f"{m}/{s.id}.*"))
    full = make_avdigits(tmp_path / "full", AVDigitsConfig(num_per_class=3, seed=7))
    assert all(all(s.paths.values()) for s in read_manifest(full).samples)


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tiny_root, tiny_config, tmp_path):
    again = tmp_path / "again"
    make_avdigits(again, tiny_config, workers=2)  # other process count, same bytes
    assert _digest(again) == _digest(tiny_root)
    other = tmp_path / "other"
    make_avdigits(other, AVDigitsConfig(num_per_class=3, seed=8, missing_rate=0.25))
    differing = {k for k, v in _digest(other).items() if _digest(tiny_root).get(k) != v}
    assert {"audio", "video", "image"} <= {k.split("/")[0] for k in differing}


def test_source_scans_are_not_shared():
    pools = _digit_pools(0)
    seen: dict[bytes, tuple] = {}
    for key, scans in pools.items():
        for scan in scans:
            assert seen.setdefault(scan.tobytes(), key) == key or scan.sum() == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"num_per_class": 2}, "num_per_class"),
    ({"missing_rate": 1.5}, "missing_rate"),
    ({"split_fractions": (0.5, 0.5, 0.5)}, "split_fractions"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AVDigitsConfig(**kwargs)


def test_speech_and_its_install_hint(monkeypatch):
    speaker = speech.get_speaker()
    audio = speaker.say("seven", "en-us+f2", rate=150, pitch=60)
    assert audio.dtype == np.int16 and 0.2 * speaker.sample_rate < len(audio)
    with pytest.raises(ValueError, match="voice"):
        speaker.say("seven", "no-such-voice")
    monkeypatch.setitem(__import__("sys").modules, "espeakng_loader", None)
    monkeypatch.setattr(speech.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(speech.SpeechUnavailableError, match="pip install espeakng-loader"):
        speech.Speaker()
