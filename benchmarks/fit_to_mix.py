"""Fit to the mix, measured (issue 25): each stem of a rendered synth song fitted to the next song's mix, then re-analysed.

    python benchmarks/fit_to_mix.py CORPUS [--inputs estimated|truth] [--engines rubberband librosa]
                                    [--estimator analyse|reference] [--json OUT]

CORPUS: `stemjepa synth --out CORPUS` (a few songs of 10-16 s). The mix is the sum of a song's stems. `--inputs
estimated`: the fit uses `stemjepa.analysis.analyse` of the stem and the mix (what `query --export --fit` does); `truth`:
the song metadata (tempo, beats, downbeats, key; modes map to their MIREX major/minor: ionian/lydian/mixolydian -> major,
aeolian/dorian/phrygian -> minor, `stemjepa.analysis.compat.parse_key`; drums have no key). The fitted stem is then
analysed and compared with the mix's metadata:
- tempo: relative error of the re-estimated BPM to the mix's tempo, octave-aware (the fit keeps a stem at half or double
  time when that is the nearer stretch), share within 1 %;
- key (pitched stems): the re-estimated key is the mix's key, or its relative when the stem's mode differs (the fit
  transposes to the relative key then); next to it the same rate for the unfitted stem against its own song's key;
- tempo on the grid: `tempo_near`, the tempo within +-10 % of the intended one that the fitted stem's onsets repeat
  best (blind to the other periodicities that fool a free estimator on sparse tonal parts), share within 1 %;
- key moved: the estimate of the fitted stem is the estimate of the unfitted one transposed by the shift applied
  (the transposition measured apart from the estimator's own errors);
- chroma rotated: the mean chroma of the fitted stem is that of the same fit without transposition rotated by the
  shift (no key named);
- seconds per fit (the stretch, not the analyses).
`--estimator reference` re-estimates with a plain reference instead of `stemjepa.analysis.analyse`: librosa's beat tracker
(BPM from the slope of its beat times) and Krumhansl-Kessler key profiles on the mean CQT chroma (with `--inputs truth`).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from stemjepa.analysis.compat import PITCHES, parse_key
from stemjepa.audio.fit import fit_to_mix, semitone_shift, tempo_ratio
from stemjepa.fsutil import atomic_write_text

try:
    from stemjepa.analysis import Analysis, analyse
except ImportError:  # stemjepa.analysis not there: `--estimator reference --inputs truth` still runs
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Analysis:
        bpm: float | None
        bpm_confidence: float
        beats: tuple
        downbeats: tuple
        key: str | None
        key_strength: float
        loudness_lufs: float | None
        duration: float

    analyse = None

MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])  # Krumhansl-Kessler
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def reference(wave: np.ndarray, sr: int) -> Analysis:
    """Tempo from the slope of librosa's beat times, key from Krumhansl-Kessler profiles on the mean CQT chroma."""
    import librosa

    _, beats = librosa.beat.beat_track(y=wave, sr=sr, units="time")
    bpm = None
    if len(beats) >= 4:
        bpm = 60.0 / float(np.polyfit(np.arange(len(beats)), beats, 1)[0])
    chroma = librosa.feature.chroma_cqt(y=wave, sr=sr, tuning=0.0).mean(axis=1)
    scores = [(np.corrcoef(np.roll(profile, tonic), chroma)[0, 1], f"{PITCHES[tonic]} {mode}")
              for tonic in range(12) for profile, mode in ((MAJOR, "major"), (MINOR, "minor"))]
    return Analysis(bpm=bpm, bpm_confidence=0.0, beats=tuple(beats), downbeats=(), key=max(scores)[1], key_strength=0.0,
                    loudness_lufs=None, duration=len(wave) / sr)


