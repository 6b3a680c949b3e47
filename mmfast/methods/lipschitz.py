"""Lipschitz constants of x^(m) -> z^(m)_y - z^(m)_k for CRMT's certified radius.

Two estimators, always labelled:

* ``"empirical"`` (the paper's): tau_k^(m) = max over training samples of
  ||d W~_k^(m) phi^(m)(x) / d x^(m)||_2. A lower estimate of the true constant, so radii built
  on it are *not* certified. Fixes over the official get_lip: each class's gradient is
  computed afresh (the official code zeroed only the audio gradient between classes, so visual
  gradients accumulated over classes), and it differentiates the un-weighted uni-modal logit
  (the official code used the fused logit, which already contains a^(m), then multiplied by a
  again).
* ``"spectral"`` (beyond the paper): a sound upper bound. The encoder's constant is the
  product of per-layer l2 operator-norm bounds (Linear: exact spectral norm; Conv2d:
  sqrt(kh*kw) times the spectral norm of the (C_out, C_in*kh*kw) kernel matrix, since a
  convolution is that matrix applied to kh*kw shifted copies of its input; ReLU-like
  activations 1; pooling by its window overlap; the frame average 1/sqrt(T); the fixed input
  standardisation 1/std), times
  ||W~_k^(m)||_2. Spectral norms of these small matrices are computed exactly by SVD in
  float64 (power iteration converges from below, so it would not give a bound), with a
  1e-4 relative slack for float32 rounding.

The empirical estimate gives per-class constants tau (M, C); :func:`pair_table` turns them
into the (M, C, C) table that ``mmfast.ops.certified_margin`` takes: lip[m, y, k] =
|a_y| tau_y + |a_k| tau_k (triangle inequality, as in the paper). The sound spectral tables
are exact per pair (:func:`pairwise_spectral_table`): lip[m, y, k] = L(phi^(m)) *
||a_y W_y^(m) - a_k W_k^(m)||_2, the Lipschitz bound of x^(m) -> z_y - z_k itself, which the
triangle form overstates (by ~1.3-1.4x on CRMT's normalised rows), so every certifiable model
(joint, CRMT) is certified with the same kind of bound. :data:`BOUNDS` names the two kinds;
each model's ``lipschitz_bounds`` says which one each of its tables uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mmfast.nn.encoders import FrameEncoder, Standardize
from mmfast.train.batches import batch_indices, dataset_size, inputs_of, take

__all__ = ["ESTIMATORS", "SPECTRAL_SLACK", "BOUNDS", "layer_bound", "encoder_lipschitz_bound",
           "pair_table", "pairwise_spectral_table", "empirical_class_lipschitz"]

ESTIMATORS = ("empirical", "spectral")
SPECTRAL_SLACK = 1.0 + 1e-4  # relative slack for float32 rounding of the exact SVD norms
#: How a (M, C, C) table pairs classes; the certification result reports it per table.
BOUNDS = {
    "exact_pairwise": "lip[m, y, k] = L(phi^(m)) ||a_y W_y^(m) - a_k W_k^(m)||_2 (the bound of "
                      "z_y - z_k itself)",
    "triangle": "lip[m, y, k] = |a_y| tau_y^(m) + |a_k| tau_k^(m) (triangle inequality over "
                "per-class constants, as the CRMT paper)",
}
_ONE_LIPSCHITZ = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Identity, nn.Flatten, nn.Dropout)


def _spectral_norm(matrix: Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix.detach().double(), ord=2)) * SPECTRAL_SLACK


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def layer_bound(layer: nn.Module, input_shape: Sequence[int]) -> float:
    """A sound l2 Lipschitz bound of ``layer`` for inputs of shape (1, ...) ``input_shape``.

    Raises TypeError for layers it cannot bound (use the empirical estimator for those).
    """
    if isinstance(layer, nn.Linear):
        return _spectral_norm(layer.weight)
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise TypeError(f"cannot bound grouped Conv2d (groups={layer.groups})")
        kh, kw = layer.kernel_size
        return math.sqrt(kh * kw) * _spectral_norm(layer.weight.flatten(1))
    if isinstance(layer, Standardize):
        return 1.0 / float(layer.std)
    if isinstance(layer, nn.AdaptiveMaxPool2d):
        h, w = input_shape[-2:]
        oh, ow = _pair(layer.output_size)
        if h % oh or w % ow:
            raise TypeError("cannot bound AdaptiveMaxPool2d with overlapping windows")
        return 1.0  # disjoint windows: each max is 1-Lipschitz
    if isinstance(layer, nn.LeakyReLU) and abs(layer.negative_slope) > 1:
        return abs(layer.negative_slope)
    if isinstance(layer, _ONE_LIPSCHITZ):
        return 1.0
    if isinstance(layer, nn.MaxPool2d):
        (kh, kw), (sh, sw) = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size)
        if _pair(layer.dilation) != (1, 1):
            raise TypeError("cannot bound dilated MaxPool2d")
        return math.sqrt(math.ceil(kh / sh) * math.ceil(kw / sw))  # windows sharing an input
    if isinstance(layer, nn.AvgPool2d):
        (kh, kw), (sh, sw) = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size)
        return math.sqrt(math.ceil(kh / sh) * math.ceil(kw / sw) / (kh * kw))
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        h, w = input_shape[-2:]
        oh, ow = _pair(layer.output_size)
        if h % oh or w % ow:
            raise TypeError("cannot bound AdaptiveAvgPool2d with overlapping windows")
        return 1.0 / math.sqrt((h // oh) * (w // ow))
    raise TypeError(f"no Lipschitz bound for layer type {type(layer).__name__}")


@torch.no_grad()
def encoder_lipschitz_bound(encoder: nn.Module, input_shape: Sequence[int]) -> float:
    """Sound l2 Lipschitz bound of an encoder (Sequential of bounded layers, or FrameEncoder)
    for one sample of shape ``input_shape``."""
    shape = tuple(int(s) for s in input_shape)
    if isinstance(encoder, FrameEncoder):
        return encoder_lipschitz_bound(encoder.frame, shape[1:]) / math.sqrt(shape[0])
    if isinstance(encoder, nn.Sequential):
        bound = 1.0
        x = torch.zeros(1, *shape, dtype=next(encoder.parameters()).dtype,
                        device=next(encoder.parameters()).device)
        for layer in encoder:
            bound *= encoder_lipschitz_bound(layer, x.shape[1:])
            x = layer(x)
        return bound
    return layer_bound(encoder, shape)


def pair_table(tau: Tensor, integration: Tensor) -> Tensor:
    """(M, C, C) lip[m, y, k] = |a_my| tau_my + |a_mk| tau_mk (differentiable in a)."""
    scaled = integration.abs() * tau
    return scaled.unsqueeze(2) + scaled.unsqueeze(1)


def pairwise_spectral_table(encoder_bound: Tensor, rows: Sequence[Tensor],
                            integration: Tensor | None = None) -> Tensor:
    """(M, C, C) lip[m, y, k] = L_m ||a_my W_y^(m) - a_mk W_k^(m)||_2 (a = 1 when None).

    ``encoder_bound`` (M,) the encoders' sound constants L(phi^(m)), ``rows`` the M (C, d_m)
    classifier blocks. Computed from the Gram matrix in float64 (O(C^2) memory, not
    O(C^2 d)); the diagonal is exactly 0 and the gradient in ``a`` stays finite there.
    """
    tables = []
    for m, w in enumerate(rows):
        w = w.double()
        if integration is not None:
            w = integration[m].double().unsqueeze(1) * w
        gram = w @ w.t()
        sq = gram.diagonal()
        d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * gram
        off = ~torch.eye(d2.shape[0], dtype=torch.bool, device=d2.device)
        d2 = torch.where(off, d2.clamp_min(1e-30), torch.ones_like(d2))
        tables.append(encoder_bound[m].double() * torch.sqrt(d2) * off)
    return (torch.stack(tables) * SPECTRAL_SLACK).float()


def empirical_class_lipschitz(model, data: Mapping[str, Tensor], device: torch.device,
                              max_samples: int | None = 512, batch_size: int = 128) -> Tensor:
    """tau (M, C): max over samples (having modality m) of ||grad_x^(m) W~_k^(m) phi^(m)(x)||.

    ``model`` has ``head.unit_logits`` (CRMT's normalised head, or the joint ConcatHead).
    One fresh gradient per class, so nothing accumulates across classes. Costs C backward
    passes per batch.
    """
    n = dataset_size(data)
    if max_samples is not None:
        n = min(n, max_samples)
    names = model.modalities
    tau = torch.zeros(len(names), model.num_classes, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for idx in batch_indices(torch.arange(n), batch_size):
        batch = take(data, idx, device)
        inputs = {m: x.detach().requires_grad_(True) for m, x in inputs_of(batch, names).items()}
        units = model.head.unit_logits(model.features(inputs))  # (B, M, C)
        present = batch["mask"]
        for k in range(model.num_classes):
            grads = torch.autograd.grad(units[:, :, k].sum(), [inputs[m] for m in names],
                                        retain_graph=k < model.num_classes - 1)
            for i, g in enumerate(grads):
                norms = g.flatten(1).norm(dim=1).double().cpu()
                norms = norms[present[:, i].cpu()]
                if norms.numel():
                    tau[i, k] = torch.maximum(tau[i, k], norms.max())
    model.train(was_training)
    return tau.float()
