"""Temporal sampling of clips (VideoSpec.sampling): the exact frame indices each rule picks,
read back from generated clips whose every frame carries its own index, and the DALI loader
equal to the reference loader frame for frame."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfast.data.loader import MultiModalLoader, load_split
from mmfast.data.manifest import Manifest, Sample
from mmfast.data.reference_loader import reference_load_split, reference_video
from mmfast.data.specs import VIDEO_SAMPLINGS, DataSpec, VideoSpec
from mmfast.data.video_io import count_video_frames, decode_video, encode_webm

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LONG, SHORT = 70, 5
STEP, BASE = 24, 16  # grey level of digit d: BASE + STEP * d (decoding errors are ~2 levels)


def numbered_clip(n: int, size: int = 16) -> np.ndarray:
    """uint8 (n, size, size): frame i has its left half at the level of digit i // 8 and its
    right half at the level of digit i % 8, so the frame's index reads back despite lossy
    coding and YUV->RGB rounding."""
    i = np.arange(n)
    frames = np.empty((n, size, size), np.uint8)
    frames[:, :, :size // 2] = (BASE + STEP * (i // 8))[:, None, None]
    frames[:, :, size // 2:] = (BASE + STEP * (i % 8))[:, None, None]
    return frames


def read_indices(video: torch.Tensor) -> list[int]:
    """Frame indices of a loader clip (T, 1, H, W) in [0, 1] made by :func:`numbered_clip`."""
    w = video.shape[-1]
    grey = video[:, 0].double() * 255
    coarse = grey[:, 2:-2, 2:w // 2 - 2].mean((1, 2))
    fine = grey[:, 2:-2, w // 2 + 2:-2].mean((1, 2))
    digits = lambda x: torch.round((x - BASE) / STEP).long()  # noqa: E731
    return (digits(coarse) * 8 + digits(fine)).tolist()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Manifest:
    """A train split: a long clip, a short clip, a sample without video, the long one again
    (4 rows: with batch_size 3 the last batch is padded)."""
    root = tmp_path_factory.mktemp("sampling")
    (root / "long.webm").write_bytes(encode_webm(numbered_clip(LONG)))
    (root / "short.webm").write_bytes(encode_webm(numbered_clip(SHORT)))
    samples = [Sample("long", 0, "train", {"video": "long.webm"}),
               Sample("short", 1, "train", {"video": "short.webm"}),
               Sample("none", 0, "train", {"video": None}),
               Sample("long2", 1, "train", {"video": "long.webm"})]
    return Manifest(Path(root), samples)


# Expected indices, written out (not computed by the code under test).
UNIFORM_LONG = [4, 13, 21, 30, 39, 48, 56, 65]  # floor((i + 0.5) * 70 / 8)
UNIFORM_SHORT = [0, 0, 1, 2, 2, 3, 4, 4]        # floor((i + 0.5) * 5 / 8): repeats
HEAD_LONG = [0, 2, 4, 6, 8, 10, 12, 14]
HEAD_SHORT = [0, 2, 4, 4, 4, 4, 4, 4]


def _spec(sampling: str) -> DataSpec:
    return DataSpec(VideoSpec(frames=8, stride=2, height=16, width=16, channels=1,
                              sampling=sampling))


def test_clip_frames_read_back(clips):
    frames = decode_video(clips.root / "long.webm")
    grey = torch.from_numpy(frames[..., :1].copy()).permute(0, 3, 1, 2).float() / 255
    assert read_indices(grey) == list(range(LONG))
    assert count_video_frames(clips.root / "long.webm") == LONG
    data = np.fromfile(clips.root / "short.webm", np.uint8)
    assert count_video_frames(data) == count_video_frames(data.tobytes()) == SHORT


@pytest.mark.parametrize("sampling, long, short", [
    ("uniform", UNIFORM_LONG, UNIFORM_SHORT),
    ("head", HEAD_LONG, HEAD_SHORT),
])
def test_dali_and_reference_pick_the_same_frames(clips, sampling, long, short):
    spec = _spec(sampling)
    dali = load_split(clips, "train", modalities=("video",), spec=spec, batch_size=3,
                      decode_device="cpu", num_threads=1)
    ref = reference_load_split(clips, "train", modalities=("video",), spec=spec, batch_size=3)
    assert dali["mask"][:, 0].tolist() == ref["mask"][:, 0].tolist() == [True, True, False, True]
    for name, batch in (("dali", dali), ("reference", ref)):
        got = [read_indices(batch["video"][r]) for r in (0, 1, 3)]
        assert got == [long, short, long], name
        assert batch["video"][2].abs().sum() == 0  # no video: zero row
    # the tolerance of test_loader.test_matches_reference_loader
    assert (dali["video"] - ref["video"]).abs().mean() < 0.01
    torch.testing.assert_close(dali["video"], ref["video"], atol=0.1, rtol=0)


def test_head_is_the_default_and_unchanged(clips):
    assert VideoSpec().sampling == "head" and DataSpec().video.sampling == "head"
    spec = _spec("head").video
    for name in ("long.webm", "short.webm"):
        frames = decode_video(clips.root / name)
        old = frames[::spec.stride][:spec.frames]  # the loader's rule before `sampling`
        old = np.concatenate([old, np.repeat(old[-1:], spec.frames - len(old), 0)])
        np.testing.assert_array_equal(reference_video(clips.root / name, spec), old)


@pytest.mark.parametrize("frames", [1, 3, 8, 16])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_frame_indices_rules(frames, stride):
    for n in [0, 1, 2, 5, 7, 8, 9, 16, 70, 251]:
        uniform = VideoSpec(frames=frames, stride=stride, sampling="uniform").frame_indices(n)
        exact = [min(int(np.floor((i + 0.5) * max(n, 1) / frames)), max(n, 1) - 1)
                 for i in range(frames)]
        assert uniform.tolist() == exact and uniform.dtype == np.int64
        assert np.all(np.diff(uniform) >= 0)
        if n >= frames:
            assert len(set(uniform.tolist())) == frames  # distinct frames spread over the clip
        head = VideoSpec(frames=frames, stride=stride).frame_indices(n)
        kept = list(range(0, max(n, 1), stride))[:frames]
        assert head.tolist() == kept + [kept[-1]] * (frames - len(kept))


@pytest.mark.parametrize("bad", ["random", "Uniform", "", None, 1])
def test_bad_sampling_is_a_clear_error(bad):
    expected = r"VideoSpec\.sampling: expected one of \('head', 'uniform'\), got "
    with pytest.raises(ValueError, match=expected + re.escape(repr(bad)) + "$"):
        VideoSpec(sampling=bad)
    assert VIDEO_SAMPLINGS == ("head", "uniform")


def test_unreadable_clip_is_masked_not_fatal(clips, tmp_path):
    """Without the construction probe, a clip whose frames cannot be counted is reported and
    masked (the DALI source feeds the stand-in) instead of stopping the pipeline."""
    (tmp_path / "broken.webm").write_bytes(b"not a video at all" * 20)
    samples = [Sample("long", 0, "train", {"video": str(clips.root / "long.webm")}),
               Sample("broken", 1, "train", {"video": "broken.webm"})]
    loader = MultiModalLoader(Manifest(tmp_path, samples), "train", 2, modalities=("video",),
                              spec=_spec("uniform"), decode_device="cpu", num_threads=1,
                              check_files=False)
    with pytest.warns(RuntimeWarning, match="cannot be decoded"):
        batch = next(iter(loader))
    assert batch["mask"][:, 0].tolist() == [True, False]
    assert read_indices(batch["video"][0]) == UNIFORM_LONG
    assert batch["video"][1].abs().sum() == 0
    assert loader.problems["video"][0][0] == "broken"
    assert "frame count failed" in loader.problems["video"][0][1]