def tempo_near(wave: np.ndarray, sr: int, bpm: float) -> float:
    """The tempo within +-10 % of `bpm` whose beat period the onset envelope repeats best (autocorrelation at 1-4 periods,
    2.9 ms frames, parabolic peak): how closely a fitted stem keeps the intended tempo, blind to other periodicities."""
    import librosa

    hop = 64
    env = librosa.onset.onset_strength(y=wave, sr=sr, hop_length=hop)
    env = env - env.mean()
    ac = np.correlate(env, env, "full")[len(env) - 1:]
    period = 60.0 / bpm * sr / hop
    lags = np.arange(int(period * 0.9), int(period * 1.1) + 2)
    score = np.array([sum(np.interp(lag * k, np.arange(len(ac)), ac) for k in range(1, 5)) for lag in lags])
    i = int(np.clip(np.argmax(score), 1, len(lags) - 2))
    a, b, c = score[i - 1:i + 2]
    shift = float(np.clip(0.5 * (a - c) / (a - 2 * b + c), -0.5, 0.5)) if a - 2 * b + c < 0 else 0.0
    return 60.0 * sr / hop / (lags[i] + shift)


def chroma_rotation(before: np.ndarray, after: np.ndarray, sr: int) -> int:
    """Semitones (-5..+6) by which the mean CQT chroma of `after` is that of `before` rotated best: the transposition
    heard, without naming a key."""
    import librosa

    a, b = (librosa.feature.chroma_cqt(y=w, sr=sr, tuning=0.0).mean(axis=1) for w in (before, after))
    best = max(range(12), key=lambda r: float(np.corrcoef(np.roll(a, r), b)[0, 1]))
    return best - 12 if best > 6 else best


def unshifted(wave, sr, stem_in, mix_in, frames, engine) -> np.ndarray:
    """The same fit without the transposition (the mix's key unknown): the reference the shift is measured against."""
    import dataclasses

    return fit_to_mix(wave, sr, stem_in, dataclasses.replace(mix_in, key=None), frames, engine_name=engine)


def truth(meta: dict, is_drum: bool, duration: float) -> Analysis:
    key = parse_key(meta["key"])
    return Analysis(bpm=float(meta["tempo"]), bpm_confidence=1.0, beats=tuple(meta["beats"]),
                    downbeats=tuple(meta["downbeats"]), key=None if is_drum or key is None else key.name,
                    key_strength=1.0, loudness_lufs=None, duration=duration)


def load_song(folder: Path) -> tuple[dict, list[tuple[str, np.ndarray, bool]], int]:
    meta = json.loads((folder / "stems.json").read_text())
    stems, sr = [], None
    for s in meta["stems"]:
        wave, sr = sf.read(folder / s["file"], dtype="float32", always_2d=True)
        if np.abs(wave).max() > 1e-3:  # a part that never plays is no candidate
            stems.append((s["name"], wave.mean(axis=1), bool(s.get("is_drum"))))
    stems.append(("(mix)", np.sum([w for _, w, _ in stems], axis=0), False))  # the whole song as a candidate too
    return meta, stems, sr


def octave_error(bpm: float | None, target: float) -> float:
    if bpm is None:
        return math.inf
    k = round(math.log2(bpm / target))
    return abs(bpm / (target * 2.0 ** k) - 1.0)


