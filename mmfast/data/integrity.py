"""Truncated-file detection: a file cut short (an interrupted copy or download) still opens and
decodes its first frames, so a plain decode probe passes it and the loaders would silently
feed zeros (audio) or repeated frames (video) as if the sample were whole.

Two levels, both without the network and without DALI:

* :func:`truncation` (quick, run by the loaders on every file they probe): compares what the
  container's header declares with what the file holds. WAV: the RIFF / ``data`` chunk sizes
  against the file size. Matroska / WebM: the Segment element's size against the file size,
  then the declared duration against the end of the last demuxed packet. Other audio / video
  containers: the declared duration against the packets' end. PNG / JPEG / ...: PIL's verify
  (which reads every chunk) reporting a truncated read.
* :func:`full_check` (``mmfast data info --check``): additionally decodes every frame / sample
  and compares the decoded amount with the header's.

Both return None for a whole file, else a reason starting with ``"truncated"`` (or
``"unreadable"``), which the loaders record in ``loader.problems``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import av
from PIL import Image

#: Prefix of every reason that means "the file was cut short" (the ``truncated=`` policy of
#: the loaders applies to these; anything else is unreadable and always loaded as missing).
TRUNCATED = "truncated"
#: A stream whose packets end more than this fraction of the declared duration early (and by
#: more than one packet) is truncated; containers round durations to their time base.
DURATION_SLACK = 0.01

_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_SEGMENT_ID = b"\x18\x53\x80\x67"


def _wav_truncation(path: Path) -> str | None:
    """RIFF header sizes vs the file size (PyAV trusts the file size and reads a cut WAV as a
    shorter, whole one)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # not a RIFF/WAVE file: left to the container check
        riff_end = 8 + struct.unpack("<I", head[4:8])[0]
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                held = size - (pos + 8)
                if chunk_size != 0xFFFFFFFF and held < chunk_size:
                    return (f"{TRUNCATED}: the WAV header declares {chunk_size} bytes of samples, "
                            f"the file holds {held}")
                return None
            pos += 8 + chunk_size + (chunk_size & 1)
    if riff_end > size:
        return f"{TRUNCATED}: the RIFF header declares {riff_end} bytes, the file holds {size}"
    return f"{TRUNCATED}: no WAV data chunk in the file's {size} bytes"


def _read_vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int, bool] | None:
    """An EBML variable-length integer at ``pos`` -> (value, next position, all-ones)."""
    if pos >= len(data) or data[pos] == 0:
        return None
    length = 8 - data[pos].bit_length() + 1
    if pos + length > len(data):
        return None
    raw = int.from_bytes(data[pos:pos + length], "big")
    value = raw if keep_marker else raw & ((1 << (7 * length)) - 1)
    all_ones = (raw & ((1 << (7 * length)) - 1)) == (1 << (7 * length)) - 1
    return value, pos + length, all_ones


def _matroska_truncation(path: Path) -> str | None:
    """The Segment element's declared size vs the file size (muxers that can seek back, as
    libavformat on a file, write the final size)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        data = f.read(4096)
    if not data.startswith(_EBML_MAGIC):
        return None
    header = _read_vint(data, 4, keep_marker=False)
    if header is None:
        return f"{TRUNCATED}: the EBML header is cut short"
    header_size, pos, _ = header
    pos += header_size
    if data[pos:pos + 4] != _SEGMENT_ID:
        return None if pos + 4 <= len(data) else f"{TRUNCATED}: no Segment after the header"
    segment = _read_vint(data, pos + 4, keep_marker=False)
    if segment is None:
        return f"{TRUNCATED}: the Segment header is cut short"
    segment_size, start, unknown = segment
    if not unknown and start + segment_size > size:
        return (f"{TRUNCATED}: the Matroska/WebM segment declares {start + segment_size} bytes, "
                f"the file holds {size}")
    return None


def _packet_end_seconds(container, stream) -> tuple[float | None, float, int]:
    """(end of the last packet in seconds, largest packet duration in seconds, packet count)."""
    end, longest, count = None, 0.0, 0
    for packet in container.demux(stream):
        if not packet.size or packet.pts is None:
            continue
        count += 1
        duration = float((packet.duration or 0) * packet.time_base)
        stop = float(packet.pts * packet.time_base) + duration
        end = stop if end is None else max(end, stop)
        longest = max(longest, duration)
    return end, longest, count


def _duration_truncation(path: Path, kind: str) -> str | None:
    """Declared container duration vs the end of the first ``kind`` stream's packets."""
    with av.open(str(path)) as container:
        streams = getattr(container.streams, kind)
        if not streams:
            return None
        declared = container.duration
        if not declared or declared <= 0:
            return None
        declared_s = declared / av.time_base
        end, longest, _ = _packet_end_seconds(container, streams[0])
    if end is None:
        return f"{TRUNCATED}: the container declares {declared_s:.3f} s but holds no {kind} packet"
    if end < declared_s - max(DURATION_SLACK * declared_s, longest) - 1e-6:
        return (f"{TRUNCATED}: the container declares {declared_s:.3f} s, its {kind} packets "
                f"end at {end:.3f} s")
    return None


