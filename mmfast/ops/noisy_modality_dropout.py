"""noisy_modality_dropout: Gaussian noise injection + modality dropout for one modality, and
``modality_noise_dropout`` applying it across modalities with at least one kept per sample.

Randomness comes from a counter-based generator (Philox4x32-10 keyed by the seed, counters from
the element index and ``offset``; see reference.py), so a call is reproducible from (seed,
offset) alone, with no generator state, and every backend draws the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mmfast.ops import _registry, _validate, reference
from mmfast.ops._dispatch import choose_backend

__all__ = ["noisy_modality_dropout", "modality_noise_dropout"]
OP = "noisy_modality_dropout"
_MAX_COUNTER = 2**63
SIGMA_MODES = ("auto", "per_sample", "levels")


def _probabilities(p_drop, B: int, device) -> Tensor:
    if isinstance(p_drop, (int, float)) and not isinstance(p_drop, bool):
        if not 0.0 <= float(p_drop) <= 1.0:
            raise ValueError(f"{OP}: argument 'p_drop' expected a probability in [0, 1], "
                             f"got {p_drop}")
        return torch.full((B,), float(p_drop), dtype=torch.float32, device=device)
    p = _validate.floating(OP, "p_drop", p_drop, (B,), device=device)
    if _validate.eager() and p.numel() and bool(((p < 0) | (p > 1)).any()):
        raise ValueError(f"{OP}: argument 'p_drop' expected probabilities in [0, 1], got values "
                         f"in [{p.min().item():g}, {p.max().item():g}]")
    return p.to(torch.float32).contiguous()


def _sigmas(sigma, mode: str, B: int, device) -> tuple[Tensor, bool]:
    """-> (float32 sigma tensor, whether it is a set of levels drawn per sample)."""
    if mode not in SIGMA_MODES:
        raise ValueError(f"{OP}: argument 'sigma_mode' expected one of {SIGMA_MODES}, got {mode!r}")
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        s, levels = torch.full((B,), float(sigma), dtype=torch.float32, device=device), False
    elif isinstance(sigma, Sequence) and not isinstance(sigma, (str, bytes)):
        s, levels = torch.tensor(list(sigma), dtype=torch.float32, device=device), True
    else:
        _validate.floating(OP, "sigma", sigma, None, device=device)
        if sigma.dim() != 1:
            raise ValueError(f"{OP}: argument 'sigma' expected a number, a ({B},) tensor of "
                             f"per-sample values or a (K,) tensor of levels, got shape "
                             f"{tuple(sigma.shape)}")
        levels = mode == "levels" or (mode == "auto" and sigma.shape[0] != B)
        if not levels and sigma.shape[0] != B:
            raise ValueError(f"{OP}: argument 'sigma' expected shape ({B},) for per-sample "
                             f"values, got {tuple(sigma.shape)}")
        s = sigma.to(torch.float32).contiguous()
    if levels and s.numel() == 0:
        raise ValueError(f"{OP}: argument 'sigma' expected at least one level, got none")
    _validate.nonnegative(OP, "sigma", s)
    return s, levels


def _counter(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_COUNTER:
        raise ValueError(f"{OP}: argument '{name}' expected an int in [0, 2**63), got {value!r}")
    return value


def noisy_modality_dropout(
    x: Tensor,
    p_drop: float | Tensor,
    sigma: float | Sequence[float] | Tensor,
    seed: int = 0,
    offset: int = 0,
    fill: float = 0.0,
    *,
    sigma_mode: str = "auto",
    backend: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Drop whole samples of one modality and add Gaussian noise to the kept ones.

    y_b = keep_b ? x_b + sigma_b * n_b : fill, keep_b ~ Bernoulli(1 - p_drop_b), n ~ N(0, I).

    Args:
        x: (B, ...) one modality's batch (any trailing shape; non-contiguous is fine).
        p_drop: drop probability, a number or a (B,) tensor, in [0, 1].
        sigma: noise std: a number, a (B,) tensor (per sample), or a list / (K,) tensor of
            levels of which each sample draws one uniformly (UDML's controlled corruption).
        seed, offset: the random stream; the same pair gives the same output on a backend.
            Advance ``offset`` (e.g. the step number) for fresh noise.
        fill: value of dropped samples (0 = the usual "missing" input).
        sigma_mode: "auto" (a (B,) tensor is per sample, other lengths are levels),
            "per_sample" or "levels" to resolve a (B,)-long tensor of levels.
        backend: "auto" (default, or $MMFAST_BACKEND), "cpp", "cuda", "triton", "reference".

    Returns:
        y (x's shape and dtype; differentiable w.r.t. x), keep (B,) bool, sigma_used (B,)
        float32 (the std each sample received: UDML's regression target).
    """
    _validate.floating(OP, "x", x, None)
    if x.dim() < 1:
        raise ValueError(f"{OP}: argument 'x' expected shape (B, ...), got a 0-d tensor")
    B, dev = x.shape[0], x.device
    p = _probabilities(p_drop, B, dev)
    s, levels = _sigmas(sigma, sigma_mode, B, dev)
    seed, offset = _counter("seed", seed), _counter("offset", offset)
    name = choose_backend(OP, dev, backend, x.shape)
    if name == "reference":
        return reference.noisy_modality_dropout(x, p, s, levels, seed, offset, float(fill))
    if name != "triton":  # the C++ op reads the offset from a 0-d int64 tensor (BRIEF contract 1)
        offset = torch.tensor(offset, dtype=torch.int64, device=dev)
    return _registry.call(OP, name, x.contiguous(), p, s, levels, seed, offset, float(fill))


