"""PNG plots of protocol results, methods side by side (matplotlib, headless Agg backend).

Each function takes ``{method: eval.json dict}`` and a path, writes the PNG atomically and
returns the path, or None when no method has results for that protocol.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mmfast.eval.common import protocol_results, write_bytes_atomic  # noqa: E402

__all__ = ["plot_subsets", "plot_missing_rate", "plot_noise", "plot_attack", "plot_certify",
           "method_colors"]

Results = Mapping[str, Mapping]

_MARKERS = "osD^v<>p*hX"


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def method_colors(methods) -> dict[str, str]:
    """One colour per method, from the order of all the report's methods, so a method has
    the same colour in every plot (whichever protocols each method ran)."""
    palette = plt.rcParams["axes.prop_cycle"].by_key().get("color") or ["C0"]
    if len(palette) < len(methods):
        palette = [matplotlib.colors.to_hex(plt.get_cmap("tab20")(k % 20)) for k in range(20)]
    return {m: matplotlib.colors.to_hex(palette[k % len(palette)])
            for k, m in enumerate(methods)}


def _style(i: int, color: str | None = None) -> dict:
    style = {"marker": _MARKERS[i % len(_MARKERS)], "linewidth": 1.6, "markersize": 5}
    return style if color is None else {**style, "color": color}


def _grid(n: int, title: str, width: float = 3.6):
    fig, axes = plt.subplots(1, n, figsize=(width * n + 0.6, 3.4), squeeze=False, sharey=True)
    fig.suptitle(title, fontsize=12, y=1.04)
    return fig, axes[0]


def _finish(fig, axes, ylabel: str = "accuracy") -> None:
    axes[0].set_ylabel(ylabel)
    for ax in axes:
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def plot_subsets(results: Results, path: Path) -> Path | None:
    """Grouped bars: accuracy on every missing-modality subset, one bar per method."""
    data = protocol_results(results, "missing_subsets")
    if not data:
        return None
    subsets = next(iter(data.values()))["subsets"]
    width = 0.8 / len(data)
    colors = method_colors(list(results))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(subsets)), 3.8))
    for i, (method, r) in enumerate(data.items()):
        xs = [k + (i - (len(data) - 1) / 2) * width for k in range(len(subsets))]
        ax.bar(xs, r["accuracy"], width=width, label=method, color=colors[method])
    ax.set_xticks(range(len(subsets)))
    ax.set_xticklabels(subsets, rotation=20, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy per available-modality subset")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def _curves(data: Mapping[str, Mapping], x_key: str, targets: list[str], title: str,
            xlabel: str, path: Path, pick=lambda r: r["accuracy"], methods=None) -> Path:
    fig, axes = _grid(len(targets), title)
    colors = method_colors(list(methods or data))
    for ax, target in zip(axes, targets):
        for i, (method, r) in enumerate(data.items()):
            ys = pick(r).get(target)
            if ys is not None:
                ax.plot(r[x_key], ys, label=method, **_style(i, colors[method]))
        ax.set_title(target)
        ax.set_xlabel(xlabel)
    _finish(fig, axes)
    return _save(fig, path)


def plot_missing_rate(results: Results, path: Path) -> Path | None:
    """Accuracy vs the fraction of test samples missing modality m, one panel per m."""
    data = protocol_results(results, "missing_rate")
    if not data:
        return None
    targets = list(next(iter(data.values()))["accuracy"])
    return _curves(data, "rates", targets, "Accuracy vs missing rate (one modality dropped)",
                   "fraction of samples missing it", path, methods=results)


def plot_noise(results: Results, path: Path, kind: str) -> Path | None:
    """Accuracy vs noise level (``kind`` "gaussian" or "salt_pepper") per corrupted target."""
    data = {m: r[kind] for m, r in protocol_results(results, "noise").items()}
    if not data:
        return None
    x_key = "sigmas" if kind == "gaussian" else "densities"
    xlabel = "sigma (x modality std)" if kind == "gaussian" else "density"
    title = "Gaussian noise" if kind == "gaussian" else "Salt-and-pepper noise"
    targets = list(next(iter(data.values()))["accuracy"])
    return _curves(data, x_key, targets, f"Accuracy vs {title} (panel: corrupted modality)",
                   xlabel, path, methods=results)


def plot_attack(results: Results, path: Path, kind: str) -> Path | None:
    """Accuracy vs l2 budget under ``kind`` ("fgm" or "pgd"), one panel per budget."""
    data = protocol_results(results, "attack")
    if not data:
        return None
    targets = next(iter(data.values()))["budgets"]
    name = "FGM" if kind == "fgm" else "PGD-l2"
    return _curves(data, "eps", targets, f"Accuracy vs {name} budget eps (panel: attacked)",
                   "l2 budget eps", path, pick=lambda r: r[kind]["accuracy"], methods=results)


def plot_certify(results: Results, path: Path) -> Path | None:
    """Certified accuracy vs radius; solid = sound Lipschitz bound, dashed = empirical."""
    data = protocol_results(results, "certify")
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = method_colors(list(results))  # the method's colour; marker: its estimator
    for method, r in data.items():
        for j, (name, est) in enumerate(r["estimators"].items()):
            style = "-" if est["kind"] == "sound" else "--"
            ax.plot(r["radii"], est["min"]["certified_accuracy"], style,
                    label=f"{method} [{name}, {est['kind']}]", **_style(j, colors[method]))
    positive = [r for res in data.values() for r in res["radii"] if r > 0]
    if positive:  # radii span decades (sound bounds are small): linear near 0, log beyond
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel("l2 radius (joint over modalities)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Certified accuracy vs radius (rival rule: min over classes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)
