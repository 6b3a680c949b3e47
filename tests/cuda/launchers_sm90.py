"""Compiles all CUDA launchers (csrc/cuda/*.cu) against the installed torch headers for an H100
(sm_90) in one nvcc call, and reports each kernel's registers and spills from ptxas.

Run as ``python -m tests.cuda.launchers_sm90 [--markdown]``. No GPU is needed: this is a
compile check (nothing is linked), so it also runs with a CPU-only torch wheel. The launchers
go through one generated translation unit that includes them all: parsing the torch headers
dominates (about a minute on two cores), so one unit costs about what one launcher does.
The kernels are instantiated exactly as the launchers instantiate them, so the ptxas report
covers what the extension really runs. Exits non-zero if the compile fails or any kernel
spills registers.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"
LAUNCHERS = sorted((CSRC / "cuda").glob("*.cu"))
# The half / bfloat16 restrictions torch.utils.cpp_extension adds to every nvcc command.
TORCH_HALF_FLAGS = (
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
)

_ENTRY = re.compile(r"Compiling entry function '(\S+)' for 'sm_\d+'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


@dataclass(frozen=True)
class KernelUsage:
    """ptxas's report for one kernel instantiation."""

    name: str  # demangled
    registers: int
    stack: int
    spill_stores: int
    spill_loads: int


def demangle(names: list[str]) -> list[str]:
    """C++ names through c++filt when it exists (else the mangled names)."""
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None or not names:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True,
                         check=True).stdout
    return out.splitlines()


def parse_ptxas_verbose(log: str) -> list[KernelUsage]:
    """Kernel usages from ``nvcc -Xptxas -v`` output, in the order ptxas compiled them."""
    found: list[list] = []
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            found.append([m.group(1), None, None])
        elif found and (m := _FRAME.search(line)):
            found[-1][1] = tuple(int(v) for v in m.groups())
        elif found and (m := _REGS.search(line)):
            found[-1][2] = int(m.group(1))
    complete = [f for f in found if f[1] is not None and f[2] is not None]
    names = demangle([f[0] for f in complete])
    return [KernelUsage(name, regs, *frame) for name, (_, frame, regs) in zip(names, complete)]


def unity_source() -> str:
    """One translation unit including every launcher."""
    return "".join(f'#include "cuda/{p.name}"\n' for p in LAUNCHERS)


def torch_include_dirs() -> list[Path]:
    import torch.utils.cpp_extension as cpp_extension

    return [Path(p) for p in cpp_extension.include_paths()]


def compile_launchers(workdir: Path, nvcc: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """nvcc -c of the unity source with torch's include paths and half flags, -Xptxas -v.

    A CPU torch wheel lacks the generated ``c10/cuda/impl/cuda_cmake_macros.h``; a stand-in
    is supplied for it.
    """
    includes = torch_include_dirs()
    stub = workdir / "stub"
    if not any((d / "c10/cuda/impl/cuda_cmake_macros.h").exists() for d in includes):
        header = stub / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
        header.parent.mkdir(parents=True, exist_ok=True)
        header.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    source = workdir / "mmfast_launchers.cu"
    source.write_text(unity_source())
    flags = [f"-I{d}" for d in [stub, *includes, CSRC]]
    flags.append(f"-I{sysconfig.get_paths()['include']}")
    args = [nvcc, "-c", "-arch=sm_90",
            "-std=c++20",  # what torch.utils.cpp_extension passes to nvcc
            "-O3", "-Xcompiler", "-fPIC", *flags, *TORCH_HALF_FLAGS,
            "--expt-relaxed-constexpr", "-DMMFAST_WITH_CUDA", "-Xptxas", "-v",
            str(source), "-o", str(workdir / "mmfast_launchers.o")]
    return subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=timeout,
                          check=False)


def kernel_family(name: str) -> str:
    """``void mmfast::cuda::k<float, 8>(...)`` -> ``mmfast::cuda::k``."""
    return name.split("<")[0].split("(")[0].removeprefix("void ")


def markdown_summary(usages: list[KernelUsage]) -> str:
    """One line per kernel template: instantiations, register range, spills."""
    groups: dict[str, list[KernelUsage]] = {}
    for u in usages:
        groups.setdefault(kernel_family(u.name), []).append(u)
    lines = ["| CUDA kernel | instantiations | registers / thread | stack frame B | spills B |",
             "|---|---|---|---|---|"]
    for name, us in groups.items():
        regs = sorted(u.registers for u in us)
        stack = sorted({u.stack for u in us})
        spills = max(u.spill_stores + u.spill_loads for u in us)
        lines.append(f"| {name} | {len(us)} | {regs[0]}-{regs[-1]} | "
                     f"{'/'.join(map(str, stack))} | {spills} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print a markdown summary")
    args = parser.parse_args(argv)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("nvcc is not on PATH")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        proc = compile_launchers(Path(tmp), nvcc)
    if proc.returncode != 0:
        print(proc.stdout[-8000:], proc.stderr[-8000:])
        return 1
    usages = parse_ptxas_verbose(proc.stdout + proc.stderr)
    if args.markdown:
        print(markdown_summary(usages))
    else:
        for u in usages:
            print(f"{u.registers:4d} regs  stack {u.stack:4d} B  spills {u.spill_stores}/"
                  f"{u.spill_loads} B  {u.name}")
    spilling = [u.name for u in usages if u.spill_stores or u.spill_loads]
    print(f"{len(usages)} kernels compiled; spilling: {spilling or 'none'}")
    return 1 if spilling or not usages else 0


if __name__ == "__main__":
    sys.exit(main())
