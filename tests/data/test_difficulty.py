from __future__ import annotations

import torch

from mmfast.data.difficulty import modality_accuracy


def _split(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    label = torch.arange(n) % 4
    image = torch.rand(n, 1, 8, 8, generator=gen) * 0.1
    image[torch.arange(n), 0, label * 2, :] = 1.0  # the label as a bright row
    return {"image": image, "audio": torch.rand(n, 1, 8, 8, generator=gen),
            "mask": torch.ones(n, 2, dtype=torch.bool), "label": label}


def test_informative_modality_is_learned_and_noise_is_not():
    gen = torch.Generator().manual_seed(0)
    train, test = _split(96, gen), _split(40, gen)
    acc = modality_accuracy(train, test, 4, modalities=("image", "audio"), epochs=8)
    assert set(acc) == {"image", "audio", "all"}
    assert acc["image"] >= 0.9
    assert acc["audio"] <= 0.6
    assert acc["all"] >= 0.8
