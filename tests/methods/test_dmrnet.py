"""DMRNet: sampling in training / the mean in evaluation, the KL term, per-combination variance
mining and the hard-combination regulariser."""

import pytest
import torch
import torch.nn.functional as F

from mmfast import ops
from mmfast.methods import create_method
from mmfast.methods.base import ModelSpec
from mmfast.methods.common import gaussian_kl, sample_uniform_subsets, subset_ids
from mmfast.methods.dmrnet import hard_combination_loss
from mmfast.train.api import fit_method, load_model
from mmfast.train.engine import StepInfo


def _model(data, cfg, **hparams):
    method = create_method("dmrnet", **hparams)
    torch.manual_seed(0)
    return method, method.build_model(ModelSpec.from_data(data, cfg.widths, cfg.feature_dim))


def test_samples_in_train_mode_and_is_deterministic_in_eval(tiny_data, tiny_cfg):
    train, _ = tiny_data
    _, model = _model(train, tiny_cfg)
    batch = {m: train[m][:16] for m in model.modalities}
    mask = train["mask"][:16]
    model.train()
    with torch.no_grad():
        a, b = model(batch, mask), model(batch, mask)
    assert not torch.allclose(a.logits, b.logits)
    torch.testing.assert_close(a.aux["mu"], b.aux["mu"])  # same Gaussian, different draws
    spread = (a.aux["embedding"] - a.aux["mu"]) / torch.exp(0.5 * a.aux["logvar"])
    assert 0.5 < float(spread.std()) < 1.5  # eps ~ N(0, 1)
    model.eval()
    with torch.no_grad():
        c, d = model(batch, mask), model(batch, mask)
    torch.testing.assert_close(c.logits, d.logits, rtol=0, atol=0)
    torch.testing.assert_close(c.aux["embedding"], c.aux["mu"], rtol=0, atol=0)
    torch.testing.assert_close(c.logits, model.head.fc(c.aux["mu"]))


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    prior = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0])
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(5, 7), prior.sqrt().unsqueeze(1).expand(5, 7))
    torch.testing.assert_close(gaussian_kl(mu, logvar, prior),
                               torch.distributions.kl_divergence(q, p).sum(1))


def test_uniform_subset_dropout():
    present = torch.tensor([[True, True, False]] * 3000 + [[False, False, False]])
    drawn = sample_uniform_subsets(present, torch.Generator().manual_seed(0))
    assert not (drawn & ~present).any() and drawn[:-1].any(1).all() and not drawn[-1].any()
    counts = torch.bincount(subset_ids(drawn[:-1]), minlength=7).float() / 3000
    # Only {video}, {audio}, {video, audio} (ids 0, 1, 2), each about 1/3.
    torch.testing.assert_close(counts[:3], torch.full((3,), 1 / 3), atol=0.04, rtol=0)
    assert counts[3:].sum() == 0


def test_hard_combination_is_the_uni_modal_one_with_the_largest_mean_variance(tiny_data,
                                                                            tiny_cfg):
    train, _ = tiny_data
    _, model = _model(train, tiny_cfg)
    head = model.head
    head.reset_variance()
    # rows of all_subsets: 0 {video}, 1 {audio}, 2 {video, audio}, 3 {image}, 6 all three
    combos = torch.tensor([0, 0, 3, 3, 6, 6, 2, -1])
    logvar = torch.log(torch.tensor([1.0, 3.0, 2.5, 2.5, 9.0, 7.0, 4.0, 99.0])).unsqueeze(1)
    head.record_variance(combos, logvar.expand(-1, 4))
    means = head.mean_variance()
    torch.testing.assert_close(means[[0, 2, 3, 6]], torch.tensor([2.0, 4.0, 2.5, 8.0],
                                                                 dtype=torch.float64))
    assert torch.isnan(means[[1, 4, 5]]).all()  # never seen; the empty row is ignored
    # The full set (8.0) and the pair (4.0) have larger variances, but only the uni-modal
    # combinations compete (the official audio-visual code): {image} (2.5) wins.
    assert head.select_hard_combination() == 3 == int(head.hard_combination)
    head.reset_variance()
    head.record_variance(torch.tensor([6, 2]), torch.zeros(2, 4))
    with pytest.raises(RuntimeError, match="uni-modal"):
        head.select_hard_combination()


def test_hard_regularizer_weights_only_the_hard_combination(tiny_data, tiny_cfg):
    train, _ = tiny_data
    method, model = _model(train, tiny_cfg, alpha=0.0, beta=0.5)
    ce = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(hard_combination_loss(ce, torch.tensor([2, 0, 2, 1]), 2)) == pytest.approx(1.0)
    model.head.hard_combination.fill_(2)  # {video, audio}
    batch = {k: v[:32] for k, v in train.items()}
    info = StepInfo("t", 0, 0, seed=7)
    model.eval()  # deterministic forward, so the loss can be recomputed by hand
    loss, metrics = method.loss(mining_epochs=0)(model, batch, info)
    mask = sample_uniform_subsets(batch["mask"], info.generator())
    with torch.no_grad():
        out = model({m: batch[m] for m in model.modalities}, mask)
    per_sample = F.cross_entropy(out.logits, batch["label"], reduction="none")
    hard = subset_ids(mask) == 2
    expected = per_sample.mean() + 0.5 * per_sample[hard].sum() / 32
    torch.testing.assert_close(loss, expected)
    assert metrics["hard_fraction"] == pytest.approx(float(hard.float().mean()))


