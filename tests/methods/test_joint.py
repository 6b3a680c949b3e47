"""Joint training's model is certifiable like CRMT's: h = sum_m z^(m) + b with both labelled
Lipschitz tables, a sound spectral bound and a radius that perturbations respect."""

import pytest
import torch

from mmfast.methods.joint import JointModel
from mmfast.nn.model import CertifiableModel
from mmfast.train import TrainConfig, fit_method, load_model
from mmfast.train.synthetic import synthetic_split
from tests.methods.certify_checks import (
    check_lipschitz_bounds_actual_ratios,
    check_radius_respected,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = synthetic_split(96, seed=1, missing_rate=0.2), synthetic_split(48, seed=2)
    cfg = TrainConfig(epochs=2, batch_size=96, lr=5e-3, widths=(4, 8), feature_dim=8,
                      progress=False, device="cpu")
    run = tmp_path_factory.mktemp("joint")
    torch.set_num_threads(1)
    model, _ = fit_method("joint", *data, cfg, run, lip_samples=48)
    return model.eval(), data, run


def test_joint_model_is_certifiable_with_both_estimators(trained):
    model, _, run = trained
    assert isinstance(model, JointModel) and isinstance(model, CertifiableModel)
    assert set(model.lipschitz) == {"empirical", "spectral"}
    reloaded = load_model(run)
    for name, table in model.lipschitz.items():
        torch.testing.assert_close(reloaded.lipschitz[name], table)


def test_spectral_bound_is_sound(trained):
    model, (train, _), _ = trained
    assert torch.all(model.lipschitz["spectral"].diagonal(dim1=1, dim2=2) == 0)  # y == k
    check_lipschitz_bounds_actual_ratios(model, train)


def test_certified_radius_is_respected(trained):
    model, (train, _), _ = trained
    check_radius_respected(model, train)


def test_sound_table_is_exact_pairwise_and_recorded(trained):
    from mmfast.methods.lipschitz import encoder_lipschitz_bound

    model, _, _ = trained
    assert model.lipschitz_bounds["spectral"] == "exact_pairwise"
    for i, name in enumerate(model.modalities):
        bound = encoder_lipschitz_bound(model.encoders[name], model.input_shapes[name])
        w = model.head.weight_block(i).detach().double()
        torch.testing.assert_close(model.lipschitz["spectral"][i].double(),
                                   bound * torch.cdist(w, w), rtol=1e-3, atol=1e-6)
