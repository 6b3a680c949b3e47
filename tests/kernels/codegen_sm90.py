"""Compiles each Triton kernel of mmfast.kernels for an H100 (sm_90) without a GPU.

Run as ``python -m tests.kernels.codegen_sm90`` with TRITON_INTERPRET unset (the kernels must
be real JIT functions). The interpreter executes kernels as Python, so it accepts code that
Triton's compiler rejects (a runtime value where a constexpr is required, a loop-carried
value changing type, ...); this lowers every kernel through Triton's code generator, the
sm_90 pipeline and ptxas with each kernel's largest GPU config and the benchmark shapes.
Exits non-zero, listing the failures, if any kernel does not compile.
"""

from __future__ import annotations

import os
import sys

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


def _jit_function(kernel):
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def _largest(configs):
    return max(configs, key=lambda c: (c.kwargs.get("TILE", 0), c.kwargs.get("BLOCK", 0)))


def compile_kernel(kernel, configs, types: dict, consts: dict):
    """Lowers ``kernel`` to a cubin; ``types`` maps runtime args to Triton type strings."""
    fn = _jit_function(kernel)
    config = _largest(configs)
    consts = {**config.kwargs, **consts}
    signature = {name: "constexpr" if name in consts else types[name] for name in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if name not in consts and (types[name].startswith("*") or name in DIVISIBLE_BY_16)}
    source = ASTSource(fn, signature, constexprs=consts, attrs=attrs)
    return triton.compile(source, target=TARGET, options={"num_warps": config.num_warps})


def _rows_and_width(configs, rows, width, depth=1):
    config = _largest(configs)
    return _common.tile_blocks(rows, width, config.kwargs["TILE"], config.kwargs["WIDTH_CAP"],
                               depth)


