"""Plain-PyTorch definitions of the fused ops: the ground truth every backend is tested against.

These functions favour clarity over speed (they may materialise intermediates that the
kernels avoid) but they are exact, differentiable by autograd, and take the same arguments
as the public ops in :mod:`mmfast.ops` (after argument normalisation, without validation).
The noise op's random stream (Philox4x32-10) is defined here bit for bit, so kernels can
reproduce it exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "opmath_dtype",
    "all_subsets",
    "masked_fusion",
    "certified_margin",
    "dual_exponent",
    "noisy_modality_dropout",
    "philox4x32",
    "philox_uniform",
    "philox_noise_counters",
    "philox_sample_counters",
    "subset_logits",
    "subset_correct",
    "subset_accuracy",
]

_M32 = 0xFFFFFFFF


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _expand_weight(weight: Tensor | None, mask: Tensor, dtype: torch.dtype) -> Tensor:
    """w_bm = weight_bm * mask_bm (weight None -> 1), in ``dtype``."""
    maskf = mask.to(dtype)
    if weight is None:
        return maskf
    return weight.to(dtype).expand(mask.shape) * maskf


def all_subsets(num_modalities: int, device: torch.device | str | None = None) -> Tensor:
    """All 2^M - 1 non-empty modality subsets as an (S, M) bool matrix.

    Row s is the bitmask s + 1: modality m is present iff bit m is set, so the rows come in
    increasing order of sum_m 2^m [m present] (DESIGN.md, op 4).
    """
    codes = torch.arange(1, 2**num_modalities, device=device)
    bits = torch.arange(num_modalities, device=device)
    return ((codes[:, None] >> bits[None, :]) & 1).bool()


# --------------------------------------------------------------------------- masked_fusion
def masked_fusion(
    x: Tensor, mask: Tensor, weight: Tensor | None = None, normalize: bool = True
) -> tuple[Tensor, Tensor]:
    """y_b = sum_m w_bm x_bm / denom_b with w = weight * mask; rows with denom 0 give 0.

    ``weight`` is None, per modality (B, M), or per class (B, M, D) (then w, denom and the
    division are per class: denom is (B, D)). Absent modalities are never read: NaN or inf
    there reaches no output and no gradient.
    """
    acc = opmath_dtype(x.dtype)
    xm = torch.where(mask.unsqueeze(-1), x.to(acc), 0.0)
    per_class = weight is not None and weight.dim() == 3
    if per_class:
        w = weight.to(acc) * mask.unsqueeze(-1).to(acc)  # (B, M, D)
    else:
        w = _expand_weight(weight, mask, acc).unsqueeze(-1)  # (B, M, 1)
    denom = w.sum(dim=1)  # (B, D) or (B, 1)
    num = (w * xm).sum(dim=1)
    if normalize:
        num = num / torch.where(denom > 0, denom, torch.ones_like(denom))
    return num.to(x.dtype), denom if per_class else denom.squeeze(-1)


# ------------------------------------------------------------------------ certified_margin
def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1: the dual norm that bounds a p-norm perturbation."""
    if p == 1:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1.0)


def _safe_norm(v: Tensor, q: float, dim: int) -> Tensor:
    """||v||_q along ``dim`` for v >= 0, with finite gradients where the norm is 0."""
    if math.isinf(q):
        return v.amax(dim=dim)
    if q == 1:
        return v.sum(dim=dim)
    s = v.pow(q).sum(dim=dim)
    positive = s > 0
    return torch.where(positive, torch.where(positive, s, torch.ones_like(s)).pow(1.0 / q), s)


def _rival_indices(target: Tensor, num_classes: int) -> Tensor:
    """(B, C-1) class indices k != target_b in increasing order."""
    k = torch.arange(num_classes - 1, device=target.device)
    return k[None, :] + (k[None, :] >= target[:, None]).long()


