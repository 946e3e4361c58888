"""Tempo, beats, downbeats, key and loudness of a stem or a mix, with librosa (ISC) and pyloudnorm (MIT).

Bounded cost: at most MAX_SECONDS of audio are analysed, at ANALYSIS_RATE (a mix of several minutes costs what its
first two minutes cost). Every estimate is honest about what it cannot tell: no tempo for silence or a file too short to
hold two beats, no key for unpitched or atonal material (drums, noise), no loudness for silence.
"""
from __future__ import annotations

import numpy as np

ANALYSIS_RATE = 16000          # Hz: the library's rate (what index and query decode to)
MAX_SECONDS = 120.0            # analysed at most (from the start)
HOP = 256                      # 16 ms frames at 16 kHz
MIN_SECONDS = 1.5              # shorter: no tempo, no key
SILENCE_DBFS = -60.0           # peak frame RMS under this: silent
TEMPO_RANGE = (50.0, 220.0)    # BPM searched
TEMPO_PRIOR_CENTRE = 100.0     # log-normal prior over the metrical level, 1.5 octaves wide, on the harmonic comb
TEMPO_PRIOR_OCTAVES = 1.5      # (measured: 100/1.5 best of 90-150 x 1-1.5 octaves, benchmarks/analysis_accuracy.py)
TEMPOGRAM_SECONDS = 8.0        # autocorrelation window (humanised timing blurs longer windows)
COMB_HARMONICS = 4             # a beat period is scored with its multiples 1..4
KEY_HOP = 1024                 # 64 ms chroma frames
KEY_OCTAVES = 7                # C1..B7
KEY_OPENING_SECONDS = 2.0      # the opening establishes the tonic (a song mostly starts on its tonic chord): weighted
KEY_OPENING_WEIGHT = 3.0       # x3 (MIREX on 20 fresh songs: mixes 0.875 -> 0.89, pitched stems 0.60 -> 0.67)
KEY_MIN_CORRELATION = 0.45     # best key-profile correlation under this: no key (atonal, kits)
KEY_MAX_FLATNESS = 0.1         # median spectral flatness of the sounding frames over this (noise, kits): no key
KEY_MIN_HARMONIC = 0.5         # harmonic share of the energy (HPSS) under this: percussive, no key
# (measured on 40 songs: harmonic share median 0.15 for drum stems, 0.96 for pitched ones, 0.83 for mixes;
#  median flatness 0.002 for pitched stems, 0.079 for drums, under 0.1 for mixes)
NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Albrecht & Shanahan (2013) key profiles, major and minor, tonic first: measured better than Krumhansl-Kessler and
# Temperley on 40 held-out synth songs (MIREX on mixes / pitched stems: 0.70 / 0.64, K-K 0.62 / 0.56, Temperley 0.59 / 0.55)
MAJOR_PROFILE = np.array([0.238, 0.006, 0.111, 0.006, 0.137, 0.094, 0.016, 0.214, 0.009, 0.080, 0.008, 0.081])
MINOR_PROFILE = np.array([0.220, 0.006, 0.104, 0.123, 0.019, 0.103, 0.012, 0.214, 0.062, 0.022, 0.061, 0.052])


