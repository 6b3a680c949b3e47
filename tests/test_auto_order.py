"""auto dispatch on CUDA tensors follows the per-op order that benchmarks/summarize.py derives
from a GPU benchmark run (CUDA vs Triton), stored in mmfast/ops/cuda_auto_order.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mmfast.ops import _dispatch

REPO = Path(__file__).resolve().parents[1]


def _summarize_module():
    spec = importlib.util.spec_from_file_location("summarize", REPO / "benchmarks/summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summarize = _summarize_module()


def bench(op: str, group: str, provider: str, median: float, shape=(4, 3, 64)) -> dict:
    return {"group": group, "stats": {"median": median},
            "extra_info": {"op": op, "provider": provider, "gb_per_s": 1.0, "shape": list(shape),
                           "fraction_of_copy": 0.5, "first_call_s": 0.01, "device": "H100"}}


def gpu_run() -> dict:
    """masked_fusion: Triton faster in both cases; certified_margin: CUDA faster at C = 100,
    Triton at C = 10; noise: only CUDA ran (no decision); subset_accuracy: Triton faster;
    plus CPU cases that must not count."""
    wide, narrow = (8, 3, 100), (8, 3, 10)
    rows = [
        bench("masked_fusion", "masked_fusion-fwd-cuda", "cuda", 2.0),
        bench("masked_fusion", "masked_fusion-fwd-cuda", "triton", 1.0),
        bench("masked_fusion", "masked_fusion-full-cuda", "cuda", 4.0),
        bench("masked_fusion", "masked_fusion-full-cuda", "triton", 3.0),
        bench("certified_margin", "certified_margin-fwd-C100-cuda", "cuda", 1.0, wide),
        bench("certified_margin", "certified_margin-fwd-C100-cuda", "triton", 4.0, wide),
        bench("certified_margin", "certified_margin-fwd-C10-cuda", "cuda", 2.0, narrow),
        bench("certified_margin", "certified_margin-fwd-C10-cuda", "triton", 1.0, narrow),
        bench("noisy_modality_dropout", "noisy_modality_dropout-cuda", "cuda", 1.0),
        bench("subset_accuracy", "subset_accuracy-cuda", "cuda", 1.0),
        bench("subset_accuracy", "subset_accuracy-cuda", "triton", 0.5),
        bench("masked_fusion", "masked_fusion-fwd-cpu", "cpp", 9.0),
        bench("masked_fusion", "masked_fusion-fwd-cpu", "reference", 1.0),
    ]
    return {"benchmarks": rows, "datetime": "2026-11-23T00:00:00"}


TRITON_FIRST, CUDA_FIRST = ["triton", "cuda", "reference"], ["cuda", "triton", "reference"]


def test_auto_order_picks_the_faster_gpu_backend_per_op_and_shape_class():
    table = summarize.auto_order(gpu_run())
    assert table["orders"] == {
        "masked_fusion": {"*": TRITON_FIRST, "wide": TRITON_FIRST},
        # C = 100 (wide): CUDA 4x faster; C = 10 (narrow): Triton 2x; overall sqrt(2) for CUDA
        "certified_margin": {"*": CUDA_FIRST, "wide": CUDA_FIRST, "narrow": TRITON_FIRST},
        "subset_accuracy": {"*": TRITON_FIRST, "wide": TRITON_FIRST},
        "subset_logits": {"*": TRITON_FIRST, "wide": TRITON_FIRST},
    }
    assert "noisy_modality_dropout" not in table["orders"]
    evidence = table["evidence"]["certified_margin"]
    assert evidence["triton_over_cuda_time"] == {"*": pytest.approx(2 ** 0.5, rel=1e-3),
                                                 "wide": 4.0, "narrow": 0.5}
    assert evidence["per_case"] == {"certified_margin-fwd-C100-cuda": 4.0,
                                    "certified_margin-fwd-C10-cuda": 0.5}
    assert table["devices"] == ["H100"]


@pytest.mark.parametrize("op,shape,expected", [
    ("certified_margin", (262144, 3, 10), "narrow"),
    ("certified_margin", (262144, 3, 100), "wide"),
    ("masked_fusion", (65536, 3, 1024), "wide"),
    ("subset_accuracy", (5, 4, 31), "narrow"),
    ("noisy_modality_dropout", (256, 8, 3, 112, 112), "wide"),
    ("noisy_modality_dropout", (256, 5), "narrow"),
    ("noisy_modality_dropout", (256,), "narrow"),
])
def test_shape_class_is_the_row_width(op, shape, expected):
    assert _dispatch.shape_class(op, shape) == expected


def test_summary_table_has_first_call_and_ratios():
    text = summarize.summarize(gpu_run())
    assert "| masked_fusion-fwd-cpu | cpp | 9000.000 | 1.00 | 0.50 | 10.0 | 0.11 | - |" in text


def test_written_table_is_what_dispatch_loads(tmp_path, capsys):
    results, out = tmp_path / "results.json", tmp_path / "ops" / "cuda_auto_order.json"
    results.write_text(json.dumps(gpu_run()))
    summarize.main([str(results), "--auto-order", str(out)])
    assert "auto order written" in capsys.readouterr().out
    loaded = _dispatch.load_cuda_auto_order(out)
    assert loaded["masked_fusion"]["*"] == tuple(TRITON_FIRST)
    assert loaded["certified_margin"] == {"*": tuple(CUDA_FIRST), "wide": tuple(CUDA_FIRST),
                                          "narrow": tuple(TRITON_FIRST)}
    assert not list(out.parent.glob(".*"))  # the temp file was renamed, not left behind


def test_a_cpu_only_run_writes_no_table(tmp_path):
    results, out = tmp_path / "results.json", tmp_path / "order.json"
    cpu = {"benchmarks": [b for b in gpu_run()["benchmarks"] if b["group"].endswith("-cpu")]}
    results.write_text(json.dumps(cpu))
    with pytest.raises(SystemExit, match="no GPU case"):
        summarize.main([str(results), "--auto-order", str(out)])
    assert not out.exists()


def test_missing_table_means_default_order_and_bad_table_is_an_error(tmp_path):
    assert _dispatch.load_cuda_auto_order(tmp_path / "absent.json") == {}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"orders": {"masked_fusion": {"wide": ["cuda", "fortran"]}}}))
    with pytest.raises(ValueError, match="bad.json.*masked_fusion.*wide.*fortran"):
        _dispatch.load_cuda_auto_order(bad)
    bad.write_text(json.dumps({"orders": {"masked_fusion": {"huge": ["cuda"]}}}))
    with pytest.raises(ValueError, match="bad.json.*masked_fusion.*shape classes.*huge"):
        _dispatch.load_cuda_auto_order(bad)


def test_shipped_table_is_valid():
    """The repository's table (if a GPU run recorded one) names only known backends."""
    table = _dispatch.load_cuda_auto_order()
    assert table == _dispatch.AUTO_ORDER_CUDA_PER_OP


