"""Named results of the ops, like ``torch.return_types``: unpack them as tuples
(``y, denom = masked_fusion(...)``) or read fields by name (``masked_fusion(...).y``).

The ops return every tensor they compute; the :mod:`mmfast.nn` modules return what a training
loop needs (``MaskedFusion`` returns ``y`` only, ``ModalityNoiseDropout`` returns
``(inputs, mask)`` and keeps ``sigma_used`` in its ``last_sigma`` attribute).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["CertifiedMarginResult", "MaskedFusionResult", "ModalityNoiseDropoutResult",
           "NoisyDropoutResult"]


class MaskedFusionResult(NamedTuple):
    """``masked_fusion``: y (B, D) fused values; denom (B,) (or (B, C) for per-class weights)
    the sum of the present weights (not differentiable)."""

    y: Tensor
    denom: Tensor


class CertifiedMarginResult(NamedTuple):
    """``certified_margin``: radius (B,), margin (B,) at the rival class, runner_up (B,) int64
    rival class (-1 where there is none)."""

    radius: Tensor
    margin: Tensor
    runner_up: Tensor


class NoisyDropoutResult(NamedTuple):
    """``noisy_modality_dropout``: y (x's shape), keep (B,) bool, sigma_used (B,) float32."""

    y: Tensor
    keep: Tensor
    sigma_used: Tensor


class ModalityNoiseDropoutResult(NamedTuple):
    """``modality_noise_dropout``: inputs (name -> augmented tensor), mask (B, M) bool of the
    modalities kept, sigma_used (name -> (B,) float32 std each sample received)."""

    inputs: dict[str, Tensor]
    mask: Tensor
    sigma_used: dict[str, Tensor]