def prepare(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 at ANALYSIS_RATE, at most MAX_SECONDS, NaN-free."""
    y = np.asarray(wave, dtype=np.float32)
    if y.ndim > 1:
        y = y.mean(axis=0 if y.shape[0] < y.shape[-1] else 1)
    y = y[: int(MAX_SECONDS * sample_rate)]
    y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
    if sample_rate != ANALYSIS_RATE and y.size:
        import soxr

        y = soxr.resample(y, sample_rate, ANALYSIS_RATE).astype(np.float32)
    return y


def peak_dbfs(y: np.ndarray) -> float:
    """Loudest 100 ms frame, dBFS RMS (-inf for silence)."""
    n = ANALYSIS_RATE // 10
    if y.size == 0:
        return float("-inf")
    frames = y[: y.size // n * n].reshape(-1, n) if y.size >= n else y[None, :]
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)).max()
    return float(20 * np.log10(rms)) if rms > 0 else float("-inf")


def loudness_lufs(y: np.ndarray) -> float | None:
    """Integrated loudness (ITU-R BS.1770-4, gated) in LUFS; None when too short or silent."""
    import pyloudnorm

    if y.size < int(0.4 * ANALYSIS_RATE):
        return None
    value = pyloudnorm.Meter(ANALYSIS_RATE).integrated_loudness(y.astype(np.float64))
    return round(float(value), 2) if np.isfinite(value) else None


def tempo_and_beats(y: np.ndarray) -> tuple[float | None, float, np.ndarray]:
    """(BPM, confidence 0..1, beat times). The time-averaged autocorrelation tempogram of the onset envelope is read
    as a harmonic comb (a beat period also repeats at 2, 3 and 4 periods, its half does not), weighted by a log-normal
    prior around TEMPO_PRIOR_CENTRE so that the metrical level music is usually counted at wins over its half or
    double; beats are then tracked at that tempo. Measured against alternatives in benchmarks/analysis_accuracy.py."""
    import librosa

    onset = librosa.onset.onset_strength(y=y, sr=ANALYSIS_RATE, hop_length=HOP)
    fps = ANALYSIS_RATE / HOP
    if onset.size < 2 * fps or not np.any(onset > 0):
        return None, 0.0, np.zeros(0)
    window = int(min(TEMPOGRAM_SECONDS * fps, onset.size))
    ac = librosa.feature.tempogram(onset_envelope=onset, sr=ANALYSIS_RATE, hop_length=HOP, win_length=window).mean(axis=1)
    ac = np.nan_to_num(ac)
    top = min((ac.size - 1) / COMB_HARMONICS, 60.0 * fps / TEMPO_RANGE[0])
    lags = np.arange(60.0 * fps / TEMPO_RANGE[1], top, 0.1)
    if lags.size == 0 or ac[0] <= 0:
        return None, 0.0, np.zeros(0)
    comb = sum(np.interp(k * lags, np.arange(ac.size), ac) for k in range(1, COMB_HARMONICS + 1)) / COMB_HARMONICS
    bpms = 60.0 * fps / lags
    prior = np.exp(-0.5 * (np.log2(bpms / TEMPO_PRIOR_CENTRE) / TEMPO_PRIOR_OCTAVES) ** 2)
    best = int(np.argmax(comb * prior))
    bpm = float(bpms[best])
    # confidence: how periodic the onsets are at that period (comb over the zero-lag energy), 0..1
    confidence = float(np.clip(comb[best] / ac[0], 0.0, 1.0))
    _, frames = librosa.beat.beat_track(onset_envelope=onset, sr=ANALYSIS_RATE, hop_length=HOP, bpm=bpm, tightness=200,
                                        trim=False)
    beats = librosa.frames_to_time(frames, sr=ANALYSIS_RATE, hop_length=HOP)
    return round(bpm, 2), round(confidence, 3), beats


def downbeats(y: np.ndarray, beats: np.ndarray) -> np.ndarray:
    """The beats that start bars: the meter (3 or 4) and phase whose beats carry the most low-frequency onsets and
    harmonic change (kick, bass notes and chord changes fall on bar starts)."""
    import librosa

    if beats.size < 6:
        return beats[:1]
    frames = librosa.time_to_frames(beats, sr=ANALYSIS_RATE, hop_length=HOP)
    low = librosa.onset.onset_strength(y=y, sr=ANALYSIS_RATE, hop_length=HOP, fmax=250, n_mels=32)
    chroma = librosa.feature.chroma_stft(y=y, sr=ANALYSIS_RATE, hop_length=HOP)
    frames = np.clip(frames, 0, min(low.size, chroma.shape[1]) - 1)
    near = np.stack([low[np.clip(frames + d, 0, low.size - 1)] for d in (-2, -1, 0, 1, 2)]).max(axis=0)  # beats land +-30 ms
    kick = near / (near.max() + 1e-9)
    synced = librosa.util.sync(chroma, frames, aggregate=np.median, pad=False)  # column i: from beat i to beat i + 1
    change = np.r_[0.0, np.linalg.norm(np.diff(synced, axis=1), axis=0)][: frames.size]
    change = change / (change.max() + 1e-9)
    score = kick + 0.5 * np.pad(change, (0, frames.size - change.size))
    score[frames < 4] = np.nan  # the onset envelope is blind in its first frames: a beat there says nothing
    best, best_value = (4, 0), -np.inf
    for meter in (4, 3):
        for phase in range(meter):
            value = np.nanmean(score[phase::meter]) + np.nanmedian(score[phase::meter]) - 2 * np.nanmean(score)
            if value > best_value + 1e-6:
                best, best_value = (meter, phase), value
    meter, phase = best
    return beats[phase::meter]


def key_of(y: np.ndarray) -> tuple[str | None, float]:
    """("A minor", strength) from the correlation of the song's chroma (a 36-bins-per-octave CQT from C1, folded to
    12 pitch classes, square-root compressed, its opening weighted) with the Albrecht-Shanahan profiles of the 24 keys
    (measured best of Krumhansl-Kessler, Temperley and Albrecht-Shanahan); (None, strength) when the material is
    unpitched (mostly percussive energy by HPSS, or spectrally flat: drums, noise) or no key fits well (atonal)."""
    import librosa

    spectrum = np.abs(librosa.stft(y, n_fft=2048, hop_length=KEY_HOP // 2))  # 32 ms: HPSS needs the finer hop
    rms = np.sqrt((spectrum ** 2).mean(axis=0))
    active = rms > 0.03 * rms.max()  # silent gaps are flat too: judge the sounding frames only
    if not active.any():
        return None, 0.0
    flatness = float(np.median(librosa.feature.spectral_flatness(S=spectrum)[0][active]))
    harmonic, percussive = librosa.decompose.hpss(spectrum)
    harmonic_share = float((harmonic ** 2).sum() / ((harmonic ** 2).sum() + (percussive ** 2).sum() + 1e-12))
    cqt = np.abs(librosa.cqt(y, sr=ANALYSIS_RATE, hop_length=KEY_HOP, fmin=librosa.note_to_hz("C1"),
                             n_bins=KEY_OCTAVES * 36, bins_per_octave=36))
    weights = np.ones(cqt.shape[1])
    weights[: int(KEY_OPENING_SECONDS * ANALYSIS_RATE / KEY_HOP)] = KEY_OPENING_WEIGHT
    folded = np.roll(np.sqrt(cqt) @ weights, 1).reshape(-1, 3).sum(axis=1)  # bins 3k-1, 3k, 3k+1: semitone k
    profile = folded.reshape(-1, 12).sum(axis=0)
    if not np.isfinite(profile).all() or profile.std() == 0:
        return None, 0.0
    scores = []
    for mode, template in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            scores.append((float(np.corrcoef(profile, np.roll(template, tonic))[0, 1]), f"{NAMES[tonic]} {mode}"))
    strength, name = max(scores)
    strength = round(max(0.0, strength), 3)
    if flatness > KEY_MAX_FLATNESS or harmonic_share < KEY_MIN_HARMONIC or strength < KEY_MIN_CORRELATION:
        return None, strength
    return name, strength
