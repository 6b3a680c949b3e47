"""Peak memory of one training, not of the whole process so far.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU (Linux):
the resident-set high-water mark (``VmHWM``) after resetting it through
``/proc/self/clear_refs``; where that is impossible, the process's running maximum
(``ru_maxrss``), labelled as such.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import torch

__all__ = ["PeakMemory", "PEAK_KINDS"]

#: kind -> what the number means (the report prints it).
PEAK_KINDS = {
    "cuda_max_allocated": "CUDA peak allocation of this training",
    "process_peak_rss_since_reset": "peak resident memory of the process during this "
                                    "training (high-water mark reset at its start)",
    "process_max_rss": "peak resident memory of the process since it started (could not be "
                       "reset: includes everything the process did before)",
}


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # resets the peak RSS (Linux >= 4.0)
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


@dataclass
class PeakMemory:
    """``start()`` before a training, ``stop()`` after: (peak bytes, kind, baseline bytes)."""

    device: torch.device
    reset_ok: bool = False
    baseline: int | None = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = int(torch.cuda.memory_allocated(self.device))
            self.reset_ok = True
            return
        self.reset_ok = _reset_rss_peak()
        rss = _status_kib("VmRSS")
        self.baseline = rss * 1024 if rss is not None else None

    def stop(self) -> dict[str, int | str | None]:
        """``{"peak_memory_bytes", "peak_memory_kind", "baseline_memory_bytes"}``."""
        if self.device.type == "cuda":
            peak, kind = int(torch.cuda.max_memory_allocated(self.device)), "cuda_max_allocated"
        elif self.reset_ok:
            peak, kind = (_status_kib("VmHWM") or 0) * 1024, "process_peak_rss_since_reset"
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            # ru_maxrss is KiB on Linux, bytes on macOS
            peak, kind = int(rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"
        return {"peak_memory_bytes": peak, "peak_memory_kind": kind,
                "baseline_memory_bytes": self.baseline}
