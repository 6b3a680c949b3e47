"""Compile checks of the CUDA sources in csrc/cuda with nvcc (no GPU needed, no GPU used).

* Every raw kernel header ``csrc/cuda/<op>_kernel.cuh`` is compiled with plain
  ``nvcc -c -arch=sm_90`` through a generated .cu that instantiates the header's kernel list
  ``MMFAST_<OP>_KERNEL_LIST(T)`` for float, double, __half and __nv_bfloat16, with the half /
  bfloat16 restrictions torch's extension build passes (but not its relaxed constexpr) and
  warnings as errors. Skipped without nvcc.
* The launchers ``csrc/cuda/<op>.cu`` need the torch headers: they are compiled together in
  one translation unit (tests/cuda/launchers_sm90.py, about a minute on two cores) with
  ``-Xptxas -v``, and no kernel they instantiate may spill registers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cuda import launchers_sm90

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"
CUDA_DIR = CSRC / "cuda"
KERNEL_HEADERS = sorted(CUDA_DIR.glob("*_kernel.cuh"))
LAUNCHERS = sorted(CUDA_DIR.glob("*.cu"))
STORAGE_TYPES = ("float", "double", "__half", "__nv_bfloat16")

# The half / bfloat16 restrictions torch.utils.cpp_extension adds to every nvcc command (the
# kernels must build with them). Its --expt-relaxed-constexpr is left out on purpose: the kernel
# headers must compile with plain nvcc, without relaxed constexpr.
TORCH_HALF_FLAGS = launchers_sm90.TORCH_HALF_FLAGS
EXPECTED_KERNELS = ("masked_fusion_forward", "masked_fusion_backward", "certified_margin_forward",
                    "certified_margin_backward", "noise_per_sample", "noisy_modality_dropout",
                    "subset_logits", "subset_accuracy")
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


@needs_nvcc
@pytest.mark.slow
def test_launchers_compile_against_torch_headers_without_spills(tmp_path: Path):
    """All launchers in one nvcc call (about a minute on two cores); ptxas must report every
    kernel instantiation the launchers make, none of them spilling registers."""
    proc = launchers_sm90.compile_launchers(tmp_path, NVCC)
    assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    assert (tmp_path / "mmfast_launchers.o").stat().st_size > 0
    usages = launchers_sm90.parse_ptxas_verbose(proc.stdout + proc.stderr)
    kernels = {launchers_sm90.kernel_family(u.name) for u in usages}
    assert {f"mmfast::cuda::{k}_kernel" for k in EXPECTED_KERNELS} <= kernels, kernels
    spilling = [u for u in usages if u.spill_stores or u.spill_loads]
    assert not spilling, spilling


PTXAS_SAMPLE = """ptxas info    : 52 bytes gmem
ptxas info    : Compiling entry function '_ZN6mmfast4cuda4fastEv' for 'sm_90'
ptxas info    : Function properties for _ZN6mmfast4cuda4fastEv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers
ptxas info    : Compiling entry function '_ZN6mmfast4cuda4slowEv' for 'sm_90'
ptxas info    : Function properties for _ZN6mmfast4cuda4slowEv
    48 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 48 bytes cumulative stack size
"""


def test_parse_ptxas_verbose_reads_registers_and_spills():
    fast, slow = launchers_sm90.parse_ptxas_verbose(PTXAS_SAMPLE)
    assert fast.registers == 40 and (fast.stack, fast.spill_stores, fast.spill_loads) == (0, 0, 0)
    assert slow.registers == 255 and (slow.stack, slow.spill_stores, slow.spill_loads) == (48, 8, 12)
    if shutil.which("c++filt"):
        assert (fast.name, slow.name) == ("mmfast::cuda::fast()", "mmfast::cuda::slow()")
    table = launchers_sm90.markdown_summary([fast, slow])
    assert "| mmfast::cuda::slow | 1 | 255-255 | 48 | 20 |" in table


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
