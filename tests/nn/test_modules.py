"""The drop-in modules inside a plain PyTorch training loop: a tiny two-modality late-fusion
model trained with ModalityNoiseDropout and MaskedFusion, evaluated with SubsetEvaluator and
CertifiedMargin."""

import torch
from torch import nn

from mmfast.nn import CertifiedMargin, MaskedFusion, ModalityNoiseDropout, SubsetEvaluator
from mmfast.ops import all_subsets


def make_data(n, gen):
    """Two modalities, each carrying half of the label information (4 classes = 2 bits)."""
    y = torch.randint(0, 4, (n,), generator=gen)
    a = torch.randn(n, 8, generator=gen) * 0.3
    v = torch.randn(n, 8, generator=gen) * 0.3
    a[:, 0] += (y % 2) * 2 - 1  # audio knows the low bit
    v[:, 0] += (y // 2) * 2 - 1  # video knows the high bit
    a[:, 1] += (y // 2) * 0.6 - 0.3  # and a little of the other bit
    v[:, 1] += (y % 2) * 0.6 - 0.3
    return {"audio": a, "video": v}, y


class LateFusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleDict({m: nn.Linear(8, 4) for m in ("audio", "video")})
        self.fuse = MaskedFusion(2, learn_weights=True)

    def forward(self, inputs, mask):
        z = torch.stack([self.heads[m](inputs[m]) for m in ("audio", "video")], dim=1)
        return self.fuse(z, mask), z


def test_tiny_model_trains_with_the_modules():
    gen = torch.Generator().manual_seed(0)
    train_x, train_y = make_data(2048, gen)
    test_x, test_y = make_data(1024, gen)
    model = LateFusion()
    augment = ModalityNoiseDropout(p_drop=0.3, sigma=0.05, seed=1, modalities=("audio", "video"))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    augment.train()
    for _ in range(150):
        idx = torch.randint(0, 2048, (128,), generator=gen)
        inputs, mask = augment({k: v[idx] for k, v in train_x.items()})
        assert torch.all(mask.sum(1) >= 1)
        logits, _ = model(inputs, mask)
        loss = nn.functional.cross_entropy(logits, train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert int(augment.step) == 150 and model.fuse.raw_weight.grad is not None

    model.eval()
    augment.eval()
    evaluator = SubsetEvaluator(("audio", "video"))
    with torch.no_grad():
        inputs, mask = augment(test_x)
        assert torch.equal(inputs["audio"], test_x["audio"])  # identity in eval
        for chunk in torch.arange(1024).split(300):  # several batches accumulate exactly
            _, z = model({k: v[chunk] for k, v in inputs.items()}, mask[chunk])
            evaluator.update(z, test_y[chunk])
    acc = evaluator.compute()
    assert set(acc) == {"audio", "video", "audio+video"} and int(evaluator.total) == 1024
    assert acc["audio+video"] > 0.9  # both bits known
    assert 0.3 < acc["audio"] < 0.85 and 0.3 < acc["video"] < 0.85  # one bit and a hint

    # Certified radius of the fused sum with exact per-modality Lipschitz constants of the
    # linear heads: ||W_y - W_k||_2 for every class pair.
    with torch.no_grad():
        _, z = model(test_x, mask)
        lip = torch.stack([torch.cdist(h.weight, h.weight) for h in model.heads.values()])
        cert = CertifiedMargin(lip)
        radius, _, _ = cert(z, test_y)
        cert_acc = cert.certified_accuracy(z, test_y, [0.0, 0.1, 10.0])
    assert cert_acc[0] > 0.9 and cert_acc[0] >= cert_acc[1] >= cert_acc[2]
    assert cert_acc[2] == 0
    assert torch.all(radius[radius > 0] < 10)


def test_masked_fusion_weight_override_and_evaluator_names():
    fuse = MaskedFusion(3)
    x = torch.randn(4, 3, 5)
    mask = torch.ones(4, 3, dtype=torch.bool)
    w = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(fuse(x, mask, w), x[:, 0])
    ev = SubsetEvaluator(("video", "audio", "image"))
    assert ev.names[:3] == ["video", "audio", "video+audio"] and len(ev.names) == 7
    assert torch.equal(ev.subsets, all_subsets(3))
