"""Randomized smoothing per modality: closed-form linear classifier, abstention, seeds,
per-modality vs anisotropic radii, and the protocol's output."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from mmfast.eval import EvalConfig
from mmfast.eval.smoothing import (
    ABSTAIN,
    SmoothedClassifier,
    SmoothingConfig,
    clopper_pearson_lower,
    smoothing,
    smoothing_config,
)
from mmfast.nn.model import MODALITIES, MultiModalModel, MultiModalOutput
from tests.eval.toy_models import SHAPES, OracleByModality, make_inputs, oracle_data

SIGMA = {"video": 0.3, "audio": 0.1, "image": 0.2}


class LinearBinary(MultiModalModel):
    """Class 1 iff h(x) = sum_m w_m . x_m + b > 0: under noise N(0, sigma_m^2 I) per modality,
    P(class 1) = Phi(h(x) / s) with s = sqrt(sum_m sigma_m^2 ||w_m||^2), exactly."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.modalities, self.num_classes = MODALITIES, 2
        g = torch.Generator().manual_seed(seed)
        self.w = nn.ParameterDict({m: nn.Parameter(torch.randn(math.prod(s), generator=g,
                                                               dtype=torch.float64))
                                   for m, s in SHAPES.items()})
        self.b = -sum(0.5 * float(w.detach().sum()) for w in self.w.values())  # centre rand inputs

    def h(self, inputs) -> torch.Tensor:
        return sum(inputs[m].flatten(1).double() @ self.w[m] for m in self.modalities) + self.b

    def forward(self, inputs, mask):
        h = self.h(inputs)
        return MultiModalOutput(logits=torch.stack([torch.zeros_like(h), h], dim=1))

    def noise_scale(self, sigma) -> float:
        return math.sqrt(sum(sigma[m] ** 2 * float(self.w[m].detach().pow(2).sum())
                             for m in self.modalities))


def _mask(n):
    return torch.ones(n, len(MODALITIES), dtype=torch.bool)


def _smoother(model, seed=0, draw_batch=500):
    return SmoothedClassifier(model, SIGMA, seed=seed, draw_batch=draw_batch)


def test_clopper_pearson_matches_the_beta_quantile():
    k = torch.tensor([0, 1, 50, 100])
    lower = clopper_pearson_lower(k, 100, 0.01)
    assert lower[0] == 0.0
    for i in (1, 2, 3):
        assert float(lower[i]) == pytest.approx(stats.beta.ppf(0.01, int(k[i]), 101 - int(k[i])))
    assert float(lower[3]) == pytest.approx(0.01 ** (1 / 100))  # all hits: alpha^(1/n)


def test_linear_classifier_radius_matches_the_closed_form():
    model = LinearBinary().eval()
    x = make_inputs(24, seed=1)
    n, alpha = 2000, 0.001
    cert, _ = _smoother(model).certify(x, _mask(24), 50, n, alpha)
    with torch.no_grad():
        h = model.h(x)
    p_one = torch.from_numpy(stats.norm.cdf((h / model.noise_scale(SIGMA)).numpy()))
    p_true = torch.where(cert.selected == 0, 1 - p_one, p_one)  # P(f(x + d) = c_A)
    p_upper = torch.from_numpy(stats.beta.ppf(1 - alpha, cert.hits.numpy() + 1,
                                              n - cert.hits.numpy()))
    assert bool((cert.p_lower <= p_true).all()) and bool((p_true <= p_upper).all())
    ok = cert.prediction != ABSTAIN
    assert int(ok.sum()) >= 12  # most rows are far enough from the boundary
    assert torch.equal(cert.prediction[ok], (h[ok] > 0).long())
    # The certified weighted radius lies within the CP interval of the exact one,
    # |h| / s = Phi^-1(p_true) (the smoothed linear classifier's distance to its boundary).
    exact = h.abs() / model.noise_scale(SIGMA)
    assert bool((cert.radius[ok] <= exact[ok] + 1e-9).all())
    assert bool((torch.special.ndtri(p_upper.clamp(max=1 - 1e-12))[ok] >= exact[ok]).all())
    assert torch.allclose(cert.radius[ok], torch.special.ndtri(cert.p_lower[ok]))


