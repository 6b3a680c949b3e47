"""The method tests share the trainer tests' fixtures (tiny synthetic splits, a tiny config,
one thread)."""

from tests.train.conftest import _one_thread, tiny_cfg, tiny_data  # noqa: F401
