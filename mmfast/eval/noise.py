"""Noise protocol (c): Gaussian and salt-and-pepper corruption per modality and on all."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from mmfast import ops
from mmfast.eval.common import (
    EvalConfig,
    accuracy,
    model_modalities,
    predict,
    register_protocol,
    split_inputs,
)

__all__ = ["noise", "salt_and_pepper", "modality_statistics"]


def modality_statistics(inputs: Mapping[str, Tensor], mask: Tensor, names) -> dict[str, dict]:
    """std, min and max of each modality over the rows where it is present."""
    stats = {}
    for j, m in enumerate(names):
        x = inputs[m][mask[:, j]].float()
        if x.numel() == 0:
            stats[m] = {"std": 0.0, "min": 0.0, "max": 0.0}
            continue
        stats[m] = {"std": float(x.std()) if x.numel() > 1 else 0.0,
                    "min": float(x.min()), "max": float(x.max())}
    return stats


def salt_and_pepper(x: Tensor, density: float, low: float, high: float,
                    generator: torch.Generator) -> Tensor:
    """Each element independently becomes ``low`` or ``high`` (equally likely) w.p. density."""
    u = torch.rand(x.shape, generator=generator).to(x.device)
    salt = torch.rand(x.shape, generator=generator).to(x.device) < 0.5
    value = torch.where(salt, torch.full_like(x, high), torch.full_like(x, low))
    return torch.where(u < density, value, x)


@register_protocol("noise")
def noise(model: nn.Module, data: Mapping[str, Tensor], cfg: EvalConfig) -> dict:
    """Accuracy vs Gaussian sigma (x std of the modality) and vs salt-and-pepper density.

    Targets: each modality alone and "all" at once. Gaussian noise comes from
    ``mmfast.ops.noisy_modality_dropout`` with p_drop = 0 (seeded Philox stream, a distinct
    offset per batch and modality); salt and pepper use the modality's min and max.
    """
    names = model_modalities(model)
    inputs, mask, label = split_inputs(model, data)
    stats = modality_statistics(inputs, mask, names)
    clean = accuracy(predict(model, inputs, mask, cfg), label)
    targets = [*names, "all"]

    def sweep(levels, corrupt: Callable[[Tensor, str, float, int], Tensor]) -> dict:
        curves = {}
        for t in targets:
            hit = names if t == "all" else (t,)
            curve = []
            for level in levels:
                if level == 0:
                    curve.append(clean)  # no corruption at level 0: exactly the clean pass
                    continue

                def transform(x, _m, batch, hit=hit, level=level):
                    return {k: corrupt(v, k, level, batch) if k in hit else v
                            for k, v in x.items()}

                curve.append(accuracy(predict(model, inputs, mask, cfg, transform), label))
            curves[t] = curve
        return curves

    def gaussian(x, name, sigma, batch):
        std = sigma * stats[name]["std"]
        offset = batch * len(names) + names.index(name)
        y, _, _ = ops.noisy_modality_dropout(x, 0.0, std, seed=cfg.seed, offset=offset,
                                             backend=cfg.backend)
        return y

    generator = torch.Generator()

    def sp(x, name, density, batch):
        generator.manual_seed(cfg.seed * 1_000_003 + batch * len(names) + names.index(name))
        return salt_and_pepper(x, density, stats[name]["min"], stats[name]["max"], generator)

    return {
        "clean_accuracy": clean,
        "statistics": stats,
        "gaussian": {"sigmas": list(cfg.gaussian_sigmas), "unit": "std of the modality",
                     "accuracy": sweep(cfg.gaussian_sigmas, gaussian)},
        "salt_pepper": {"densities": list(cfg.salt_pepper_densities),
                        "accuracy": sweep(cfg.salt_pepper_densities, sp)},
    }
