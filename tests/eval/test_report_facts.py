"""The report's facts: README's ``mmfast report runs/* --out runs/report`` after a demo,
one colour per method in every plot, the same attack clamp in eval and demo, and the
chance level / units / clamp / data problems / provenance sections."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.colors as mcolors
import pytest
import torch

from mmfast.eval import EvalConfig, plots, run_protocols, write_json_atomic
from mmfast.eval.report import write_report
from mmfast.eval.report_facts import expand_run_dirs
from tests.eval.toy_models import CertifiableLinear, LinearLate, make_inputs

ROOT = Path(__file__).resolve().parents[2]
CFG = EvalConfig(batch_size=64, attack_samples=16, attack_eps=(0.0, 0.5),
                 gaussian_sigmas=(0.0, 1.0), salt_pepper_densities=(0.0, 0.3),
                 missing_rates=(0.0, 1.0), certify_radii=(0.0, 0.2),
                 clamp={"video": (0.0, 1.0)})
DATASET = {"name": "toy", "path": "/data/toy", "splits": {"train": 10, "test": 32},
           "num_classes": 3, "chance_accuracy": 1 / 3, "modalities": ["video"],
           "input_ranges": {"video": [0.0, 1.0]}, "sample_shapes": {"video": [2, 2]},
           "loader": {"video": "2x2 toy"},
           "problems": {"train": {
               "audio": {"count": 4, "examples": [["s7", "file not found"]]},
               "video": {"count": 2, "truncated": 2, "padded": 1, "examples": [
                   ["s8", "truncated (72% of the frames); loaded padded (truncated='pad')"]]}}},
           "problem_count": 6}


def _demo_folder(root: Path) -> Path:
    """A folder laid out like ``mmfast demo``'s output: runs/<method>/{eval,train_stats}.json."""
    data = make_inputs(32, seed=3)
    data["mask"] = torch.ones(32, 3, dtype=torch.bool)
    data["label"] = torch.arange(32) % 3
    for i, method in enumerate(["joint", "late", "crmt"]):
        model = CertifiableLinear(3, seed=i) if method == "crmt" else LinearLate(3, seed=i)
        run = root / "runs" / method
        write_json_atomic(run / "eval.json", {"method": method,
                                              **run_protocols(model, data, CFG)})
        write_json_atomic(run / "train_stats.json", {
            "method": method, "train_time_s": 1.0, "peak_memory_bytes": 2**20,
            "peak_memory_kind": "process_peak_rss_since_reset", "num_parameters": 3,
            "load_average": {"start": [1.5, 1.0, 1.0], "end": [1.0, 1.0, 1.0]},
            "provenance": {"command": f"mmfast train {method}", "seeds": [0],
                           "preset": "small", "torch": torch.__version__,
                           "dataset": DATASET}})
    return root


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    _demo_folder(root / "runs" / "demo")
    single = root / "runs" / "ume_mma"  # a run of `mmfast train` + `mmfast eval`
    single.mkdir(parents=True)
    for name in ("eval.json", "train_stats.json"):
        text = (root / "runs/demo/runs/late" / name).read_text()
        (single / name).write_text(text.replace('"late"', '"ume_mma"'))
    return root


def test_readme_report_glob_after_the_demo(runs_root):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = f"{sys.executable} -m mmfast.cli report runs/* --out runs/report"
    for _ in range(2):  # the second time runs/* also matches runs/report
        done = subprocess.run(["bash", "-c", command], cwd=runs_root, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    text = (runs_root / "runs/report/report.md").read_text()
    for method in ("joint", "late", "crmt", "ume_mma"):
        assert f"| {method} |" in text


def test_report_hint_names_the_eval_command(tmp_path):
    run = tmp_path / "trained"
    run.mkdir()
    (run / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=f"run `mmfast eval {run} --data DIR` first"):
        expand_run_dirs([run], tmp_path / "report")
    with pytest.raises(ValueError, match="demo folder"):
        expand_run_dirs([tmp_path / "nothing"], tmp_path / "report")
    with pytest.raises(ValueError, match="no run folder"):
        write_report([tmp_path / "report"], tmp_path / "report")


def test_report_states_chance_units_clamp_problems_and_provenance(runs_root, tmp_path):
    text = write_report([runs_root / "runs/demo"], tmp_path / "r").read_text()
    assert "**Chance level**: 0.333 (3 classes)" in text
    assert "l2 norms in the model's input units" in text and "video values in [0, 1]" in text
    assert "**Attack clamp**: video [0, 1]; applied after every PGD/FGM step" in text
    assert "`process_peak_rss_since_reset`" in text
    assert "depend on the machine and its load (1-minute load average up to 1.5" in text
    assert "| train time (s)* |" in text and "Times marked * are wall-clock" in text
    assert "**6 file(s) could not be used as listed**" in text and "5 loaded as absent" in text
    assert "1 truncated file(s) loaded padded" in text
    assert "| /data/toy | train | video | 2 | 2 | 1 | s8: truncated (72% of" in text
    assert "| /data/toy | train | audio | 4 | n/a | 0 | s7: file not found |" in text
    assert "## Provenance" in text and "`mmfast train crmt`" in text


def test_each_method_has_one_colour_in_every_plot(runs_root, tmp_path, monkeypatch):
    colours: dict[str, dict[str, set]] = {}
    real_save = plots._save

    def spy(fig, path):
        for ax in fig.axes:
            for line in ax.get_lines():
                method = line.get_label().split(" [")[0]
                colours.setdefault(path.name, {}).setdefault(method, set()).add(
                    mcolors.to_hex(line.get_color()))
            for bars in ax.containers:
                colours.setdefault(path.name, {}).setdefault(bars.get_label(), set()).add(
                    mcolors.to_hex(bars.patches[0].get_facecolor()))
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    write_report([runs_root / "runs/demo"], tmp_path / "r")
    expected = plots.method_colors(["crmt", "joint", "late"])  # the report's (sorted) order
    assert len(set(expected.values())) == 3
    assert "certified_accuracy.png" in colours and "missing_subsets.png" in colours
    for name, per_method in colours.items():
        for method, seen in per_method.items():
            if method in expected:
                assert seen == {expected[method]}, (name, method, seen)


def test_eval_and_demo_clamp_attacks_the_same_way(tmp_path, monkeypatch):
    from mmfast.demo import register as register_demo
    from mmfast.eval.adversarial import PIXEL_CLAMP
    from mmfast.eval.cli import eval_config_from_args
    from mmfast.eval.cli import register as register_eval

    # the CLI checks paths at parse time: a run folder with a model, a dataset with a manifest
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "model.pt").write_bytes(b"")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.csv").write_text("id,label,split\n")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register_eval(sub)
    register_demo(sub)
    from_eval = eval_config_from_args(parser.parse_args(["eval", "r", "--data", "d"]), "cpu")
    demo_args = parser.parse_args(["demo"])
    demo_args.eval_preset = "small"  # what demo's _run resolves from its preset
    from_demo = eval_config_from_args(demo_args, "cpu")
    assert from_eval.clamp == from_demo.clamp == PIXEL_CLAMP
    off = parser.parse_args(["eval", "r", "--data", "d", "--eval-overrides", '{"clamp": {}}'])
    assert eval_config_from_args(off, "cpu").clamp == {}
