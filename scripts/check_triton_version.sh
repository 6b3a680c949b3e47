#!/usr/bin/env bash
# Runs the Triton tests (interpreter on the CPU, plus sm_90 code generation of every autotune
# config) against another Triton release than the venv's, without touching the venv: the GPU
# image pins Triton 3.6 while CI installs 3.9, and the kernels must stay valid for both.
#
#   bash scripts/check_triton_version.sh 3.6.0
#
# Installs triton==VERSION (and numpy 2.2: Triton 3.6's interpreter calls int() on 1-element
# arrays, which numpy >= 2.4 rejects) into .cache/triton-VERSION and puts it first on
# PYTHONPATH. Needs the venv from scripts/setup.sh and a pip index that has that Triton.
set -euo pipefail

cd "$(dirname "$0")/.."
VERSION=${1:?usage: bash scripts/check_triton_version.sh VERSION (e.g. 3.6.0)}
LIB=.cache/triton-$VERSION
if [ ! -f "$LIB/.complete" ]; then
  rm -rf "$LIB"
  .venv/bin/pip install -q --no-deps --target "$LIB" "triton==$VERSION" "numpy==2.2.6"
  touch "$LIB/.complete"
fi
export PYTHONPATH="$PWD/$LIB${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_CACHE_DIR="$PWD/.cache/triton-cache-$VERSION"
.venv/bin/python -c "import triton; assert triton.__version__ == '$VERSION', triton.__version__; print('Triton', triton.__version__)"
.venv/bin/python -m pytest -q -p no:cacheprovider tests/kernels tests/ops -k "triton or kernels"
