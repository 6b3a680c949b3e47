from __future__ import annotations

import warnings

import pytest
import torch

from mmfast.data.loader import MultiModalLoader, load_split
from mmfast.data.manifest import read_manifest
from mmfast.data.reference_loader import ReferenceLoader, reference_load_split
from mmfast.data.specs import AudioSpec, DataSpec, ImageSpec, VideoSpec
from mmfast.nn.model import MODALITIES

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _loader(root, split="train", batch_size=4, **kw):
    return MultiModalLoader(root, split, batch_size, decode_device="cpu", num_threads=1, **kw)


def test_batch_contract(tiny_root):
    manifest = read_manifest(tiny_root)
    samples = manifest.split("train")
    spec = DataSpec()
    batches = list(_loader(tiny_root))
    assert [len(b["label"]) for b in batches] == [4, 4, 2]
    for b in batches:
        n = len(b["label"])
        assert b["video"].shape == (n, *spec.video.shape) and b["video"].dtype == torch.float32
        assert b["audio"].shape == (n, 1, 40, 51) and b["image"].shape == (n, 1, 32, 32)
        assert b["mask"].dtype == torch.bool and b["mask"].shape == (n, len(MODALITIES))
        assert b["label"].dtype == b["index"].dtype == torch.int64
        for m, modality in enumerate(MODALITIES):
            x = b[modality]
            assert 0.0 <= x.min() and x.max() <= 1.0
            flat = x.flatten(1)
            assert torch.all(flat[~b["mask"][:, m]] == 0)  # absent rows are zero
            assert torch.all(flat[b["mask"][:, m]].abs().sum(1) > 0)  # present rows are not
        for row, i in enumerate(b["index"].tolist()):
            assert b["label"][row] == samples[i].label
            assert b["mask"][row].tolist() == [bool(samples[i].paths[m]) for m in MODALITIES]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(samples)))


def test_sizes_are_options(tiny_root):
    spec = DataSpec(VideoSpec(frames=4, stride=4, height=16, width=24, channels=3),
                    AudioSpec(n_mels=20, hop=160), ImageSpec(height=28, width=28, channels=3))
    b = next(iter(_loader(tiny_root, "val", 10, spec=spec)))
    assert b["video"].shape == (10, 4, 3, 16, 24)
    assert b["audio"].shape == (10, 1, 20, 101)
    assert b["image"].shape == (10, 3, 28, 28)


def test_two_shards_cover_the_split_once(tiny_root):
    seen = []
    for rank in (0, 1):
        loader = _loader(tiny_root, shuffle=True, seed=3, rank=rank, world_size=2)
        assert loader.num_samples == 5
        seen += [i for b in loader for i in b["index"].tolist()]
    assert sorted(seen) == list(range(10))


def test_shuffle_is_per_epoch_and_seeded(tiny_root):
    def orders(seed):
        loader = _loader(tiny_root, batch_size=10, shuffle=True, seed=seed)
        return [next(iter(loader))["index"].tolist() for _ in range(2)]

    a = orders(1)
    assert a == orders(1) and a[0] != a[1]
    assert sorted(a[0]) == list(range(10))


def test_drop_last_and_abandoned_epoch(tiny_root):
    loader = _loader(tiny_root, batch_size=4, drop_last=True)
    assert len(loader) == 2
    next(iter(loader))  # abandon the epoch after one batch
    assert [len(b["label"]) for b in loader] == [4, 4]


def test_load_split_matches_iteration(tiny_root):
    data = load_split(tiny_root, "test", decode_device="cpu", batch_size=3)
    batches = list(_loader(tiny_root, "test", 3))
    for key in data:
        assert torch.equal(data[key], torch.cat([b[key] for b in batches]))


