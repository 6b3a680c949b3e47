"""Compiles every GPU config of each Triton kernel of mmfast.kernels for an H100 (sm_90)
without a GPU, and reports each one's registers, stack (spills) and shared memory.

Run as ``python -m tests.kernels.codegen_sm90 [--markdown]`` with TRITON_INTERPRET unset (the
kernels must be real JIT functions). The interpreter executes kernels as Python, so it
accepts code that Triton's compiler rejects (a runtime value where a constexpr is required,
a loop-carried value changing type, ...); this lowers every kernel through Triton's code
generator, the sm_90 pipeline and ptxas, once per autotune config at the benchmark shapes
(the block sizes each config gets there), and reads the cubin's resource usage with the
cuobjdump Triton ships. A config that spills (stack > 0) still runs, slowly; the autotuner
may pick it only if nothing better exists, so a kernel variant whose configs *all* spill is
a failure, as is any config that does not compile.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mmfast.kernels import _common
from mmfast.kernels import certified_margin_triton as cm
from mmfast.kernels import masked_fusion_triton as mf
from mmfast.kernels import noisy_modality_dropout_triton as nd
from mmfast.kernels import subset_ops_triton as so

TARGET = GPUTarget("cuda", 90, 32)
#: integer arguments that are multiples of 16 at the benchmark shapes (Triton specialises
#: them, and 16-byte aligned pointers, which enables vector loads).
DIVISIBLE_BY_16 = {"D", "numel", "row_len"}
_TORCH_TO_TRITON = {"fp32": tl.float32, "bf16": tl.float32, "fp16": tl.float32, "fp64": tl.float64}
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


@dataclass(frozen=True)
class Variant:
    """One kernel specialisation: ``consts(config)`` gives its constexprs for a config."""

    name: str
    kernel: object
    configs: list
    types: dict
    consts: Callable[[triton.Config], dict]


@dataclass(frozen=True)
class Usage:
    """Per-thread registers, stack bytes (spills / local arrays) and shared bytes per block."""

    registers: int
    stack: int
    shared: int


def _jit_function(kernel):
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def compile_kernel(kernel, config: triton.Config, types: dict, consts: dict):
    """Lowers ``kernel`` with ``config`` to a cubin; ``types`` maps runtime args to Triton
    type strings, ``consts`` the constexprs."""
    fn = _jit_function(kernel)
    consts = {**config.kwargs, **consts}
    signature = {name: "constexpr" if name in consts else types[name] for name in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if name not in consts and (types[name].startswith("*") or name in DIVISIBLE_BY_16)}
    source = ASTSource(fn, signature, constexprs=consts, attrs=attrs)
    return triton.compile(source, target=TARGET, options={"num_warps": config.num_warps,
                                                          "num_stages": config.num_stages})


def resource_usage(compiled) -> Usage:
    """Registers / stack / shared of a compiled kernel's cubin (cuobjdump, no driver)."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        out = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", str(cubin)],
                             capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", out)
    if found is None:
        raise RuntimeError(f"no resource usage in cuobjdump output:\n{out}")
    regs, stack, shared = (int(v) for v in found.groups())
    return Usage(regs, stack, shared)


def _blocks(config: triton.Config, rows: int, width: int, depth: int = 1) -> tuple[int, int]:
    return _common.tile_blocks(rows, width, config.kwargs["TILE"], config.kwargs["WIDTH_CAP"],
                               depth, bool(config.kwargs.get("SNUG", 0)))


