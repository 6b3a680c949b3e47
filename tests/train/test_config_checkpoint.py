import json

import pytest
import torch

from mmfast.train import TrainConfig, load_checkpoint, save_checkpoint
from mmfast.train.batches import derive_seed, epoch_order
from mmfast.train.checkpoint import atomic_write_json
from mmfast.train.distributed import shard_indices
from mmfast.train.metrics import JsonlLogger


def test_presets_and_round_trip():
    small, gpu = TrainConfig.preset("small"), TrainConfig.preset("gpu", epochs=3)
    assert small.stem_stride == 2 and small.temporal == "frames" and small.amp == "none"
    assert gpu.epochs == 3 and gpu.widths[-1] > small.widths[-1]
    again = TrainConfig.from_dict(json.loads(json.dumps(gpu.to_dict())))
    assert again == gpu


@pytest.mark.parametrize("bad", [dict(amp="fp8"), dict(epochs=-1), dict(optimizer="lion"),
                                 dict(lr=0.0), dict(temporal="3d")])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad)) if "temporal" not in bad else "temporal"):
        TrainConfig(**bad)


def test_unknown_preset_and_keys():
    with pytest.raises(ValueError, match="preset"):
        TrainConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"epochz": 1})


def test_amp_dtype_resolution():
    cpu = torch.device("cpu")
    assert TrainConfig(amp="bf16").amp_dtype(cpu) == torch.bfloat16
    assert TrainConfig(amp="auto").amp_dtype(cpu) is None
    assert TrainConfig(amp="none").amp_dtype(cpu) is None


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    path = tmp_path / "ck.pt"
    tensors = {"model": {"w": torch.arange(6.0).view(2, 3)}, "step": 7}
    save_checkpoint(path, tensors, {"epoch": 3, "history": [{"loss": 1.5}]})
    loaded, meta = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], tensors["model"]["w"]) and loaded["step"] == 7
    assert meta == {"epoch": 3, "history": [{"loss": 1.5}]}
    # the file is a plain torch archive that the safe loader accepts
    raw = torch.load(path, weights_only=True)
    assert json.loads(raw["meta_json"])["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


def test_checkpoint_refuses_pickled_objects_and_foreign_files(tmp_path):
    with pytest.raises(TypeError):  # meta must be JSON
        save_checkpoint(tmp_path / "a.pt", {}, {"bad": object()})
    assert not list(tmp_path.iterdir())  # failed write leaves nothing
    torch.save({"x": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an mmfast checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_atomic_json_replaces_whole_file(tmp_path):
    path = tmp_path / "s.json"
    atomic_write_json(path, {"a": list(range(100))})
    atomic_write_json(path, {"b": 1})
    assert json.loads(path.read_text()) == {"b": 1}


def test_jsonl_logger_keep_rewrites(tmp_path):
    log = JsonlLogger(tmp_path / "m.jsonl")
    for e in range(4):
        log.log({"stage_index": 0, "epoch": e, "loss": float(e), "bad": float("nan")})
    log.keep(lambda r: r["epoch"] <= 1)
    records = log.read()
    assert [r["epoch"] for r in records] == [0, 1] and records[0]["bad"] == "nan"
    JsonlLogger(tmp_path / "off.jsonl", enabled=False).log({"a": 1})
    assert not (tmp_path / "off.jsonl").exists()


def test_epoch_order_is_a_pure_seeded_permutation():
    a, b = epoch_order(50, 3, 0, 1), epoch_order(50, 3, 0, 1)
    assert torch.equal(a, b) and torch.equal(a.sort().values, torch.arange(50))
    assert not torch.equal(a, epoch_order(50, 3, 0, 2))
    assert not torch.equal(a, epoch_order(50, 3, 1, 1))
    assert derive_seed(1, 2) != derive_seed(2, 1)


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (7, 3), (2, 4)])
def test_shards_cover_everything_with_equal_sizes(n, world):
    order = torch.randperm(n)
    shards = [shard_indices(order, r, world) for r in range(world)]
    assert len({s.numel() for s in shards}) == 1
    assert set(torch.cat(shards).tolist()) == set(range(n))
    with pytest.raises(ValueError, match="rank"):
        shard_indices(order, world, world)
