"""Spoken digits from a real speech synthesizer: espeak-ng driven through its C API (ctypes).

The library and its voice data come from the ``espeakng-loader`` wheel (no system package, no
root); a system ``libespeak-ng`` (``apt-get install espeak-ng``) is used when the wheel is absent.
espeak-ng keeps global state, so one :class:`Speaker` per process is enough and is cached.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Words spoken for the digit classes 0-9.
DIGIT_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)
_INSTALL_HINT = ("install the speech synthesizer with `pip install espeakng-loader` "
                 "(bundles libespeak-ng and its voices) or `apt-get install espeak-ng`")


class SpeechUnavailableError(RuntimeError):
    """espeak-ng (library or voice data) cannot be loaded on this machine."""


def _load_library() -> tuple[ctypes.CDLL, str | None]:
    """Return the espeak-ng library and the folder holding ``espeak-ng-data`` (None: default)."""
    try:
        import espeakng_loader
    except ImportError:
        espeakng_loader = None
    if espeakng_loader is not None:
        lib_path = espeakng_loader.get_library_path()
        data_dir = str(Path(espeakng_loader.get_data_path()).parent)
        try:
            return ctypes.CDLL(lib_path), data_dir
        except OSError as exc:
            raise SpeechUnavailableError(f"cannot load {lib_path}: {exc}; {_INSTALL_HINT}") from exc
    name = ctypes.util.find_library("espeak-ng")
    if name is None:
        raise SpeechUnavailableError(f"espeak-ng was not found; {_INSTALL_HINT}")
    return ctypes.CDLL(name), None


class Speaker:
    """Synthesizes words to int16 mono audio at :attr:`sample_rate` (22050 Hz for espeak-ng)."""

    def __init__(self) -> None:
        lib, data_dir = _load_library()
        self._lib = lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        # espeak-ng draws noise (breath, croak, whisper) from rand(): reseed per utterance so
        # the audio depends only on the arguments, not on what was said before.
        self._seeders = [f for f in (getattr(lib, "espeak_ng_SetRandSeed", None),
                                     ctypes.CDLL(None).srand) if f is not None]
        for f in self._seeders:
            f.argtypes = [ctypes.c_uint]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint,
                                     ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                     data_dir.encode() if data_dir else None, 0)
        if rate <= 0:
            raise SpeechUnavailableError(
                f"espeak_Initialize failed (voice data not found in {data_dir}); {_INSTALL_HINT}")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, _events):  # called by espeak-ng for each chunk of samples
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = _CALLBACK(collect)  # keep a reference: espeak-ng holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def say(self, text: str, voice: str = "en", rate: int = 175, pitch: int = 50,
            pitch_range: int = 50, seed: int = 0) -> np.ndarray:
        """Speak ``text`` with a voice name (``"en-us+f3"``: language + variant), a rate in
        words per minute (80-450), a pitch / pitch range (0-100) and a seed for the voice's
        noise; returns int16 samples, a function of the arguments only."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"voice: espeak-ng has no voice {voice!r}")
        for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch),
                             (_PARAM_RANGE, pitch_range)):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._chunks = []
        for seeder in self._seeders:
            seeder(int(seed) & 0x7FFFFFFF)
        data = text.encode() + b"\0"
        if self._lib.espeak_Synth(data, len(data), 0, 0, 0, 0, None, None) != 0:
            raise RuntimeError(f"espeak-ng could not synthesize {text!r}")
        self._lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks).astype(np.int16, copy=False)


@functools.cache
def get_speaker() -> Speaker:
    """The process-wide :class:`Speaker` (espeak-ng is a global state machine)."""
    return Speaker()


#: One utterance: (text, voice, rate, pitch, pitch_range, seed), the arguments of Speaker.say.
Utterance = tuple[str, str, int, int, int, int]


def say_in_fresh_process(utterances: Sequence[Utterance]) -> tuple[list[np.ndarray], int]:
    """Speak ``utterances`` in a new Python process; returns the int16 clips and the rate.

    espeak-ng keeps state from earlier utterances (voice variant attributes) that reseeding and
    re-initialising do not reset, so the same call gives the same samples only from a fresh
    library state. This module runs as a script (numpy + ctypes only: fast to start).
    """
    request = json.dumps([list(u) for u in utterances]).encode()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], input=request,
                          capture_output=True, check=False)
    if proc.returncode == 3:
        raise SpeechUnavailableError(proc.stderr.decode().strip())
    if proc.returncode != 0:
        raise RuntimeError(f"speech process failed ({proc.returncode}): "
                           f"{proc.stderr.decode().strip()[-2000:]}")
    with np.load(io.BytesIO(proc.stdout), allow_pickle=False) as npz:
        rate = int(npz["rate"])
        return [npz[f"u{i}"] for i in range(len(utterances))], rate


def _serve() -> int:
    """Script entry: JSON utterances on stdin -> npz (u0, u1, ..., rate) on stdout."""
    try:
        speaker = Speaker()
    except SpeechUnavailableError as exc:
        print(exc, file=sys.stderr)
        return 3
    clips = {f"u{i}": speaker.say(*u) for i, u in enumerate(json.loads(sys.stdin.buffer.read()))}
    buf = io.BytesIO()
    np.savez(buf, rate=np.int64(speaker.sample_rate), **clips)
    sys.stdout.buffer.write(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