def test_per_modality_radius_never_exceeds_the_anisotropic_bound():
    model = LinearBinary().eval()
    cert, _ = _smoother(model).certify(make_inputs(16, seed=2), _mask(16), 20, 400, 0.01)
    joint = cert.l2_radius()
    assert torch.allclose(joint, cert.radius * min(SIGMA.values()))
    for m, s in SIGMA.items():
        radius = cert.modality_radius(m)
        # a perturbation of modality m alone of l2 norm r has weighted norm r / sigma_m,
        # which is within the anisotropic certificate R exactly when r <= sigma_m R
        assert bool((radius / s <= cert.radius * (1 + 1e-12)).all())
        assert bool((joint <= radius + 1e-12).all())


def test_perturbation_within_the_modality_radius_keeps_the_smoothed_prediction():
    """The worst direction for modality m (along w_m) at 0.999 x the certified radius leaves
    the exact smoothed probability above 1/2."""
    model = LinearBinary().eval()
    x = make_inputs(16, seed=3)
    cert, _ = _smoother(model).certify(x, _mask(16), 20, 400, 0.01)
    ok = cert.prediction != ABSTAIN
    sign = (2.0 * cert.prediction - 1.0).double()
    for m in MODALITIES:
        w = model.w[m].detach()
        delta = -(sign * 0.999 * cert.modality_radius(m))[:, None] * (w / w.norm())[None]
        moved = dict(x)
        moved[m] = (x[m].flatten(1).double() + delta).view_as(x[m])
        with torch.no_grad():
            h = model.h(moved)
        assert bool((sign[ok] * h[ok] > 0).all()), m


def test_abstains_on_the_decision_boundary():
    model = LinearBinary().eval()
    x = make_inputs(8, seed=4)
    with torch.no_grad():  # move every row onto the boundary h = 0 along w_video
        h = model.h(x)
        w = model.w["video"]
        x["video"] = (x["video"].flatten(1).double() - (h / w.pow(2).sum())[:, None] * w
                      ).float().view_as(x["video"])
        assert float(model.h(x).abs().max()) < 1e-4
    cert, _ = _smoother(model).certify(x, _mask(8), 20, 300, 0.001)
    assert bool((cert.prediction == ABSTAIN).all())
    assert bool((cert.radius == 0).all()) and bool((cert.p_lower < 0.5).all())


def test_seeds_reproduce_and_differ():
    model = LinearBinary().eval()
    x = make_inputs(12, seed=5)
    a, _ = _smoother(model, seed=3).certify(x, _mask(12), 10, 200, 0.01)
    b, _ = _smoother(model, seed=3).certify(x, _mask(12), 10, 200, 0.01)
    c, _ = _smoother(model, seed=4).certify(x, _mask(12), 10, 200, 0.01)
    assert torch.equal(a.hits, b.hits) and torch.equal(a.radius, b.radius)
    assert not torch.equal(a.hits, c.hits)


def test_counts_do_not_depend_on_which_rows_share_a_batch_of_draws():
    """Every (row, draw) is counted exactly once whatever draw_batch (totals are n)."""
    model = LinearBinary().eval()
    x = make_inputs(5, seed=6)
    for draw_batch in (7, 64, 1000):
        counts, _ = _smoother(model, draw_batch=draw_batch).counts(x, _mask(5), 33, 1)
        assert counts.shape == (5, 2) and bool((counts.sum(1) == 33).all())


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="SmoothingConfig.n0"):
        SmoothingConfig(n0=0)
    with pytest.raises(ValueError, match="SmoothingConfig.alpha"):
        SmoothingConfig(alpha=1.5)
    with pytest.raises(ValueError, match="SmoothingConfig.sigma"):
        SmoothingConfig(sigma={"video": -1.0})
    with pytest.raises(ValueError, match="missing \\['image'\\]"):
        SmoothingConfig(sigma={"video": 1.0, "audio": 1.0}).sigmas(MODALITIES)
    with pytest.raises(ValueError, match="unknown keys \\['nn'\\]"):
        smoothing_config(EvalConfig(smoothing={"nn": 3}))


