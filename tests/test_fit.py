"""Fitting a candidate to the mix (`stemjepa.audio.fit`): tempo, key, downbeat, seamless loop, exact length; and
`export_candidates(fit=True)`. Both stretchers are tested: Rubber Band (pedalboard, the `effects` extra) and librosa."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import find_peaks

from stemjepa.audio.fit import CROSSFADE, fit_to_mix, semitone_shift, tempo_ratio
from stemjepa.audio.mix import align
from stemjepa.search.export import export_candidates

pytestmark = pytest.mark.analysis  # its indexes analyse tempo and key (tests/conftest.py)

SR = 22050
ENGINES = [pytest.param("rubberband", id="rubberband"), pytest.param("librosa", id="librosa")]
try:
    import pedalboard  # noqa: F401
except ImportError:  # the default install: only the librosa fallback
    ENGINES[0] = pytest.param("rubberband", marks=pytest.mark.skip(reason="pedalboard (the effects extra) not installed"))


def analysis(bpm=None, beats=(), downbeats=(), key=None, duration=10.0):
    """An Analysis built by hand (the real class when stemjepa.analysis is there)."""
    kw = dict(bpm=bpm, bpm_confidence=1.0 if bpm else 0.0, beats=tuple(beats), downbeats=tuple(downbeats), key=key,
              key_strength=1.0 if key else 0.0, loudness_lufs=-14.0, duration=duration)
    try:
        from stemjepa.analysis import Analysis
    except ImportError:
        return _Analysis(**kw)
    return Analysis(**kw)


def estimator():
    """`stemjepa.analysis.analyse` (skips the test while that module is not there)."""
    analyse = getattr(pytest.importorskip("stemjepa.analysis"), "analyse", None)
    if analyse is None:
        pytest.skip("stemjepa.analysis.analyse is not there yet")
    return analyse


@dataclass(frozen=True)
class _Analysis:
    bpm: float | None
    bpm_confidence: float
    beats: tuple = field(default=())
    downbeats: tuple = field(default=())
    key: str | None = None
    key_strength: float = 0.0
    loudness_lufs: float | None = None
    duration: float = 0.0

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def click_loop(bpm: float, seconds: float, first: float = 0.05, per_bar: int = 4):
    """(clicks on every beat, 2 kHz on the downbeat and 1 kHz on the others; its Analysis)."""
    n, k = int(seconds * SR), np.arange(220)
    high, low = ((np.sin(2 * np.pi * f * k / SR) * np.exp(-k / 44)).astype(np.float32) for f in (2000, 1000))
    beats = np.arange(first, seconds - 0.02, 60.0 / bpm)
    wave = np.zeros(n, np.float32)
    for i, t in enumerate(beats):
        at = int(round(t * SR))
        wave[at:at + 220] += (high if i % per_bar == 0 else low)[:n - at]
    return wave, analysis(bpm, beats, beats[::per_bar], None, seconds)


def is_downbeat_click(y: np.ndarray, t: float) -> bool:
    """Whether the click at `t` seconds is a 2 kHz (downbeat) one: pitch survives a phase vocoder, level does not."""
    spectrum = np.abs(np.fft.rfft(y[max(0, int(t * SR) - 600):int(t * SR) + 1200], 4096))
    f = np.fft.rfftfreq(4096, 1 / SR)
    return spectrum[(f > 1700) & (f < 2300)].sum() > spectrum[(f > 700) & (f < 1300)].sum()


def chord(midi: list[tuple[int, float]], seconds: float, bpm: float = 100.0) -> np.ndarray:
    """A sustained chord of harmonic tones (`midi` note, level), pulsing on the beat."""
    t = np.arange(int(seconds * SR)) / SR
    y = np.zeros_like(t)
    for note, level in midi:
        f = 440.0 * 2 ** ((note - 69) / 12)
        for h in range(1, 5):
            y += level / h * np.sin(2 * np.pi * f * h * t)
    return (0.15 * y * (0.6 + 0.4 * np.exp(-4 * (t % (60 / bpm))))).astype(np.float32)


D_MAJOR = [(50, 0.8), (62, 1.0), (66, 0.5), (69, 0.6)]  # D3, D4 (the root loudest), F#4, A4


def onsets(y: np.ndarray) -> np.ndarray:
    env = np.abs(y)
    peaks, _ = find_peaks(env, height=0.1 * env.max(), distance=int(0.3 * SR))
    return peaks / SR


def beat_period(times: np.ndarray, guess: float) -> float:
    """Seconds per beat: the slope of onset times against their beat number (a missed click does not bias it)."""
    index = np.round((times - times[0]) / guess)
    return float(np.polyfit(index, times, 1)[0])


def chroma_root(y: np.ndarray) -> int:
    import librosa

    return int(np.argmax(librosa.feature.chroma_stft(y=y, sr=SR).mean(axis=1)))


MIX_120 = analysis(120.0, 0.3 + 0.5 * np.arange(20), 0.3 + 2.0 * np.arange(5), "C major", 10.0)


@pytest.mark.parametrize("engine", ENGINES)
def test_click_loop_at_100_bpm_fitted_to_a_120_bpm_mix_plays_at_120_bpm_on_its_downbeats(engine):
    stem, stem_analysis = click_loop(100.0, 8.0)  # 3 whole bars fit: the loop wraps inside the 10 s mix
    out = fit_to_mix(stem, SR, stem_analysis, MIX_120, 10 * SR, engine_name=engine)
    assert out.shape == (10 * SR,) and out.dtype == np.float32
    t = onsets(out)
    assert abs(beat_period(t, 0.5) - 0.5) / 0.5 < 0.01  # 120 BPM within 1 %, across the loop's wrap
    tol = 0.01 if engine == "rubberband" else 0.04  # the phase vocoder smears a click by a few tens of ms
    assert abs(t[0] - 0.3) < tol  # the stem's first downbeat on the mix's
    down = t[[is_downbeat_click(out, s) for s in t]]
    assert np.allclose(down, 0.3 + 2.0 * np.arange(5), atol=tol)  # every downbeat on the mix's bars, none elsewhere


def test_analyse_re_estimates_a_fitted_click_loop_at_the_mix_tempo():
    analyse = estimator()
    stem, stem_analysis = click_loop(100.0, 8.0)
    out = fit_to_mix(stem, SR, stem_analysis, MIX_120, 10 * SR)
    bpm = analyse(out, SR).bpm
    assert bpm is not None and abs(bpm - 120.0) / 120.0 < 0.01


@pytest.mark.parametrize("engine", ENGINES)
def test_a_d_major_stem_fitted_to_a_c_major_mix_has_its_root_on_c(engine):
    stem = chord(D_MAJOR, 6.0)
    stem_analysis = analysis(100.0, np.arange(0, 6, 0.6), np.arange(0, 6, 2.4), "D major", 6.0)
    assert chroma_root(stem) == 2
    out = fit_to_mix(stem, SR, stem_analysis, analysis(100.0, key="C major"), 8 * SR, engine_name=engine)
    assert out.shape == (8 * SR,) and chroma_root(out) == 0
    relative = fit_to_mix(stem, SR, stem_analysis, analysis(100.0, key="A minor"), 8 * SR, engine_name=engine)
    assert chroma_root(relative) == 0  # A minor's relative major is C major: the same notes


def test_analyse_re_estimates_a_stem_shifted_from_d_major_to_c_major():
    analyse = estimator()
    stem = chord(D_MAJOR, 6.0)
    stem_analysis = analysis(100.0, np.arange(0, 6, 0.6), np.arange(0, 6, 2.4), "D major", 6.0)
    out = fit_to_mix(stem, SR, stem_analysis, analysis(100.0, key="C major"), 8 * SR)
    assert analyse(stem, SR).key == "D major"
    assert analyse(out, SR).key == "C major"


@pytest.mark.parametrize(("stem", "mix", "shift"), [
    ("D major", "C major", -2), ("C major", "F# major", 6), ("B major", "C major", 1), ("A minor", "C major", 0),
    ("B minor", "C major", -2), ("C major", "A minor", 0), ("F# minor", "G minor", 1), (None, "C major", 0),
    ("C major", None, 0)])
def test_the_key_shift_is_the_smallest_move_to_the_mix_key_or_its_relative(stem, mix, shift):
    assert semitone_shift(stem, mix) == shift


@pytest.mark.parametrize(("stem", "mix", "ratio"), [
    (100, 120, 1.2), (60, 125, 125 / 120), (170, 85, 1.0), (90, 200, 200 / 180), (None, 120, 1.0), (120, None, 1.0)])
def test_the_tempo_ratio_is_half_and_double_time_aware(stem, mix, ratio):
    assert tempo_ratio(stem, mix) == pytest.approx(ratio)


def test_the_loop_point_crossfade_has_no_click():
    """A 441.3 Hz tone cut at 2 bars wraps mid-cycle: the crossfade keeps every sample-to-sample step within a sine's."""
    t = np.arange(5 * SR) / SR
    stem = (0.8 * np.sin(2 * np.pi * 441.3 * t)).astype(np.float32)
    beats = np.arange(0.1, 5.0, 0.5)
    stem_analysis = analysis(120.0, beats, beats[::4], None, 5.0)
    out = fit_to_mix(stem, SR, stem_analysis, analysis(120.0, downbeats=[0.7]), 12 * SR)
    sine_step = 0.8 * 2 * np.pi * 441.3 / SR  # 0.10; cut without a fade, a wrap jumps by up to 1.6
    assert np.max(np.abs(np.diff(out))) <= 1.5 * sine_step  # an equal-power fade of two phases: at most +3 dB
    down = int(round(0.1 * SR))
    for w in int(round(0.7 * SR)) + int(round(4.0 * SR)) * np.arange(1, 3):  # it wraps every 2 bars of 120 BPM
        assert np.array_equal(out[w:w + 200], stem[down:down + 200])  # on the stem's downbeat, its attack unfaded
        assert out[w - 1] == pytest.approx(stem[down - 1], abs=1e-6)  # faded into what precedes it: seamless


