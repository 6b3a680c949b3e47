"""``mmfast train gaussian_aug``: per-modality Gaussian noise via noisy_modality_dropout."""

from __future__ import annotations

import pytest
import torch

from mmfast.methods import ModelSpec, create_method, list_methods
from mmfast.methods.gaussian_aug import gaussian_noise_loss
from mmfast.train import fit_method, load_model
from mmfast.train.batches import take
from mmfast.train.config import TrainConfig
from mmfast.train.engine import StepInfo
from tests.spy_model import SpyModel
from tests.train.conftest import _one_thread  # noqa: F401  (autouse: this module only)


@pytest.fixture
def cfg():
    return TrainConfig(epochs=1, batch_size=32, widths=(4, 8), feature_dim=8, progress=False,
                       device="cpu")


def test_noise_has_the_modality_sigma_and_the_step_seed(tiny_data):
    batch = take(tiny_data[0], torch.arange(64), torch.device("cpu"))
    sigma = {"video": 0.5, "audio": 0.0, "image": 2.0}
    spy = SpyModel()
    loss_fn = gaussian_noise_loss(sigma)
    for seed in (1, 1, 2):
        loss_fn(spy, batch, StepInfo("s", 0, 0, seed=seed))
    first, again, other = (inputs for inputs, _ in spy.seen)
    for m, s in sigma.items():
        noise = first[m] - batch[m]
        assert float(noise.std()) == pytest.approx(s, rel=0.1, abs=1e-7), m
        assert torch.equal(first[m], again[m])  # same step seed, same noise
        assert torch.equal(first[m], other[m]) == (s == 0), m


def test_sigma_is_validated_with_the_argument_name(tiny_data, cfg):
    with pytest.raises(ValueError, match="'sigma' expected finite values >= 0"):
        create_method("gaussian_aug", sigma=-0.1)
    spec = ModelSpec.from_data(tiny_data[0], cfg.widths, cfg.feature_dim)
    method = create_method("gaussian_aug", sigma={"video": 0.1, "audio": 0.1})
    with pytest.raises(ValueError, match="missing \\['image'\\]"):
        method.build_model(spec)


def test_trains_a_late_fusion_model_that_reloads(tiny_data, cfg, tmp_path):
    assert "gaussian_aug" in list_methods()
    sigma = {"video": 0.1, "audio": 0.2, "image": 0.3}
    model, stats = fit_method("gaussian_aug", *tiny_data, cfg, tmp_path / "run",
                              sigma=sigma)
    assert stats["method"] == "gaussian_aug"
    assert stats["sigma"] == sigma
    reloaded = load_model(tmp_path / "run")
    x = take(tiny_data[1], torch.arange(8), torch.device("cpu"))
    inputs = {m: x[m] for m in model.modalities}
    model.eval()
    with torch.no_grad():
        a, b = model(inputs, x["mask"]), reloaded(inputs, x["mask"])
    assert torch.allclose(a.logits, b.logits) and a.modality_logits is not None