CFG = EvalConfig(batch_size=32, certify_radii=(0.0, 0.1),
                 smoothing={"sigma": 0.05, "n0": 10, "n": 100, "alpha": 0.01, "samples": 24,
                            "draw_batch": 256, "radii": [0.0, 0.05, 0.1]})


def test_protocol_on_an_oracle_with_pattern_certificates():
    """The late oracle votes from audio and image: perfect under small noise, so every
    certified accuracy at r = 0 is 1 with all modalities and k = 0 missing, and the
    certificate against k missing falls to the rows of class 0 (what video alone predicts)
    once both informative modalities can go."""
    model = OracleByModality(("audio", "image"), num_classes=4, late=True)
    result = smoothing(model, oracle_data(24), CFG)
    assert result["num_samples"] == 24 and result["abstain_rate"] == 0.0
    assert result["joint_l2"]["certified_accuracy"][0] == 1.0
    r_max = 0.05 * float(torch.special.ndtri(torch.tensor(0.01 ** (1 / 100))))
    assert result["joint_l2"]["quantiles"]["0.5"] == pytest.approx(r_max)
    missing = result["missing"]["certified_accuracy"]
    assert [row[0] for row in missing] == [1.0, 1.0, 0.25]  # k = 0, 1 (one informative left), 2
    assert result["lipschitz_same_rows"] == {"skipped": "the model is not a CertifiableModel"}


def test_protocol_skips_patterns_for_joint_models():
    model = OracleByModality(("audio",), num_classes=4, late=False)
    result = smoothing(model, oracle_data(48), CFG)
    assert "joint fusion" in result["missing"]["skipped"]
    assert set(result["per_modality"]) == set(MODALITIES)


def test_eval_cli_runs_the_certificates_with_the_preset_budget():
    import argparse

    from mmfast.eval.cli import add_eval_arguments, eval_config_from_args

    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args(["--protocols", "smoothing", "missing_certificate",
                              "--eval-overrides", '{"smoothing": {"n": 500, "n0": 10}}'])
    cfg = eval_config_from_args(args, "cpu")
    assert cfg.protocols == ("smoothing", "missing_certificate")
    assert smoothing_config(cfg).n == 500
    small = smoothing_config(EvalConfig.preset("small"))
    assert (small.samples, small.n0, small.n) == (32, 8, 100)
    assert smoothing_config(EvalConfig(smoothing=None)) == SmoothingConfig()  # Cohen et al.
    assert (SmoothingConfig().n0, SmoothingConfig().n, SmoothingConfig().alpha) == \
        (100, 100_000, 0.001)


def test_amp_counts_every_draw_and_mostly_agrees_with_float32():
    from tests.eval.toy_models import LinearLate

    model = LinearLate(num_classes=3, seed=2).eval()
    x = make_inputs(6, seed=8)
    exact, _ = SmoothedClassifier(model, SIGMA, draw_batch=50).counts(x, _mask(6), 40, 1)
    amp, _ = SmoothedClassifier(model, SIGMA, draw_batch=50, amp=True).counts(x, _mask(6), 40, 1)
    assert bool((amp.sum(1) == 40).all())
    assert float((amp - exact).abs().sum()) <= 0.2 * 6 * 40  # bf16 flips a few near-ties


def test_absent_modalities_reach_the_model_as_zeros_and_present_ones_noisy():
    seen = []

    class Spy(LinearBinary):
        def forward(self, inputs, mask):
            seen.append(({m: v.clone() for m, v in inputs.items()}, mask.clone()))
            return super().forward(inputs, mask)

    x = make_inputs(4, seed=9)
    mask = _mask(4)
    mask[1, 0] = mask[2, 2] = False
    _smoother(Spy().eval(), draw_batch=100).counts(x, mask, 5, 0)
    inputs, m = seen[0]
    rows = torch.arange(4).repeat_interleave(5)
    assert torch.equal(m, mask[rows])
    for j, name in enumerate(MODALITIES):
        absent = ~mask[rows, j]
        assert bool((inputs[name][absent] == 0).all()), name
        noise = (inputs[name] - x[name][rows])[~absent]
        assert float(noise.std()) == pytest.approx(SIGMA[name], rel=0.25), name