def test_none_tempo_and_key_leave_the_stem_unchanged():
    stem = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * SR).astype(np.float32)
    out = fit_to_mix(stem, SR, analysis(), MIX_120, 2 * SR)
    assert np.array_equal(out, stem[:2 * SR])  # nothing stretched, shifted or faded
    longer = fit_to_mix(stem, SR, analysis(), analysis(), 7 * SR)
    n = 3 * SR - round(CROSSFADE * SR)
    assert longer.shape == (7 * SR,)
    assert np.array_equal(longer[:n], stem[:n]) and np.array_equal(longer[3 * SR:3 * SR + n], stem[:n])  # looped


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stem_without_a_tempo_keeps_its_tempo_and_one_without_a_key_its_pitch(engine):
    stem, clicks = click_loop(100.0, 8.0)
    no_tempo = analysis(None, clicks.beats, clicks.downbeats, "D major", 8.0)
    out = fit_to_mix(stem, SR, no_tempo, MIX_120, 8 * SR, engine_name=engine)  # shifted to C, not stretched
    assert abs(beat_period(onsets(out), 0.6) - 0.6) / 0.6 < 0.01
    tonal = chord(D_MAJOR, 6.0)
    no_key = analysis(100.0, np.arange(0, 6, 0.6), np.arange(0, 6, 2.4), None, 6.0)
    assert chroma_root(fit_to_mix(tonal, SR, no_key, MIX_120, 8 * SR, engine_name=engine)) == 2  # still D


