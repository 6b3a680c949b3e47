"""Soundness checks shared by every certifiable method's tests (CRMT, joint)."""

import torch

from mmfast import ops


def check_lipschitz_bounds_actual_ratios(model, data, estimator="spectral", n=16):
    """|delta(z_y - z_k)| / ||delta x^(m)|| never exceeds lip[m, y, k] for random steps."""
    lip = model.lipschitz[estimator]
    gen = torch.Generator().manual_seed(0)
    x = {m: data[m][:n] for m in model.modalities}
    mask = torch.ones(n, len(model.modalities), dtype=torch.bool)
    with torch.no_grad():
        z0, _ = model.certify_scores(x, mask)
        for i, m in enumerate(model.modalities):
            for scale in (1e-3, 1e-1, 3.0):
                delta = torch.randn(x[m].shape, generator=gen) * scale
                z1, _ = model.certify_scores({**x, m: x[m] + delta}, mask)
                dz = (z1 - z0)[:, i]  # (B, C): change of modality m's folded scores
                pair = (dz.unsqueeze(2) - dz.unsqueeze(1)).abs()  # |delta(z_y - z_k)|
                ratio = pair / delta.flatten(1).norm(dim=1).view(-1, 1, 1)
                assert (ratio <= lip[i].unsqueeze(0) + 1e-6).all()


def check_radius_respected(model, data, estimator="spectral", n=32):
    """Joint l2 steps just inside the certified radius never change the prediction."""
    x = {m: data[m][:n] for m in model.modalities}
    mask = data["mask"][:n]
    with torch.no_grad():
        z, bias = model.certify_scores(x, mask)
        logits = model(x, mask).logits
        torch.testing.assert_close(z.sum(1) + bias, logits, atol=1e-5, rtol=1e-5)
        pred = logits.argmax(1)
        radius, _, _ = ops.certified_margin(z, pred, model.lipschitz[estimator], mask, bias,
                                            2.0, "min")
        assert (radius > 0).all()  # certified robustness w.r.t. the prediction
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            delta = {m: torch.randn(v.shape, generator=gen) for m, v in x.items()}
            norm = torch.sqrt(sum(d.flatten(1).pow(2).sum(1) for d in delta.values()))
            scale = 0.99 * radius / norm  # a joint l2 step just inside the certified ball
            moved = {m: v + delta[m] * scale.view(-1, *[1] * (v.dim() - 1))
                     for m, v in x.items()}
            assert torch.equal(model(moved, mask).logits.argmax(1), pred)
