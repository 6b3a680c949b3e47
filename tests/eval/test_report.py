"""Report: report.md, PNG plots that open, claims table with verdicts and numbers."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mmfast.eval import EvalConfig, run_protocols, write_json_atomic
from mmfast.eval.claims import check_claims
from mmfast.eval.report import write_report
from tests.eval.toy_models import CertifiableLinear, LinearLate, make_inputs

CFG = EvalConfig(batch_size=64, attack_samples=32, attack_eps=(0.0, 0.5, 2.0),
                 gaussian_sigmas=(0.0, 1.0), salt_pepper_densities=(0.0, 0.3),
                 missing_rates=(0.0, 0.5, 1.0), certify_radii=(0.0, 0.2, 0.5))


def _data(n=64):
    data = make_inputs(n, seed=11)
    data["mask"] = torch.ones(n, 3, dtype=torch.bool)
    data["label"] = torch.arange(n) % 3
    return data


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = _data()
    dirs = []
    for i, method in enumerate(["joint", "late", "ume_mma", "crmt"]):
        # only CRMT offers certificates here
        model = (CertifiableLinear(3, seed=20 + i) if method == "crmt"
                 else LinearLate(3, seed=20 + i, fusion="mean" if i else "sum"))
        run = root / method
        write_json_atomic(run / "eval.json", run_protocols(model, data, CFG))
        write_json_atomic(run / "train_stats.json", {
            "method": method, "train_time_s": 10.0 + i, "peak_memory_bytes": 2**20 * (5 + i),
            "num_parameters": sum(p.numel() for p in model.parameters()), "epochs": 2})
        dirs.append(run)
    return dirs


def test_report_writes_markdown_pngs_and_claims(runs, tmp_path):
    path = write_report(runs, tmp_path / "report")
    text = path.read_text()
    pngs = sorted((tmp_path / "report").glob("*.png"))
    assert {p.name for p in pngs} == {
        "missing_subsets.png", "missing_rate.png", "noise_gaussian.png",
        "noise_salt_pepper.png", "attack_fgm.png", "attack_pgd.png", "certified_accuracy.png",
        "smoothing.png", "missing_certificate.png"}
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
        assert f"]({png.name})" in text
    for method in ("joint", "late", "ume_mma", "crmt"):
        assert f"| {method} |" in text
    assert "## Claims checked on this data" in text
    claim_rows = [line for line in text.splitlines() if line.startswith("| UME-MMA")
                  or line.startswith("| CRMT")]
    # one first row per claim (its further metric rows leave paper and claim blank)
    assert len(claim_rows) == len({id(r.claim) for r in check_claims(_results(runs))
                                   if r.claim.source in ("UME-MMA", "CRMT")})
    # one seed per method: no verdict beyond "indicative" (tests/eval/test_claims.py: seeds)
    assert all(("**indicative**" in r or "**not evaluated**" in r) for r in claim_rows)
    assert "not evaluated" in text  # joint offers no certificate in this fixture
    assert "## (e) Certification" in text and "sound" in text


def _results(runs):
    return {r.name: json.loads((r / "eval.json").read_text()) for r in runs}


def test_report_rejects_a_folder_without_results(tmp_path):
    with pytest.raises(ValueError, match="eval.json"):
        write_report([tmp_path], tmp_path / "out")
    with pytest.raises(ValueError, match="run_dirs"):
        write_report([], tmp_path / "out")


def test_report_verb_writes_the_report(runs, tmp_path, capsys):
    from mmfast import cli

    assert cli.main(["report", *map(str, runs), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").is_file()
    assert "report.md" in capsys.readouterr().out