@pytest.mark.parametrize("engine", ENGINES)
def test_fitting_is_deterministic_and_keeps_the_channels(engine):
    stem, stem_analysis = click_loop(100.0, 8.0)
    stereo = np.stack([stem, 0.5 * stem])
    a = fit_to_mix(stereo, SR, stem_analysis, MIX_120, 5 * SR, engine_name=engine)
    b = fit_to_mix(stereo, SR, stem_analysis, MIX_120, 5 * SR, engine_name=engine)
    assert a.shape == (2, 5 * SR) and np.array_equal(a, b)


@dataclass
class _Result:
    rank: int
    path: str
    offset: float = 0.0
    analysis: object = None

    def to_dict(self) -> dict:
        return {"rank": self.rank, "path": self.path, "offset": self.offset}


def test_export_with_fit_writes_fitted_candidates_and_premixes_at_the_mix_length_and_rate(tmp_path):
    mix = tmp_path / "mix.wav"
    sf.write(mix, np.zeros((int(9.5 * SR), 2), np.float32), SR)
    stem, stem_analysis = click_loop(100.0, 8.0)
    for song in ("a", "b"):
        (tmp_path / song).mkdir()
    sf.write(tmp_path / "a" / "bass.wav", stem, 16000)  # resampled to the mix's rate
    sf.write(tmp_path / "b" / "drums.wav", np.stack([stem, stem], axis=1), SR)
    results = [_Result(1, str(tmp_path / "a" / "bass.wav"), 0.0, stem_analysis),
               _Result(2, str(tmp_path / "b" / "drums.wav"), 0.0, stem_analysis)]
    export_candidates(mix, "bass", results, tmp_path / "out", fit=True, mix_analysis=MIX_120)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["01_a-bass.fit-premix.wav", "01_a-bass.fit.wav", "02_b-drums.fit-premix.wav", "02_b-drums.fit.wav",
                     "results.json"]
    for name in files[:-1]:
        info = sf.info(tmp_path / "out" / name)
        assert (info.samplerate, info.frames) == (SR, int(9.5 * SR))
    fitted, _ = sf.read(tmp_path / "out" / "02_b-drums.fit.wav", dtype="float32")
    assert fitted.shape == (int(9.5 * SR), 2)  # the candidate keeps its channels
    assert abs(beat_period(onsets(fitted[:, 0]), 0.5) - 0.5) / 0.5 < 0.01
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["results"][0]["fit"]["tempo_ratio"] == pytest.approx(1.2) and doc["mix_analysis"]["bpm"] == 120.0
    assert doc["results"][1]["premix"] == "02_b-drums.fit-premix.wav" and "tempo" in doc["alignment"]


def test_export_without_fit_stays_aligned_and_named_as_before(tmp_path):
    mix = tmp_path / "mix.wav"
    sf.write(mix, np.zeros(4 * SR, np.float32), SR)
    (tmp_path / "a").mkdir()
    stem, stem_analysis = click_loop(100.0, 3.0)
    sf.write(tmp_path / "a" / "bass.wav", stem, SR, subtype="FLOAT")
    export_candidates(mix, "bass", [_Result(1, str(tmp_path / "a" / "bass.wav"), 1.0, stem_analysis)], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["01_a-bass.wav", "results.json"]
    written, _ = sf.read(tmp_path / "out" / "01_a-bass.wav", dtype="float32")
    assert np.allclose(written, align(stem, SR, 1.0, 4 * SR, SR)[0], atol=1e-6)  # from the offset, unstretched
    assert "fit" not in json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
