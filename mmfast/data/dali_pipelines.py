"""DALI graphs: one decode branch per modality kind, composed into one pipeline.

Each branch takes encoded file bytes (fed by ``fn.external_source``) and ends in a fixed-size
tensor: video uint8 (T, H, W, 3), audio float32 log-mel (n_mels, frames), image uint8
(H, W, 3). Colour to grey, layout and scaling to [0, 1] happen afterwards in torch
(:mod:`mmfast.data.finish`), shared with the reference loader, so both paths differ only in
decoding and resizing.

``decode_device`` is "cpu" (pipeline with ``device_id=None``; VP8/VP9/MJPEG video only) or
"gpu" (video and image decoding with ``device="mixed"`` and the rest on the GPU).

Temporal sampling (:attr:`VideoSpec.sampling`): "head" is a fixed ``start_frame`` /
``sequence_length`` / ``stride`` in the graph; "uniform" needs each clip's frame count, so the
external source also feeds the per-sample frame indices (:meth:`VideoSpec.frame_indices`, int32)
and ``fn.decoders.video`` takes them as its ``frames`` argument input. Both devices share that
call; argument inputs live on the CPU for the "mixed" decoder too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from mmfast.data.specs import AudioSpec, DataSpec, ImageSpec, VideoSpec

DECODE_DEVICES = ("cpu", "gpu")


def uses_frame_indices(modalities: Sequence[str], spec: DataSpec,
                       array_ndims: Mapping[str, int] | None = None) -> bool:
    """True when the pipeline's source must feed per-sample video frame indices: video is
    decoded (not a pre-decoded array) with ``spec.video.sampling == "uniform"``."""
    return ("video" in modalities and "video" not in (array_ndims or {})
            and spec.video.sampling == "uniform")


def video_branch(encoded, spec: VideoSpec, decode_device: str, frame_indices=None):
    """Encoded video bytes -> uint8 (T, H, W, 3), resized with an antialiased linear filter.

    "head" sampling: frames 0, stride, 2*stride, ... (the last one in the clip repeated for
    short clips). "uniform": the per-sample int32 indices ``frame_indices`` (a DALI node, from
    :meth:`VideoSpec.frame_indices`), in that order; ``pad_mode="edge"`` repeats the clip's
    last frame for any index past its end (a frame count that overestimates).
    """
    if spec.sampling == "uniform":
        if frame_indices is None:
            raise ValueError("frame_indices: uniform video sampling needs the per-sample frame "
                             "indices from the source, got None")
        selection = {"frames": frame_indices}
    else:
        selection = {"start_frame": 0, "sequence_length": spec.frames, "stride": spec.stride}
    frames = fn.decoders.video(encoded, device="mixed" if decode_device == "gpu" else "cpu",
                               pad_mode="edge", **selection)
    return fn.resize(frames, size=(spec.height, spec.width), interp_type=types.INTERP_LINEAR,
                     antialias=True)


def audio_branch(encoded, spec: AudioSpec, decode_device: str):
    """Encoded audio bytes -> float32 log-mel (n_mels, frames) in dB relative to full scale,
    floored at -cutoff_db. Decoding is CPU-only in DALI; the spectrogram follows the device."""
    audio, _rate = fn.decoders.audio(encoded, dtype=types.FLOAT, downmix=True,
                                     sample_rate=spec.sample_rate)
    audio = fn.slice(audio, start=[0], shape=[spec.num_samples], axes=[0],
                     out_of_bounds_policy="pad", fill_values=0.0)
    if decode_device == "gpu":
        audio = audio.gpu()
    spec_power = fn.spectrogram(audio, nfft=spec.n_fft, window_length=spec.n_fft,
                                window_step=spec.hop, center_windows=True, reflect_padding=True,
                                power=2)
    mel = fn.mel_filter_bank(spec_power, sample_rate=spec.sample_rate, nfilter=spec.n_mels,
                             freq_low=0.0, freq_high=spec.sample_rate / 2, normalize=True,
                             mel_formula="slaney")
    return fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=-spec.cutoff_db)


def image_branch(encoded, spec: ImageSpec, decode_device: str):
    """Encoded image bytes (PNG, JPEG, ...) -> uint8 (H, W, 3), antialiased linear resize."""
    image = fn.decoders.image(encoded, device="mixed" if decode_device == "gpu" else "cpu",
                              output_type=types.RGB)
    return fn.resize(image, size=(spec.height, spec.width), interp_type=types.INTERP_LINEAR,
                     antialias=True)


BRANCHES: dict[str, Callable] = {
    "video": video_branch,
    "audio": audio_branch,
    "image": image_branch,
}


def build_pipeline(
    modalities: Sequence[str],
    source: Callable[[], tuple],
    spec: DataSpec,
    batch_size: int,
    *,
    decode_device: str = "cpu",
    device_id: int | None = None,
    num_threads: int = 2,
    prefetch: int = 2,
    seed: int = 0,
    array_ndims: Mapping[str, int] | None = None,
) -> Pipeline:
    """A pipeline whose outputs are one tensor per modality (in ``modalities`` order) then the
    int64 metadata rows passed through from ``source``. Modalities in ``array_ndims`` are fed
    as pre-decoded float32 arrays of that many dimensions and passed through.

    ``source()`` returns, per batch, one list of encoded byte arrays per modality, then, only
    when :func:`uses_frame_indices`, one list of int32 (spec.video.frames,) video frame
    indices, then a list of int64 metadata rows; it raises StopIteration at the end of an
    epoch (DALI then stops after the prefetched batches and needs ``pipe.reset()``).
    """
    if decode_device not in DECODE_DEVICES:
        raise ValueError(f"decode_device: expected one of {DECODE_DEVICES}, got {decode_device!r}")
    unknown = [m for m in modalities if m not in BRANCHES]
    if unknown:
        raise ValueError(f"modalities: expected names among {tuple(BRANCHES)}, got {unknown}")
    if decode_device == "gpu" and device_id is None:
        raise ValueError("device_id: a GPU pipeline needs a CUDA device index, got None")
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads,
                    device_id=device_id if decode_device == "gpu" else None,
                    prefetch_queue_depth=prefetch, seed=seed)
    with pipe:
        arrays = dict(array_ndims or {})
        indexed = uses_frame_indices(modalities, spec, arrays)
        extra = [types.INT32] if indexed else []
        inputs = fn.external_source(
            source=source, num_outputs=len(modalities) + len(extra) + 1, batch=True,
            dtype=[types.FLOAT if m in arrays else types.UINT8 for m in modalities]
            + extra + [types.INT64],
            ndim=[arrays.get(m, 1) for m in modalities] + [1] * len(extra) + [1])
        outputs = []
        for i, m in enumerate(modalities):
            if m in arrays:
                outputs.append(inputs[i])
            elif m == "video":
                outputs.append(video_branch(inputs[i], spec.video, decode_device,
                                            inputs[len(modalities)] if indexed else None))
            else:
                outputs.append(BRANCHES[m](inputs[i], getattr(spec, m), decode_device))
        pipe.set_outputs(*outputs, inputs[-1])
    return pipe
