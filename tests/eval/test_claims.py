"""Claims table on synthetic results: verdicts over seeds, drops from clean, per-radius
certificates, the modality-preference claim, and the report's grouping of runs by seed."""

from __future__ import annotations

import json

import pytest

from mmfast.eval import write_json_atomic
from mmfast.eval.claims import (
    CLAIMS,
    Claim,
    Metric,
    as_runs,
    certified_metrics,
    check_claims,
    claim_methods,
    clean_metric,
    missing_metrics,
    noise_metrics,
    preference_metric,
    preferred_modality,
    uni_modal_attack_drop,
)
from mmfast.eval.report import group_runs, write_report
from mmfast.eval.stats import MeanSD, aggregate_seeds

SUBSETS = ["video", "audio", "image", "video+audio", "video+image", "audio+image",
           "video+audio+image"]


def result(clean=0.8, miss=0.5, noisy=0.6, radius_acc=(0.5, 0.2), attack=None):
    """One run's eval results: every missing subset at ``miss`` (full set at ``clean``),
    a Gaussian curve clean -> noisy, certified accuracy at radii 0.1 and 0.2."""
    curve = {"video": [clean, noisy]}
    empirical = {"certified_accuracy": [clean, 0.9, 0.9]}
    sound = {"certified_accuracy": [clean, *radius_acc]}
    out = {
        "clean_accuracy": clean,
        "missing_subsets": {"subsets": SUBSETS, "accuracy": [miss] * 6 + [clean],
                            "mean": (6 * miss + clean) / 7, "path": "masked_inputs"},
        "noise": {"gaussian": {"sigmas": [0.0, 1.0], "accuracy": curve},
                  "salt_pepper": {"densities": [0.0, 0.2], "accuracy": curve}},
        "certify": {"radii": [0.0, 0.1, 0.2], "estimators": {
            "empirical": {"kind": "empirical", "min": empirical, "top": empirical},
            "spectral": {"kind": "sound", "min": sound, "top": sound}}},
    }
    if attack is not None:
        out["attack"] = attack
    return out


def claim(metrics, method="a", rival="b"):
    return Claim("paper", "a beats b", method, rival, metrics, "METHODS.md section 0")


def verdicts(runs, metrics):
    return [row.verdict.status for row in check_claims(runs, [claim(metrics)])]


def test_the_rule_says_holds_within_noise_does_not_hold_and_indicative():
    absolute = missing_metrics(drop=False)
    rival = {s: result(miss=0.50 + 0.01 * s) for s in range(3)}
    better = {s: result(miss=0.60 + 0.01 * s) for s in range(3)}  # +0.10 every seed
    noisy = {s: result(miss=m) for s, m in enumerate([0.70, 0.45, 0.40])}  # +0.2, -0.06, -0.12
    worse = {s: result(miss=0.40 + 0.01 * s) for s in range(3)}
    assert verdicts({"a": better, "b": rival}, absolute) == ["holds"]
    assert verdicts({"a": noisy, "b": rival}, absolute) == ["within noise"]
    assert verdicts({"a": worse, "b": rival}, absolute) == ["does not hold"]
    one = verdicts({"a": {0: better[0]}, "b": {0: rival[0]}}, absolute)
    assert one == ["indicative"]
    row = check_claims({"a": better, "b": rival}, [claim(absolute)])[0]
    assert "0.610 +- 0.010 vs 0.510 +- 0.010; d = +0.100" in row.verdict.evidence
    assert row.verdict.paired.seeds == (0, 1, 2)


def test_a_plain_results_dict_is_one_seed_and_only_indicative():
    runs = {"a": result(miss=0.9), "b": result(miss=0.1)}
    assert as_runs(runs) == {"a": {0: runs["a"]}, "b": {0: runs["b"]}}
    row = check_claims(runs, [claim(missing_metrics(drop=False))])[0]
    assert row.verdict.status == "indicative" and "one seed: better" in row.verdict.evidence


def test_robustness_is_judged_on_the_drop_from_clean_as_well():
    # a: more accurate everywhere, but it loses 0.30 to noise where b loses 0.10
    a = {s: result(clean=0.95 + 0.01 * s, noisy=0.65 + 0.01 * s) for s in range(3)}
    b = {s: result(clean=0.60 + 0.01 * s, noisy=0.50 + 0.02 * s) for s in range(3)}
    rows = check_claims({"a": a, "b": b}, [claim(noise_metrics("gaussian"))])
    assert [r.metric.split(" under")[0] for r in rows] == ["mean accuracy", "mean drop from clean"]
    assert [r.verdict.status for r in rows] == ["holds", "does not hold"]
    drops = check_claims({"a": a, "b": b}, [claim(missing_metrics())])[1]
    assert "drop" in drops.metric and drops.verdict.paired.method[0] == pytest.approx(0.95 - 0.5)


