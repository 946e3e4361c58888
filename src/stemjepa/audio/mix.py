"""A mix and the candidates heard with it: the checks a query's mix passes, and the alignment of a candidate to the mix.

A mix is checked once, where it is read (`load_query` returns a `Mix`, which the search takes as already checked):
shorter than MIN_QUERY_SECONDS or quieter than SILENCE_DBFS, its ranking would mean nothing. Alignment: the candidate
plays from its best-matching offset at the mix's time 0, at the mix's sample rate, looped (wrapping round to its start)
when it runs out before the mix ends and trimmed at the mix's end, so it has exactly the mix's length; it keeps its own
channel count. `premix` adds the two at a balance. Used by `stemjepa query --export` (search/export.py) and the web app.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AudioError
from .io import AUDIO_EXTENSIONS, array_to_mono, is_audio_file, load_audio, load_playback, resample

MIN_QUERY_SECONDS = 1.0  # shorter mixes hold too few patches (6 of 0.16 s) for a meaningful embedding
SILENCE_DBFS = -60.0  # RMS below this is treated as silence (a digital-silence or muted bounce)


@dataclass(frozen=True)
class Mix:
    """A mix that passed `check_mix_wave`: mono float32 at `sample_rate`, and the name its errors use."""

    wave: np.ndarray
    sample_rate: int
    name: str


def rms_dbfs(wave: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def check_mix_wave(wave: np.ndarray, sample_rate: int, name) -> None:
    """AudioError naming the mix when `wave` (any channel layout, at `sample_rate`) is shorter than MIN_QUERY_SECONDS
    or silent (RMS below SILENCE_DBFS)."""
    seconds = np.shape(wave)[-1] / sample_rate
    if seconds < MIN_QUERY_SECONDS:
        raise AudioError(name, f"mix too short ({seconds:.2f} s; a query needs at least {MIN_QUERY_SECONDS:g} s)")
    level = rms_dbfs(np.asarray(wave))
    if level < SILENCE_DBFS:
        shown = "-inf" if level == float("-inf") else f"{level:.0f}"
        raise AudioError(name, f"mix is silent (RMS {shown} dBFS, below {SILENCE_DBFS:.0f} dBFS): nothing to match")


def load_query(mix, sample_rate: int, name: str | None = None) -> Mix:
    """The checked `Mix` at `sample_rate` of a mix given as a path or a numpy array.

    Arrays are taken to be at `sample_rate` already, shaped (N,), (channels, N) or (N, channels)
    (`stemjepa.audio.io.array_to_mono`). Raises AudioError naming the mix when it is missing, undecodable, in an unknown
    format, too large to decode (`stemjepa.audio.io.check_decoded_size`), holding NaN or absurd sample values (beyond
    +60 dBFS: not audio), shorter than MIN_QUERY_SECONDS, or silent.
    """
    if isinstance(mix, Mix) and mix.sample_rate == sample_rate:
        return mix
    if isinstance(mix, Mix):
        mix, name = resample(mix.wave, mix.sample_rate, sample_rate), name or mix.name
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
    check_mix_wave(wave, sample_rate, name)
    return Mix(np.ascontiguousarray(wave, dtype=np.float32), int(sample_rate), name)


def load_native(path) -> tuple[np.ndarray, int]:
    """(float32 (channels, frames), sample rate) of an audio file for playback and export: as stored (no downmix, no
    resampling) when it fits the playback budget, else down-mixed to 2 channels (then mono) at 48 kHz at most
    (`stemjepa.audio.io.load_playback`): the rate returned is the one of the array."""
    return load_playback(path)


def align(candidate: np.ndarray, candidate_sr: int, offset: float, frames: int, sample_rate: int) -> np.ndarray:
    """`candidate` (channels, n) from `offset` seconds on, at `sample_rate`, looped or trimmed to `frames`."""
    cand = np.atleast_2d(np.asarray(candidate, np.float32))
    cand = resample(cand, candidate_sr, sample_rate) if candidate_sr != sample_rate else cand
    n = cand.shape[1]
    if n == 0 or frames <= 0:
        return np.zeros((cand.shape[0], max(frames, 0)), np.float32)
    start = min(max(int(round(offset * sample_rate)), 0), n - 1)
    rolled = np.concatenate([cand[:, start:], cand[:, :start]], axis=1)
    reps = -(-frames // n)
    return np.ascontiguousarray(np.tile(rolled, (1, reps))[:, :frames])


def _same_channels(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape[0] == b.shape[0]:
        return a, b
    if a.shape[0] == 1:
        return np.repeat(a, b.shape[0], axis=0), b
    if b.shape[0] == 1:
        return a, np.repeat(b, a.shape[0], axis=0)
    return a.mean(0, keepdims=True), b.mean(0, keepdims=True)


def balance_gains(balance: float) -> tuple[float, float]:
    """(mix gain, candidate gain) for a balance in [0, 1]: 0 = mix only, 0.5 = both at full level, 1 = candidate."""
    b = min(max(float(balance), 0.0), 1.0)
    return min(1.0, 2.0 * (1.0 - b)), min(1.0, 2.0 * b)


def premix(mix: np.ndarray, aligned: np.ndarray, balance: float = 0.5) -> np.ndarray:
    """Mix + aligned candidate (same length) at `balance`, scaled down only if the sum would clip."""
    a, b = _same_channels(np.atleast_2d(mix), np.atleast_2d(aligned))
    g_mix, g_cand = balance_gains(balance)
    out = g_mix * a + g_cand * b
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    return (out * (0.99 / peak) if peak > 0.99 else out).astype(np.float32)
