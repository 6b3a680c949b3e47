"""Shared fixtures: tiny synthetic splits and a tiny config (seconds per fit on one core)."""

import pytest
import torch

from mmfast.train import TrainConfig
from mmfast.train.synthetic import synthetic_split


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine has 2 cores shared by several jobs: spinning OpenMP threads are far slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_data():
    signal = {"video": 0.5, "audio": 0.5, "image": 0.5}
    return (synthetic_split(96, seed=1, signal=signal, missing_rate=0.2),
            synthetic_split(48, seed=2, signal=signal))


@pytest.fixture
def tiny_cfg():
    return TrainConfig(epochs=2, batch_size=32, widths=(4, 8), feature_dim=8, progress=False,
                       device="cpu")
