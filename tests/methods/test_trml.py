"""TRML: the InfoNCE losses, missing modality inference at deployment, and its mechanism (the
virtual embedding approaches the real one as training proceeds)."""

import pytest
import torch
import torch.nn.functional as F

from mmfast.methods import ModelSpec, create_method
from mmfast.methods.trml import (
    EmbeddingCenter,
    clip_alignment_loss,
    generation_similarity,
    info_nce,
    recalibrate_centers,
    semantic_matching_loss,
)
from mmfast.nn.encoders import build_encoder
from mmfast.train import TrainConfig, fit_method
from mmfast.train.engine import evaluate_accuracy
from mmfast.train.synthetic import synthetic_split

CPU = torch.device("cpu")


def test_info_nce_rewards_matched_pairs():
    a = F.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    assert float(info_nce(a, a, 0.05)) < 0.05
    assert float(info_nce(a, a.roll(1, dims=0), 0.05)) > 5.0
    with pytest.raises(ValueError, match="temperature"):
        info_nce(a, a, 0.0)
    with pytest.raises(ValueError, match="same"):
        info_nce(a, a[:3], 0.1)


def test_losses_skip_rows_without_a_pair():
    e = F.normalize(torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    only_first = torch.zeros(4, 3, dtype=torch.bool)
    only_first[:, 0] = True
    assert float(clip_alignment_loss(e, only_first, 0.1)) == 0.0  # no pair of modalities
    # Modality 0 is present but every source is absent: there is no virtual embedding to match.
    assert float(semantic_matching_loss(e, e, only_first, only_first, 0.1)) == 0.0
    full = torch.ones(4, 3, dtype=torch.bool)
    assert float(semantic_matching_loss(e, e, full, full, 0.1)) > 0.0


def _model(**hparams):
    data = synthetic_split(8, seed=0)
    spec = ModelSpec.from_data(data, (4,), 8)
    torch.manual_seed(0)
    return create_method("trml", **hparams).build_model(spec).eval(), data


def test_missing_slot_is_filled_by_a_virtual_embedding_of_the_present_ones():
    model, data = _model()
    inputs = {m: data[m] for m in model.modalities}
    changed = dict(inputs, audio=torch.randn_like(inputs["audio"]))
    mask = torch.ones(8, 3, dtype=torch.bool)
    mask[:, 1] = False
    with torch.no_grad():
        out = model(inputs, mask)
        torch.testing.assert_close(out.logits, model(changed, mask).logits)
        torch.testing.assert_close(out.aux["virtual"].norm(dim=-1), torch.ones(8, 3))
        # Dropping the virtual slot's weight changes the prediction: the slot is used.
        model.virtual_weight = 0.0
        assert not torch.allclose(out.logits, model(inputs, mask).logits)


def test_plugged_encoders_skip_prealignment_and_can_stay_frozen(tiny_data, tiny_cfg):
    train, val = tiny_data
    encoders = {m: build_encoder(train[m].shape[1:], (4,), 8) for m in ("video", "audio", "image")}
    before = {m: [p.detach().clone() for p in e.parameters()] for m, e in encoders.items()}
    model, stats = fit_method("trml", train, val, tiny_cfg, None, encoders=encoders,
                              prealign_epochs=0, freeze_encoders=True)
    assert set(stats["epochs"]) == {"trml"} and stats["prealign_epochs"] == 0
    for m, e in encoders.items():
        assert model.encoders[m] is e
        assert all(torch.equal(p, q) for p, q in zip(e.parameters(), before[m]))


def test_generated_embedding_approaches_the_real_one_and_predicts_without_a_modality():
    signal = {"video": 0.6, "audio": 0.6, "image": 0.6}
    train = synthetic_split(256, seed=10, signal=signal, missing_rate=0.2)
    val = synthetic_split(96, seed=50, signal=signal)
    test = synthetic_split(200, seed=90, signal=signal)
    cfg = TrainConfig(epochs=10, batch_size=32, widths=(4, 8), feature_dim=16, progress=False,
                      device="cpu", seed=0)
    model, stats = fit_method("trml", train, val, cfg, None)
    cosine = stats["generation_cosine"]
    assert set(stats["epochs"]) == {"trml_prealign", "trml"}
    held_out = generation_similarity(model, test)
    # The space is centered (EmbeddingCenter): no shared offset counts toward the cosine, only
    # per-sample agreement, which the modalities' independent noise bounds (~0.1-0.16 here).
    for m in model.modalities:
        assert cosine["final"][m] > cosine["initial"][m] + 0.05, cosine
        assert held_out[m] > cosine["initial"][m] + 0.05, (held_out, cosine)
    for k in range(3):  # 4 classes: chance is 0.25
        missing = test["mask"].clone()
        missing[:, k] = False
        assert evaluate_accuracy(model, test, cfg, CPU, missing) > 0.4


def test_embedding_center_uses_the_present_rows_and_recalibrates_to_the_exact_mean():
    center = EmbeddingCenter(4).train()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(2)) + 5.0
    present = torch.tensor([True, True, True, True, False, False])
    x[~present] = 1e3  # absent rows (zero-filled inputs in real data) must not move the mean
    out = center(x, present)
    torch.testing.assert_close(out[present].mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(center.running_mean, 0.1 * x[present].mean(0))  # momentum 0.1
    center.exact = True  # what recalibrate_centers sets: an exact average over the batches
    center.running_mean.zero_()
    center.count.zero_()
    center(x[:2], None)
    center(x[2:4], None)
    torch.testing.assert_close(center.running_mean, x[:4].mean(0))
    center.eval()
    torch.testing.assert_close(center(x), x - x[:4].mean(0))


def _mean_pairwise_cosine(e):
    sim = e @ e.t()
    n = e.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


@pytest.mark.parametrize("center", [True, False])
def test_centering_spreads_embeddings_that_share_a_large_offset(center):
    """Encoder features of real data share a large common part (on avdigits the samples'
    embeddings had mean pairwise cosine 0.98 at initialisation): unit-normalised as they are,
    every sample sits at almost the same point, InfoNCE stays at log(batch) and the shared
    head sees tiny differences. Centering before the normalisation removes that offset."""
    model, data = _model(center=center)
    with torch.no_grad():
        for proj in model.projections:
            proj.bias.add_(10.0)  # a common offset dominating the per-sample variation
    recalibrate_centers(model, data)
    assert not model.training  # recalibration leaves the mode as it was
    with torch.no_grad():
        e = model.embed({m: data[m] for m in model.modalities})
    cosines = [_mean_pairwise_cosine(e[:, i]) for i in range(3)]
    if center:
        assert max(cosines) < 0.3, cosines
    else:
        assert min(cosines) > 0.95, cosines


def test_fit_leaves_the_exact_training_mean_as_the_center(tiny_data, tiny_cfg):
    train, val = tiny_data
    model, _ = fit_method("trml", train, val, tiny_cfg, None)
    model.eval()
    present = train["mask"].bool()
    with torch.no_grad():
        for i, m in enumerate(model.modalities):
            z = model.projections[i](model.encoders[m](train[m]))
            torch.testing.assert_close(model.centers[i].running_mean, z[present[:, i]].mean(0),
                                       atol=1e-5, rtol=1e-4)
