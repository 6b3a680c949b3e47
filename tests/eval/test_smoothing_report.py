"""The report's smoothing and missing-certificate sections, and the CRMT-vs-smoothing claims."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mmfast.eval import EvalConfig, run_protocols, write_json_atomic
from mmfast.eval.claims import check_claims
from mmfast.eval.report import write_report
from tests.eval.toy_models import CertifiableLinear, LinearLate, make_inputs

CFG = EvalConfig(batch_size=32, protocols=("smoothing", "missing_certificate"),
                 smoothing={"sigma": 0.05, "n0": 8, "n": 64, "samples": 24,
                            "radii": [0.0, 0.01, 0.05]})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = make_inputs(40, seed=12)
    data["mask"] = torch.ones(40, 3, dtype=torch.bool)
    late = LinearLate(3, seed=31, fusion="mean")
    late.bias.data.zero_()  # the mean of the modality logits is the prediction
    with torch.no_grad():
        data["label"] = late(data, data["mask"]).logits.argmax(1)
    dirs = []
    for method, model in (("crmt", CertifiableLinear(3, seed=30)), ("gaussian_aug", late)):
        run = root / method
        write_json_atomic(run / "eval.json", {"method": method,
                                              **run_protocols(model, data, CFG)})
        dirs.append(run)
    return dirs


def test_sections_state_the_kind_of_each_guarantee(runs, tmp_path):
    text = write_report(runs, tmp_path).read_text()
    assert "## (f) Randomized smoothing" in text and "**Guarantee: probabilistic.**" in text
    assert "not for the base model" in text and "n = 64" in text and "smaller budget" in text
    assert "## (g) Certificates against missing modalities" in text
    assert "**Guarantee: deterministic and exact.**" in text
    assert "Lipschitz spectral (sound), same rows" in text  # CRMT's certificate beside it
    assert "Smoothing combined" in text and "| gaussian_aug | 2 |" in text
    assert "- crmt:" in text  # sum fusion + bias: no faithful modality logits, said why
    for png in ("smoothing.png", "missing_certificate.png"):
        assert (tmp_path / png).is_file() and f"]({png})" in text
    rows = [line for line in text.splitlines() if line.startswith("| Cohen et al.")]
    assert len(rows) == 3 and all("**" in r for r in rows)


def _rows(results, statement):
    return [row for row in check_claims(results) if row.claim.statement == statement]


def test_claims_follow_the_numbers(runs):
    """One row per radius > 0; one seed is indicative, three seeds get a verdict."""
    results = {r.name: json.loads((r / "eval.json").read_text()) for r in runs}
    statement = ("Gaussian-noise training + smoothing (gaussian_aug) certifies more than "
                 "CRMT's sound Lipschitz bound (same rows, radii and training budget)")
    smooth = results["gaussian_aug"]["smoothing"]["joint_l2"]
    lip = results["crmt"]["smoothing"]["lipschitz_same_rows"]["spectral"]
    smooth["certified_accuracy"], lip["certified_accuracy"] = [1.0, 0.9, 0.8], [1.0, 0.5, 0.1]
    rows = _rows(results, statement)
    assert [r.metric.split(" (")[0] for r in rows] == [
        "certified accuracy at l2 radius 0.01", "certified accuracy at l2 radius 0.05"]
    assert all(r.verdict.status == "indicative" and "better" in r.verdict.evidence
               for r in rows)
    # Three seeds, smoothing ahead by 0.3-0.7 each time: holds; behind each time: does not.
    seeds = {}
    for method in results:
        seeds[method] = {}
        for k in range(3):
            res = copy.deepcopy(results[method])
            seeds[method][k] = res
    for k, shift in enumerate((0.0, 0.02, -0.01)):
        lip_k = seeds["crmt"][k]["smoothing"]["lipschitz_same_rows"]["spectral"]
        lip_k["certified_accuracy"] = [1.0, 0.5 + shift, 0.1 + shift]
    assert {r.verdict.status for r in _rows(seeds, statement)} == {"holds"}
    for k, shift in enumerate((0.0, 0.02, -0.01)):
        lip_k = seeds["crmt"][k]["smoothing"]["lipschitz_same_rows"]["spectral"]
        lip_k["certified_accuracy"] = [1.0, 0.95 + shift / 2, 0.9 + shift]
    assert {r.verdict.status for r in _rows(seeds, statement)} == {"does not hold"}
    del results["gaussian_aug"]
    verdicts = _rows(results, statement)
    assert verdicts[0].verdict.status == "not evaluated"
    assert "gaussian_aug" in verdicts[0].verdict.evidence


def test_certificate_claims_import_first_without_a_cycle():
    import subprocess
    import sys

    code = ("import mmfast.eval.certificate_claims, mmfast.eval.claims as c; "
            "print(sum(r.source.startswith('Cohen') for r in c.CLAIMS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "3"
