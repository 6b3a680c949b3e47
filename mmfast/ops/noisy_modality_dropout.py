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
from mmfast.ops.results import ModalityNoiseDropoutResult, NoisyDropoutResult

__all__ = ["noisy_modality_dropout", "modality_noise_dropout", "NoisyDropoutResult",
           "ModalityNoiseDropoutResult"]
OP = "noisy_modality_dropout"
GROUP_OP = "modality_noise_dropout"
_MAX_COUNTER = 2**63
SIGMA_MODES = ("auto", "per_sample", "levels")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _probabilities(op: str, p_drop, B: int, device, check: bool) -> Tensor | float:
    """A number in [0, 1] (checked: free) or a (B,) float tensor -> float32 (B,) tensor."""
    if _is_number(p_drop):
        if not 0.0 <= float(p_drop) <= 1.0:  # NaN fails too
            raise ValueError(f"{op}: argument 'p_drop' expected a probability in [0, 1], "
                             f"got {p_drop}")
        return float(p_drop)
    p = _validate.floating(op, "p_drop", p_drop, (B,), device=device)
    if check:
        _validate.probabilities(op, "p_drop", p)
    return p.to(torch.float32).contiguous()


def _sigmas(sigma, mode: str, B: int, device, check: bool) -> tuple[Tensor, bool]:
    """-> (float32 sigma tensor, whether it is a set of levels drawn per sample)."""
    if mode not in SIGMA_MODES:
        raise ValueError(f"{OP}: argument 'sigma_mode' expected one of {SIGMA_MODES}, got {mode!r}")
    if _is_number(sigma):
        _validate.finite_nonnegative_number(OP, "sigma", float(sigma))
        return torch.full((B,), float(sigma), dtype=torch.float32, device=device), False
    if isinstance(sigma, Sequence) and not isinstance(sigma, (str, bytes)):
        levels = [float(v) for v in sigma]
        if not levels:
            raise ValueError(f"{OP}: argument 'sigma' expected at least one level, got none")
        for v in levels:
            _validate.finite_nonnegative_number(OP, "sigma", v)
        return torch.tensor(levels, dtype=torch.float32, device=device), True
    _validate.floating(OP, "sigma", sigma, None, device=device)
    if sigma.dim() != 1:
        raise ValueError(f"{OP}: argument 'sigma' expected a number, a ({B},) tensor of "
                         f"per-sample values or a (K,) tensor of levels, got shape "
                         f"{tuple(sigma.shape)}")
    levels = mode == "levels" or (mode == "auto" and sigma.shape[0] != B)
    if not levels and sigma.shape[0] != B:
        raise ValueError(f"{OP}: argument 'sigma' expected shape ({B},) for per-sample "
                         f"values, got {tuple(sigma.shape)}")
    if levels and sigma.numel() == 0:
        raise ValueError(f"{OP}: argument 'sigma' expected at least one level, got none")
    if check:
        _validate.finite_nonnegative(OP, "sigma", sigma)
    return sigma.to(torch.float32).contiguous(), levels


