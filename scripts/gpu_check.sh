#!/usr/bin/env bash
# The first GPU run of mmfast as one prepared command (issue #11): build, GPU tests, GPU
# benchmarks, each a stage that writes into an output folder and fits well inside 8 minutes on
# one H200 (torch 2.11+cu130, Triton 3.6, nvcc 13.0, no network); `all` runs the three in order
# in under 10 minutes.
#
#   bash scripts/gpu_check.sh build|test|bench|all [--autotune] [--with-compile] [--out DIR]
#
#   build  preflight (nvcc on PATH, CUDA_HOME, Python.h, nvcc's CUDA major == torch's), then a
#          forced rebuild of mmfast._C with ninja on all cores for TORCH_CUDA_ARCH_LIST=9.0.
#          -> DIR/build/{preflight.txt,build.log,backends.txt,seconds}
#   test   the GPU tests only (tests/gpu: sync-debug, CUDA graphs, vector paths, grid-stride
#          batches, streams, float64, compute-sanitizer); no codegen, nvcc-compile, emulation or
#          CPU-only tests. Triton runs one config per kernel (MMFAST_TRITON_AUTOTUNE=0) unless
#          --autotune.   -> DIR/test/{pytest.log,junit.xml,seconds}
#   bench  runs even when the tests failed: the CUDA benchmarks with CUDA-event timing of
#          back-to-back calls beside the per-call wall clock, the copy bandwidth measured in the
#          same run, nvidia-smi and clocks before and after.
#          -> DIR/bench/{nvidia-smi*.txt,results_cuda.json,summary.md,cuda_auto_order.json,seconds}
#   all    build, test, bench; a failed test stage does not stop bench; exit status is the
#          first failure's.
#
# DIR defaults to runs/gpu_check. $PYTHON (default python3) must have torch with CUDA, triton,
# pytest, pytest-benchmark, ninja. Every stage has a hard time limit (timeout) so `all` cannot
# pass 10 minutes: build 120 s, test 240 s, bench 180 s (GPU_CHECK_{BUILD,TEST,BENCH}_S).
# bench leaves out the torch.compile provider (one inductor compile per case would take most of
# its budget) unless --with-compile.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=runs/gpu_check
STAGE=""
AUTOTUNE=0
BENCH_FILTER="cuda and not loaders and not compile"
while [ $# -gt 0 ]; do
  case "$1" in
    build|test|bench|all) STAGE=$1 ;;
    --autotune) AUTOTUNE=1 ;;
    --with-compile) BENCH_FILTER="cuda and not loaders" ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n 2,30p "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (expected build|test|bench|all," \
         "--autotune, --with-compile, --out DIR)"; exit 2 ;;
  esac
  shift
done
[ -n "$STAGE" ] || { echo "gpu_check.sh: expected a stage: build|test|bench|all"; exit 2; }
BUILD_LIMIT=${GPU_CHECK_BUILD_S:-120}
TEST_LIMIT=${GPU_CHECK_TEST_S:-240}
BENCH_LIMIT=${GPU_CHECK_BENCH_S:-180}

stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# Runs "$@" and writes its wall seconds into $dir/seconds.
timed() {
  local dir=$1; shift
  local t0 rc ms
  t0=$(date +%s%N)
  "$@"; rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "$((ms / 1000)).$(printf %03d $((ms % 1000))) s, rc=$rc, $(stamp)" >"$dir/seconds"
  cat "$dir/seconds"
  return $rc
}

preflight() {
  local dir=$1
  {
    echo "date: $(stamp)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if command -v nvcc >/dev/null; then nvcc --version | tail -2; else echo "FAIL: nvcc is not on PATH"; fi
    "$PYTHON" - <<'PY'
import os, re, subprocess, sys, sysconfig
from pathlib import Path
import torch
from torch.utils import cpp_extension
fail = []
if not torch.cuda.is_available():
    fail.append("torch.cuda.is_available() is False (no GPU, or a CPU build of torch)")
home = os.environ.get("CUDA_HOME") or cpp_extension.CUDA_HOME
print(f"torch {torch.__version__} CUDA {torch.version.cuda}; CUDA_HOME {home}")
if not home or not Path(home, "bin", "nvcc").exists():
    fail.append(f"CUDA_HOME ({home}) has no bin/nvcc")
header = Path(sysconfig.get_paths()["include"], "Python.h")
print(f"Python.h: {header} ({'found' if header.exists() else 'MISSING'})")
if not header.exists():
    fail.append("Python.h is missing (install the python3-dev package)")
import shutil
out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout \
    if shutil.which("nvcc") else ""
found = re.search(r"release (\d+)\.(\d+)", out)
nvcc_major = found.group(1) if found else "?"
torch_major = (torch.version.cuda or "?").split(".")[0]
print(f"CUDA major: nvcc {nvcc_major}, torch {torch_major}")
if nvcc_major != torch_major:
    fail.append(f"nvcc CUDA {nvcc_major} does not match torch's CUDA {torch_major}")
import importlib.util
missing = [m for m in ("ninja", "pytest", "pytest_benchmark", "triton")
           if importlib.util.find_spec(m) is None]
if missing:
    fail.append(f"missing Python packages: {missing}")
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
for f in fail:
    print("FAIL:", f)
sys.exit(1 if fail else 0)
PY
  } 2>&1 | tee "$dir/preflight.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] && ! grep -q "^FAIL" "$dir/preflight.txt"
}

