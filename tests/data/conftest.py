"""A tiny avdigits dataset made once per test session (3 samples per class: 1 per split,
a quarter of them missing one modality), shared read-only by the data tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmfast.data.avdigits import AVDigitsConfig, make_avdigits

TINY = AVDigitsConfig(num_per_class=3, seed=7, missing_rate=0.25)


@pytest.fixture(scope="session")
def tiny_config() -> AVDigitsConfig:
    """The configuration the tiny dataset was made with."""
    return TINY


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """Folder of the tiny dataset (do not modify: copy it with ``tiny_copy``)."""
    root = tmp_path_factory.mktemp("avdigits")
    make_avdigits(root, TINY)
    return root


@pytest.fixture
def tiny_copy(tiny_root, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may damage."""
    return Path(shutil.copytree(tiny_root, tmp_path / "copy"))