def variants():
    """(name, kernel, configs, types, consts) for the kernels and dtypes to compile."""
    for dt, weighted in (("fp32", True), ("bf16", False), ("fp64", True)):
        acc = "fp64" if dt == "fp64" else "fp32"
        acc_tl = _TORCH_TO_TRITON[dt]
        weight = {} if weighted else {"weight_ptr": None}
        bb, bd = _rows_and_width(mf._FORWARD_CONFIGS, 65536, 1024)
        yield (f"masked_fusion.forward {dt}", mf._forward_kernel, mf._FORWARD_CONFIGS,
               dict(x_ptr=f"*{dt}", mask_ptr="*u8", weight_ptr=f"*{acc}", y_ptr=f"*{dt}",
                    denom_ptr=f"*{acc}", B="i32", D="i32"),
               dict(M=3, HAS_WEIGHT=weighted, NORMALIZE=weighted, ACC=acc_tl, BLOCK_B=bb,
                    BLOCK_D=bd, **weight))
        bb, bd = _rows_and_width(mf._BACKWARD_CONFIGS, 65536, 1024)
        yield (f"masked_fusion.backward {dt}", mf._backward_kernel, mf._BACKWARD_CONFIGS,
               dict(grad_y_ptr=f"*{dt}", x_ptr=f"*{dt}", mask_ptr="*u8", weight_ptr=f"*{acc}",
                    denom_ptr=f"*{acc}", grad_x_ptr=f"*{dt}", grad_w_ptr=f"*{acc}", B="i32",
                    D="i32"),
               dict(M=3, BLOCK_M=4, HAS_WEIGHT=weighted, NORMALIZE=True,
                    NEED_GRAD_WEIGHT=weighted, ACC=acc_tl, BLOCK_B=bb, BLOCK_D=bd, **weight))
        # full lip + l2 + min rival; (M,) lip + pow norm + top rival with a bias
        for full, norm, top in ((True, cm.NORM_L2.value, False), (False, cm.NORM_POW.value, True)):
            tag = f"{dt} full_lip={full} norm={norm} top={top}"
            bias = {} if top else {"bias_ptr": None}
            bb, bc = _rows_and_width(cm._GPU_CONFIGS, 262144, 100)
            yield (f"certified_margin.forward {tag}", cm._forward_kernel, cm._GPU_CONFIGS,
                   dict(z_ptr=f"*{dt}", target_ptr="*i64", lip_ptr=f"*{acc}", mask_ptr="*u8",
                        bias_ptr=f"*{acc}", radius_ptr=f"*{acc}", margin_ptr=f"*{acc}",
                        runner_up_ptr="*i64", B="i32", C="i32", q="fp32"),
                   dict(M=3, HAS_MASK=True, HAS_BIAS=top, LIP_FULL=full, NORM=norm,
                        TOP_RIVAL=top, ACC=acc_tl, BLOCK_B=bb, BLOCK_C=bc, **bias))
            yield (f"certified_margin.backward {tag}", cm._backward_kernel, cm._GPU_CONFIGS,
                   dict(grad_radius_ptr=f"*{acc}", grad_margin_ptr=f"*{acc}",
                        target_ptr="*i64", lip_ptr=f"*{acc}", mask_ptr="*u8",
                        margin_ptr=f"*{acc}", runner_up_ptr="*i64", grad_z_ptr=f"*{dt}",
                        grad_lip_ptr=f"*{acc}", B="i32", C="i32", q="fp32"),
                   dict(M=3, BLOCK_M=4, HAS_MASK=True, LIP_FULL=full, NORM=norm, ACC=acc_tl,
                        BLOCK_B=bb, BLOCK_C=bc))
        yield (f"noisy_modality_dropout.noise {dt}", nd._noise_kernel, nd._GPU_CONFIGS,
               dict(x_ptr=f"*{dt}", keep_ptr="*u8", sigma_used_ptr="*fp32", y_ptr=f"*{dt}",
                    numel="i64", row_len="i32", seed="i64", offset_lo="i64", offset_hi="i32",
                    fill="fp32"),
               dict(ACC=acc_tl, ROW_SPANS_BLOCK=dt != "bf16"))
        bb, bc = _rows_and_width(so._GPU_CONFIGS, 65536, 100, depth=4)
        present = {} if weighted else {"weight_ptr": None, "present_ptr": None}
        so_types = dict(z_ptr=f"*{dt}", subsets_ptr="*u8", weight_ptr=f"*{acc}",
                        present_ptr="*u8", B="i32", C="i32", S="i32")
        so_consts = dict(M=4, BLOCK_M=4, HAS_WEIGHT=weighted, HAS_PRESENT=weighted, ACC=acc_tl,
                         BLOCK_B=bb, BLOCK_C=bc, **present)
        yield (f"subset_logits {dt}", so._logits_kernel, so._GPU_CONFIGS,
               {**so_types, "out_ptr": f"*{dt}"}, so_consts)
        yield (f"subset_accuracy {dt}", so._accuracy_kernel, so._GPU_CONFIGS,
               {**so_types, "target_ptr": "*i64", "partial_ptr": "*i32"},
               {**so_consts, "ONE_CHUNK": weighted})
    for levels in (True, False):
        yield (f"noisy_modality_dropout.sample levels={levels}", nd._sample_kernel,
               [triton.Config({"BLOCK": nd._SAMPLE_BLOCK_GPU})],
               dict(p_drop_ptr="*fp32", sigma_ptr="*fp32", keep_ptr="*u8",
                    sigma_used_ptr="*fp32", B="i32", K="i32", seed="u64", offset_lo="i64",
                    offset_hi="i64"),
               dict(SIGMA_LEVELS=levels))


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted")
        return 2
    failures = []
    for name, kernel, configs, types, consts in variants():
        try:
            compile_kernel(kernel, configs, types, consts)
            print(f"ok   {name}")
        except Exception as exc:  # report every failure, not just the first
            failures.append(name)
            print(f"FAIL {name}: {exc!r}"[:4000])
    print(f"{len(failures)} failed: {failures}" if failures else "all kernels compiled")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
