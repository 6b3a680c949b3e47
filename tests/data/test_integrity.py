"""Files cut short: detected from their headers, loaded as missing (default) or padded with a
warning, listed in ``loader.problems`` / ``problem_summary()``, and reported by
``mmfast data info`` (quick) and ``mmfast data info --check`` (full decode)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from mmfast.cli import main
from mmfast.data import read_manifest
from mmfast.data.integrity import _duration_truncation, full_check, truncation
from mmfast.data.loader import MultiModalLoader, load_split
from mmfast.data.reference_loader import ReferenceLoader, reference_load_split


def _cut(path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


def _cut_first_full_sample(root, cuts: dict[str, float]):
    """Cut the files of the first train sample that has every modality; -> (row, sample)."""
    manifest = read_manifest(root)
    samples = manifest.split("train")
    row = next(i for i, s in enumerate(samples) if all(s.paths.values()))
    for modality, fraction in cuts.items():
        _cut(manifest.path(samples[row], modality), fraction)
    return row, samples[row]


def test_whole_files_pass_both_checks(tiny_root):
    manifest = read_manifest(tiny_root)
    for sample in manifest.samples[:6]:
        for modality in ("video", "audio", "image"):
            path = manifest.path(sample, modality)
            if path is not None:
                assert truncation(modality, path) is None, path
                assert full_check(modality, path) is None, path


def test_cut_files_are_detected_with_the_numbers(tiny_copy):
    _, sample = _cut_first_full_sample(tiny_copy, {"audio": 0.5, "video": 0.72, "image": 0.6})
    manifest = read_manifest(tiny_copy)
    wav, webm, png = (manifest.path(sample, m) for m in ("audio", "video", "image"))
    assert truncation("audio", wav).startswith("truncated: the WAV header declares 32000 bytes")
    assert "Matroska/WebM segment declares" in truncation("video", webm)
    assert truncation("image", png).startswith("truncated")
    # Containers without a size field are caught by their declared duration.
    reason = _duration_truncation(webm, "video")
    assert reason is not None and "packets end at" in reason
    assert full_check("audio", wav).startswith("truncated")


@pytest.mark.parametrize("loader_cls", [MultiModalLoader, ReferenceLoader])
def test_truncated_files_load_as_missing_by_default(tiny_copy, loader_cls):
    row, sample = _cut_first_full_sample(tiny_copy, {"audio": 0.5, "video": 0.72})
    with pytest.warns(RuntimeWarning, match="cut short"):
        loader = loader_cls(tiny_copy, "train", batch_size=10)
    for modality in ("audio", "video"):
        assert loader.problems[modality] == [(sample.id, truncation(
            modality, read_manifest(tiny_copy).path(sample, modality)))]
    batch = next(iter(loader))
    assert batch["mask"][row].tolist() == [False, False, True]
    assert batch["video"][row].abs().sum() == 0 and batch["audio"][row].abs().sum() == 0
    summary = loader.problem_summary()
    assert summary["audio"]["count"] == 1 and summary["audio"]["truncated"] == 1
    assert summary["video"]["examples"][0]["id"] == sample.id
    assert "image" not in summary


def test_pad_policy_keeps_the_sample_and_both_loaders_agree(tiny_copy):
    row, sample = _cut_first_full_sample(tiny_copy, {"audio": 0.5, "video": 0.72})
    problems: dict = {}
    with pytest.warns(RuntimeWarning, match="truncated ones padded"):
        dali = load_split(tiny_copy, "train", decode_device="cpu", truncated="pad",
                          problems=problems)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = reference_load_split(tiny_copy, "train", truncated="pad")
    assert dali["mask"][row].all() and ref["mask"][row].all()
    assert len(problems["audio"]) == 1 and "loaded padded" in problems["audio"][0][1]
    # The second half of the audio is gone: padded with silence (the log-mel floor), the same
    # way in both loaders; the video repeats its last decoded frame.
    audio = dali["audio"][row, 0]
    assert audio[:, :20].abs().sum() > 0 and torch.all(audio[:, -20:] == audio.min())
    torch.testing.assert_close(dali["audio"][row], ref["audio"][row], atol=0.05, rtol=0)
    torch.testing.assert_close(dali["video"][row], ref["video"][row], atol=0.1, rtol=0)


def test_cut_image_is_never_padded(tiny_copy):
    row, _ = _cut_first_full_sample(tiny_copy, {"image": 0.6})
    with pytest.warns(RuntimeWarning):
        loader = ReferenceLoader(tiny_copy, "train", batch_size=10, truncated="pad")
    assert loader.problems["image"][0][1].startswith("truncated image, never padded")
    assert next(iter(loader))["mask"][row].tolist() == [True, True, False]


def test_bad_policy_is_a_clear_error(tiny_root):
    with pytest.raises(ValueError, match=r"truncated: expected one of \('missing', 'pad'\)"):
        ReferenceLoader(tiny_root, "train", truncated="zeros")


@pytest.mark.parametrize("full", [False, True])
def test_data_info_checks_the_files(tiny_copy, capsys, full):
    extra = ["--check"] if full else []
    assert main(["data", "info", str(tiny_copy), *extra]) == 0
    clean = json.loads(capsys.readouterr().out)["files"]
    assert clean["problems"] == {} and clean["checked"] > 0
    assert clean["mode"] == ("full" if full else "quick")
    _, sample = _cut_first_full_sample(tiny_copy, {"audio": 0.5})
    read_manifest(tiny_copy).path(sample, "image").unlink()
    assert main(["data", "info", str(tiny_copy), *extra]) == 1
    captured = capsys.readouterr()
    files = json.loads(captured.out)["files"]
    assert files["problems"]["audio"]["truncated"] == 1
    assert files["problems"]["image"]["examples"][0]["reason"] == "file not found"
    assert "files with problems: audio 1 (1 truncated), image 1" in captured.err
