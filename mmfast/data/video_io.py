"""Video files with PyAV: VP9-in-WebM encoding (the one codec every DALI path decodes, CPU
and GPU), a plain decoder used by the reference loader and by file probing, and a frame count
(from the container's packets, without decoding) used by uniform temporal sampling."""

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


def count_video_frames(source: str | os.PathLike | bytes | np.ndarray) -> int:
    """Frames of the first video stream of a file, or of its encoded bytes (uint8 array or
    bytes), counted as its non-empty packets: demuxed, not decoded (about 0.2 ms for a short
    clip). Both loaders use this count for ``VideoSpec(sampling="uniform")``. It equals the
    decoded frame count when each packet holds one frame (checked for VP9 and VP8 in WebM,
    MJPEG in AVI, H.264 with B-frames and MPEG-4 in MP4)."""
    if isinstance(source, (bytes, bytearray, memoryview, np.ndarray)):
        source = io.BytesIO(np.asarray(source, dtype=np.uint8).tobytes()
                            if isinstance(source, np.ndarray) else bytes(source))
    else:
        source = str(source)
    with av.open(source) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)
