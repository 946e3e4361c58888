"""Fit a candidate stem to a mix: its tempo, its key, its downbeat and its length (`query --export --fit`, the web app).

A producer auditions a stem against the project, not as recorded: sample finders stretch it to the project's tempo,
transpose it to its key and start it on the bar (Splice's Variations, Sample Vault's Tempo/Key Lock, Ableton's warping).

Engine: Rubber Band through `pedalboard.time_stretch` (one pass for tempo and pitch; drum attacks stay sharp) when
pedalboard is installed (the optional `effects` extra: it is GPL-3.0); otherwise librosa's phase vocoder
(`librosa.effects.time_stretch` then `pitch_shift`, ISC, in the default install), which smears attacks by a few ms.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError
from .io import MAX_CHANNELS, PLAYBACK_MAX_SAMPLES

if TYPE_CHECKING:
    from ..analysis import Analysis

MIN_RATIO, MAX_RATIO = 0.5, 2.0  # tempo ratios beyond an octave of speed sound broken; after half/double they cannot occur
CROSSFADE = 0.03  # seconds of equal-power crossfade where the loop wraps, just before its downbeat: no click, attack kept
EDGE = 0.25  # seconds kept around the part that is stretched: the stretcher's start-up and tail stay out of the result
SNAP = 0.125  # a loop end within this many beats of a detected downbeat/beat moves onto it (the grid from the BPM drifts)
ENGINES = ("rubberband", "librosa")


def engine() -> str:
    """The stretcher `fit_to_mix` uses by default: "rubberband" when pedalboard is installed, else "librosa"."""
    try:
        import pedalboard  # noqa: F401  (GPL-3.0: only in the `effects` extra)
    except ImportError:
        return "librosa"
    return "rubberband"


def tempo_ratio(stem_bpm: float | None, mix_bpm: float | None) -> float:
    """Speed factor that puts the stem on the mix's tempo: mix/stem, times 2 or 1/2 when that is nearer 1 (a 60 BPM
    pad sits on a 120 BPM beat unstretched). 1 when either tempo is unknown; DataError for an absurd tempo."""
    if stem_bpm is None or mix_bpm is None:
        return 1.0
    for what, bpm in (("candidate", stem_bpm), ("mix", mix_bpm)):
        if not (isinstance(bpm, (int, float)) and math.isfinite(bpm) and bpm > 0):
            raise DataError(f"{what} tempo {bpm!r} BPM is not a tempo; cannot fit the candidate to the mix")
    raw = float(mix_bpm) / float(stem_bpm)
    ratio = min((raw, raw * 2.0, raw / 2.0), key=lambda r: abs(math.log(r)))
    if not MIN_RATIO <= ratio <= MAX_RATIO:
        raise DataError(f"tempo ratio {ratio:.3g} ({stem_bpm:g} BPM to {mix_bpm:g} BPM) is outside "
                        f"{MIN_RATIO:g}-{MAX_RATIO:g}; cannot fit the candidate to the mix")
    return ratio


def semitone_shift(stem_key: str | None, mix_key: str | None) -> int:
    """Semitones (-5..+6, the smallest move) that take the stem's tonic to the mix's; a minor stem on a major mix goes
    to the mix's relative minor (and vice versa), which shares its notes. 0 when either has no key."""
    from ..analysis.compat import parse_key

    stem, mix = parse_key(stem_key), parse_key(mix_key)
    if stem is None or mix is None:
        return 0
    target = mix if mix.minor == stem.minor else mix.relative
    d = (target.tonic - stem.tonic) % 12
    return d - 12 if d > 6 else d


def stretch(wave: np.ndarray, sample_rate: int, ratio: float, semitones: float, engine_name: str | None = None) -> np.ndarray:
    """`wave` (channels, n) played `ratio` times faster (length n / ratio) and `semitones` higher, float32."""
    if ratio == 1.0 and semitones == 0:
        return wave
    name = engine_name or engine()
    if name == "rubberband":
        import pedalboard

        return pedalboard.time_stretch(np.ascontiguousarray(wave, np.float32), float(sample_rate),
                                       stretch_factor=float(ratio), pitch_shift_in_semitones=float(semitones))
    if name != "librosa":
        raise ValueError(f"unknown engine {name!r}: one of {ENGINES}")
    import librosa

    out = librosa.effects.time_stretch(wave, rate=float(ratio)) if ratio != 1.0 else wave
    if semitones:
        out = librosa.effects.pitch_shift(out, sr=sample_rate, n_steps=float(semitones))
    return np.asarray(out, np.float32)


def _first(times, at: float = 0.0) -> float | None:
    """The first of `times` at or after `at` (else the first of all), or None when there are none."""
    times = [float(t) for t in times if math.isfinite(t) and t >= 0]
    later = [t for t in times if t >= at]
    return later[0] if later else (times[0] if times else None)


def _beats_per_bar(analysis) -> int:
    """Beats between the first two downbeats (3, 4, 5, 7...), 4 when the analysis cannot tell."""
    down = [float(t) for t in analysis.downbeats]
    if len(down) < 2:
        return 4
    n = sum(1 for b in analysis.beats if down[0] - 1e-3 <= b < down[1] - 1e-3)
    return n if 2 <= n <= 16 else 4


