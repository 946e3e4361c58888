"""Checks on query input (mix audio, instrument text) so that a bad query fails with a message, not a bad ranking."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..audio.io import AUDIO_EXTENSIONS, array_to_mono, is_audio_file, load_audio
from ..errors import AudioError, StemJepaError

MIN_QUERY_SECONDS = 1.0  # shorter mixes hold too few patches (6 of 0.16 s) for a meaningful embedding
SILENCE_DBFS = -60.0  # RMS below this is treated as silence (a digital-silence or muted bounce)
MIN_STEM_PEAK = 1e-4  # library files whose peak is below -80 dBFS are not indexed


class QueryError(StemJepaError):
    """A query that cannot be answered as asked (empty instrument text, wrong array shape...)."""


def rms_dbfs(wave: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def check_instrument(text) -> str:
    """The instrument text, stripped; an empty one is refused (the predictor needs to know which stem to look for)."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError("empty instrument text: say which stem to look for, e.g. --instrument \"bass\"")
    return text.strip()


def load_query(mix, sample_rate: int, name: str | None = None) -> tuple[np.ndarray, str]:
    """(mono float32 wave at `sample_rate`, display name) for a mix given as a path or a numpy array.

    Arrays are taken to be at `sample_rate` already, shaped (N,), (channels, N) or (N, channels)
    (`stemjepa.audio.io.array_to_mono`). Raises AudioError naming the mix when it is missing, undecodable, in an unknown
    format, too large to decode (`stemjepa.audio.io.check_decoded_size`), holding NaN or absurd sample values (beyond
    +60 dBFS: not audio), shorter than MIN_QUERY_SECONDS, or silent.
    """
    if isinstance(mix, (str, Path)):
        path = Path(mix)
        name = name or str(path)
        try:
            wave = load_audio(path, sample_rate=sample_rate, mono=True)
        except AudioError as exc:
            if path.is_file() and not is_audio_file(path):
                raise AudioError(path, f"unknown audio format {path.suffix or '(no extension)'!r} and not decodable "
                                       f"(known: {', '.join(AUDIO_EXTENSIONS)})") from None
            if path.is_file() and exc.problem.startswith("cannot decode"):
                raise AudioError(path, f"corrupt or unreadable audio ({exc.problem})") from None
            raise
    else:
        name = name or "<array>"
        wave = array_to_mono(mix, sample_rate, sample_rate, name)  # (N,), (channels, N) or (N, channels), checked
    seconds = len(wave) / sample_rate
    if seconds < MIN_QUERY_SECONDS:
        raise AudioError(name, f"mix too short ({seconds:.2f} s; a query needs at least {MIN_QUERY_SECONDS:g} s)")
    level = rms_dbfs(wave)
    if level < SILENCE_DBFS:
        shown = "-inf" if level == float("-inf") else f"{level:.0f}"
        raise AudioError(name, f"mix is silent (RMS {shown} dBFS, below {SILENCE_DBFS:.0f} dBFS): nothing to match")
    return np.ascontiguousarray(wave, dtype=np.float32), name
