"""The Markdown report: methods side by side on every protocol, costs and the claims table.

``write_report(run_dirs, out_dir)`` reads each run folder's ``eval.json`` (from
``run_protocols``) and ``train_stats.json`` (from ``mmfast.train.fit_method``), writes PNG
plots and ``report.md`` into ``out_dir`` (atomically) and returns the report's path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from mmfast.eval import plots
from mmfast.eval.certificate_report import certificate_sections
from mmfast.eval.claims import check_claims
from mmfast.eval.common import protocol_results, write_text_atomic
from mmfast.eval.report_facts import (
    data_problems_section,
    expand_run_dirs,
    meaning_section,
    provenance_section,
)
from mmfast.eval.stats import RULE, aggregate_seeds

__all__ = ["write_report", "load_run", "group_runs", "run_seed"]


def load_run(run_dir: str | os.PathLike) -> tuple[str, dict, dict]:
    """(method name, eval results, train stats) of one run folder."""
    run_dir = Path(run_dir)
    eval_path = run_dir / "eval.json"
    if not eval_path.is_file():
        raise ValueError(f"run_dirs: expected {eval_path} (run `mmfast eval` first), not found")
    results = json.loads(eval_path.read_text())
    stats_path = run_dir / "train_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    method = stats.get("method") or results.get("method") or run_dir.name
    return str(method), results, stats


def write_report(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/report.md`` and its PNG plots comparing the runs; returns its path."""
    if not run_dirs:
        raise ValueError("run_dirs: expected at least one run folder, got none")
    out = Path(out_dir)
    run_dirs = expand_run_dirs(run_dirs, out)  # demo folders stand for their runs
    if not run_dirs:
        raise ValueError("run_dirs: no run folder among the given paths (only reports)")
    groups = group_runs(run_dirs)
    results, stats = _seed_means(groups)
    figures = _figures(results, out)
    lines = ["# mmfast robustness report", ""]
    lines += _overview(results, stats)
    lines += meaning_section(results, stats)
    lines += data_problems_section(results, stats)
    lines += _seeds_section(groups)
    lines += _claims({m: {s: res for s, (res, _) in g.items()} for m, g in groups.items()})
    lines += _subsets_section(results, figures)
    lines += _missing_rate_section(results, figures)
    lines += _noise_section(results, figures)
    lines += _attack_section(results, figures)
    lines += _certify_section(results, figures)
    lines += provenance_section(stats, results, run_dirs)
    lines += certificate_sections(results, out)
    return write_text_atomic(out / "report.md", "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------ pieces
def _figures(results, out: Path) -> dict[str, str]:
    made = {
        "subsets": plots.plot_subsets(results, out / "missing_subsets.png"),
        "missing_rate": plots.plot_missing_rate(results, out / "missing_rate.png"),
        "gaussian": plots.plot_noise(results, out / "noise_gaussian.png", "gaussian"),
        "salt_pepper": plots.plot_noise(results, out / "noise_salt_pepper.png", "salt_pepper"),
        "fgm": plots.plot_attack(results, out / "attack_fgm.png", "fgm"),
        "pgd": plots.plot_attack(results, out / "attack_pgd.png", "pgd"),
        "certify": plots.plot_certify(results, out / "certified_accuracy.png"),
    }
    return {k: p.name for k, p in made.items() if p is not None}


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return out + [""]


def _image(figures, key: str, alt: str) -> list[str]:
    return [f"![{alt}]({figures[key]})", ""] if key in figures else []


def _overview(results, stats) -> list[str]:
    first = next(iter(results.values()))
    lines = ["## Methods", "",
             f"Evaluated on {first.get('num_samples', 'n/a')} test samples. Costs come from "
             "each run's train_stats.json (peak memory: CUDA peak allocation on GPU, peak "
             "resident memory of the process during that method's training on CPU; see "
             "below). Times marked * are wall-clock and depend on the machine's load.", ""]
    rows = []
    for m, r in results.items():
        s = stats.get(m, {})
        mem = s.get("peak_memory_bytes")
        rows.append([m, r.get("clean_accuracy"), _seconds(s.get("train_time_s")),
                     f"{mem / 2**20:.1f}" if isinstance(mem, int | float) else "n/a",
                     _count(s.get("num_parameters")), _epochs(s.get("epochs")),
                     _seconds(sum(r.get("timings_s", {}).values()) or None)])
    return lines + _table(["method", "clean accuracy", "train time (s)*", "peak memory (MiB)",
                           "parameters", "epochs", "eval time (s)*"], rows)


def _seconds(x) -> str:
    return f"{x:.1f}" if isinstance(x, int | float) else "n/a"


def _epochs(x) -> str:
    """"6" or, for multi-stage recipes, "pretrain_video 3, finetune 6"."""
    if isinstance(x, Mapping):
        return ", ".join(f"{stage} {n}" for stage, n in x.items())
    return "n/a" if x is None else str(x)


def _count(x) -> str:
    return f"{x:,}" if isinstance(x, int) else "n/a"


# ------------------------------------------------------------------------ seeds, claims
def run_seed(stats: Mapping) -> int | None:
    """The training seed of a run (train_stats.json's config), None when it does not say."""
    seed = (stats.get("config") or {}).get("seed") if isinstance(stats, Mapping) else None
    return int(seed) if isinstance(seed, int | float) and not isinstance(seed, bool) else None


def group_runs(run_dirs: Sequence[str | os.PathLike]
               ) -> dict[str, dict[int, tuple[dict, dict]]]:
    """``{method: {seed: (eval results, train stats)}}`` of the run folders.

    Runs of one method are grouped by their training seed (train_stats.json's config.seed);
    a run without one takes the first seed its method does not have yet (0, 1, ...). A second
    run of the same method and seed is a repeat, not a new seed: it is kept apart as
    ``method#2`` (its own group) so that it neither replaces nor double-counts the first.
    """
    groups: dict[str, dict[int, tuple[dict, dict]]] = {}
    for run_dir in run_dirs:
        method, res, st = load_run(run_dir)
        seed = run_seed(st)
        name, k = method, 2
        while seed is not None and seed in groups.get(name, {}):
            name, k = f"{method}#{k}", k + 1
        group = groups.setdefault(name, {})
        if seed is None:
            seed = next(i for i in range(len(group) + 1) if i not in group)
        group[seed] = (res, st)
    return {m: dict(sorted(g.items())) for m, g in groups.items()}


def _seed_means(groups) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per method, its runs' results and stats combined over seeds (numbers: mean +- sd)."""
    results = {m: aggregate_seeds([res for res, _ in g.values()]) for m, g in groups.items()}
    stats = {m: aggregate_seeds([st for _, st in g.values()]) for m, g in groups.items()}
    return results, stats


def _seeds_section(groups) -> list[str]:
    counts = {len(g) for g in groups.values()}
    seeds = ", ".join(f"{m} {list(g)}" for m, g in groups.items())
    if counts == {1}:
        note = ("One seed per method: every number is a single training run and every claim "
                "verdict below is only **indicative** (run `mmfast demo --seeds 3`, or "
                "`mmfast report` over several seeds' runs, for verdicts).")
    else:
        note = ("Every number is the mean +- standard deviation over the seeds (sample "
                "standard deviation; a number without +- is the same in every run).")
    return ["## Seeds", "", f"Training seeds per method: {seeds}.", "", note, ""]


def _claims(runs) -> list[str]:
    rows, previous = [], None
    for row in check_claims(runs):
        c, v = row.claim, row.verdict
        rival = c.rival if c.matched else f"{c.rival} (baseline)"
        head = [c.source, c.statement, rival] if c is not previous else ["", "", ""]
        tail = [c.cite, c.effect] if c is not previous else ["", ""]  # once per claim
        rows.append([*head, row.metric, f"**{v.status}**", v.evidence, *tail])
        previous = c
    return (["## Claims checked on this data", "", RULE, "",
             "Each claim's rival is matched (`mmfast/methods/rivals.py`): it shares the "
             "method's dropout, noise, attack or mixup and lacks its mechanism; rows marked "
             "(baseline) compare with the earlier, unmatched baselines. Robustness rows come "
             "twice: the accuracy and its drop from clean. The certified accuracy has one row "
             "per radius.", ""]
            + _table(["paper", "claim", "rival", "metric", "verdict", "numbers (method vs "
                      "rival, mean +- sd over seeds)", "where the paper states it",
                      "paper's effect size"], rows))


def _subsets_section(results, figures) -> list[str]:
    data = protocol_results(results, "missing_subsets")
    if not data:
        return []
    subsets = next(iter(data.values()))["subsets"]
    rows = [[s, *[r["accuracy"][i] for r in data.values()]] for i, s in enumerate(subsets)]
    rows.append(["mean", *[r["mean"] for r in data.values()]])
    paths = ", ".join(f"{m}: {r['path']}" for m, r in data.items())
    return (["## (a) Missing-modality subsets", "",
             "Accuracy with only the listed modalities present. Evaluation path per method "
             f"({paths}): `modality_logits` scores every subset from one encoder pass with "
             "`mmfast.ops.subset_accuracy`; `masked_inputs` re-runs the model per subset.", ""]
            + _image(figures, "subsets", "accuracy per subset")
            + _table(["subset", *data], rows))


def _missing_rate_section(results, figures) -> list[str]:
    data = protocol_results(results, "missing_rate")
    if not data:
        return []
    rates = next(iter(data.values()))["rates"]
    rows = [[m, mod, *curve] for m, r in data.items() for mod, curve in r["accuracy"].items()]
    return (["## (b) Missing rate", "",
             "A seeded random fraction of the test samples loses one modality (input zeroed, "
             "mask cleared); the other samples keep all modalities.", ""]
            + _image(figures, "missing_rate", "accuracy vs missing rate")
            + _table(["method", "dropped", *[f"{r:.0%}" for r in rates]], rows))


def _noise_section(results, figures) -> list[str]:
    data = protocol_results(results, "noise")
    if not data:
        return []
    lines = ["## (c) Noise", "",
             "Gaussian noise via `mmfast.ops.noisy_modality_dropout` (p_drop = 0), sigma in "
             "units of each modality's standard deviation on the test split; salt-and-pepper "
             "sets a fraction of the elements to the modality's min or max.", ""]
    for kind, key, title in (("gaussian", "sigmas", "Gaussian sigma"),
                             ("salt_pepper", "densities", "salt-and-pepper density")):
        levels = next(iter(data.values()))[kind][key]
        rows = [[m, t, *curve] for m, r in data.items()
                for t, curve in r[kind]["accuracy"].items()]
        lines += _image(figures, kind, title)
        lines += _table(["method", "corrupted", *[f"{title.split()[-1]} {x:g}" for x in levels]],
                        rows)
    return lines


def _attack_section(results, figures) -> list[str]:
    data = protocol_results(results, "attack")
    if not data:
        return []
    first = next(iter(data.values()))
    lines = ["## (d) Adversarial attacks", "",
             f"FGM and PGD-l2 ({first['pgd']['steps']} steps of eps/3, projection onto the "
             "l2 ball) on the cross entropy of the fused logits, on "
             f"{first['num_samples']} test samples. Budget `joint`: one l2 budget over all "
             "modalities (gradient normalised jointly); a modality name: that modality alone. "
             "Per sample the lowest-margin iterate is kept (clean included).", ""]
    for kind in ("fgm", "pgd"):
        rows = [[m, b, *r[kind]["accuracy"][b]] for m, r in data.items() for b in r["budgets"]]
        lines += _image(figures, kind, f"{kind} accuracy vs eps")
        lines += _table(["method", "budget", *[f"eps {e:g}" for e in first["eps"]]], rows)
    return lines


def _certify_section(results, figures) -> list[str]:
    data = protocol_results(results, "certify", include_skipped=True)
    if not data:
        return []
    lines = ["## (e) Certification", "",
             "Certified radius via `mmfast.ops.certified_margin` with target = label (joint l2 "
             "over modalities). Rival rule `min`: minimum over every other class, a valid "
             "certificate; `top` (CRMT's step-2 rule, fused runner-up only) can overstate the "
             "radius and is shown for comparison only. A Lipschitz table is **sound** when it "
             "upper-bounds the true constants (spectral norms); **empirical** tables (CRMT's "
             "gradient norms) give estimates, not guarantees. Soundness check: PGD examples "
             "misclassified closer than the certified radius (must be 0 for sound tables).", ""]
    lines += _image(figures, "certify", "certified accuracy vs radius")
    skipped = [f"- {m}: {r['skipped']}" for m, r in data.items() if "skipped" in r]
    rows = []
    for m, r in data.items():
        if "skipped" in r:
            continue
        for name, est in r["estimators"].items():
            q = est["min"].get("quantiles", {})
            check = est.get("soundness_check", {})
            for rule in ("min", "top"):
                rows.append([m, name, est["kind"], rule, *est[rule]["certified_accuracy"],
                             q.get("0.5") if rule == "min" else "",
                             f"{check.get('violations')}/{check.get('checked')}"
                             if rule == "min" else ""])
    if rows:
        radii = next(r for r in data.values() if "skipped" not in r)["radii"]
        lines += _table(["method", "Lipschitz", "kind", "rival", *[f"r {x:g}" for x in radii],
                         "median radius (correct)", "violations"], rows)
    if skipped:
        lines += ["Not certifiable:", *skipped, ""]
    return lines