def _loop_seconds(analysis, start: float, available: float, needed: float) -> float:
    """Length of the looped part from `start` (stem seconds): whole bars (else whole beats) of the stem's tempo, as few as
    cover `needed` and as many as fit in `available`, its end snapped to a detected downbeat/beat; without a tempo, as
    much as is heard."""
    if analysis.bpm is None or not analysis.bpm > 0:  # the whole stem, or what is heard (its end fade unheard)
        return min(available, needed + 2 * CROSSFADE)
    beat = 60.0 / float(analysis.bpm)
    for unit in (beat * _beats_per_bar(analysis), beat):
        n = min(math.floor(available / unit + 1e-6), max(1, math.ceil(needed / unit - 1e-6)))
        if n >= 1:
            end = start + n * unit
            marks = [float(t) for t in (*analysis.downbeats, *analysis.beats) if start < t <= start + available]
            near = min(marks, key=lambda t: abs(t - end), default=None)
            if near is not None and abs(near - end) <= SNAP * beat:
                end = near
            return end - start
    return available


def _as_channels(stem) -> tuple[np.ndarray, bool]:
    """(float32 (channels, n), whether `stem` was mono (n,)); DataError for another shape or too many channels."""
    wave = np.asarray(stem, dtype=np.float32)
    mono = wave.ndim == 1
    wave = wave[None] if mono else wave
    if wave.ndim != 2 or not 1 <= wave.shape[0] <= MAX_CHANNELS:
        raise DataError(f"candidate of shape {np.shape(stem)}: expected (samples,) or (channels, samples), at most "
                        f"{MAX_CHANNELS} channels")
    return wave, mono


def fit_to_mix(stem: np.ndarray, sample_rate: int, stem_analysis: Analysis, mix_analysis: Analysis, frames: int, *,
               offset: float = 0.0, engine_name: str | None = None) -> np.ndarray:
    """`stem` (mono (n,) or (channels, n) at `sample_rate`) fitted to the mix: time-stretched to its tempo (half/double
    aware; none when either BPM is None), transposed to its key (none when either key is None), the stem's first downbeat
    at or after `offset` seconds placed on the mix's first downbeat, looped in whole bars with a `CROSSFADE` just
    before each wrap, exactly `frames` long at `sample_rate` (float32, same layout as `stem`; scaled down only if it
    would clip). Deterministic. Only the part that is heard is stretched: the work is bounded by `frames`, not by the
    stem. DataError for an absurd tempo, a size over the playback budget or samples that are not finite."""
    wave, mono = _as_channels(stem)
    channels, n = wave.shape
    frames, sample_rate = int(frames), int(sample_rate)
    if frames < 0 or frames * channels > PLAYBACK_MAX_SAMPLES or sample_rate <= 0:
        raise DataError(f"{frames:,} frames x {channels} channels at {sample_rate} Hz: outside the playback budget "
                        f"({PLAYBACK_MAX_SAMPLES:,} samples)")
    if n == 0 or frames == 0:
        out = np.zeros((channels, frames), np.float32)
        return out[0] if mono else out
    if not np.isfinite(wave).all():
        raise DataError("candidate samples are not all finite (NaN or infinity); cannot fit it to the mix")

    ratio = tempo_ratio(stem_analysis.bpm, mix_analysis.bpm)
    shift = semitone_shift(stem_analysis.key, mix_analysis.key)
    duration = n / sample_rate
    start = _first(stem_analysis.downbeats, offset)
    start = _first(stem_analysis.beats, offset) if start is None else start
    mix_start = _first(mix_analysis.downbeats)
    mix_start = _first(mix_analysis.beats) if mix_start is None else mix_start
    m0 = 0
    if start is not None and mix_start is not None:  # downbeat on downbeat; without a beat, from `offset` at time 0
        m0 = int(round(mix_start * sample_rate))
    start = min(max(offset if start is None else start, 0.0), duration - 1.0 / sample_rate)
    loop_in = _loop_seconds(stem_analysis, start, duration - start, (frames - min(m0, frames)) / sample_rate * ratio)

    # stretch only [start - crossfade - edge, start + loop + edge) of the stem
    c0 = max(0, int(math.floor((start - CROSSFADE * ratio - EDGE) * sample_rate)))
    c1 = min(n, int(math.ceil((start + loop_in + EDGE) * sample_rate)))
    y = stretch(wave[:, c0:c1], sample_rate, ratio, shift, engine_name)
    a = min(int(round((start * sample_rate - c0) / ratio)), y.shape[1] - 1)
    length = max(1, min(int(round(loop_in / ratio * sample_rate)), y.shape[1] - a))
    loop = np.array(y[:, a:a + length], np.float32)
    x = min(int(round(CROSSFADE * sample_rate)), length // 2)
    if x > 0:  # the loop's end fades into what precedes its start (silence before the file's start): seamless wrap
        pre = np.zeros((channels, x), np.float32)
        got = y[:, max(0, a - x):a]
        pre[:, x - got.shape[1]:] = got
        t = (np.arange(x, dtype=np.float64) + 1.0) / x * (np.pi / 2)
        loop[:, length - x:] = loop[:, length - x:] * np.cos(t).astype(np.float32) + pre * np.sin(t).astype(np.float32)
    del y
    phase = (-m0) % length
    reps = -(-(frames + phase) // length)
    out = np.tile(loop, (1, reps))[:, phase:phase + frames]
    peak = float(np.max(np.abs(out)))
    if peak > 1.0:
        out *= np.float32(0.99 / peak)
    out = np.ascontiguousarray(out, np.float32)
    return out[0] if mono else out
