"""``pip install .`` and ``pip install -e .`` from a fresh venv, with pip's default build
isolation: the extension is built against the torch already installed (never a download),
and without torch the first line of the error says what to do.

The fresh venv reuses the running interpreter's torch through a ``.pth`` file (no copy, no
download); the C++ build runs twice (wheel, editable), CPU-only, so this module is slow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# MMFAST_CPU_ISAS=DEFAULT: these tests check packaging, not the vector kernels (the
# three-ISA build is what scripts/setup.sh does before them), so each build compiles the CPU
# kernels once instead of three times.
BUILD_ENV = {**os.environ, "MMFAST_NO_CUDA": "1", "MAX_JOBS": "2", "PIP_NO_INPUT": "1",
             "PIP_DISABLE_PIP_VERSION_CHECK": "1", "MMFAST_CPU_ISAS": "DEFAULT"}
for _var in ("PYTHONPATH", "MMFAST_BUILD_PYTHON", "PIP_NO_BUILD_ISOLATION"):
    BUILD_ENV.pop(_var, None)


def _copy_source(dst: Path) -> None:
    """The checkout's files as a fresh clone has them (no build outputs, no _C.so)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=False)
    if listed.returncode != 0:  # not a git checkout: copy the tree minus build outputs
        shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(
            ".venv", "build", "*.so", "__pycache__", "*.egg-info", ".git", "runs", "data"))
        return
    for name in filter(None, listed.stdout.decode().split("\0")):
        src = REPO / name
        if src.is_file() and not name.endswith(".so"):
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _pip(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", *args],
                          cwd=cwd, env=BUILD_ENV, capture_output=True, text=True, timeout=1500)


def _import_c(venv: Path, cwd: Path) -> tuple[str, str]:
    """(mmfast.__file__, mmfast._C.__file__) as the venv's Python sees them."""
    code = ("import torch, mmfast, mmfast._C; "
            "assert torch.ops.mmfast.masked_fusion is not None; "
            "print(mmfast.__file__); print(mmfast._C.__file__)")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=cwd,
                          env=BUILD_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pkg, ext = proc.stdout.split()
    return pkg, ext


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """(source copy, venv without torch)."""
    root = tmp_path_factory.mktemp("install")
    src, venv = root / "src", root / "venv"
    src.mkdir()
    _copy_source(src)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    return src, venv


@pytest.fixture(scope="module")
def with_torch(fresh):
    """The same venv, now seeing the running interpreter's torch (and numpy) via a .pth."""
    import torch

    src, venv = fresh
    torch_site = Path(torch.__file__).resolve().parents[1]
    (_site_packages(venv) / "zz_reuse_torch.pth").write_text(f"{torch_site}\n")
    return src, venv


def test_without_torch_the_first_line_says_what_to_do(fresh):
    src, venv = fresh
    proc = _pip(venv, "--no-deps", ".", cwd=src)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    ours = [line.strip() for line in out.splitlines() if "mmfast:" in line]
    assert ours, out
    assert ours[0].startswith("mmfast: install torch first"), ours[0]
    assert f"{venv}/bin/python" in ours[0] and "-m pip install torch" in ours[0]
    assert "Traceback" not in out


def test_pip_install_builds_against_the_installed_torch(with_torch, tmp_path):
    src, venv = with_torch
    proc = _pip(venv, "-v", ".", cwd=src)  # dependencies resolved too: torch is already there
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "mmfast: building against torch" in out
    assert "Collecting torch" not in out and "Downloading torch" not in out
    pkg, ext = _import_c(venv, cwd=tmp_path)
    assert Path(pkg).is_relative_to(_site_packages(venv)), pkg
    assert Path(ext).parent == Path(pkg).parent


def test_pip_install_editable(with_torch, tmp_path):
    src, venv = with_torch
    proc = _pip(venv, "--no-deps", "-e", ".", cwd=src)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    pkg, ext = _import_c(venv, cwd=tmp_path)
    assert Path(pkg).resolve() == (src / "mmfast" / "__init__.py").resolve()
    assert Path(ext).resolve().parent == (src / "mmfast").resolve()
