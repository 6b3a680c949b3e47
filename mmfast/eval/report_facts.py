"""The report's facts beside the numbers: which folders are runs, what the numbers mean
(chance level, units of eps and radii with the input ranges, the attack clamp, how time and
memory were measured), the data problems met while loading, and provenance.

``write_report`` calls these; each returns Markdown lines (or, for :func:`expand_run_dirs`,
the run folders).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["expand_run_dirs", "meaning_section", "data_problems_section",
           "provenance_section"]

_EVAL = "eval.json"


def expand_run_dirs(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike
                    ) -> list[Path]:
    """Run folders among ``paths``: a folder with eval.json is a run; a demo folder (runs/*/
    holding eval.json) stands for its runs; the report's own ``out_dir`` and earlier report
    folders (report.md, no eval.json) are skipped, so ``mmfast report runs/* --out
    runs/report`` works after ``mmfast demo --out runs/demo`` and on a re-run."""
    out = Path(out_dir).resolve()
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if (path / _EVAL).is_file():
            found.append(path)
            continue
        inner = sorted(p.parent for p in path.glob(f"runs/*/{_EVAL}"))
        if inner:
            found += inner
            continue
        is_report = path.resolve() == out or (path / "report.md").is_file()
        if is_report or (path.is_file() and path.suffix in (".md", ".png", ".json")):
            continue  # the report folder itself, earlier reports, stray files of runs/*
        hint = (f"run `mmfast eval {path} --data DIR` first" if (path / "model.pt").is_file()
                else "give run folders (mmfast train + mmfast eval) or a demo folder "
                     "(mmfast demo --out DIR)")
        raise ValueError(f"run_dirs: {path} holds no {_EVAL} and no runs/*/{_EVAL}; {hint}")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return [Path(p) for p in unique]


def _dataset(stats: Mapping[str, Mapping], results: Mapping[str, Mapping]) -> dict:
    for m, s in stats.items():
        d = (s.get("provenance") or {}).get("dataset") or results.get(m, {}).get("dataset")
        if d:
            return d
    for r in results.values():
        if r.get("dataset"):
            return r["dataset"]
    return {}


def _l2_scale(shape: Sequence[int], lo: float, hi: float) -> float:
    return (hi - lo) * math.sqrt(math.prod(shape))


def meaning_section(results: Mapping[str, Mapping], stats: Mapping[str, Mapping]
                    ) -> list[str]:
    """Chance level, units of eps / radii with the input ranges, attack clamp, how times and
    peak memory were measured."""
    from mmfast.eval.adversarial import describe_clamp
    from mmfast.train.memory import PEAK_KINDS

    data = _dataset(stats, results)
    lines = ["## What the numbers mean", ""]
    chance = data.get("chance_accuracy")
    lines.append(f"- **Chance level**: {chance:.3f} ({data.get('num_classes')} classes); an "
                 "accuracy near it means the method learnt nothing usable there."
                 if chance else "- **Chance level**: unknown (no dataset recorded).")
    ranges = data.get("input_ranges") or {}
    shapes = data.get("sample_shapes") or {}
    parts = []
    for m, (lo, hi) in ranges.items():
        scale = f", whole-input l2 scale {_l2_scale(shapes[m], lo, hi):.1f}" if m in shapes \
            else ""
        parts.append(f"{m} values in [{lo:.3g}, {hi:.3g}] (shape {tuple(shapes.get(m, ()))}"
                     f"{scale})")
    lines.append("- **Units of eps and radii**: l2 norms in the model's input units (the "
                 "loader's outputs, not raw pixels), joint over the attacked modalities. "
                 + ("Input ranges seen: " + "; ".join(parts) + "." if parts
                    else "Input ranges: not recorded."))
    clamps = {}
    for m, r in results.items():
        attack = r.get("attack") if isinstance(r.get("attack"), Mapping) else None
        clamp = attack.get("clamp") if attack and "clamp" in attack else \
            (r.get("config") or {}).get("clamp")
        clamps.setdefault(describe_clamp(clamp, data.get("modalities") or ()), []).append(m)
    for text, methods in clamps.items():
        who = "" if len(clamps) == 1 else f" ({', '.join(methods)})"
        lines.append(f"- **Attack clamp**{who}: {text}; applied after every PGD/FGM step, "
                     "the same in `mmfast eval` and `mmfast demo`.")
    kinds = sorted({s.get("peak_memory_kind") for s in stats.values()
                    if s.get("peak_memory_kind")})
    for kind in kinds:
        lines.append(f"- **Peak memory** `{kind}`: {PEAK_KINDS.get(kind, kind)}.")
    starts = [s["load_average"]["start"][0] for s in stats.values()
              if (s.get("load_average") or {}).get("start")]
    cpus = {(s.get("provenance") or {}).get("cpu_count") for s in stats.values()} - {None}
    load = (f" (1-minute load average up to {max(starts):.1f} at the start of a training"
            + (f", on {'/'.join(map(str, sorted(cpus)))} CPUs" if cpus else "") + ")"
            if starts else "")
    lines.append("- **Times** (train time, eval time) are wall-clock seconds that depend on "
                 f"the machine and its load{load}; they are not benchmarks. A resumed "
                 "training's time is the sum of its parts.")
    return lines + [""]


def data_problems_section(results: Mapping[str, Mapping], stats: Mapping[str, Mapping]
                          ) -> list[str]:
    """Files loaded as absent (missing, undecodable, truncated): counts and examples, per
    dataset and split, from the runs' train_stats.json and eval.json."""
    seen: dict[tuple[str, str], dict] = {}
    for m in list(stats) + list(results):
        sources = [((stats.get(m) or {}).get("provenance") or {}).get("dataset"),
                   (results.get(m) or {}).get("dataset")]
        for d in sources:
            if not d:
                continue
            for split, per in (d.get("problems") or {}).items():
                seen.setdefault((str(d.get("path") or d.get("name")), split), per)
    if not seen:
        return ["## Data problems", "", "No missing, undecodable or truncated files were met "
                "while loading the data of these runs (or none were recorded).", ""]
    rows = []
    for (path, split), per in seen.items():
        for modality, info in per.items():
            examples = "; ".join(f"{sid}: {why}" for sid, why in info["examples"][:3])
            rows.append(f"| {path} | {split} | {modality} | {info['count']} | "
                        f"{info.get('truncated', 'n/a')} | {info.get('padded', 0)} | "
                        f"{examples} |")
    infos = [info for per in seen.values() for info in per.values()]
    total = sum(i["count"] for i in infos)
    padded = sum(i.get("padded", 0) for i in infos)
    return (["## Data problems", "",
             f"**{total} file(s) could not be used as listed** (missing, undecodable or "
             f"truncated): {total - padded} loaded as absent (mask False, input zero), so the "
             f"methods saw fewer modalities than the manifest lists; {padded} truncated "
             "file(s) loaded padded.", "",
             "| dataset | split | modality | files | truncated | padded | examples |",
             "|---|---|---|---|---|---|---|", *rows, ""])


def _value(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    return "n/a" if v in (None, "", [], {}) else str(v)


def provenance_section(stats: Mapping[str, Mapping], results: Mapping[str, Mapping],
                       run_dirs: Sequence[Path]) -> list[str]:
    """Where the report and each run came from."""
    from mmfast.train.provenance import environment

    here = environment()
    lines = ["## Provenance", "",
             f"Report: `{here['command']}` on {here['date']}, mmfast {here['mmfast_version']} "
             f"(commit {_value(here, 'git_commit')}), host {here['host']}.", "",
             "| method | folder | trained | command | mmfast / commit | torch / CUDA | device "
             "| dataset | seeds | preset |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (m, s), run in zip(stats.items(), run_dirs):
        p = s.get("provenance") or {}
        d = p.get("dataset") or {}
        data = (f"{_value(d, 'name')} ({_value(d, 'path')}; splits "
                f"{_value(d, 'splits')})" if d else "n/a")
        lines.append(
            f"| {m} | {run} | {_value(p, 'date')} | `{_value(p, 'command')}` | "
            f"{_value(p, 'mmfast_version')} / {_value(p, 'git_commit')} | "
            f"{_value(p, 'torch')} / {_value(p, 'cuda')} | {_value(p, 'device')} "
            f"{_value(p, 'device_name')} | {data} | {_value(p, 'seeds')} | "
            f"{_value(p, 'preset')} |")
    for m, r in results.items():
        e = r.get("provenance") or {}
        if e:
            lines.append(f"\n{m} evaluated by `{_value(e, 'command')}` on {_value(e, 'date')} "
                         f"({_value(e, 'device')}, commit {_value(e, 'git_commit')}).")
    loaders = {str((s.get("provenance") or {}).get("dataset", {}).get("loader"))
               for s in stats.values() if (s.get("provenance") or {}).get("dataset")}
    d = _dataset(stats, results)
    if d.get("loader"):
        lines += ["", "What the loader produced: " + "; ".join(
            f"{k}: {v}" for k, v in d["loader"].items() if k not in ("spec",)) + "."]
    if len(loaders) > 1:
        lines += ["", "**The runs were loaded with different loader settings.**"]
    return lines + [""]
