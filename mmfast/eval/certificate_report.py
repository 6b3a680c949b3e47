"""Report sections and plots of the smoothing and missing-modality certificates.

``certificate_sections(results, out_dir)`` returns the Markdown lines of two sections, "(f)
Randomized smoothing" and "(g) Certificates against missing modalities", and writes their
PNG plots into ``out_dir``; ``mmfast.eval.report.write_report`` appends them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mmfast.eval import plots
from mmfast.eval.common import protocol_results
from mmfast.eval.plots import plt

__all__ = ["certificate_sections", "plot_smoothing", "plot_missing_certificate"]

Results = Mapping[str, Mapping]


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows] + [""]


# ------------------------------------------------------------------------------- plots
def plot_smoothing(results: Results, path: Path) -> Path | None:
    """Smoothed certified accuracy vs l2 radius: all modalities attacked (plain l2), then
    one panel per attacked modality; dotted: the model's sound Lipschitz certificate on the
    same rows."""
    data = protocol_results(results, "smoothing")
    if not data:
        return None
    names = list(next(iter(data.values()))["per_modality"])
    colors = plots.method_colors(list(results))  # each method's colour in every plot
    fig, axes = plots._grid(1 + len(names), "Smoothing: certified accuracy vs l2 radius "
                            "(panel: attacked modalities)")
    for i, (method, r) in enumerate(data.items()):
        style = plots._style(i, colors[method])
        axes[0].plot(r["radii"], r["joint_l2"]["certified_accuracy"], label=method, **style)
        for name, est in (r.get("lipschitz_same_rows") or {}).items():
            if isinstance(est, Mapping) and est.get("kind") == "sound":
                axes[0].plot(r["radii"], est["certified_accuracy"], ":", color=colors[method],
                             label=f"{method} [Lipschitz {name}]", marker=style["marker"],
                             markersize=3)
        for ax, m in zip(axes[1:], names):
            ax.plot(r["radii"], r["per_modality"][m]["certified_accuracy"], **style)
    axes[0].set_title("all (plain l2)")
    for ax, m in zip(axes[1:], names):
        ax.set_title(f"{m} only")
    for ax in axes:
        ax.set_xlabel("l2 radius")
    plots._finish(fig, axes, "certified accuracy")
    return plots._save(fig, path)


def plot_missing_certificate(results: Results, path: Path) -> Path | None:
    """Exact certified accuracy vs the number k of missing modalities (solid), and the
    smoothing + missing combination at r = 0 where a method has it (dashed)."""
    data = protocol_results(results, "missing_certificate")
    if not data:
        return None
    colors = plots.method_colors(list(results))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (method, r) in enumerate(data.items()):
        ax.plot(r["k"], r["certified_accuracy"], label=method,
                **plots._style(i, colors[method]))
        combined = (results[method].get("smoothing") or {}).get("missing") or {}
        if "certified_accuracy" in combined:
            ax.plot(combined["k"], [row[0] for row in combined["certified_accuracy"]], "--",
                    label=f"{method} [smoothed, r = 0]", **plots._style(i, colors[method]))
    ax.set_xlabel("k = modalities that may be missing")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(next(iter(data.values()))["k"])
    ax.set_title("Certified accuracy against any k missing modalities")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return plots._save(fig, path)


# ----------------------------------------------------------------------------- sections
def certificate_sections(results: Results, out_dir: str | Path) -> list[str]:
    """Markdown lines of the smoothing and missing-certificate sections (+ their PNGs)."""
    out = Path(out_dir)
    lines = _smoothing_section(results, plot_smoothing(results, out / "smoothing.png"))
    return lines + _missing_section(
        results, plot_missing_certificate(results, out / "missing_certificate.png"))


def _smoothing_section(results: Results, figure: Path | None) -> list[str]:
    data = protocol_results(results, "smoothing")
    if not data:
        return []
    first = next(iter(data.values()))
    cfg, radii = first["config"], first["radii"]
    sigma = ", ".join(f"{m} {s:g}" for m, s in first["sigma"].items())
    budget = ("Cohen et al.'s budget" if cfg["n"] >= 100_000 else
              "a smaller budget than Cohen et al.'s n = 100000, to keep the run short")
    lines = [
        "## (f) Randomized smoothing", "",
        "**Guarantee: probabilistic.** Each certificate holds with probability at least "
        f"1 - alpha = {1 - cfg['alpha']:g} over the noise draws, for the *smoothed* classifier "
        "g(x) = argmax_c P(f(x + delta) = c), delta_m ~ N(0, sigma_m^2 I) per modality — not "
        "for the base model f. (The Lipschitz certificate of section (e) is deterministic "
        "and applies to the base model itself, when its table is sound.)", "",
        f"Sigma per modality (input units, as eps): {sigma}. Draws: n0 = {cfg['n0']} to select "
        f"the class, n = {cfg['n']} to bound it ({budget}), one-sided Clopper-Pearson lower "
        f"bound p_lower at alpha = {cfg['alpha']:g}; g abstains when p_lower < 1/2. "
        f"Rows: {first['num_samples']} test samples (seeded subset). "
        "Radii: all modalities attacked, R = Phi^-1(p_lower) in the norm "
        "sqrt(sum_m ||d_m||^2 / sigma_m^2), whose plain-l2 form is min_m sigma_m R (the "
        "column `all`); one modality m attacked, sigma_m R. Noise from "
        "`mmfast.ops.noisy_modality_dropout`, reproducible from the seed.", ""]
    if figure is not None:
        lines += [f"![smoothing certified accuracy]({figure.name})", ""]
    rows = []
    for m, r in data.items():
        rows.append([m, "all (plain l2)", r["abstain_rate"], r["smoothed_accuracy"],
                     *r["joint_l2"]["certified_accuracy"],
                     r["joint_l2"]["quantiles"].get("0.5")])
        for name, entry in r["per_modality"].items():
            rows.append([m, f"{name} only", "", "", *entry["certified_accuracy"],
                         entry["quantiles"].get("0.5")])
        for name, est in (r.get("lipschitz_same_rows") or {}).items():
            if isinstance(est, Mapping) and "certified_accuracy" in est:
                rows.append([m, f"Lipschitz {name} ({est['kind']}), same rows", "", "",
                             *est["certified_accuracy"], ""])
    lines += _table(["method", "attacked", "abstain", "smoothed acc",
                     *[f"r {x:g}" for x in radii], "median radius (correct)"], rows)
    speed = ", ".join(f"{m} {r['draws_per_second']:.0f}" for m, r in data.items())
    lines += [f"Draws per second (noise + forward, this run): {speed}.", ""]
    return lines


def _missing_section(results: Results, figure: Path | None) -> list[str]:
    data = protocol_results(results, "missing_certificate")
    if not data:
        return []
    ks = next(iter(data.values()))["k"]
    M = len(ks)
    lines = [
        "## (g) Certificates against missing modalities", "",
        "**Guarantee: deterministic and exact.** A prediction is certified against any k "
        f"missing modalities when it is correct on every pattern with at least {M} - k "
        "modalities present; every pattern is evaluated (`mmfast.ops.subset_logits` from one "
        "encoder pass when the model's modality logits reproduce its predictions, else one "
        "pass per pattern), so the numbers are exact, not bounds. k = 0 is the accuracy with "
        "all modalities.", ""]
    if figure is not None:
        lines += [f"![certified accuracy vs k missing]({figure.name})", ""]
    rows = [[m, r["path"], *r["certified_accuracy"]] for m, r in data.items()]
    lines += _table(["method", "path", *[f"k = {k}" for k in ks]], rows)
    combined = {m: r["smoothing"]["missing"] for m, r in results.items()
                if isinstance(r.get("smoothing"), Mapping)
                and "certified_accuracy" in (r["smoothing"].get("missing") or {})}
    if combined:
        radii = next(r["smoothing"]["radii"] for r in results.values()
                     if isinstance(r.get("smoothing"), Mapping))
        lines += ["Smoothing combined (probabilistic, as section (f)): certified against any "
                  "k missing modalities **and** a plain-l2 perturbation of radius r of the "
                  "modalities left (each pattern smoothed from the same draws; the radius is "
                  "the minimum over the patterns).", ""]
        rows = [[m, k, *acc] for m, c in combined.items()
                for k, acc in zip(c["k"], c["certified_accuracy"])]
        lines += _table(["method", "k", *[f"r {x:g}" for x in radii]], rows)
    skipped = [f"- {m}: {r['smoothing']['missing']['skipped']}" for m, r in results.items()
               if isinstance(r.get("smoothing"), Mapping)
               and "skipped" in (r["smoothing"].get("missing") or {})]
    if skipped:
        lines += ["No combined certificate:", *skipped, ""]
    return lines
