"""Manifest builders for real datasets' folder layouts (files are referenced, not copied)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mmfast.data.adapters.avmnist import build_avmnist_manifest
from mmfast.data.adapters.cremad import build_cremad_manifest
from mmfast.data.adapters.kinetics_sounds import build_kinetics_sounds_manifest

#: CLI name -> builder(src, out) -> manifest path
ADAPTERS: dict[str, Callable[..., Path]] = {
    "avmnist": build_avmnist_manifest,
    "crema-d": build_cremad_manifest,
    "kinetics-sounds": build_kinetics_sounds_manifest,
}

__all__ = ["ADAPTERS", "build_avmnist_manifest", "build_cremad_manifest",
           "build_kinetics_sounds_manifest"]