def test_mining_records_each_combination_variance(tiny_data, tiny_cfg):
    train, _ = tiny_data
    method, model = _model(train, tiny_cfg)
    model.head.reset_variance()
    batch = {k: v[:32] for k, v in train.items()}
    info = StepInfo("t", 0, 0, seed=3)
    model.eval()
    method.loss(mining_epochs=1)(model, batch, info)
    mask = sample_uniform_subsets(batch["mask"], info.generator())
    with torch.no_grad():
        logvar = model({m: batch[m] for m in model.modalities}, mask).aux["logvar"]
    ids = subset_ids(mask)
    for c in ids.unique().tolist():
        expected = logvar[ids == c].exp().mean(1).sum().double()
        torch.testing.assert_close(model.head.variance_sum[c], expected)
        assert float(model.head.variance_count[c]) == float((ids == c).sum())


def test_fit_picks_the_hard_combination_and_round_trips(tmp_path, tiny_data, tiny_cfg):
    train, val = tiny_data
    model, stats = fit_method("dmrnet", train, val, tiny_cfg, tmp_path)
    head = model.head
    single = ops.all_subsets(3).sum(1) == 1
    mean = head.mean_variance().nan_to_num(-1.0).masked_fill(~single, -1.0)
    assert int(head.hard_combination) == int(mean.argmax())
    assert stats["hard_combination"] in stats["mean_variance"]
    assert stats["epochs"] == {"dmrnet": 2}  # one stage: mining epoch, then hard epoch
    loaded = load_model(tmp_path)
    assert int(loaded.head.hard_combination) == int(head.hard_combination)
    batch = {m: val[m] for m in loaded.modalities}
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch, val["mask"]).logits,
                                   model(batch, val["mask"]).logits)


def test_pme_batch_norm_puts_mu_on_the_noise_scale(tiny_data, tiny_cfg):
    # mu = BN(W_mu c), log sigma^2 = BN(W_v c) (spec): without the BNs the class signal in mu
    # (per-dim spread ~0.05 at init on avdigits) drowned in sigma = 1 sampling noise.
    train, _ = tiny_data
    _, model = _model(train, tiny_cfg)
    head = model.head
    batch = {m: train[m][:64] for m in model.modalities}
    mask = train["mask"][:64]
    model.train()
    with torch.no_grad():
        out = model(batch, mask)
    mu, logvar = out.aux["mu"], out.aux["logvar"]
    torch.testing.assert_close(mu.mean(0), torch.zeros_like(mu[0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(mu.std(0, unbiased=False), torch.ones_like(mu[0]), atol=0.02,
                               rtol=0)
    torch.testing.assert_close(logvar.mean(0), torch.zeros_like(mu[0]), atol=1e-4, rtol=0)
    assert float(mu.std(0).mean()) > 0.5 * float(torch.exp(0.5 * logvar).mean())
    assert float(head.pme.mu_norm.running_var.mean()) != 1.0  # statistics were updated
    # A one-sample training batch (short last batch) uses the running statistics, unchanged.
    running = head.pme.mu_norm.running_mean.clone()
    with torch.no_grad():
        single = model({m: v[:1] for m, v in batch.items()}, mask[:1])
    torch.testing.assert_close(head.pme.mu_norm.running_mean, running, rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        alone = model({m: v[:1] for m, v in batch.items()}, mask[:1])
        together = model(batch, mask)
    torch.testing.assert_close(single.aux["mu"], alone.aux["mu"])
    torch.testing.assert_close(alone.logits, together.logits[:1])  # eval: per-sample


def test_mining_then_hard_in_one_stage_with_one_optimizer(tmp_path, tiny_data, tiny_cfg,
                                                          monkeypatch):
    # Restarting AdamW when the regulariser switches on cost accuracy (avdigits, 3 seeds).
    import mmfast.train.engine as engine

    made = []
    original = engine._make_optimizer
    monkeypatch.setattr(engine, "_make_optimizer",
                        lambda *args: made.append(1) or original(*args))
    train, val = tiny_data
    fit_method("dmrnet", train, val, tiny_cfg, tmp_path)
    assert len(made) == 1
    # The loss mines during the first epochs and picks c* at the first step after them.
    method, model = _model(train, tiny_cfg, mining_epochs=1)
    model.head.reset_variance()
    loss_fn = method.loss(mining_epochs=1)
    batch = {k: v[:32] for k, v in train.items()}
    _, metrics = loss_fn(model, batch, StepInfo("dmrnet", 0, 0, seed=1))
    assert "hard_fraction" not in metrics and int(model.head.hard_combination) == -1
    expected = int(model.head.mean_variance().nan_to_num(-1.0).argmax())
    _, metrics = loss_fn(model, batch, StepInfo("dmrnet", 1, 5, seed=2))
    assert "hard_fraction" in metrics and int(model.head.hard_combination) == expected


@pytest.mark.parametrize("name", ["udml", "dmrnet", "mmanet"])
def test_absent_modalities_do_not_change_the_output(name, tiny_data, tiny_cfg):
    # The model contract (mmfast.nn.model): the content of an absent modality is irrelevant.
    train, _ = tiny_data
    method = create_method(name)
    model = method.build_model(ModelSpec.from_data(train, tiny_cfg.widths, tiny_cfg.feature_dim))
    model.eval()
    if name == "udml":
        model.head.dynamic.fill_(True)  # uncertainty-weighted fusion
    mask = torch.tensor([[True, False, True]] * 8)
    batch = {m: train[m][:8] for m in model.modalities}
    garbage = dict(batch, audio=torch.randn_like(batch["audio"]) * 100)
    with torch.no_grad():
        torch.testing.assert_close(model(batch, mask).logits, model(garbage, mask).logits)