def _counter(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_COUNTER:
        raise ValueError(f"{OP}: argument '{name}' expected an int in [0, 2**63), got {value!r}")
    return value


def _offset(op: str, offset, device, check: bool) -> Tensor:
    """``offset`` as a 0-d int64 tensor on ``device`` (the op reads it there: a changing step
    needs no recompile under torch.compile and no host sync on a GPU)."""
    if isinstance(offset, Tensor):
        _validate.tensor(op, "offset", offset, dims=(), dtypes=(torch.int64,), device=device,
                         dtype_hint="torch.int64 (a 0-d tensor) or an int")
        if check and int(offset) < 0:
            raise ValueError(f"{op}: argument 'offset' expected an int in [0, 2**63), "
                             f"got {int(offset)}")
        return offset
    return torch.full((), _counter("offset", offset), dtype=torch.int64, device=device)


def noisy_modality_dropout(
    x: Tensor,
    p_drop: float | Tensor,
    sigma: float | Sequence[float] | Tensor,
    seed: int = 0,
    offset: int | Tensor = 0,
    fill: float = 0.0,
    *,
    sigma_mode: str = "auto",
    backend: str | None = None,
) -> NoisyDropoutResult:
    """Drop whole samples of one modality and add Gaussian noise to the kept ones.

    y_b = keep_b ? x_b + sigma_b * n_b : fill, keep_b ~ Bernoulli(1 - p_drop_b), n ~ N(0, I).

    Args:
        x: (B, ...) one modality's batch (any trailing shape; non-contiguous is fine).
        p_drop: drop probability, a number or a (B,) tensor, in [0, 1].
        sigma: finite non-negative noise std: a number, a (B,) tensor (per sample), or a
            list / (K,) tensor of levels of which each sample draws one uniformly (UDML's
            controlled corruption).
        seed, offset: the random stream; the same pair gives the same output on a backend.
            ``offset`` is an int or a 0-d int64 tensor on x's device (a step counter kept in
            a tensor: no recompile under torch.compile). Advance it for fresh noise.
        fill: value of dropped samples (0 = the usual "missing" input); x is not read there.
        sigma_mode: "auto" (a (B,) tensor is per sample, other lengths are levels),
            "per_sample" or "levels" to resolve a (B,)-long tensor of levels.
        backend: "auto" (default, or $MMFAST_BACKEND), "cpp", "cuda", "triton", "reference".

    Returns:
        :class:`NoisyDropoutResult` ``(y, keep, sigma_used)``: y (x's shape and dtype;
        differentiable w.r.t. x), keep (B,) bool, sigma_used (B,) float32 (the std each sample
        received: UDML's regression target).
    """
    _validate.floating(OP, "x", x, None)
    if x.dim() < 1:
        raise ValueError(f"{OP}: argument 'x' expected shape (B, ...), got a 0-d tensor")
    B, dev = x.shape[0], x.device
    name = choose_backend(OP, dev, backend, x.shape)
    check = _validate.value_checks(name)
    p = _probabilities(OP, p_drop, B, dev, check)
    if isinstance(p, float):
        p = torch.full((B,), p, dtype=torch.float32, device=dev)
    s, levels = _sigmas(sigma, sigma_mode, B, dev, check)
    seed = _counter("seed", seed)
    off = _offset(OP, offset, dev, check)
    if name == "reference":
        return NoisyDropoutResult(
            *reference.noisy_modality_dropout(x, p, s, levels, seed, off, float(fill)))
    return NoisyDropoutResult(
        *_registry.call(OP, name, x.contiguous(), p, s, levels, seed, off, float(fill)))


def modality_noise_dropout(
    inputs: Mapping[str, Tensor],
    mask: Tensor | None,
    p_drop: float | Tensor,
    sigma: float | Sequence[float] | Tensor,
    seed: int = 0,
    offset: int | Tensor = 0,
    *,
    min_keep: int = 1,
    fill: float = 0.0,
    modalities: Sequence[str] | None = None,
    backend: str | None = None,
) -> ModalityNoiseDropoutResult:
    """Missing-modality augmentation over all modalities (UME-MMA, DMRNet, UDML).

    Each present modality of each sample is dropped with probability ``p_drop``, except that
    at least ``min_keep`` present modalities stay per sample (chosen at random among those
    drawn for dropping); kept ones get Gaussian noise of std ``sigma``.

    Args:
        inputs: a mapping modality name -> (B, ...) tensor (a list is rejected: the names
            order the mask's columns).
        mask: (B, M) bool presence in the order of ``modalities`` (None = all present).
        p_drop: drop probability in [0, 1], a number or a per-sample (B,) tensor.
        sigma: as for :func:`noisy_modality_dropout`.
        seed, offset: the random stream (offset an int or a 0-d int64 tensor); modality m
            uses offset * M + m.
        modalities: order of the mask columns (default: the order of ``inputs``).

    Returns:
        :class:`ModalityNoiseDropoutResult` ``(inputs, mask, sigma_used)``: the new inputs,
        the new mask (B, M), sigma_used per modality (B,) float32. The module
        :class:`mmfast.nn.ModalityNoiseDropout` returns ``(inputs, mask)`` and keeps
        sigma_used in its ``last_sigma`` attribute.
    """
    if not isinstance(inputs, Mapping):
        raise TypeError(f"{GROUP_OP}: argument 'inputs' expected a mapping of modality name -> "
                        f"tensor (e.g. a dict), got {type(inputs).__name__}")
    names = list(modalities if modalities is not None else inputs.keys())
    if not names:
        raise ValueError(f"{GROUP_OP}: argument 'inputs' expected at least one modality, got none")
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValueError(f"{GROUP_OP}: argument 'inputs' lacks modalities {missing}")
    first = _validate.floating(GROUP_OP, f"inputs[{names[0]!r}]", inputs[names[0]], None)
    if first.dim() < 1:
        raise ValueError(f"{GROUP_OP}: argument 'inputs[{names[0]!r}]' expected shape (B, ...), "
                         f"got a 0-d tensor")
    B, M, dev = first.shape[0], len(names), first.device
    for n in names[1:]:
        t = _validate.floating(GROUP_OP, f"inputs[{n!r}]", inputs[n], None, device=dev)
        if t.dim() < 1 or t.shape[0] != B:
            raise ValueError(f"{GROUP_OP}: argument 'inputs[{n!r}]' expected batch size {B} "
                             f"(as inputs[{names[0]!r}]), got shape {tuple(t.shape)}")
    if mask is None:
        mask = torch.ones(B, M, dtype=torch.bool, device=dev)
    _validate.boolean(GROUP_OP, "mask", mask, (B, M), device=dev)
    p = _probabilities(GROUP_OP, p_drop, B, dev,
                       _validate.value_checks(backend or "auto"))
    if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 0:
        raise ValueError(f"{GROUP_OP}: argument 'min_keep' expected an int >= 0, got {min_keep!r}")
    if isinstance(offset, Tensor):
        offsets = [offset * M + m for m in range(M)]  # one independent stream per modality
    else:
        offsets = [_counter("offset", offset) * M + m for m in range(M)]
    # Lanes 2 and 3 of each modality's per-sample Philox draw (the op uses lanes 0 and 1).
    rows = torch.arange(B, device=dev, dtype=torch.int64)
    u_drop, u_pick = [], []
    for off in offsets:
        _, _, r2, r3 = reference.philox4x32(reference.philox_sample_counters(rows, off), seed)
        u_drop.append(reference.philox_uniform(r2))
        u_pick.append(reference.philox_uniform(r3))
    threshold = p if isinstance(p, float) else p.unsqueeze(1)
    kept = mask & (torch.stack(u_drop, dim=1) >= threshold)
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
    return ModalityNoiseDropoutResult(out, kept, sigma_used)


# ---------------------------------------------------------------- custom-op registrations
@torch.library.custom_op("mmfast::noisy_modality_dropout_triton", mutates_args=())
def _noisy_modality_dropout_triton(
    x: Tensor, p_drop: Tensor, sigma: Tensor, sigma_levels: bool, seed: int, offset: Tensor,
    fill: float,
) -> tuple[Tensor, Tensor, Tensor]:
    launcher = _registry.triton_launcher(OP, "forward")
    return launcher(x, p_drop, sigma, sigma_levels, seed, offset, fill)


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
