#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU and a CUDA build of torch (no network needed):
# builds mmfast._C with the CUDA kernels in place, runs the GPU tests, runs the GPU benchmarks,
# and derives the per-op CUDA/Triton order of `auto` dispatch from them.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: runs/gpu_check
#
# OUT_DIR receives build.log, backends.txt, gpu_tests.log (+ junit XML), results_cuda.json (raw
# pytest-benchmark output), summary.md (the table of benchmarks/README.md) and
# cuda_auto_order.json. To adopt a run: copy results_cuda.json to
# benchmarks/results_cuda_<date>.json, cuda_auto_order.json to mmfast/ops/, and the table to
# benchmarks/README.md. Uses $PYTHON (default python3); pytest and pytest-benchmark must be
# importable (they are in requirements.txt). Stops at the first failing step.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"

"$PYTHON" - <<'PY'
import torch
assert torch.cuda.is_available(), "scripts/gpu_check.sh needs a CUDA GPU and a CUDA torch"
import importlib.util
missing = [m for m in ("pytest", "pytest_benchmark", "triton", "numpy")
           if importlib.util.find_spec(m) is None]
assert not missing, f"install {missing} first (versions: requirements.txt)"
print(f"torch {torch.__version__} CUDA {torch.version.cuda} on {torch.cuda.get_device_name()}")
PY

echo "== build mmfast._C with CUDA kernels (log: $OUT/build.log)"
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PYTHON" setup.py build_ext --inplace >"$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; exit 1; }
"$PYTHON" -c "import mmfast; print(mmfast.backends_summary())" | tee "$OUT/backends.txt"
grep -q "cuda=yes" "$OUT/backends.txt" || { echo "the CUDA kernels did not load"; exit 1; }

echo "== GPU tests (every backend vs the reference on CUDA, Triton kernels, torch.compile)"
"$PYTHON" -m pytest tests/ops tests/kernels tests/cuda tests/nn tests/test_backends.py \
  tests/test_auto_order.py -q -rs --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log"

echo "== GPU benchmarks (eager vs torch.compile vs cuda vs triton, same inputs)"
"$PYTHON" -m pytest benchmarks --benchmark-only -k "cuda and not loaders" -q \
  --benchmark-json="$OUT/results_cuda.json" 2>&1 | tail -5
"$PYTHON" benchmarks/summarize.py "$OUT/results_cuda.json" \
  --auto-order "$OUT/cuda_auto_order.json" | tee "$OUT/summary.md"
echo "== done: $OUT"
