"""PEP 517 build backend of mmfast: ``setuptools.build_meta`` that builds the C++ extension
against the torch already installed in the environment being installed into.

pip's default build isolation runs the build in a fresh environment that holds only the
build requirements. torch is deliberately not one of them: the extension must match the ABI
of the torch that will import it (a CPU or a CUDA build, any version), and listing it would
make pip download another torch into the build environment. Instead, this backend asks the
interpreter that runs pip (``sys.executable``, the target environment's Python) where its
torch is, outside pip's isolation, and appends that interpreter's import path to
``sys.path`` (after the build requirements, so the isolated setuptools still wins).

Without torch there, the build stops and the first line says what to do.
``MMFAST_BUILD_PYTHON`` names another interpreter whose torch to build against.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the PEP 517/660 hooks)

__all__ = [name for name in dir(_setuptools) if not name.startswith("_")]

#: environment variables set by pip's isolation that would hide the target's packages
_ISOLATION_VARS = ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME", "PYTHONSAFEPATH")

_PROBE = ("import json, sys, torch; "
          "print(json.dumps({'version': torch.__version__, 'file': torch.__file__, "
          "'path': sys.path}))")


def _missing_torch_message(python: str, detail: str) -> str:
    return (f"mmfast: install torch first, then re-run this install: `{python} -m pip install "
            f"torch` (or the CPU/CUDA build you want; see the README's Install section). "
            f"The C++ extension is built against the torch of the environment being "
            f"installed into, and {python} has none ({detail}).")


def _target_torch(python: str) -> dict:
    """Version, file and import path of ``python``'s torch, probed outside pip's isolation."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARS}
    proc = subprocess.run([python, "-c", _PROBE], env=env, capture_output=True, text=True,
                          cwd=os.path.expanduser("~") if os.path.isdir(os.path.expanduser("~"))
                          else None)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or "no output").splitlines()
        raise _NoTorch(_missing_torch_message(python, lines[-1]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


class _NoTorch(Exception):
    pass


def _expose_target_torch() -> None:
    if importlib.util.find_spec("torch") is not None:
        return  # --no-build-isolation, or a build environment that already has torch
    python = os.environ.get("MMFAST_BUILD_PYTHON") or sys.executable
    try:
        found = _target_torch(python)
    except _NoTorch as exc:
        print(exc, file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    for entry in found["path"]:
        if entry and entry not in sys.path and os.path.isdir(entry):
            sys.path.append(entry)
    print(f"mmfast: building against torch {found['version']} "
          f"({os.path.dirname(found['file'])})", file=sys.stderr, flush=True)


_expose_target_torch()
