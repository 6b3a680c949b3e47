"""Builds mmfast._C: csrc/ops.cpp (schemas) + csrc/cpu/*.cpp always, csrc/cuda/*.cu when the
installed torch has CUDA and nvcc is found (MMFAST_NO_CUDA=1 skips them; DEBUG=1 gives -O0 -g).

The CPU kernels (csrc/cpu/kernels/*.cpp) are compiled once per instruction set, as ATen
compiles its native/cpu kernels: DEFAULT (the baseline flags), and on x86-64 AVX2 and AVX512,
each with -DCPU_CAPABILITY=<ISA> and its -m flags, into separate objects linked into the same
library; csrc/cpu/capability.cpp picks one at run time (MMFAST_CPU_CAPABILITY forces one).
"""

import glob
import os
import platform

import torch
from setuptools import setup
from torch.utils import cpp_extension


def _cuda_wanted() -> bool:
    if os.environ.get("MMFAST_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


#: -m flags of each ISA build of csrc/cpu/kernels/*.cpp (ATen's AVX2 / AVX512 feature sets).
ISA_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}
#: Flags of every ISA build: no FMA contraction (a fused multiply-add rounds once, so the AVX2
#: and AVX-512 builds would round differently from the default one: the noise op must be bit
#: for bit the same on every path) and no errno from sqrt (lets its loops vectorise); ATen's
#: vec headers carry CUDA-style `#pragma unroll` that GCC ignores.
KERNEL_FLAGS = ["-ffp-contract=off", "-fno-math-errno", "-Wno-unknown-pragmas"]
KERNEL_SOURCES = sorted(glob.glob("csrc/cpu/kernels/*.cpp"))


def _isa_builds() -> list[str]:
    """Every ISA build on x86, the default one elsewhere; ``MMFAST_CPU_ISAS=DEFAULT`` builds
    only the default one on x86 too (a third of the kernel compile time: the install tests,
    which check packaging rather than the vector paths)."""
    only = os.environ.get("MMFAST_CPU_ISAS", "").strip().upper()
    if only not in ("", "DEFAULT", "ALL"):
        raise SystemExit(f"MMFAST_CPU_ISAS: expected 'DEFAULT' or 'ALL' (or unset), got {only!r}")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return list(ISA_FLAGS) if x86 and only != "DEFAULT" else ["DEFAULT"]


class BuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension, plus the per-ISA objects of the CPU kernels (compiled through the
    same compiler wrapper, so ninja builds them in parallel and incrementally).

    Link order is the safety net for inline functions outside the per-ISA namespaces (c10 and
    std templates a kernel TU emits as COMDAT copies): the linker keeps the first copy it
    sees, and the objects go main sources, DEFAULT, AVX2, AVX512, so a caller never gets a copy
    compiled for a wider ISA than its own (as in ATen's build)."""

    def build_extension(self, ext):
        cxx = ext.extra_compile_args
        cxx = list(cxx["cxx"] if isinstance(cxx, dict) else cxx)
        for isa in _isa_builds():
            flags = [*cxx, f"-DCPU_CAPABILITY={isa}", f"-DCPU_CAPABILITY_{isa}", *KERNEL_FLAGS,
                     *ISA_FLAGS[isa]]
            ext.extra_objects.extend(self.compiler.compile(
                KERNEL_SOURCES, output_dir=os.path.join(self.build_temp, "isa", isa.lower()),
                include_dirs=ext.include_dirs, debug=self.debug,
                extra_postargs={"cxx": flags, "nvcc": []}, depends=ext.depends))
        super().build_extension(ext)


def _extension():
    debug = os.environ.get("DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = ["csrc/ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    sources += sorted(glob.glob("csrc/autograd/*.cpp"))  # C++ autograd (once, not per ISA)
    args = {"cxx": [*opt, "-fopenmp", "-DPy_LIMITED_API=0x03090000"]}
    if "AVX2" in _isa_builds():
        args["cxx"].append("-DMMFAST_CPU_ISA_X86")
    cls = cpp_extension.CppExtension
    if _cuda_wanted():
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        args["nvcc"] = [*opt, "-lineinfo", "-DMMFAST_WITH_CUDA"]
        args["cxx"].append("-DMMFAST_WITH_CUDA")
        cls = cpp_extension.CUDAExtension
    return cls(
        "mmfast._C",
        sources,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args=args,
        extra_link_args=["-fopenmp"],
        # Rebuild (and relink) when a kernel source or header changes.
        depends=[*KERNEL_SOURCES, *glob.glob("csrc/**/*.h", recursive=True)],
        py_limited_api=True,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