def certified_margin(
    z: Tensor,
    target: Tensor,
    lip: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    p: float = 2.0,
    rival: str = "min",
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample certified radius of a sum-of-modalities classifier (DESIGN.md, op 2).

    margin_bk = sum_m mask_bm (z_bmy - z_bmk) + b_y - b_k;
    r_bk = margin_bk / ||mask_b lip[:, y, k]||_q.
    Returns (radius, margin, runner_up) at the rival k chosen by ``rival``.
    """
    acc = opmath_dtype(z.dtype)
    B, M, C = z.shape
    maskf = torch.ones(B, M, dtype=acc, device=z.device) if mask is None else mask.to(acc)
    # Absent modalities are never read; a row with a non-finite present score gets no
    # certificate (radius and margin NaN, runner_up -1).
    zf = z.to(acc) if mask is None else torch.where(mask.unsqueeze(-1), z.to(acc), 0.0)
    bad = ~torch.isfinite(zf).all(dim=2).all(dim=1)  # (B,)
    if C == 1:
        inf = torch.full((B,), math.inf, dtype=acc, device=z.device)
        return _no_certificate(bad, inf, torch.zeros(B, dtype=acc, device=z.device),
                               torch.full_like(target, -1))
    rivals = _rival_indices(target, C)  # (B, C-1)
    zy = zf.gather(2, target.view(B, 1, 1).expand(B, M, 1))  # (B, M, 1)
    zk = zf.gather(2, rivals.unsqueeze(1).expand(B, M, C - 1))  # (B, M, C-1)
    margin = (zy - zk).sum(dim=1)  # (B, C-1)
    if bias is not None:
        b = bias.to(acc)
        margin = margin + (b[target].unsqueeze(-1) - b[rivals])
    lipf = lip.to(acc)
    if lipf.dim() == 1:
        lk = lipf.view(1, M, 1).expand(B, M, C - 1)
    else:  # lip[m, y_b, k] for every rival k
        rows = lipf[:, target, :].permute(1, 0, 2)  # (B, M, C)
        lk = rows.gather(2, rivals.unsqueeze(1).expand(B, M, C - 1))
    den = _safe_norm(maskf.unsqueeze(-1) * lk, dual_exponent(p), dim=1)  # (B, C-1)
    positive = den > 0
    ratio = margin / torch.where(positive, den, torch.ones_like(den))
    degenerate = torch.where(margin == 0, torch.zeros_like(margin), margin.sign() * math.inf)
    r = torch.where(positive, ratio, degenerate)
    if rival == "min":
        j = r.argmin(dim=1, keepdim=True)
    elif rival == "top":
        h = zf.sum(dim=1)
        if bias is not None:
            h = h + bias.to(acc)
        j = h.gather(1, rivals).argmax(dim=1, keepdim=True)
    else:
        raise ValueError(f"rival must be 'min' or 'top', got {rival!r}")
    return _no_certificate(bad, r.gather(1, j).squeeze(1), margin.gather(1, j).squeeze(1),
                           rivals.gather(1, j).squeeze(1))


def _no_certificate(bad: Tensor, radius: Tensor, margin: Tensor, runner_up: Tensor):
    """Rows flagged ``bad`` get radius NaN, margin NaN, runner_up -1."""
    nan = torch.full_like(radius, math.nan)
    return (torch.where(bad, nan, radius), torch.where(bad, nan, margin),
            torch.where(bad, torch.full_like(runner_up, -1), runner_up))


# ------------------------------------------------------------------ noisy_modality_dropout
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
SAMPLE_STREAM_BIT = 0x80000000  # set in counter word 1 for per-sample draws


def philox4x32(counters: tuple[Tensor, Tensor, Tensor, Tensor], seed: int, rounds: int = 10):
    """Philox4x32-10 on int64 tensors holding uint32 values; key = (seed lo, seed hi).

    Same algorithm and key layout as ``triton.language.philox`` and curand's Philox.
    """
    c0, c1, c2, c3 = (c.to(torch.int64) for c in counters)
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(rounds):
        p0 = c0 * _PHILOX_M0  # < 2^64: wraps in int64, low/high words stay exact
        p1 = c2 * _PHILOX_M1
        hi0, lo0 = (p0 >> 32) & _M32, p0 & _M32
        hi1, lo1 = (p1 >> 32) & _M32, p1 & _M32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_W0) & _M32, (k1 + _PHILOX_W1) & _M32
    return c0, c1, c2, c3


def philox_uniform(r: Tensor) -> Tensor:
    """uint32 -> float32 uniform in (0, 1): (r >> 8) * 2^-24 + 2^-25 (exact in float32)."""
    return (r >> 8).to(torch.float32) * (2.0**-24) + 2.0**-25


def _offset_words(offset: int | Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """Counter words 2 and 3 (offset lo, hi) shaped like ``like``; ``offset`` is an int or a
    0-d int64 tensor (read on its device: no host sync)."""
    if isinstance(offset, Tensor):
        o = offset.to(torch.int64).expand(like.shape)
        return o & _M32, (o >> 32) & _M32
    return torch.full_like(like, offset & _M32), torch.full_like(like, (offset >> 32) & _M32)


def philox_noise_counters(block: Tensor, offset: int | Tensor):
    """Counters of the element-noise stream: block i = element index // 4."""
    return (block & _M32, (block >> 32) & 0x7FFFFFFF, *_offset_words(offset, block))


def philox_sample_counters(row: Tensor, offset: int | Tensor):
    """Counters of the per-sample stream (keep draw, sigma-level draw) for row b."""
    return (row & _M32, ((row >> 32) & 0x7FFFFFFF) | SAMPLE_STREAM_BIT,
            *_offset_words(offset, row))


def _box_muller(u0: Tensor, u1: Tensor) -> tuple[Tensor, Tensor]:
    radius = torch.sqrt(-2.0 * torch.log(u0))
    theta = (2.0 * math.pi) * u1
    return radius * torch.cos(theta), radius * torch.sin(theta)


def _standard_normal(numel: int, seed: int, offset: int | Tensor, device) -> Tensor:
    """Element e's N(0, 1) draw is lane e % 4 of Philox block e // 4 (Box-Muller on lane pairs)."""
    blocks = torch.arange((numel + 3) // 4, device=device, dtype=torch.int64)
    r = philox4x32(philox_noise_counters(blocks, offset), seed)
    u = [philox_uniform(ri) for ri in r]
    n0, n1 = _box_muller(u[0], u[1])
    n2, n3 = _box_muller(u[2], u[3])
    return torch.stack([n0, n1, n2, n3], dim=1).reshape(-1)[:numel]


def noisy_modality_dropout(
    x: Tensor,
    p_drop: Tensor,
    sigma: Tensor,
    sigma_levels: bool,
    seed: int,
    offset: int | Tensor,
    fill: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """y_b = keep_b ? x_b + sigma_b n_b : fill, with keep_b = (u_b >= p_drop_b).

    p_drop (B,) float32; sigma (B,) per sample, or (K,) levels drawn uniformly per sample;
    offset an int or a 0-d int64 tensor. Dropped samples are ``fill`` (x is not read there:
    NaN in a dropped sample reaches neither y nor the gradient).
    """
    B = x.shape[0]
    rows = torch.arange(B, device=x.device, dtype=torch.int64)
    r0, r1, _, _ = philox4x32(philox_sample_counters(rows, offset), seed)
    keep = philox_uniform(r0) >= p_drop.to(torch.float32)
    sig = sigma.to(torch.float32)
    if sigma_levels:
        k = sig.numel()
        idx = torch.clamp((philox_uniform(r1) * k).long(), max=k - 1)
        sigma_used = sig[idx]
    else:
        sigma_used = sig.expand(B).clone()
    n = math.prod(x.shape[1:])
    noise = _standard_normal(x.numel(), seed, offset, x.device).view(B, n)
    acc = opmath_dtype(x.dtype)
    noisy = x.reshape(B, n).to(acc) + (sigma_used.unsqueeze(1) * noise).to(acc)
    y = torch.where(keep.unsqueeze(1), noisy, torch.full_like(noisy, fill))
    return y.to(x.dtype).view(x.shape), keep, sigma_used


# ---------------------------------------------------------------------------- subset ops
def _subset_scores(z, subsets, weight, present) -> Tensor:
    """(S, B, C) opmath fused scores of every subset (a modality outside the subset or absent
    is never read)."""
    acc = opmath_dtype(z.dtype)
    B, M, _ = z.shape
    pres = torch.ones(B, M, dtype=torch.bool, device=z.device) if present is None else present
    w = _expand_weight(weight, pres, acc)  # (B, M)
    ws = subsets.to(acc)[:, None, :] * w[None]  # (S, B, M)
    used = subsets[:, None, :] & pres[None]  # (S, B, M)
    zs = torch.where(used.unsqueeze(-1), z.to(acc).unsqueeze(0), 0.0)  # (S, B, M, C)
    num = (ws.unsqueeze(-1) * zs).sum(dim=2)
    den = ws.sum(-1, keepdim=True)
    return num / torch.where(den > 0, den, torch.ones_like(den))


def subset_logits(
    z: Tensor, subsets: Tensor, weight: Tensor | None = None, present: Tensor | None = None
) -> Tensor:
    """scores_s = masked_fusion(z, subsets_s & present, weight): (S, B, C)."""
    return _subset_scores(z, subsets, weight, present).to(z.dtype)


def subset_correct(
    z: Tensor, target: Tensor, subsets: Tensor, weight: Tensor | None = None,
    present: Tensor | None = None,
) -> Tensor:
    """(S,) int64: rows whose fused argmax (lowest index on ties) equals the target; a row
    whose fused scores contain NaN counts as wrong."""
    scores = _subset_scores(z, subsets, weight, present)
    hit = (scores.argmax(dim=-1) == target[None]) & ~scores.isnan().any(dim=-1)  # NaN: wrong
    return hit.sum(dim=1)


def subset_accuracy(
    z: Tensor, target: Tensor, subsets: Tensor, weight: Tensor | None = None,
    present: Tensor | None = None,
) -> Tensor:
    """(S,) float32 accuracy per subset (NaN for an empty batch)."""
    correct = subset_correct(z, target, subsets, weight, present)
    return correct.to(torch.float32) / z.shape[0]
