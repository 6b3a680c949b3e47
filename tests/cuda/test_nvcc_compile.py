"""Compile checks of the CUDA sources in csrc/cuda with nvcc (no GPU needed, no GPU used).

* Every raw kernel header ``csrc/cuda/<op>_kernel.cuh`` is compiled with plain
  ``nvcc -c -arch=sm_90`` through a generated .cu that instantiates the header's kernel list
  ``MMFAST_<OP>_KERNEL_LIST(T)`` for float, double, __half and __nv_bfloat16, with the half /
  bfloat16 restrictions torch's extension build passes (but not its relaxed constexpr) and
  warnings as errors. Skipped without nvcc.
* The launchers ``csrc/cuda/<op>.cu`` need the torch headers and take about a minute each on
  two cores, so that check is opt-in (``MMFAST_NVCC_LAUNCHERS=1``). A CPU torch wheel lacks
  the generated ``c10/cuda/impl/cuda_cmake_macros.h``; the test supplies a stand-in for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"
CUDA_DIR = CSRC / "cuda"
KERNEL_HEADERS = sorted(CUDA_DIR.glob("*_kernel.cuh"))
LAUNCHERS = sorted(CUDA_DIR.glob("*.cu"))
STORAGE_TYPES = ("float", "double", "__half", "__nv_bfloat16")

# The half / bfloat16 restrictions torch.utils.cpp_extension adds to every nvcc command (the
# kernels must build with them). Its --expt-relaxed-constexpr is left out on purpose: the kernel
# headers must compile with plain nvcc, without relaxed constexpr.
TORCH_HALF_FLAGS = (
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
)
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def kernel_list_macro(header: Path) -> str:
    """``masked_fusion_kernel.cuh`` -> ``MMFAST_MASKED_FUSION_KERNEL_LIST``."""
    op = header.name.removesuffix("_kernel.cuh")
    return f"MMFAST_{op.upper()}_KERNEL_LIST"


def instantiation_source(header: Path) -> str:
    """A translation unit that includes ``header`` and references every kernel of its list."""
    macro = kernel_list_macro(header)
    lines = [
        f'#include "cuda/{header.name}"',
        f"#ifndef {macro}",
        f'#error "{header.name} must define {macro}(T)"',
        "#endif",
        "namespace mmfast {",
        "namespace cuda {",
    ]
    for i, dtype in enumerate(STORAGE_TYPES):
        lines.append(f"extern const void* const kKernels{i}[] = {macro}({dtype});")
    lines += ["}  // namespace cuda", "}  // namespace mmfast", ""]
    return "\n".join(lines)


def run_nvcc(args: list[str], cwd: Path, timeout: float) -> None:
    """Runs nvcc and fails the test with its output when it does not succeed."""
    proc = subprocess.run(
        [NVCC, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"nvcc {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"


def test_every_op_has_a_kernel_header():
    ops = {h.name.removesuffix("_kernel.cuh") for h in KERNEL_HEADERS}
    assert ops == {"masked_fusion", "certified_margin", "noisy_modality_dropout", "subset_ops"}
    assert {p.stem for p in LAUNCHERS} == ops


def test_instantiation_source_names_the_header_macro():
    source = instantiation_source(CUDA_DIR / "subset_ops_kernel.cuh")
    assert '#include "cuda/subset_ops_kernel.cuh"' in source
    for dtype in STORAGE_TYPES:
        assert f"MMFAST_SUBSET_OPS_KERNEL_LIST({dtype})" in source


@needs_nvcc
@pytest.mark.parametrize("header", KERNEL_HEADERS, ids=lambda h: h.name)
def test_kernel_header_compiles_with_plain_nvcc(header: Path, tmp_path: Path):
    source = tmp_path / f"{header.stem}_instantiate.cu"
    source.write_text(instantiation_source(header))
    run_nvcc(
        [
            "-c",
            "-arch=sm_90",
            "-std=c++17",
            "-O3",
            "-Werror",
            "all-warnings",
            f"-I{CSRC}",
            *TORCH_HALF_FLAGS,
            str(source),
            "-o",
            str(tmp_path / "kernels.o"),
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert (tmp_path / "kernels.o").stat().st_size > 0


def torch_include_dirs() -> list[Path]:
    import torch.utils.cpp_extension as cpp_extension

    return [Path(p) for p in cpp_extension.include_paths()]


@needs_nvcc
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MMFAST_NVCC_LAUNCHERS") != "1",
    reason="about a minute per launcher on 2 cores: set MMFAST_NVCC_LAUNCHERS=1",
)
@pytest.mark.parametrize("launcher", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_compiles_against_torch_headers(launcher: Path, tmp_path: Path):
    includes = torch_include_dirs()
    stand_in = tmp_path / "stub" / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not any((d / "c10/cuda/impl/cuda_cmake_macros.h").exists() for d in includes):
        stand_in.parent.mkdir(parents=True)
        stand_in.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    flags = [f"-I{d}" for d in [tmp_path / "stub", *includes, CSRC]]
    flags.append(f"-I{sysconfig.get_paths()['include']}")
    run_nvcc(
        [
            "-c",
            "-arch=sm_90",
            "-std=c++17",  # what torch's CUDA builds pass to nvcc; the sources need no more
            "-O3",
            "-Xcompiler",
            "-fPIC",
            *flags,
            *TORCH_HALF_FLAGS,
            "--expt-relaxed-constexpr",
            "-DMMFAST_WITH_CUDA",
            str(launcher),
            "-o",
            str(tmp_path / "launcher.o"),
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert (tmp_path / "launcher.o").stat().st_size > 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