def test_auto_on_cuda_follows_the_order_of_the_shape_class(monkeypatch):
    monkeypatch.setattr(_dispatch, "AUTO_ORDER_CUDA_PER_OP", {
        "masked_fusion": {"*": tuple(TRITON_FIRST)},
        "certified_margin": {"*": tuple(CUDA_FIRST), "narrow": tuple(TRITON_FIRST)},
    })
    monkeypatch.setattr(_dispatch, "unavailable_reason", lambda op, backend, device: None)
    _dispatch.clear_cache()
    try:
        cuda = torch.device("cuda", 0)
        choose = _dispatch.choose_backend
        assert choose("masked_fusion", cuda, "auto", (8, 3, 1024)) == "triton"  # "*" order
        assert choose("certified_margin", cuda, "auto", (8, 3, 10)) == "triton"  # narrow
        assert choose("certified_margin", cuda, "auto", (8, 3, 100)) == "cuda"  # "*" order
        assert choose("subset_accuracy", cuda, "auto", (8, 3, 100)) == "cuda"  # default order
        assert choose("certified_margin", cuda, "cuda", (8, 3, 10)) == "cuda"  # explicit wins
    finally:
        _dispatch.clear_cache()


def test_gpu_check_script_is_valid_bash_and_names_real_paths():
    """scripts/gpu_check.sh only runs on a GPU machine; here: it parses, and every test,
    benchmark and script path it names exists (a rename would otherwise surface only there)."""
    import re
    import subprocess

    script = REPO / "scripts" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    commands = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    paths = set(re.findall(r"\b((?:tests|benchmarks)/[\w/]+(?:\.py)?)(?=[\s\"])", commands))
    paths.add("setup.py")
    assert {"tests/gpu", "benchmarks/summarize.py"} <= paths
    missing = [p for p in sorted(paths) if not (REPO / p).exists()]
    assert not missing, missing
    assert "--auto-order" in text and "cuda=yes" in text
