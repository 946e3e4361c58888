"""stemjepa.analysis: what a producer checks first about a stem or a mix, its tempo and its key (and beats, bars,
loudness), estimated from the audio; `compat` compares them (filters, Camelot neighbours, a compatibility score).

`analyse(wave, sample_rate) -> Analysis` never raises on silence, very short, drum-only or atonal audio: it says what it
cannot tell (None). `Analysis.to_dict()` / `from_dict()` is how the index stores it (JSON, validated on the way in).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import DataError

ANALYSIS_VERSION = 1  # bumped when results would change: the index analyses rows of another version again
MAX_BEATS = 4096      # stored per file at most (a 2-minute analysis at 220 BPM holds 440)
ENV = "STEMJEPA_ANALYSIS"  # "0": `index` stores no tempo/key (a later run without it adds them)


def index_time_analysis() -> bool:
    """Whether `index` analyses the files it embeds (about a second of CPU per minute of audio, 2x the time of indexing
    with the built-in model): on unless STEMJEPA_ANALYSIS=0, for a library searched without tempo and key (and for
    the test suite, whose many small indexes do not test the analysis). Queries still analyse their mix."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "no", "false")


@dataclass(frozen=True)
class Analysis:
    bpm: float | None             # None when no pulse is found (silence, too short)
    bpm_confidence: float         # 0..1
    beats: tuple[float, ...]      # seconds
    downbeats: tuple[float, ...]  # seconds, a subset of beats
    key: str | None               # "C major", "F# minor"; None: no key (drums, silence, atonal)
    key_strength: float           # 0..1
    loudness_lufs: float | None   # integrated loudness; None for silence
    duration: float               # seconds of the whole input

    def to_dict(self) -> dict:
        d = asdict(self)
        d["beats"], d["downbeats"] = list(self.beats), list(self.downbeats)
        return d

    @classmethod
    def from_dict(cls, d) -> Analysis:
        """Read back a stored analysis, refusing anything else with a DataError (it may come from a hostile file)."""
        if not isinstance(d, dict):
            raise DataError(f"an analysis must be a JSON object, not {type(d).__name__}")
        try:
            beats = _times(d.get("beats", []), "beats")
            down = _times(d.get("downbeats", []), "downbeats")
            key = d.get("key")
            if key is not None and (not isinstance(key, str) or _parse_key(key) is None):
                raise DataError(f"key {key!r} is not a key such as 'A minor'")
            return cls(bpm=_number(d.get("bpm"), "bpm", 1.0, 1000.0, optional=True),
                       bpm_confidence=_number(d.get("bpm_confidence", 0.0), "bpm_confidence", 0.0, 1.0),
                       beats=beats, downbeats=down, key=key,
                       key_strength=_number(d.get("key_strength", 0.0), "key_strength", 0.0, 1.0),
                       loudness_lufs=_number(d.get("loudness_lufs"), "loudness_lufs", -200.0, 60.0, optional=True),
                       duration=_number(d.get("duration", 0.0), "duration", 0.0, 1e7))
        except (TypeError, ValueError) as exc:
            raise DataError(f"not a stored analysis ({exc})") from None

    @property
    def camelot(self) -> str | None:
        """The key on the Camelot wheel ("8A" for A minor), None without a key."""
        from .compat import camelot

        return camelot(self.key) if self.key else None


def _number(value, name: str, lo: float, hi: float, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
        raise DataError(f"{name} {value!r} is not a number in [{lo:g}, {hi:g}]")
    return float(value)


def _times(values, name: str) -> tuple[float, ...]:
    if not isinstance(values, list) or len(values) > MAX_BEATS:
        raise DataError(f"{name} must be a list of at most {MAX_BEATS} times")
    return tuple(_number(v, name, 0.0, 1e7) for v in values)


def _parse_key(key: str) -> tuple[int, str] | None:
    from .estimate import NAMES

    parts = key.split()
    if len(parts) != 2 or parts[0] not in NAMES or parts[1] not in ("major", "minor"):
        return None
    return NAMES.index(parts[0]), parts[1]


def analyse(wave: np.ndarray, sample_rate: int) -> Analysis:
    """Tempo, beats, downbeats, key and loudness of `wave` (mono or (channels, samples), any rate; at most the first two
    minutes are analysed). Never raises on silence, a 0.1-s file, drums or noise: what cannot be told is None."""
    from . import estimate as e

    duration = float(np.asarray(wave).shape[-1] / sample_rate) if sample_rate > 0 else 0.0
    y = e.prepare(wave, sample_rate)
    silent = e.peak_dbfs(y) < e.SILENCE_DBFS
    if silent or y.size < e.MIN_SECONDS * e.ANALYSIS_RATE:
        return Analysis(None, 0.0, (), (), None, 0.0, None if silent else e.loudness_lufs(y), round(duration, 3))
    bpm, confidence, beats = e.tempo_and_beats(y)
    bars = e.downbeats(y, beats) if bpm else np.zeros(0)
    key, strength = e.key_of(y)
    return Analysis(bpm, confidence, tuple(round(float(t), 3) for t in beats[:MAX_BEATS]),
                    tuple(round(float(t), 3) for t in bars[:MAX_BEATS]), key, strength, e.loudness_lufs(y),
                    round(duration, 3))
