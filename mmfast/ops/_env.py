"""Reading the ops' environment flags on every call, cheaply: ``os.environ.get`` encodes the
key and decodes the value each time (microseconds per read on a loaded machine, several reads
per op call); here the key is encoded once and the live mapping is read directly, so a change
of the environment (``monkeypatch.setenv``, ``os.environ[...] = ...``) still takes effect."""

from __future__ import annotations

import functools
import os

_DATA = getattr(os.environ, "_data", None)  # the live mapping behind os.environ
_ENCODE_KEY = getattr(os.environ, "encodekey", None)
_DECODE_VALUE = getattr(os.environ, "decodevalue", None)


@functools.cache
def _key(name: str):
    return _ENCODE_KEY(name)


def getenv(name: str) -> str | None:
    """``os.environ.get(name)``."""
    if _DATA is None or _ENCODE_KEY is None or _DECODE_VALUE is None:  # pragma: no cover
        return os.environ.get(name)
    raw = _DATA.get(_key(name))
    return None if raw is None else _DECODE_VALUE(raw)
