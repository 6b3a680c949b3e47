"""Exact certificates against k missing modalities, checked by brute force over patterns."""

from __future__ import annotations

import itertools

import pytest
import torch

from mmfast.eval import EvalConfig
from mmfast.eval.missing_certificate import (
    certified_by_k,
    combined_by_k,
    missing_certificate,
)
from mmfast.nn.model import MODALITIES
from tests.eval.toy_models import LinearLate, OracleByModality, make_inputs, oracle_data

CFG = EvalConfig(batch_size=16)


def _brute_force(model, data) -> list[float]:
    """Row by row, pattern by pattern: certified against k missing iff the model (inputs
    masked) is right on every pattern with at least M - k modalities present."""
    M, n = len(MODALITIES), data["label"].numel()
    certified = torch.zeros(M, n, dtype=torch.bool)
    with torch.no_grad():
        for i in range(n):
            x = {m: data[m][i:i + 1] for m in MODALITIES}
            ok = {}
            for bits in itertools.product([False, True], repeat=M):
                if not any(bits):
                    continue
                mask = torch.tensor([bits]) & data["mask"][i:i + 1]
                xm = {m: torch.where(mask[0, j], x[m], torch.zeros_like(x[m]))
                      for j, m in enumerate(MODALITIES)}
                ok[bits] = int(model(xm, mask).logits.argmax(1)) == int(data["label"][i])
            for k in range(M):
                certified[k, i] = all(v for b, v in ok.items() if sum(b) >= M - k)
    return certified.double().mean(1).tolist()


def _linear_data(model, n=40, seed=7):
    data = make_inputs(n, seed)
    mask = torch.ones(n, 3, dtype=torch.bool)
    mask[::5, 1] = False  # some rows really lack audio
    with torch.no_grad():
        label = model(data, mask).logits.argmax(1)
    label[::3] = (label[::3] + 1) % model.num_classes
    data.update(mask=mask, label=label)
    return data


@pytest.mark.parametrize("case", ["late_linear", "joint_oracle", "late_oracle"])
def test_certified_accuracy_by_k_matches_brute_force(case):
    if case == "late_linear":
        model = LinearLate(num_classes=3, seed=1, fusion="mean")
        model.bias.data.zero_()  # mean of the modality logits = the prediction: one pass
        data, path = _linear_data(model), "modality_logits"
    else:
        late = case == "late_oracle"
        model = OracleByModality(("audio", "image"), num_classes=4, late=late)
        data, path = oracle_data(32), "modality_logits" if late else "masked_inputs"
    result = missing_certificate(model, data, CFG)
    assert result["path"] == path
    assert result["certified_accuracy"] == pytest.approx(_brute_force(model, data))
    acc = result["certified_accuracy"]
    assert all(a >= b for a, b in zip(acc, acc[1:]))  # more missing, fewer certified


def test_combined_by_k_takes_the_minimum_over_large_patterns():
    subsets = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    values = torch.tensor([[0.5, 2.0], [0.2, 3.0], [1.0, 1.0]])
    assert torch.equal(combined_by_k(values, subsets),
                       torch.tensor([[1.0, 1.0], [0.2, 1.0]]))
    correct = torch.tensor([[True, False], [True, True], [True, True]])
    assert torch.equal(certified_by_k(correct, subsets),
                       torch.tensor([[True, True], [True, False]]))
    with pytest.raises(ValueError, match="at least 2 modalities"):
        combined_by_k(values[:2], subsets[:2])