stage_build() {
  local dir=$OUT/build
  mkdir -p "$dir"
  echo "== build (limit ${BUILD_LIMIT}s) -> $dir"
  preflight "$dir" || { echo "preflight failed: $dir/preflight.txt"; return 1; }
  export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-$(nproc)}
  rm -rf build/temp.* mmfast/_C*.so  # forced rebuild: no stale objects, no CPU-only .so
  timed "$dir" timeout "$BUILD_LIMIT" "$PYTHON" setup.py build_ext --inplace --force \
    >"$dir/build.log" 2>&1 || { tail -40 "$dir/build.log"; return 1; }
  grep -c "ninja" "$dir/build.log" >/dev/null || echo "note: no ninja in the build log"
  "$PYTHON" -c "import mmfast; print(mmfast.backends_summary())" | tee "$dir/backends.txt"
  grep -q "cuda=yes" "$dir/backends.txt" || { echo "the CUDA kernels did not load"; return 1; }
}

stage_test() {
  local dir=$OUT/test
  mkdir -p "$dir"
  echo "== test (limit ${TEST_LIMIT}s, autotune=$AUTOTUNE) -> $dir"
  MMFAST_TRITON_AUTOTUNE=$AUTOTUNE timed "$dir" timeout "$TEST_LIMIT" \
    "$PYTHON" -m pytest tests/gpu -q -rs -x --junitxml="$dir/junit.xml" -p no:cacheprovider \
    2>&1 | tee "$dir/pytest.log"
  return "${PIPESTATUS[0]}"
}

stage_bench() {
  local dir=$OUT/bench
  mkdir -p "$dir"
  echo "== bench (limit ${BENCH_LIMIT}s) -> $dir"
  nvidia-smi >"$dir/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >"$dir/nvidia-smi.txt"
  nvidia-smi -q -d CLOCK,PERFORMANCE,POWER,TEMPERATURE >"$dir/nvidia-smi-clocks-before.txt" 2>&1
  # MMFAST_BENCH_CUDA_EVENTS=1: bench_utils adds CUDA-event timing of back-to-back calls and
  # the copy bandwidth timed the same way, in this same process.
  MMFAST_BENCH_CUDA_EVENTS=1 MMFAST_TRITON_AUTOTUNE=$AUTOTUNE timed "$dir" \
    timeout "$BENCH_LIMIT" "$PYTHON" -m pytest benchmarks --benchmark-only \
    -k "$BENCH_FILTER" -q -p no:cacheprovider --benchmark-min-rounds=5 \
    --benchmark-max-time=0.2 --benchmark-json="$dir/results_cuda.json" 2>&1 | tail -8
  local rc=${PIPESTATUS[0]}
  nvidia-smi -q -d CLOCK,PERFORMANCE,POWER,TEMPERATURE >"$dir/nvidia-smi-clocks-after.txt" 2>&1
  if [ -s "$dir/results_cuda.json" ]; then
    "$PYTHON" benchmarks/summarize.py "$dir/results_cuda.json" \
      --auto-order "$dir/cuda_auto_order.json" | tee "$dir/summary.md"
  fi
  return "$rc"
}

mkdir -p "$OUT"
echo "gpu_check.sh $STAGE -> $OUT ($(stamp))"
case "$STAGE" in
  build) stage_build ;;
  test) stage_test ;;
  bench) stage_bench ;;
  all)
    status=0
    stage_build || { echo "build failed: tests and benchmarks need the CUDA build"; exit 1; }
    stage_test || status=$?
    stage_bench || { [ "$status" -ne 0 ] || status=$?; }
    echo "== all done ($(stamp)): status $status; results in $OUT"
    exit "$status"
    ;;
esac