def _image_truncation(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError) as exc:
        if "truncated" in str(exc).lower():
            return f"{TRUNCATED}: {exc}"
        raise
    return None


def truncation(modality: str, path: str | os.PathLike) -> str | None:
    """None when ``path`` holds all that its header declares, else a reason starting with
    ``"truncated"``. Quick: reads headers and demuxes packets, decodes nothing. Decoder
    errors propagate (the caller's decode probe reports those)."""
    path = Path(path)
    if modality == "image":
        return _image_truncation(path)
    if modality not in ("video", "audio"):
        raise ValueError(f"modality: expected video, audio or image, got {modality!r}")
    reason = _wav_truncation(path) if modality == "audio" else None
    reason = reason or _matroska_truncation(path)
    return reason or _duration_truncation(path, modality)


def _decoded_amount(path: Path, modality: str) -> tuple[int, int]:
    """(decoded frames or samples, what the header / packets declare)."""
    with av.open(str(path)) as container:
        if modality == "video":
            stream = container.streams.video[0]
            declared = sum(1 for p in container.demux(stream) if p.size)
            container.seek(0)
            decoded = sum(1 for _ in container.decode(stream))
        else:
            stream = container.streams.audio[0]
            declared = stream.duration * stream.time_base * stream.sample_rate \
                if stream.duration else 0
            decoded = sum(frame.samples for frame in container.decode(stream))
    return decoded, int(round(declared))


def full_check(modality: str, path: str | os.PathLike) -> str | None:
    """:func:`truncation` plus a decode of every frame / sample (``mmfast data info --check``):
    None for a whole, fully decodable file, else the reason."""
    path = Path(path)
    if not path.is_file():
        return "file not found"
    try:
        reason = truncation(modality, path)
        if reason is not None:
            return reason
        if modality == "image":
            with Image.open(path) as image:
                image.load()
            return None
        decoded, declared = _decoded_amount(path, modality)
    except Exception as exc:  # any decoder error means "unreadable"
        return f"unreadable ({type(exc).__name__}: {exc})"
    unit = "frames" if modality == "video" else "samples"
    if decoded == 0:
        return f"unreadable (no decodable {unit})"
    if declared and decoded < declared:
        return f"{TRUNCATED}: decoded {decoded} of the {declared} {unit} the file declares"
    return None


def quick_check(modality: str, path: str | os.PathLike, decode_device: str = "cpu"
                ) -> str | None:
    """The loaders' check of an encoded file: the decode probe (exists, opens, first frame,
    codec decodable on ``decode_device``) plus :func:`truncation`; None when whole."""
    from mmfast.data.probe import probe

    reason = probe(modality, path, decode_device)
    if reason is not None:
        if modality == "image" and "truncated" in reason.lower():
            return f"{TRUNCATED} image, never padded ({reason})"
        return reason
    try:
        return truncation(modality, path)
    except Exception as exc:  # the demuxer failed past the first frame
        return f"unreadable ({type(exc).__name__}: {exc})"


def check_file(modality: str, path: str | os.PathLike, *, full: bool = False) -> str | None:
    """One manifest file: None when it exists and decodes whole, else the reason. ``full``
    decodes everything (:func:`full_check`); otherwise :func:`quick_check`. ``.npy`` rows are
    checked for existence and shape only."""
    from mmfast.data.arrays import is_array_ref, row_shape

    if is_array_ref(path):
        try:
            row_shape(path)
        except Exception as exc:
            return f"unreadable array ({type(exc).__name__}: {exc})"
        return None
    return full_check(modality, path) if full else quick_check(modality, path)


def scan(manifest, *, full: bool = False, examples: int = 5, progress: bool = False) -> dict:
    """Check every file a manifest lists (``mmfast data info``): {"checked": n, "mode":
    "quick" | "full", "problems": {modality: {"count", "truncated", "examples": [{"id",
    "split", "reason"}]}}} (modalities without problems are left out)."""
    from tqdm.auto import tqdm

    from mmfast.nn.model import MODALITIES

    jobs = [(s, m, manifest.path(s, m)) for s in manifest.samples for m in MODALITIES
            if manifest.path(s, m) is not None]
    found: dict[str, list[dict]] = {}
    for sample, modality, path in tqdm(jobs, desc="checking files", unit="file",
                                       disable=not progress, leave=False):
        reason = check_file(modality, path, full=full)
        if reason is not None:
            found.setdefault(modality, []).append(
                {"id": sample.id, "split": sample.split, "reason": reason})
    return {"checked": len(jobs), "mode": "full" if full else "quick",
            "problems": {m: {"count": len(rows),
                             "truncated": sum(r["reason"].startswith(TRUNCATED) for r in rows),
                             "examples": rows[:examples]}
                         for m, rows in found.items()}}
