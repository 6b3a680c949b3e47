"""Video files with PyAV: VP9-in-WebM encoding (the one codec every DALI path decodes, CPU
and GPU) and a plain decoder used by the reference loader and by file probing."""

from __future__ import annotations

import io
import os
from fractions import Fraction

import av
import numpy as np

#: Codecs that DALI's CPU video decoder accepts (H.264/HEVC need the GPU, device="mixed").
CPU_DECODABLE_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
#: Codecs that DALI's GPU (NVDEC) video decoder accepts.
GPU_DECODABLE_CODECS = frozenset({"vp8", "vp9", "mjpeg", "h264", "hevc", "av1", "mpeg4"})


def encode_webm(frames: np.ndarray, fps: int = 8, crf: int = 24) -> bytes:
    """Encode uint8 frames (T, H, W) grey or (T, H, W, 3) RGB as VP9 in WebM.

    One encoder thread and the realtime preset keep the bytes deterministic and fast to make.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4):
        raise ValueError(f"frames: expected uint8 (T, H, W[, 3]), got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="webm", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libvpx-vp9", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.thread_count = 1
        stream.options = {"crf": str(crf), "b": "0", "deadline": "realtime", "cpu-used": "8",
                          "row-mt": "0", "lag-in-frames": "0"}
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def video_codec(path: str | os.PathLike) -> str:
    """The codec name of the first video stream (raises if there is none)."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"path: {path} has no video stream")
        return container.streams.video[0].codec_context.name


def decode_video(path: str | os.PathLike) -> np.ndarray:
    """Every frame of the first video stream as uint8 RGB (F, H, W, 3)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1  # short clips: decoder threads cost more than they save
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"path: {path} has no decodable frame")
    return np.stack(frames)
