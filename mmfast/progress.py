"""Progress bars for mmfast's long steps (data decode, each method's training in the demo,
evaluation protocols): tqdm on stderr, shown only when stderr is a terminal.

``mmfast --quiet`` (``set_enabled(False)``) or ``MMFAST_PROGRESS=0`` turns them off,
``MMFAST_PROGRESS=1`` forces them on. Without tqdm installed (it comes with the ``train``
extra), bars are silently skipped: the core never needs it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["enabled", "set_enabled", "bar", "counter", "protocol_log"]

_enabled: bool | None = None  # None: follow the terminal


def set_enabled(value: bool | None) -> None:
    """True/False forces bars on/off for this process; None: only when stderr is a TTY."""
    global _enabled
    _enabled = value


def enabled() -> bool:
    """Whether bars are shown now (``MMFAST_PROGRESS``, then ``set_enabled``, then the TTY)."""
    env = os.environ.get("MMFAST_PROGRESS", "")
    if env in ("0", "1"):
        return env == "1"
    return sys.stderr.isatty() if _enabled is None else _enabled


class _NoBar:
    """What ``bar`` returns when bars are off: the same calls, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "") -> None:
        pass

    def write(self, s: str) -> None:
        print(s)

    def close(self) -> None:
        pass


def bar(total: int | None = None, desc: str | None = None, unit: str = "it", **kwargs: Any):
    """A tqdm bar on stderr (an inert stand-in when bars are off or tqdm is missing)."""
    if not enabled():
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True, **kwargs)


def counter(desc: str, unit: str = "it") -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback (as ``make_avdigits`` takes) drawing one bar,
    closed when ``done == total``."""
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"], state["done"] = bar(total=total, desc=desc, unit=unit), 0
        state["bar"].update(done - state["done"])
        state["done"] = done
        if done >= total:
            state["bar"].close()

    return update


def protocol_log(total: int, desc: str = "protocols",
                 echo: Callable[[str], None] | None = None) -> Callable[[str], None]:
    """A ``log`` callback for ``mmfast.eval.run_protocols`` / ``evaluate_run`` that advances a
    bar by one per finished protocol (and passes each line on to ``echo``, if given). The
    bar closes after ``total`` lines (or by calling the returned function's ``close()``)."""
    progress = bar(total=total, desc=desc, unit="protocol")
    seen = [0]

    def log(line: str) -> None:
        seen[0] += 1
        progress.update(1)
        progress.set_postfix_str(line.strip())
        if seen[0] >= total:
            progress.close()
        if echo is not None:
            if isinstance(progress, _NoBar):
                echo(line)
            else:
                progress.write(line)  # above the bar, which stays intact

    log.close = progress.close  # type: ignore[attr-defined]
    return log