def modality_noise_dropout(
    inputs: Mapping[str, Tensor],
    mask: Tensor | None,
    p_drop: float,
    sigma: float | Sequence[float] | Tensor,
    seed: int = 0,
    offset: int = 0,
    *,
    min_keep: int = 1,
    fill: float = 0.0,
    modalities: Sequence[str] | None = None,
    backend: str | None = None,
) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
    """Missing-modality augmentation over all modalities (UME-MMA, DMRNet, UDML).

    Each present modality of each sample is dropped with probability ``p_drop``, except that
    at least ``min_keep`` present modalities stay per sample (chosen at random among those
    drawn for dropping); kept ones get Gaussian noise of std ``sigma``.

    Args:
        inputs: modality name -> (B, ...) tensor.
        mask: (B, M) bool presence in the order of ``modalities`` (None = all present).
        modalities: order of the mask columns (default: the order of ``inputs``).

    Returns:
        (new inputs, new mask (B, M), sigma_used per modality (B,) float32).
    """
    names = list(modalities if modalities is not None else inputs.keys())
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValueError(f"modality_noise_dropout: argument 'inputs' lacks modalities {missing}")
    B, M = inputs[names[0]].shape[0], len(names)
    dev = inputs[names[0]].device
    if mask is None:
        mask = torch.ones(B, M, dtype=torch.bool, device=dev)
    _validate.boolean("modality_noise_dropout", "mask", mask, (B, M), device=dev)
    if not 0.0 <= float(p_drop) <= 1.0:
        raise ValueError(f"modality_noise_dropout: argument 'p_drop' expected a probability in "
                         f"[0, 1], got {p_drop}")
    if min_keep < 0:
        raise ValueError(
            f"modality_noise_dropout: argument 'min_keep' expected >= 0, got {min_keep}"
        )
    offsets = [offset * M + m for m in range(M)]  # one independent stream per modality
    # Lanes 2 and 3 of each modality's per-sample Philox draw (the op uses lanes 0 and 1).
    rows = torch.arange(B, device=dev, dtype=torch.int64)
    u_drop, u_pick = [], []
    for off in offsets:
        _, _, r2, r3 = reference.philox4x32(reference.philox_sample_counters(rows, off), seed)
        u_drop.append(reference.philox_uniform(r2))
        u_pick.append(reference.philox_uniform(r3))
    kept = mask & (torch.stack(u_drop, dim=1) >= p_drop)
    # Rescue: rank present modalities, already-kept first, then by a random score.
    score = torch.where(kept, 2.0 + torch.stack(u_pick, dim=1), torch.stack(u_pick, dim=1))
    score = torch.where(mask, score, torch.full_like(score, -1.0))
    rank = score.argsort(dim=1, descending=True).argsort(dim=1)
    need = torch.clamp(mask.sum(dim=1, keepdim=True), max=min_keep)
    kept = mask & (kept | (rank < need))
    out, sigma_used = dict(inputs), {}
    for m, name in enumerate(names):
        y, _, s = noisy_modality_dropout(
            inputs[name], (~kept[:, m]).to(torch.float32), sigma, seed, offsets[m], fill,
            backend=backend)
        out[name], sigma_used[name] = y, s
    return out, kept, sigma_used


# ---------------------------------------------------------------- custom-op registrations
@torch.library.custom_op("mmfast::noisy_modality_dropout_triton", mutates_args=())
def _noisy_modality_dropout_triton(
    x: Tensor, p_drop: Tensor, sigma: Tensor, sigma_levels: bool, seed: int, offset: int,
    fill: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return _registry.triton_launcher(OP, "forward")(
        x, p_drop, sigma, sigma_levels, seed, offset, fill)


def _fake(x, p_drop, sigma, sigma_levels, seed, offset, fill):
    B = x.shape[0]
    return (torch.empty_like(x), x.new_empty(B, dtype=torch.bool),
            x.new_empty(B, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    _y, keep, _sigma_used = output
    ctx.save_for_backward(keep)
    ctx.mark_non_differentiable(keep, _sigma_used)


def _backward(_suffix: str):
    def backward(ctx, grad_y, _grad_keep, _grad_sigma):
        (keep,) = ctx.saved_tensors
        shape = (keep.shape[0],) + (1,) * (grad_y.dim() - 1)
        grad_x = torch.where(keep.view(shape), grad_y, torch.zeros_like(grad_y))
        return grad_x, None, None, None, None, None, None

    return backward


_registry.register(OP, _fake, setup_context=_setup_context, backward=_backward)
