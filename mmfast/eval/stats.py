"""Seed statistics and the verdict rule of the claims table.

The unit of replication is the training seed: a claim is about a *method* beating its
rival, and what varies between two trainings of one method (initialisation, data order,
dropout and noise draws) is exactly what a single run cannot average out. The test samples
are fixed and shared by every run, so a test over samples pooled across seeds would treat
each trained model as fixed and ask "is this model better on this test set", counting the
between-seed variance zero times; on a few hundred test samples it calls differences of a
few points significant that the next seed reverses. So the rule is a **one-sided paired t-test
over seeds** (seed s of the method against seed s of its rival, same data, same protocol):

* d_s = value(method, seed s) - value(rival, seed s) (signs flipped where lower is better,
  e.g. a drop from clean), n = number of seeds both have, mean d, standard error
  se = sd(d) / sqrt(n) (sample standard deviation, n - 1 degrees of freedom);
* **holds** when mean d > t_{0.95, n-1} * se (95 % one-sided confidence that the method is
  better; t = 2.92 for 3 seeds, 2.13 for 5);
* **does not hold** when mean d < -t_{0.95, n-1} * se (significantly worse);
* **within noise** otherwise;
* **indicative** with fewer than 2 paired seeds: the sign of d is shown, no verdict;
* **not evaluated** when a value is missing.

``paired_verdict`` applies the rule; ``RULE`` is its one-paragraph statement for the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CONFIDENCE", "RULE", "STATUSES", "Paired", "mean_sd", "format_mean_sd",
           "t_critical", "paired_verdict", "MeanSD", "aggregate_seeds"]

#: One-sided confidence of the verdict rule.
CONFIDENCE = 0.95

#: Every status :func:`paired_verdict` can return.
STATUSES = ("holds", "within noise", "does not hold", "indicative", "not evaluated")

RULE = (
    "Verdict rule: for each claim the method and its rival are paired by training seed (same "
    "data, same protocol) and d = method - rival is taken per seed (for a drop from clean, "
    "rival - method: a smaller drop is better). **holds**: mean d > t(0.95, n-1) x standard "
    "error of d (one-sided paired t-test over the n seeds, 95 % confidence; t = 2.92 for "
    "n = 3); **does not hold**: mean d < -t x standard error; **within noise**: otherwise; "
    "**indicative**: fewer than 2 seeds, only the sign of d is shown and no verdict is drawn. "
    "Seeds, not test samples, are the unit: the samples are shared by every run, so a test "
    "pooled over them would ignore the variation between trainings.")


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of finite values; sd is 0 for one value, NaN for
    none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def format_mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """"0.812 +- 0.021 (n=3)", "0.812 (n=1)" or "n/a"."""
    xs = [v for v in values if v is not None and math.isfinite(float(v))]
    mean, sd = mean_sd(xs)
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} +- {sd:.{digits}f} (n={len(xs)})"


def t_critical(df: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Student t quantile t_{confidence, df}."""
    if df < 1:
        raise ValueError(f"t_critical: df expected >= 1, got {df}")
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"t_critical: confidence expected in (0.5, 1), got {confidence}")
    from scipy.stats import t

    return float(t.ppf(confidence, df))


@dataclass(frozen=True)
class Paired:
    """Outcome of the verdict rule on one paired comparison."""

    status: str
    seeds: tuple[int, ...]
    method: tuple[float, ...]  # per paired seed
    rival: tuple[float, ...]
    mean_diff: float  # mean of d (in the "better" direction)
    se: float  # standard error of d (NaN below 2 seeds)
    threshold: float  # t_{0.95, n-1} * se (NaN below 2 seeds)

    def summary(self, digits: int = 3) -> str:
        """"0.61 +- 0.02 vs 0.55 +- 0.03; d = +0.06, se 0.01, needs > 0.03 (n=3)"."""
        a, b = format_mean_sd(self.method, digits), format_mean_sd(self.rival, digits)
        if self.status == "not evaluated":
            return "no paired values"
        text = f"{_strip_n(a)} vs {_strip_n(b)}; d = {self.mean_diff:+.{digits}f}"
        if math.isfinite(self.se):
            text += f", se {self.se:.{digits}f}, needs |d| > {self.threshold:.{digits}f}"
        return text + f" (n={len(self.seeds)})"


def _strip_n(text: str) -> str:
    return text.rsplit(" (n=", 1)[0]


def paired_verdict(method: Mapping[int, float | None], rival: Mapping[int, float | None],
                   higher_is_better: bool = True, confidence: float = CONFIDENCE) -> Paired:
    """The verdict rule (module docstring) on per-seed values of a method and its rival.

    Seeds present (with a finite value) in both are paired; the others are ignored.
    """
    seeds = tuple(sorted(s for s in method if s in rival and _finite(method[s])
                         and _finite(rival[s])))
    a = tuple(float(method[s]) for s in seeds)
    b = tuple(float(rival[s]) for s in seeds)
    if not seeds:
        return Paired("not evaluated", seeds, a, b, math.nan, math.nan, math.nan)
    sign = 1.0 if higher_is_better else -1.0
    diffs = [sign * (x - y) for x, y in zip(a, b)]
    mean, sd = mean_sd(diffs)
    n = len(diffs)
    if n < 2:
        return Paired("indicative", seeds, a, b, mean, math.nan, math.nan)
    se = sd / math.sqrt(n)
    threshold = t_critical(n - 1, confidence) * se
    if mean > threshold and mean > 0:
        status = "holds"
    elif mean < -threshold and mean < 0:
        status = "does not hold"
    else:
        status = "within noise"
    return Paired(status, seeds, a, b, mean, se, threshold)


def _finite(x) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(float(x))


class MeanSD(float):
    """A float (the mean over seeds) that prints as "mean +- sd" when it has several values.

    The report's tables format numbers with ``f"{x:.3f}"``; a MeanSD there shows
    "0.812 +- 0.021", and plots that read it as a float get the mean.
    """

    def __new__(cls, values: Sequence[float]):
        mean, sd = mean_sd(values)
        obj = super().__new__(cls, mean)
        obj.sd = sd
        obj.n = sum(1 for v in values if _finite(v))
        return obj

    def __format__(self, spec: str) -> str:
        text = float.__format__(float(self), spec)
        if self.n > 1 and spec:
            text += " +- " + float.__format__(self.sd, spec)
        return text

    def __str__(self) -> str:
        return self.__format__(".3f" if self.n > 1 else "")

    __repr__ = __str__


def aggregate_seeds(values: Sequence):
    """One JSON-like value of several seeds' results.

    Numbers become :class:`MeanSD` (numbers every seed agrees on, such as sweep levels, stay
    as they are); lists of equal length and dicts are combined element-wise (keys of the
    first); anything else is the first seed's. A single value is returned as is.
    """
    if len(values) == 1:
        return values[0]
    first = values[0]
    if isinstance(first, bool) or first is None or isinstance(first, str):
        return first
    if isinstance(first, int | float):
        nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(nums) == len(values) and len(set(nums)) == 1:
            return first  # sweep levels, counts, a value every seed agrees on
        return MeanSD(nums)
    if isinstance(first, Mapping):
        same = [v for v in values if isinstance(v, Mapping)]
        return {k: aggregate_seeds([v[k] for v in same if k in v]) for k in first}
    if isinstance(first, list):
        same = [v for v in values if isinstance(v, list) and len(v) == len(first)]
        return [aggregate_seeds([v[i] for v in same]) for i in range(len(first))]
    return first
