from __future__ import annotations

import pytest

from mmfast.data.manifest import (
    SPLITS,
    Sample,
    epoch_order,
    read_manifest,
    relative_to,
    shard,
    write_manifest,
)


def _samples(n: int = 7) -> list[Sample]:
    return [Sample(f"s{i}", i % 3, SPLITS[i % 3],
                   {"video": f"v/{i}.webm", "audio": None if i % 2 else f"a/{i}.wav",
                    "image": f"/abs/{i}.png"}) for i in range(n)]


@pytest.mark.parametrize("name", ["manifest.csv", "m.jsonl"])
def test_round_trip(tmp_path, name):
    samples = _samples()
    path = write_manifest(tmp_path / name, samples, info={"classes": ["a", "b", "c", "d"]})
    manifest = read_manifest(path)
    assert manifest.samples == samples
    assert manifest.num_classes == 4
    assert manifest.path(samples[0], "video") == tmp_path / "v/0.webm"
    assert manifest.path(samples[1], "audio") is None
    assert str(manifest.path(samples[0], "image")) == "/abs/0.png"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp file


def test_folder_and_split(tmp_path):
    write_manifest(tmp_path, _samples())
    manifest = read_manifest(tmp_path)
    assert [s.id for s in manifest.split("val")] == ["s1", "s4"]
    assert manifest.num_classes == 3  # no info.json: max label + 1
    with pytest.raises(ValueError, match="split"):
        manifest.split("dev")


@pytest.mark.parametrize("row, match", [
    ("x,1,dev,,,", "split"),
    ("x,-1,train,,,", "label"),
    ("x,one,train,,,", "label"),
])
def test_bad_rows_name_the_column(tmp_path, row, match):
    (tmp_path / "manifest.csv").write_text(f"id,label,split,video,audio,image\n{row}\n")
    with pytest.raises(ValueError, match=match):
        read_manifest(tmp_path)


def test_duplicate_ids_and_missing_manifest(tmp_path):
    (tmp_path / "manifest.csv").write_text("id,label,split,video,audio,image\n"
                                           "x,1,train,,,\nx,2,test,,,\n")
    with pytest.raises(ValueError, match="duplicate"):
        read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="mmfast data make"):
        read_manifest(tmp_path / "nothing")


def test_relative_to(tmp_path):
    assert relative_to(tmp_path / "a" / "b.wav", tmp_path) == "a/b.wav"
    assert relative_to("/elsewhere/b.wav", tmp_path) == "/elsewhere/b.wav"
    assert relative_to(None, tmp_path) is None


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (7, 3), (1, 4)])
def test_shards_cover_exactly_once(n, world):
    order = epoch_order(n, 3, shuffle=True, seed=5)
    parts = [shard(order, r, world) for r in range(world)]
    assert sorted(i for p in parts for i in p) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_epoch_order_is_seeded_and_shared_by_ranks():
    a = epoch_order(50, 0, shuffle=True, seed=1)
    assert a == epoch_order(50, 0, shuffle=True, seed=1)
    assert a != epoch_order(50, 1, shuffle=True, seed=1)
    assert sorted(a) == list(range(50))
    ranks = [epoch_order(50, 0, shuffle=True, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert ranks == [a[0::2], a[1::2]]
    assert epoch_order(10, 0, shuffle=False, seed=0, drop_last_of=4) == list(range(8))


@pytest.mark.parametrize("rank, world", [(2, 2), (-1, 2), (0, 0)])
def test_shard_rejects_bad_rank(rank, world):
    with pytest.raises(ValueError, match="rank|world_size"):
        shard([1, 2, 3], rank, world)
