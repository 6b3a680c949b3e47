#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv, torch (never replacing a
# CUDA torch the machine already has; MMFAST_TORCH_INDEX optionally names the index to take
# torch from), the pinned requirements (every extra: what the README's commands need), and an
# editable build of mmfast with its C++ extension against that torch.
# Re-running it is cheap: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MMFAST_VENV:-.venv}
# Caches stay inside the checkout (.cache/ is git-ignored), never in the user's home.
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$PWD/.cache/pip}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    echo "[setup] reusing the machine's CUDA torch (venv with system site-packages)"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
pipi() { "$VPY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$VPY" -c "import torch" 2>/dev/null; then
  # A local wheel (pip's find-links) when the machine has one; else the index that
  # MMFAST_TORCH_INDEX names (e.g. PyTorch's CPU-only wheel index, listed by PyTorch's install
  # selector); else pip's configured index, which on Linux serves the multi-GB CUDA build.
  wheels=$(mktemp -d)
  if "$VPY" -m pip download -q --no-deps --no-index -d "$wheels" torch==2.13.0 2>/dev/null; then
    echo "[setup] installing torch==2.13.0 from the machine's local wheel"
    pipi "$wheels"/torch-*.whl   # its dependencies from pip's configured index
  elif [ -n "${MMFAST_TORCH_INDEX:-}" ]; then
    echo "[setup] installing torch==2.13.0 from \$MMFAST_TORCH_INDEX"
    pipi torch==2.13.0 --index-url "$MMFAST_TORCH_INDEX"
  else
    echo "[setup] installing torch==2.13.0 from pip's configured index (on Linux a CUDA" \
      "build of several GB; set MMFAST_TORCH_INDEX to a CPU-only wheel index to avoid it)"
    pipi torch==2.13.0
  fi
  rm -rf "$wheels"
fi
if ! "$VPY" -c "import triton" 2>/dev/null; then
  pipi triton==3.9.0
fi

stamp="$VENV/.mmfast-requirements"
if ! cmp -s requirements.txt "$stamp" 2>/dev/null; then
  echo "[setup] installing requirements.txt"
  pipi -r requirements.txt
  cp requirements.txt "$stamp"
fi

# Rebuild the extension only when a source or the build script changed.
src_hash=$(cat setup.py pyproject.toml $(find csrc buildtools -type f -not -name "*.pyc" | sort) | sha1sum | cut -c1-40)
build_stamp="$VENV/.mmfast-build"
if [ "$(cat "$build_stamp" 2>/dev/null)" != "$src_hash" ] || ! "$VPY" -c "import mmfast._C" 2>/dev/null; then
  echo "[setup] building mmfast (C++ extension; about 2 minutes on 2 cores)"
  MAX_JOBS=${MAX_JOBS:-2} pipi --no-build-isolation -e .
  echo "$src_hash" > "$build_stamp"
fi
"$VPY" -c "import mmfast; print('[setup] mmfast backends:', mmfast.backends_summary())"