def test_certified_accuracy_is_checked_per_radius_so_a_crossover_shows():
    # a: better at radius 0.1, worse at 0.2; the mean over radii would call it a tie
    a = {s: result(radius_acc=(0.6 + 0.01 * s, 0.1)) for s in range(3)}
    b = {s: result(radius_acc=(0.4, 0.3 + 0.01 * s)) for s in range(3)}
    rows = check_claims({"a": a, "b": b}, [claim(certified_metrics)])
    assert [r.verdict.status for r in rows] == ["holds", "does not hold"]
    assert "radius 0.1 (spectral Lipschitz, sound" in rows[0].metric  # the sound table
    assert "radius 0.2" in rows[1].metric


def _attack(clean, joint, video, audio, image):
    pgd = {"joint": [clean, joint], "video": [clean, video], "audio": [clean, audio],
           "image": [clean, image]}
    return {"eps": [0.0, 0.5], "clean_accuracy": clean, "budgets": list(pgd), "num_samples": 10,
            "pgd": {"accuracy": pgd, "steps": 4}, "fgm": {"accuracy": pgd}}


def test_modality_preference_claims_read_the_uni_modal_attacks():
    def run(attack_on_audio, audio_alone=0.7):
        r = result(attack=_attack(0.9, 0.2, 0.8, attack_on_audio, 0.85))
        r["missing_subsets"]["accuracy"][1] = audio_alone  # audio is the best alone
        return r

    joint = {s: run(0.3 - 0.01 * s) for s in range(3)}
    assert preferred_modality(joint[0]) == "audio"
    assert uni_modal_attack_drop(joint[0]) == pytest.approx(0.6)
    assert uni_modal_attack_drop(joint[0], preferred=False) == pytest.approx(0.1)  # video
    rows = check_claims({"joint": joint}, [claim((preference_metric(),), "joint", "joint")])
    assert rows[0].verdict.status == "holds"
    crmt = {s: run(0.7 + 0.01 * s) for s in range(3)}  # attack on audio costs 0.2
    claimed = next(c for c in CLAIMS if c.statement.startswith("CRMT reduces the damage"))
    row = check_claims({"crmt": crmt, "joint": joint}, [claimed])[0]
    assert row.verdict.status == "holds"


def test_absent_methods_and_skipped_protocols_are_not_evaluated():
    runs = {"a": {0: result(), 1: result()}, "b": {0: result(), 1: result()}}
    row = check_claims(runs, [claim((clean_metric(),), rival="c")])[0]
    assert row.verdict.status == "not evaluated" and "'c' was not run" in row.verdict.evidence
    runs["b"][1] = {**result(), "certify": {"skipped": "no Lipschitz table"}}
    rows = check_claims(runs, [claim(certified_metrics)])
    assert {r.verdict.status for r in rows} == {"not evaluated"}
    assert "skipped (no Lipschitz table)" in rows[0].verdict.evidence
    undefined = Metric("nothing", None, lambda res: None)
    assert verdicts(runs, (undefined,)) == ["not evaluated"]


def test_every_claim_cites_its_source_and_has_a_registered_rival():
    from mmfast.methods import list_methods
    from mmfast.methods.rivals import RIVALS

    assert set(claim_methods()) <= set(list_methods())
    for c in CLAIMS:
        assert "METHODS.md" in c.cite and c.effect
    matched = {(c.method, c.rival) for c in CLAIMS if c.matched}
    for rival, methods in RIVALS.items():
        assert all((m, rival) in matched for m in methods)
    assert {"certified", "preference"} <= {
        "certified" if callable(c.metrics) else
        "preference" if c.method == c.rival else "other" for c in CLAIMS}


