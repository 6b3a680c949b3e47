"""The evaluation tests that train (gaussian_aug) share the trainer tests' tiny synthetic
splits."""

from tests.train.conftest import tiny_data  # noqa: F401