def variants() -> Iterator[Variant]:
    """The kernels and specialisations to compile, at the issue's benchmark shapes."""
    for dt, weighted in (("fp32", True), ("bf16", False), ("fp64", True)):
        acc = "fp64" if dt == "fp64" else "fp32"
        acc_tl = _TORCH_TO_TRITON[dt]
        weight = {} if weighted else {"weight_ptr": None}

        def fusion_forward(c, weighted=weighted, acc_tl=acc_tl, weight=weight):
            bb, bd = _blocks(c, 65536, 1024)
            return dict(M=3, HAS_WEIGHT=weighted, NORMALIZE=weighted, ACC=acc_tl, BLOCK_B=bb,
                        BLOCK_D=bd, **weight)

        yield Variant(f"masked_fusion.forward {dt}", mf._forward_kernel, mf._FORWARD_CONFIGS,
                      dict(x_ptr=f"*{dt}", mask_ptr="*u8", weight_ptr=f"*{acc}",
                           y_ptr=f"*{dt}", denom_ptr=f"*{acc}", B="i32", D="i32",
                           ROWS_BUCKET="i32"),
                      fusion_forward)

        def fusion_backward(c, weighted=weighted, acc_tl=acc_tl, weight=weight):
            bb, bd = _blocks(c, 65536, 1024)
            return dict(M=3, BLOCK_M=4, HAS_WEIGHT=weighted, NORMALIZE=True,
                        NEED_GRAD_WEIGHT=weighted, ACC=acc_tl, BLOCK_B=bb, BLOCK_D=bd, **weight)

        yield Variant(f"masked_fusion.backward {dt}", mf._backward_kernel, mf._BACKWARD_CONFIGS,
                      dict(grad_y_ptr=f"*{dt}", x_ptr=f"*{dt}", mask_ptr="*u8",
                           weight_ptr=f"*{acc}", denom_ptr=f"*{acc}", grad_x_ptr=f"*{dt}",
                           grad_w_ptr=f"*{acc}", B="i32", D="i32", ROWS_BUCKET="i32"),
                      fusion_backward)
        # full lip + l2 + min rival; (M,) lip + pow norm + top rival with a bias; C = 100 and 10
        for full, norm, top, C in ((True, cm.NORM_L2.value, False, 100),
                                   (False, cm.NORM_POW.value, True, 100),
                                   (True, cm.NORM_L2.value, False, 10)):
            tag = f"{dt} C={C} full_lip={full} norm={norm} top={top}"
            bias = {} if top else {"bias_ptr": None}

            def margin_forward(c, full=full, norm=norm, top=top, C=C, acc_tl=acc_tl, bias=bias):
                bb, bc = _blocks(c, 262144, C)
                return dict(M=3, HAS_MASK=True, HAS_BIAS=top, LIP_FULL=full, NORM=norm,
                            TOP_RIVAL=top, ACC=acc_tl, BLOCK_B=bb, BLOCK_C=bc, **bias)

            def margin_backward(c, full=full, norm=norm, C=C, acc_tl=acc_tl):
                bb, bc = _blocks(c, 262144, C)
                return dict(M=3, BLOCK_M=4, HAS_MASK=True, LIP_FULL=full, NORM=norm, ACC=acc_tl,
                            BLOCK_B=bb, BLOCK_C=bc)

            yield Variant(f"certified_margin.forward {tag}", cm._forward_kernel,
                          cm._FORWARD_GPU_CONFIGS,
                          dict(z_ptr=f"*{dt}", target_ptr="*i64", lip_ptr=f"*{acc}",
                               mask_ptr="*u8", bias_ptr=f"*{acc}", radius_ptr=f"*{acc}",
                               margin_ptr=f"*{acc}", runner_up_ptr="*i64", B="i32", C="i32",
                               q="fp32", ROWS_BUCKET="i32"),
                          margin_forward)
            yield Variant(f"certified_margin.backward {tag}", cm._backward_kernel,
                          cm._GPU_CONFIGS,
                          dict(grad_radius_ptr=f"*{acc}", grad_margin_ptr=f"*{acc}",
                               target_ptr="*i64", lip_ptr=f"*{acc}", mask_ptr="*u8",
                               margin_ptr=f"*{acc}", runner_up_ptr="*i64", grad_z_ptr=f"*{dt}",
                               grad_lip_ptr=f"*{acc}", B="i32", C="i32", q="fp32",
                               ROWS_BUCKET="i32"),
                          margin_backward)
        yield Variant(f"noisy_modality_dropout.noise {dt}", nd._noise_kernel, nd._GPU_CONFIGS,
                      dict(x_ptr=f"*{dt}", keep_ptr="*u8", sigma_used_ptr="*fp32",
                           y_ptr=f"*{dt}", numel="i64", row_len="i32", seed="i64",
                           offset_ptr="*i64", offset_lo="i64", offset_hi="i32", fill="fp32",
                           NUMEL_BUCKET="i64"),
                      lambda c, dt=dt, acc_tl=acc_tl: dict(ACC=acc_tl, OFFSET_IN_TENSOR=True,
                                                           ROW_SPANS_BLOCK=dt != "bf16"))
        present = {} if weighted else {"weight_ptr": None, "present_ptr": None}
        so_types = dict(z_ptr=f"*{dt}", subsets_ptr="*u8", weight_ptr=f"*{acc}",
                        present_ptr="*u8", B="i32", C="i32", S="i32", ROWS_BUCKET="i32")

        def subset_consts(c, weighted=weighted, acc_tl=acc_tl, present=present, **extra):
            bb, bc = _blocks(c, 65536, 100, depth=4)
            return dict(M=4, BLOCK_M=4, HAS_WEIGHT=weighted, HAS_PRESENT=weighted, ACC=acc_tl,
                        BLOCK_B=bb, BLOCK_C=bc, **present, **extra)

        yield Variant(f"subset_logits {dt}", so._logits_kernel, so._GPU_CONFIGS,
                      {**so_types, "out_ptr": f"*{dt}"}, subset_consts)
        yield Variant(f"subset_accuracy loop (M > 4) {dt}", so._accuracy_kernel,
                      so._GPU_CONFIGS,
                      {**so_types, "target_ptr": "*i64", "partial_ptr": "*i32"},
                      lambda c, f=subset_consts, w=weighted: f(c, ONE_CHUNK=w))

        def codes_consts(c, weighted=weighted, acc_tl=acc_tl, present=present):
            bb, bc = _blocks(c, 65536, 100)
            return dict(M=4, HAS_WEIGHT=weighted, HAS_PRESENT=weighted, ACC=acc_tl,
                        BLOCK_B=bb, BLOCK_C=bc, **present)

        yield Variant(f"subset_accuracy codes {dt}", so._accuracy_codes_kernel,
                      so._CODES_GPU_CONFIGS,
                      dict(z_ptr=f"*{dt}", target_ptr="*i64", weight_ptr=f"*{acc}",
                           present_ptr="*u8", partial_ptr="*i32", B="i32", C="i32",
                           ROWS_BUCKET="i32"),
                      codes_consts)
    for levels in (True, False):
        yield Variant(f"noisy_modality_dropout.sample levels={levels}", nd._sample_kernel,
                      [triton.Config({"BLOCK": nd._SAMPLE_BLOCK_GPU})],
                      dict(p_drop_ptr="*fp32", sigma_ptr="*fp32", keep_ptr="*u8",
                           sigma_used_ptr="*fp32", B="i32", K="i32", seed="u64",
                           offset_ptr="*i64", offset_lo="i64", offset_hi="i64"),
                      lambda c, levels=levels: dict(SIGMA_LEVELS=levels, OFFSET_IN_TENSOR=True))