def test_aggregate_seeds_gives_mean_and_sd_that_print_in_tables():
    agg = aggregate_seeds([{"acc": [0.8, 0.5], "n": 3, "kind": "sound"},
                           {"acc": [0.9, 0.5], "n": 3, "kind": "sound"}])
    assert isinstance(agg["acc"][0], MeanSD) and agg["acc"][0] == pytest.approx(0.85)
    assert f"{agg['acc'][0]:.3f}" == "0.850 +- 0.071"
    assert agg["acc"][1] == 0.5 and not isinstance(agg["acc"][1], MeanSD)  # all seeds agree
    assert agg["n"] == 3 and agg["kind"] == "sound"
    assert aggregate_seeds([{"x": 1.0}]) == {"x": 1.0}


def _write_run(root, name, method, seed, res):
    run = root / name
    write_json_atomic(run / "eval.json", res)
    write_json_atomic(run / "train_stats.json", {"method": method, "train_time_s": 10.0 + seed,
                                                 "config": {"seed": seed}})
    return run


def test_report_groups_runs_by_method_and_seed(tmp_path):
    runs = [_write_run(tmp_path, f"{m}-{s}", m, s, result(miss=base + 0.01 * s))
            for m, base in (("ume_mma", 0.6), ("ume", 0.4)) for s in range(3)]
    runs.append(_write_run(tmp_path, "ume-again", "ume", 0, result(miss=0.99)))  # a repeat
    groups = group_runs(runs)
    assert list(groups["ume_mma"]) == [0, 1, 2] and list(groups["ume"]) == [0, 1, 2]
    assert list(groups["ume#2"]) == [0]  # same method and seed: kept apart, not a new seed
    text = write_report(runs, tmp_path / "report").read_text()
    assert "Training seeds per method: ume_mma [0, 1, 2]" in text
    assert "0.800 +- 0.000" not in text and "| ume_mma | 0.800 | 11.0 +- 1.0 |" in text
    row = next(line for line in text.splitlines()
               if line.startswith("| UME-MMA | Missing-modality augmentation")
               and "mean accuracy" in line)
    assert "**holds**" in row and "0.610 +- 0.010 vs 0.410 +- 0.010" in row
    assert "one-sided paired t-test" in text


def test_report_over_single_runs_says_one_seed_is_indicative(tmp_path):
    runs = [_write_run(tmp_path, m, m, 0, result()) for m in ("ume_mma", "ume")]
    text = write_report(runs, tmp_path / "report").read_text()
    assert "One seed per method" in text and "**indicative**" in text
    verdicts = {line.split(" | ")[4] for line in text.splitlines()
                if line.startswith("| UME-MMA |")}
    assert verdicts == {"**indicative**", "**not evaluated**"}  # joint / late were not run


def test_group_runs_numbers_runs_without_a_seed_in_order(tmp_path):
    runs = []
    for i in range(2):
        run = tmp_path / f"late{i}"
        write_json_atomic(run / "eval.json", result())
        (run / "train_stats.json").write_text(json.dumps({"method": "late"}))
        runs.append(run)
    assert list(group_runs(runs)["late"]) == [0, 1]


def test_every_metric_reads_the_protocols_real_output():
    """The metric readers match what run_protocols writes (toy models, tiny sweeps)."""
    import torch

    from mmfast.eval import EvalConfig, run_protocols
    from tests.eval.toy_models import CertifiableLinear, make_inputs

    data = make_inputs(48, seed=11)
    data["mask"] = torch.ones(48, 3, dtype=torch.bool)
    data["label"] = torch.arange(48) % 3
    cfg = EvalConfig(batch_size=64, attack_samples=16, attack_eps=(0.0, 0.5),
                     gaussian_sigmas=(0.0, 1.0), salt_pepper_densities=(0.0, 0.3),
                     missing_rates=(0.0, 0.5), certify_radii=(0.0, 0.1, 0.2))
    seeds = {s: run_protocols(CertifiableLinear(3, seed=s), data, cfg) for s in range(2)}
    runs = {m: seeds for m in claim_methods()}  # every method the same: d = 0 everywhere
    assert preferred_modality(seeds[0]) in seeds[0]["attack"]["budgets"]
    rows = check_claims(runs)
    assert "not evaluated" not in {r.verdict.status for r in rows}
    # Claims comparing two readings of the same runs (smoothing vs Lipschitz certificates)
    # can differ; every other row compares equal runs: d = 0.
    same = [r for r in rows if not r.claim.source.startswith("Cohen")]
    assert {r.verdict.status for r in same} == {"within noise"}
    radius_rows = [r for r in rows if "certified accuracy at radius" in r.metric]
    assert {r.metric.split(" (")[0] for r in radius_rows} == {
        "certified accuracy at radius 0.1", "certified accuracy at radius 0.2"}
