"""Checks that a modality file can be decoded before a loader hands it to DALI (a DALI
pipeline stops on an undecodable file), and tiny valid stand-ins fed in place of files that
cannot be read, whose rows the loader then zeroes and masks out."""

from __future__ import annotations

import functools
import io
import os
import wave

import av
import numpy as np
from PIL import Image

from mmfast.data.video_io import CPU_DECODABLE_CODECS, GPU_DECODABLE_CODECS, encode_webm


def _probe_video(path: str, decode_device: str) -> str | None:
    with av.open(path) as container:
        if not container.streams.video:
            return "no video stream"
        codec = container.streams.video[0].codec_context.name
        allowed = GPU_DECODABLE_CODECS if decode_device == "gpu" else CPU_DECODABLE_CODECS
        if codec not in allowed:
            return (f"codec {codec} is not decodable by DALI on {decode_device} "
                    f"(transcode to VP9/WebM, or decode on a GPU)")
        next(container.decode(video=0))
    return None


def _probe_audio(path: str, decode_device: str) -> str | None:
    with av.open(path) as container:
        if not container.streams.audio:
            return "no audio stream"
        next(container.decode(audio=0))
    return None


def _probe_image(path: str, decode_device: str) -> str | None:
    with Image.open(path) as image:
        image.verify()
    return None


_PROBES = {"video": _probe_video, "audio": _probe_audio, "image": _probe_image}


def probe(modality: str, path: str | os.PathLike | None, decode_device: str = "cpu") -> str | None:
    """None if ``path`` looks decodable for ``modality``, else the reason it is not."""
    if path is None:
        return "no file in the manifest"
    if not os.path.isfile(path):
        return "file not found"
    try:
        return _PROBES[modality](str(path), decode_device)
    except StopIteration:
        return "no decodable frame"
    except Exception as exc:  # any decoder error means "unreadable"
        return f"unreadable ({type(exc).__name__}: {exc})"


@functools.cache
def placeholder(modality: str) -> np.ndarray:
    """Encoded bytes (uint8 1-D) of a tiny valid file of ``modality``, fed to DALI in place of
    an unreadable one so the batch keeps its size; its row is zeroed and masked out."""
    if modality == "video":
        data = encode_webm(np.zeros((1, 16, 16), np.uint8))
    elif modality == "audio":
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(np.zeros(160, np.int16).tobytes())
        data = buf.getvalue()
    elif modality == "image":
        buf = io.BytesIO()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
        data = buf.getvalue()
    else:
        raise ValueError(f"modality: expected video, audio or image, got {modality!r}")
    return np.frombuffer(data, dtype=np.uint8)
