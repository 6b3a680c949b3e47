"""compute-sanitizer memcheck and racecheck over a small case of every kernel (issue #11),
where the tool exists (the GPU image has it). Triton autotuning is off in the child (one
config per kernel) so the sanitised run stays short."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gpu.helpers import requires_cuda

ROOT = Path(__file__).resolve().parents[2]
SANITIZER = shutil.which("compute-sanitizer")
pytestmark = [requires_cuda,
              pytest.mark.skipif(SANITIZER is None, reason="compute-sanitizer not on PATH")]


@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_every_kernel_is_clean(tool):
    env = {**os.environ, "MMFAST_TRITON_AUTOTUNE": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [SANITIZER, "--tool", tool, "--error-exitcode", "97", "--print-limit", "20",
           sys.executable, "-m", "tests.gpu.sanitizer_cases"]
    if tool == "racecheck":
        cmd.append("--fp32")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    out = proc.stdout[-6000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, out
    assert "sanitizer cases done" in proc.stdout
    assert "ERROR SUMMARY: 0 errors" in proc.stdout + proc.stderr, out
