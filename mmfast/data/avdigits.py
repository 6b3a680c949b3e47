"""avdigits: the built-in audio-visual dataset, generated offline from real sources into real
files (the default data of mmfast).

Each sample is one digit class (0-9) seen three ways:
- video: VP9/WebM, 16 frames of 64x64 at 8 fps: a handwritten digit from scikit-learn's bundled
  ``load_digits`` scans, upscaled, moving and bouncing over a textured background, with moving
  occluders and pixel noise;
- audio: 16 kHz mono WAV of one second: the digit's name spoken by espeak-ng with a random
  voice, speed and pitch, mixed with coloured noise at a random SNR;
- image: a 32x32 PNG of a *different* scan of the same digit, rotated, blurred, noised and
  partly covered.
Every modality has a per-sample severity drawn independently, so each alone is often
ambiguous while the three together rarely are. Source scans are split by train/val/test, so
no scan is shared between splits. Everything is a function of (seed, sample index): the bytes
are identical for a given seed whatever the number of workers.
"""

from __future__ import annotations

import functools
import io
import os
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy.signal import resample_poly

from mmfast._io import write_bytes_atomic
from mmfast.data.manifest import SPLITS, Sample, write_manifest
from mmfast.data.speech import DIGIT_WORDS, say_in_fresh_process
from mmfast.data.video_io import encode_webm
from mmfast.nn.model import MODALITIES

#: espeak-ng voices (language + variant) the speech is drawn from.
VOICES: tuple[str, ...] = tuple(
    f"{lang}+{variant}"
    for lang in ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029")
    for variant in ("m1", "m3", "m5", "m7", "f1", "f2", "f4", "klatt2", "croak", "whisper")
)
DATASET_VERSION = 1


@dataclass(frozen=True)
class AVDigitsConfig:
    """What ``make_avdigits`` writes. The default (100 per class: 600 train / 200 val / 200
    test) trains a small CNN per modality within a minute on 2 CPU cores."""

    num_per_class: int = 100
    seed: int = 0
    missing_rate: float = 0.0
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    video_frames: int = 16
    video_size: int = 64
    fps: int = 8
    image_size: int = 32
    sample_rate: int = 16000
    clip_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.num_per_class, int) or self.num_per_class < 3:
            raise ValueError(f"num_per_class: expected an int >= 3 (one per split), "
                             f"got {self.num_per_class!r}")
        if not 0.0 <= self.missing_rate <= 1.0:
            raise ValueError(f"missing_rate: expected a value in [0, 1], got {self.missing_rate}")
        fr = self.split_fractions
        if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions: expected 3 positive values summing to 1, got {fr}")

    def split_counts(self) -> dict[str, int]:
        """Samples per class in each split (each at least 1)."""
        n = self.num_per_class
        n_val = max(1, round(n * self.split_fractions[1]))
        n_test = max(1, round(n * self.split_fractions[2]))
        return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


