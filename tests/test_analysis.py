"""stemjepa.analysis.analyse on synthetic signals built here: tempo, beats, key, no key, loudness, and the stored form."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stemjepa.analysis import Analysis, analyse
from stemjepa.errors import DataError

SR = 16000
rng = np.random.default_rng(0)


def click_track(bpm: float, seconds: float, accent_every: int = 4) -> np.ndarray:
    """Short decaying 1 kHz clicks on every beat, louder on every `accent_every`-th with a low thump."""
    y = np.zeros(int(seconds * SR), np.float32)
    n = int(0.03 * SR)
    t = np.arange(n) / SR
    for i, start in enumerate(np.arange(0.0, seconds - 0.05, 60.0 / bpm)):
        click = np.sin(2 * np.pi * 1000 * t) * np.exp(-t * 150)
        if i % accent_every == 0:
            click = 1.5 * click + np.sin(2 * np.pi * 60 * t) * np.exp(-t * 60)
        s = int(start * SR)
        y[s:s + n] += 0.5 * click
    return y


def drum_pattern(bpm: float, seconds: float) -> np.ndarray:
    """Noise bursts (kick-snare-like, unpitched) on every beat and on the off-beats, quieter."""
    y = np.zeros(int(seconds * SR), np.float32)
    n = int(0.08 * SR)
    env = np.exp(-np.arange(n) / SR * 40)
    for i, start in enumerate(np.arange(0.0, seconds - 0.1, 30.0 / bpm)):
        s = int(start * SR)
        y[s:s + n] += (0.6 if i % 2 == 0 else 0.25) * rng.standard_normal(n) * env
    return y


def chords(progression: list[list[float]], bpm: float = 120.0, beats_per_chord: int = 4, repeat: int = 1) -> np.ndarray:
    """Saw-like chords (midi notes, 5 harmonics, a small attack on each beat) played in turn."""
    seconds_per = beats_per_chord * 60.0 / bpm
    n = int(seconds_per * SR)
    t = np.arange(n) / SR
    beat_env = np.exp(-(t % (60.0 / bpm)) * 4) * 0.7 + 0.3
    out = []
    for _ in range(repeat):
        for chord in progression:
            y = np.zeros(n)
            for note in chord:
                f = 440.0 * 2 ** ((note - 69) / 12)
                y += sum(np.sin(2 * np.pi * f * h * t) / h for h in range(1, 6))
            out.append(y * beat_env)
    y = np.concatenate(out)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


C_MAJOR = [[60, 64, 67, 48], [65, 69, 72, 53], [67, 71, 74, 55], [60, 64, 67, 48]]   # I IV V I
A_MINOR = [[57, 60, 64, 45], [62, 65, 69, 50], [64, 68, 71, 52], [57, 60, 64, 45]]   # i iv V i


def assert_finite(a: Analysis) -> None:
    for v in (a.bpm, a.bpm_confidence, a.key_strength, a.loudness_lufs, a.duration, *a.beats, *a.downbeats):
        assert v is None or math.isfinite(v)
    assert 0.0 <= a.bpm_confidence <= 1.0 and 0.0 <= a.key_strength <= 1.0
    json.dumps(a.to_dict(), allow_nan=False)


def test_click_track_at_120_bpm_gives_120_bpm_and_beats_half_a_second_apart():
    a = analyse(click_track(120.0, 8.0), SR)
    assert a.bpm == pytest.approx(120.0, rel=0.02)
    assert a.bpm_confidence > 0.2
    assert np.median(np.diff(a.beats)) == pytest.approx(0.5, abs=0.02)
    assert len(a.beats) >= 14
    assert set(a.downbeats) <= set(a.beats) and 3 <= len(a.downbeats) <= len(a.beats) // 2
    assert a.duration == pytest.approx(8.0)
    assert_finite(a)


def test_accented_click_track_starts_its_bars_on_the_accents():
    a = analyse(click_track(100.0, 10.0), SR)
    bar = 4 * 60.0 / 100.0
    phases = [(t % bar) / bar for t in a.downbeats]
    assert all(min(p, 1 - p) < 0.05 for p in phases)


def test_drum_pattern_has_a_tempo_and_no_key():
    a = analyse(drum_pattern(96.0, 8.0), SR)
    assert a.bpm is not None and any(a.bpm == pytest.approx(96.0 * f, rel=0.02) for f in (1, 2, 0.5))
    assert a.key is None
    assert_finite(a)


@pytest.mark.parametrize("progression, key", [(C_MAJOR, "C major"), (A_MINOR, "A minor")])
def test_triad_progression_names_its_key(progression, key):
    a = analyse(chords(progression), SR)
    assert a.key == key
    assert a.key_strength > 0.5
    assert a.loudness_lufs is not None and -40 < a.loudness_lufs < 0
    assert_finite(a)


def test_stereo_and_another_rate_give_the_same_key():
    y = chords(C_MAJOR)
    import soxr

    y44 = soxr.resample(y, SR, 44100).astype(np.float32)
    a = analyse(np.stack([y44, y44]), 44100)
    assert a.key == "C major"
    assert a.duration == pytest.approx(y.size / SR, abs=0.01)


@pytest.mark.parametrize("name, wave", [
    ("silence", np.zeros(5 * SR, np.float32)),
    ("a 0.1-s file", (0.3 * np.sin(np.arange(SR // 10) / SR * 2 * np.pi * 440)).astype(np.float32)),
    ("an empty file", np.zeros(0, np.float32)),
    ("white noise", (0.2 * rng.standard_normal(4 * SR)).astype(np.float32)),
    ("NaN and inf samples", np.r_[np.full(SR, np.nan), np.full(SR, np.inf), 0.1 * rng.standard_normal(SR)].astype(np.float32)),
])
def test_degenerate_audio_says_what_it_cannot_tell_without_raising(name, wave):
    a = analyse(wave, SR)
    assert a.key is None, name
    assert_finite(a)
    if name in ("silence", "an empty file"):
        assert a.bpm is None and a.beats == () and a.loudness_lufs is None
    if name == "a 0.1-s file":
        assert a.bpm is None and a.duration == pytest.approx(0.1)


def test_to_dict_from_dict_round_trip_through_json():
    a = analyse(chords(A_MINOR), SR)
    back = Analysis.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back == a
    assert Analysis.from_dict(Analysis(None, 0.0, (), (), None, 0.0, None, 0.0).to_dict()).bpm is None


GOOD = {"bpm": 120.0, "bpm_confidence": 0.5, "beats": [0.5, 1.0], "downbeats": [0.5], "key": "F# minor",
        "key_strength": 0.7, "loudness_lufs": -14.0, "duration": 3.0}


@pytest.mark.parametrize("field, value", [
    ("bpm", -5), ("bpm", float("nan")), ("bpm", "120"), ("bpm", True), ("bpm_confidence", 1.5),
    ("beats", "0.5"), ("beats", [0.5, "x"]), ("beats", [0.0] * 100_000), ("downbeats", [float("inf")]),
    ("key", "H major"), ("key", "C"), ("key", 5), ("key_strength", -0.1), ("loudness_lufs", 1e9), ("duration", None),
])
def test_from_dict_refuses_a_bad_value_with_a_data_error(field, value):
    assert Analysis.from_dict(GOOD).key == "F# minor"
    with pytest.raises(DataError, match=field.split("_")[0]):
        Analysis.from_dict({**GOOD, field: value})


def test_from_dict_refuses_what_is_not_an_object():
    for bad in ([1, 2], "x", None, 3):
        with pytest.raises(DataError):
            Analysis.from_dict(bad)
