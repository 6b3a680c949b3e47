"""The command-line path a user takes on real files: ``mmfast train`` on a dataset folder
(decoded by the DALI loader), ``mmfast eval`` of the run, ``mmfast report`` of the result."""

import json

from mmfast import cli


def test_train_eval_report_verbs_on_real_files(tiny_root, tmp_path, capsys, monkeypatch):
    run = tmp_path / "late"
    assert cli.main(["train", "late", "--data", str(tiny_root), "--out", str(run),
                     "--epochs", "1", "--batch-size", "8", "--no-progress"]) == 0
    assert (run / "model.pt").is_file() and (run / "train_stats.json").is_file()

    capsys.readouterr()
    monkeypatch.setenv("MMFAST_PROGRESS", "1")  # stands in for a terminal: bars on
    assert cli.main(["eval", str(run), "--data", str(tiny_root),
                     "--protocols", "missing_subsets", "missing_rate"]) == 0
    monkeypatch.delenv("MMFAST_PROGRESS")
    assert "eval late: 100%" in capsys.readouterr().err  # one bar step per protocol
    result = json.loads((run / "eval.json").read_text())
    subsets = result["missing_subsets"]
    assert len(subsets["subsets"]) == 7 and len(subsets["accuracy"]) == 7
    assert all(0.0 <= a <= 1.0 for a in subsets["accuracy"])
    assert result["num_samples"] == 10  # the tiny set's test split: one sample per class
    assert "attack" not in result  # only the protocols asked for

    report_dir = tmp_path / "report"
    assert cli.main(["report", str(run), "--out", str(report_dir)]) == 0
    text = (report_dir / "report.md").read_text()
    assert "| late |" in text and "missing_subsets.png" in text
    assert "wrote" in capsys.readouterr().out
