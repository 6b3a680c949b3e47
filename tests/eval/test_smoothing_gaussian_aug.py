"""``mmfast train gaussian_aug``: per-modality Gaussian noise via noisy_modality_dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmfast.methods import ModelSpec, create_method, list_methods
from mmfast.methods.gaussian_aug import gaussian_noise_loss
from mmfast.nn.model import MultiModalOutput
from mmfast.train import fit_method, load_model
from mmfast.train.batches import take
from mmfast.train.config import TrainConfig
from mmfast.train.engine import StepInfo
from mmfast.train.synthetic import synthetic_split


@pytest.fixture(autouse=True)
def _one_thread():  # as tests/train: 2 shared cores, spinning OpenMP threads are slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits():
    signal = {"video": 0.5, "audio": 0.5, "image": 0.5}
    return (synthetic_split(96, seed=1, signal=signal, missing_rate=0.2),
            synthetic_split(48, seed=2, signal=signal))


@pytest.fixture
def cfg():
    return TrainConfig(epochs=1, batch_size=32, widths=(4, 8), feature_dim=8, progress=False,
                       device="cpu")


class _Spy(nn.Module):
    modalities = ("video", "audio", "image")

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))
        self.seen = []

    def forward(self, inputs, mask):
        self.seen.append({m: x.clone() for m, x in inputs.items()})
        return MultiModalOutput(self.w.expand(mask.shape[0], 4))


def test_noise_has_the_modality_sigma_and_the_step_seed(splits):
    batch = take(splits[0], torch.arange(64), torch.device("cpu"))
    sigma = {"video": 0.5, "audio": 0.0, "image": 2.0}
    spy = _Spy()
    loss_fn = gaussian_noise_loss(sigma)
    for seed in (1, 1, 2):
        loss_fn(spy, batch, StepInfo("s", 0, 0, seed=seed))
    first, again, other = spy.seen
    for m, s in sigma.items():
        noise = first[m] - batch[m]
        assert float(noise.std()) == pytest.approx(s, rel=0.1, abs=1e-7), m
        assert torch.equal(first[m], again[m])  # same step seed, same noise
        assert torch.equal(first[m], other[m]) == (s == 0), m


def test_sigma_is_validated_with_the_argument_name(splits, cfg):
    with pytest.raises(ValueError, match="'sigma' expected finite values >= 0"):
        create_method("gaussian_aug", sigma=-0.1)
    spec = ModelSpec.from_data(splits[0], cfg.widths, cfg.feature_dim)
    method = create_method("gaussian_aug", sigma={"video": 0.1, "audio": 0.1})
    with pytest.raises(ValueError, match="missing \\['image'\\]"):
        method.build_model(spec)


def test_trains_a_late_fusion_model_that_reloads(splits, cfg, tmp_path):
    assert "gaussian_aug" in list_methods()
    sigma = {"video": 0.1, "audio": 0.2, "image": 0.3}
    model, stats = fit_method("gaussian_aug", *splits, cfg, tmp_path / "run",
                              sigma=sigma)
    assert stats["method"] == "gaussian_aug"
    assert stats["sigma"] == sigma
    reloaded = load_model(tmp_path / "run")
    x = take(splits[1], torch.arange(8), torch.device("cpu"))
    inputs = {m: x[m] for m in model.modalities}
    model.eval()
    with torch.no_grad():
        a, b = model(inputs, x["mask"]), reloaded(inputs, x["mask"])
    assert torch.allclose(a.logits, b.logits) and a.modality_logits is not None