def summarise(rows: list[dict], seconds: list[float]) -> dict:
    def rate(pred, among) -> float | None:
        return round(sum(map(pred, among)) / len(among), 3) if among else None

    stretched = [r for r in rows if r["stem_bpm_in"] is not None]
    found = [r for r in stretched if r["tempo_before_error"] <= 0.04]  # the estimator's tempo right on the unfitted part
    pitched = [r for r in rows if not r["drum"]]
    keyed = [r for r in pitched if r["key_before_ok"]]
    return {"fits": len(rows), "stretched": len(stretched),
            "tempo_within_1pct": rate(lambda r: r["tempo_error"] <= 0.01, stretched),
            "tempo_before_within_4pct": round(len(found) / len(stretched), 3) if stretched else None,
            "tempo_within_1pct_where_found_before": rate(lambda r: r["tempo_error"] <= 0.01, found),
            "tempo_error_median_pct": round(100 * statistics.median(r["tempo_error"] for r in stretched), 3)
            if stretched else None,
            "grid_within_1pct": rate(lambda r: r["grid_error"] <= 0.01, rows),
            "grid_error_median_pct": round(100 * statistics.median(r["grid_error"] for r in rows), 3) if rows else None,
            "pitched": len(pitched), "key_after_fit_rate": rate(lambda r: r["key_ok"], pitched),
            "key_unfitted_rate": rate(lambda r: r["key_before_ok"], pitched),
            "key_after_fit_rate_where_found_before": rate(lambda r: r["key_ok"], keyed),
            "key_moved_by_shift_rate": rate(lambda r: r["key_moved_by_shift"], pitched),
            "chroma_rotated_by_shift_rate": rate(lambda r: r["chroma_rotation"] == r["shift"], pitched),
            "seconds_per_fit_median": round(statistics.median(seconds), 3), "seconds_per_fit_max": round(max(seconds), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--inputs", choices=("estimated", "truth"), default="estimated")
    ap.add_argument("--engines", nargs="+", default=["rubberband", "librosa"])
    ap.add_argument("--estimator", choices=("analyse", "reference"), default="analyse")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    estimate = reference if args.estimator == "reference" else analyse
    if estimate is None or (args.inputs == "estimated" and analyse is None):
        ap.error("stemjepa.analysis.analyse is not installed: use --estimator reference --inputs truth")
    songs = [load_song(f) for f in sorted(p.parent for p in args.corpus.glob("*/stems.json"))]
    report: dict = {"inputs": args.inputs, "estimator": args.estimator, "songs": len(songs), "engines": {}}
    for engine in args.engines:
        rows, seconds = [], []
        for i, (meta, stems, sr) in enumerate(songs):
            mix_meta, mix_stems, mix_sr = songs[(i + 1) % len(songs)]
            assert mix_sr == sr, "one corpus, one rate"
            mix = mix_stems[-1][1]
            frames = len(mix)
            mix_key = parse_key(mix_meta["key"])
            mix_in = truth(mix_meta, False, frames / sr) if args.inputs == "truth" else analyse(mix, sr)
            for name, wave, is_drum in stems:
                stem_in = truth(meta, is_drum, len(wave) / sr) if args.inputs == "truth" else analyse(wave, sr)
                t0 = time.perf_counter()
                fitted = fit_to_mix(wave, sr, stem_in, mix_in, frames, engine_name=engine)
                seconds.append(time.perf_counter() - t0)
                assert fitted.shape == (frames,)
                after, unfitted = estimate(fitted, sr), estimate(wave, sr)
                ratio = tempo_ratio(stem_in.bpm, mix_in.bpm)
                intended = float(meta["tempo"]) * ratio  # the mix's tempo, or half or double it
                row = {"song": i, "stem": name, "drum": is_drum, "stem_bpm_in": stem_in.bpm, "mix_bpm_in": mix_in.bpm,
                       "tempo_before_error": octave_error(unfitted.bpm, float(meta["tempo"])),
                       "ratio": ratio, "bpm_after": after.bpm, "tempo_error": octave_error(after.bpm, float(mix_meta["tempo"])),
                       "grid_error": octave_error(tempo_near(fitted, sr, intended), float(mix_meta["tempo"]))}
                if not is_drum:
                    own = parse_key(meta["key"])
                    before = parse_key(unfitted.key)
                    expected = mix_key if own.minor == mix_key.minor else mix_key.relative
                    shift = semitone_shift(stem_in.key, mix_in.key)
                    row.update(shift=shift, key_after=after.key, key_expected=expected.name,
                               key_ok=parse_key(after.key) == expected, key_before_ok=before == own,
                               key_moved_by_shift=before is not None and parse_key(after.key) == before.transposed(shift),
                               chroma_rotation=chroma_rotation(unshifted(wave, sr, stem_in, mix_in, frames, engine),
                                                               fitted, sr))
                rows.append(row)
        report["engines"][engine] = {"stems": summarise([r for r in rows if r["stem"] != "(mix)"], seconds),
                                     "mixes": summarise([r for r in rows if r["stem"] == "(mix)"], seconds), "rows": rows}
        for part in ("stems", "mixes"):
            print(engine, part, json.dumps(report["engines"][engine][part]))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
