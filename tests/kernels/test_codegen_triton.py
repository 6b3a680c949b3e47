"""Every Triton kernel compiles for an H100 (sm_90) through Triton's compiler and ptxas, even
on a machine without a GPU, where the other tests only run the kernels in the interpreter
(which accepts code the compiler rejects). See tests/kernels/codegen_sm90.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton.backends

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90():
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when it is unset
    result = subprocess.run(
        [sys.executable, "-m", "tests.kernels.codegen_sm90"], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    assert "all kernels compiled" in result.stdout
