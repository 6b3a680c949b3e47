"""Builds mmfast._C: csrc/ops.cpp (schemas) + csrc/cpu/*.cpp always, csrc/cuda/*.cu when the
installed torch has CUDA and nvcc is found (MMFAST_NO_CUDA=1 skips them; DEBUG=1 gives -O0 -g).
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils import cpp_extension


def _cuda_wanted() -> bool:
    if os.environ.get("MMFAST_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _extension():
    debug = os.environ.get("DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = ["csrc/ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    sources += sorted(glob.glob("csrc/autograd/*.cpp"))  # C++ autograd (once, not per ISA)
    args = {"cxx": [*opt, "-fopenmp", "-DPy_LIMITED_API=0x03090000"]}
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
        py_limited_api=True,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