def describe(config: triton.Config) -> str:
    knobs = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{knobs} warps={config.num_warps}"


def markdown_summary(rows: list[tuple[str, str, Usage]]) -> str:
    """One line per kernel variant: configs, register range, the configs that spill."""
    lines = ["| kernel variant (benchmark shape) | configs | registers / thread | configs "
             "with stack (spills) |", "|---|---|---|---|"]
    names = list(dict.fromkeys(name for name, _, _ in rows))
    for name in names:
        mine = [(config, u) for n, config, u in rows if n == name]
        regs = [u.registers for _, u in mine]
        spills = [f"{config}: {u.stack} B" for config, u in mine if u.stack] or ["none"]
        lines.append(f"| {name} | {len(mine)} | {min(regs)}-{max(regs)} | "
                     f"{'; '.join(spills)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true",
                        help="print the resource table as markdown (benchmarks/README.md)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted")
        return 2
    failures, all_spill, rows = [], [], []
    for variant in variants():
        clean = 0
        for config in variant.configs:
            label = f"{variant.name} [{describe(config)}]"
            try:
                compiled = compile_kernel(variant.kernel, config, variant.types,
                                          variant.consts(config))
                usage = resource_usage(compiled)
            except Exception as exc:  # report every failure, not just the first
                failures.append(label)
                print(f"FAIL {label}: {exc!r}"[:4000])
                continue
            clean += usage.stack == 0
            rows.append((variant.name, describe(config), usage))
            if not args.markdown:
                print(f"ok   {label}: {usage.registers} regs, stack {usage.stack} B, "
                      f"shared {usage.shared} B")
        if clean == 0:
            all_spill.append(variant.name)
    if args.markdown:
        print(markdown_summary(rows))
    if all_spill:
        print(f"every config spills: {all_spill}")
    print(f"{len(failures)} failed: {failures}" if failures else "all kernels compiled")
    return 1 if failures or all_spill else 0


if __name__ == "__main__":
    sys.exit(main())