def test_matches_reference_loader(tiny_root):
    dali = load_split(tiny_root, "train", decode_device="cpu")
    ref = reference_load_split(tiny_root, "train")
    for key in ("mask", "label", "index"):
        assert torch.equal(dali[key], ref[key])
    torch.testing.assert_close(dali["image"], ref["image"], atol=1 / 255, rtol=0)
    torch.testing.assert_close(dali["audio"], ref["audio"], atol=0.01, rtol=0)  # 0.8 dB
    # DALI and swscale convert YUV to RGB with different rounding: a few levels per pixel
    assert (dali["video"] - ref["video"]).abs().mean() < 0.01
    torch.testing.assert_close(dali["video"], ref["video"], atol=0.1, rtol=0)
    ref_batches = list(ReferenceLoader(tiny_root, "train", 4))
    assert [len(b["label"]) for b in ref_batches] == [4, 4, 2]


def test_matches_reference_loader_uniform_sampling(tiny_root):
    """Per-sample uniform frame indices (DALI `frames` argument input) on the avdigits clips;
    tests/data/test_video_sampling.py checks the exact indices and rows without video."""
    spec = DataSpec(VideoSpec(sampling="uniform"))
    dali = load_split(tiny_root, "train", modalities=("video",), spec=spec, batch_size=4,
                      decode_device="cpu")
    ref = reference_load_split(tiny_root, "train", modalities=("video",), spec=spec)
    assert torch.equal(dali["mask"], ref["mask"])
    assert (dali["video"] - ref["video"]).abs().mean() < 0.01
    torch.testing.assert_close(dali["video"], ref["video"], atol=0.1, rtol=0)
    head = load_split(tiny_root, "train", modalities=("video",), batch_size=4,
                      decode_device="cpu")
    assert not torch.equal(head["video"], dali["video"])  # other frames than "head"


def test_missing_and_broken_files_are_masked_and_reported(tiny_copy):
    manifest = read_manifest(tiny_copy)
    samples = manifest.split("train")
    full = [i for i, s in enumerate(samples) if all(s.paths.values())]
    deleted, broken, later = full[0], full[1], full[2]
    manifest.path(samples[deleted], "video").unlink()
    manifest.path(samples[broken], "audio").write_bytes(b"RIFF-not-really-a-wav" * 10)
    with pytest.warns(RuntimeWarning, match="cannot be decoded") as record:
        loader = _loader(tiny_copy, batch_size=10)
    assert len(record) == 1
    assert loader.problems["video"][0][0] == samples[deleted].id
    assert loader.problems["audio"][0][0] == samples[broken].id
    manifest.path(samples[later], "image").unlink()  # vanishes after the check
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once: no second warning
        batch = next(iter(loader))
    assert loader.problems["image"][0][0] == samples[later].id
    mask = batch["mask"]
    assert mask[deleted].tolist() == [False, True, True]
    assert mask[broken].tolist() == [True, False, True]
    assert mask[later].tolist() == [True, True, False]
    assert batch["video"][deleted].abs().sum() == 0 and batch["audio"][broken].abs().sum() == 0
    assert batch["image"][later].abs().sum() == 0
    others = [i for i in full if i not in (deleted, broken, later)]
    assert mask[others].all()


def test_subset_of_modalities(tiny_root):
    b = next(iter(_loader(tiny_root, modalities=("audio", "image"))))
    assert set(b) == {"audio", "image", "mask", "label", "index"}
    assert b["mask"].shape == (4, 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size"),
    ({"modalities": ("video", "smell")}, "modalities"),
    ({"modalities": ()}, "modalities"),
    ({"rank": 2, "world_size": 2}, "rank"),
    ({"decode_device": "tpu"}, "decode_device"),
])
def test_bad_arguments(tiny_root, kwargs, match):
    args = {"batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        MultiModalLoader(tiny_root, "train", **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_decode_without_gpu_is_a_clear_error(tiny_root):
    with pytest.raises(ValueError, match="decode_device"):
        MultiModalLoader(tiny_root, "train", decode_device="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_decode_matches_cpu(tiny_root):
    gpu = load_split(tiny_root, "val", decode_device="gpu")
    cpu = load_split(tiny_root, "val", decode_device="cpu")
    assert gpu["video"].is_cuda
    for key in cpu:
        torch.testing.assert_close(gpu[key].cpu().float(), cpu[key].float(), atol=0.1, rtol=0)