# -- sources ----------------------------------------------------------------------------------
@functools.cache
def _digit_pools(seed: int) -> dict[tuple[str, str, int], np.ndarray]:
    """(modality, split, label) -> scans (k, 8, 8) in [0, 1]. Per class, the scans are shuffled
    and cut into video and image halves, each cut 60/20/20 by split: no scan is shared between
    the two modalities of a sample or between splits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    rng = np.random.default_rng([seed, 8])
    pools = {}
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        for modality, half in zip(("video", "image"), np.array_split(idx, 2)):
            cuts = np.cumsum([int(len(half) * 0.6), int(len(half) * 0.2)])
            for split, part in zip(SPLITS, np.split(half, cuts)):
                pools[modality, split, label] = images[part]
    return pools


def _upscale(digit: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 scan in [0, 1] -> (size, size) float in [0, 1] with smooth strokes."""
    img = Image.fromarray((digit * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency texture in [0, 1] (a background that is not flat)."""
    coarse = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0


# -- modalities -------------------------------------------------------------------------------
def render_video(rng: np.random.Generator, digit: np.ndarray, severity: float,
                 cfg: AVDigitsConfig) -> np.ndarray:
    """uint8 (T, S, S): the digit moving over a texture, with occluders and noise; occluders,
    noise and low contrast grow with ``severity`` in [0, 1]."""
    s, t = cfg.video_size, cfg.video_frames
    d = int(rng.integers(s * 5 // 16, s * 15 // 32 + 1))
    glyph = _upscale(digit, d)
    background = 0.25 * _smooth_noise(rng, s, 5)
    contrast = 1.0 - 0.55 * severity * rng.random()
    pos = rng.uniform(0, s - d, size=2)
    vel = rng.uniform(1.0, 3.0, size=2) * rng.choice([-1, 1], size=2)
    n_occ = int(round(severity * 3 + rng.random()))
    occ = [(rng.uniform(0, s, 2), rng.uniform(-2.5, 2.5, 2),
            rng.integers(int(s * (0.15 + 0.25 * severity)), int(s * (0.25 + 0.35 * severity)) + 1,
                         size=2), rng.uniform(0.2, 0.9)) for _ in range(n_occ)]
    sigma = 0.04 + 0.25 * severity
    frames = np.empty((t, s, s), np.float32)
    for k in range(t):
        frame = background.copy()
        y, x = pos.astype(int)
        patch = frame[y:y + d, x:x + d]
        frame[y:y + d, x:x + d] = np.maximum(patch, contrast * glyph)
        for center, velocity, (h, w), level in occ:
            top, left = np.maximum((center + k * velocity).astype(int) - (h // 2, w // 2), 0)
            frame[top:top + h, left:left + w] = level
        frames[k] = frame + rng.normal(0.0, sigma, size=(s, s))
        pos += vel
        for axis in range(2):  # bounce off the borders
            if not 0 <= pos[axis] <= s - d:
                vel[axis] = -vel[axis]
                pos[axis] = np.clip(pos[axis], 0, s - d)
    return (np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)


def _coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS noise with a random spectral slope (white, pink or brown-ish)."""
    spectrum = np.fft.rfft(rng.normal(size=n))
    freqs = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    noise = np.fft.irfft(spectrum / freqs ** (rng.uniform(0.0, 1.0)), n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def speak_digits(cfg: AVDigitsConfig, plan: list[tuple[int, str, int, int]]
                 ) -> list[np.ndarray]:
    """The spoken word of every planned sample (float64 at cfg.sample_rate), with a voice,
    speed and pitch drawn from (seed, index), synthesized in a fresh process so the bytes
    depend on the seed only (see :func:`~mmfast.data.speech.say_in_fresh_process`)."""
    utterances = []
    for i, _split, label, _k in plan:
        rng = np.random.default_rng([cfg.seed, i, 101])
        voice = VOICES[int(rng.integers(len(VOICES)))]
        utterances.append((DIGIT_WORDS[label], voice, int(rng.integers(120, 260)),
                           int(rng.integers(15, 90)), int(rng.integers(10, 90)), i))
    clips, rate = say_in_fresh_process(utterances)
    return [resample_poly(c.astype(np.float64), cfg.sample_rate, rate) for c in clips]


def render_audio(rng: np.random.Generator, speech: np.ndarray, severity: float,
                 cfg: AVDigitsConfig) -> np.ndarray:
    """int16 (sample_rate * clip_seconds,): the spoken word at a random offset, mixed with
    coloured noise at an SNR that falls from +15 dB to -12 dB as ``severity`` grows."""
    n = int(round(cfg.sample_rate * cfg.clip_seconds))
    speech = speech[:n]
    clip = np.zeros(n)
    offset = int(rng.integers(0, n - len(speech) + 1))
    clip[offset:offset + len(speech)] = speech
    clip /= np.sqrt(np.mean(speech ** 2)) + 1e-12  # unit RMS over the spoken part
    snr_db = 15.0 - 27.0 * severity + rng.normal(0.0, 2.0)
    clip += _coloured_noise(rng, n) * 10 ** (-snr_db / 20)
    clip *= 0.5 / np.max(np.abs(clip))
    return (clip * 32767).astype(np.int16)


def render_image(rng: np.random.Generator, digit: np.ndarray, severity: float,
                 cfg: AVDigitsConfig) -> np.ndarray:
    """uint8 (S, S): another scan of the digit, rotated and shifted, blurred, noised and partly
    covered, more so as ``severity`` grows."""
    s = cfg.image_size
    glyph = Image.fromarray((_upscale(digit, s * 3 // 4) * 255).astype(np.uint8))
    canvas = Image.new("L", (s, s))
    shift = rng.integers(0, s - glyph.size[0] + 1, size=2)
    canvas.paste(glyph, tuple(int(v) for v in shift))
    canvas = canvas.rotate(float(rng.normal(0.0, 8 + 25 * severity)), Image.BILINEAR)
    canvas = canvas.filter(ImageFilter.GaussianBlur(0.3 + 2.2 * severity * rng.random()))
    img = np.asarray(canvas, dtype=np.float32) / 255.0
    img = img * (1.0 - 0.5 * severity * rng.random()) + 0.3 * severity * _smooth_noise(rng, s, 4)
    n_patch = int(severity * 2.5 + rng.random())
    for _ in range(n_patch):
        h, w = rng.integers(s // 5, s // 5 + int(s * 0.35 * severity) + 1, size=2)
        y, x = rng.integers(0, s - h + 1), rng.integers(0, s - w + 1)
        img[y:y + h, x:x + w] = rng.uniform(0.0, 1.0)
    img += rng.normal(0.0, 0.03 + 0.2 * severity, size=img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def _wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# -- the dataset ------------------------------------------------------------------------------
def _plan(cfg: AVDigitsConfig) -> list[tuple[int, str, int, int]]:
    """(sample index, split, label, position in its split's class pool) for every sample."""
    plan, i = [], 0
    for split, count in cfg.split_counts().items():
        for k in range(count):
            for label in range(10):
                plan.append((i, split, label, k))
                i += 1
    return plan


def _make_sample(job: tuple[str, AVDigitsConfig, tuple[int, str, int, int], np.ndarray]
                 ) -> Sample:
    """Render and write one sample's files; a function of (seed, index, speech) only."""
    out, cfg, (i, split, label, k), speech = job
    rng = np.random.default_rng([cfg.seed, i])
    severity = {m: float(rng.beta(1.2, 1.2)) for m in MODALITIES}
    dropped = (MODALITIES[int(rng.integers(len(MODALITIES)))]
               if rng.random() < cfg.missing_rate else None)
    pools = _digit_pools(cfg.seed)
    sample_id = f"avd{i:05d}"
    renderers: dict[str, Callable[[np.random.Generator], bytes]] = {
        "video": lambda r: encode_webm(render_video(
            r, pools["video", split, label][k % len(pools["video", split, label])],
            severity["video"], cfg), fps=cfg.fps),
        "audio": lambda r: _wav_bytes(render_audio(r, speech, severity["audio"], cfg),
                                      cfg.sample_rate),
        "image": lambda r: _png_bytes(render_image(
            r, pools["image", split, label][k % len(pools["image", split, label])],
            severity["image"], cfg)),
    }
    suffix = {"video": "webm", "audio": "wav", "image": "png"}
    paths: dict[str, str | None] = {}
    for m, modality in enumerate(MODALITIES):
        sub_rng = np.random.default_rng([cfg.seed, i, m])  # independent of dropped modalities
        if modality == dropped:
            paths[modality] = None
            continue
        rel = f"{modality}/{sample_id}.{suffix[modality]}"
        write_bytes_atomic(Path(out) / rel, renderers[modality](sub_rng))
        paths[modality] = rel
    return Sample(sample_id, label, split, paths)


def make_avdigits(out: str | os.PathLike, config: AVDigitsConfig | None = None, *,
                  workers: int = 1, progress: Callable[[int, int], None] | None = None) -> Path:
    """Generate avdigits into folder ``out`` (files, ``manifest.csv``, ``info.json``); the
    manifest is written last, so its presence means the dataset is complete. Returns the
    manifest path. ``workers`` > 1 renders in parallel processes (same bytes)."""
    cfg = config or AVDigitsConfig()
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected a positive int, got {workers!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan(cfg)
    jobs = [(str(out), cfg, item, speech)
            for item, speech in zip(plan, speak_digits(cfg, plan))]
    samples: list[Sample] = []
    if workers == 1:
        for job in jobs:
            samples.append(_make_sample(job))
            if progress:
                progress(len(samples), len(jobs))
    else:
        # fork: workers inherit the imported modules (a spawned one re-imports torch: seconds)
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        with get_context(method).Pool(workers) as pool:
            for sample in pool.imap(_make_sample, jobs, chunksize=8):
                samples.append(sample)
                if progress:
                    progress(len(samples), len(jobs))
    info = {"dataset": "avdigits", "version": DATASET_VERSION, "config": asdict(cfg),
            "classes": list(DIGIT_WORDS), "modalities": list(MODALITIES)}
    return write_manifest(out, samples, info)
