"""Music theory of the synthetic songs: keys, modes, diatonic chords, progressions, song forms and the beat grid.

A `SongPlan` is everything the parts of one song share (tempo, meter, key, chords, sections, groove), so that stems
of one song fit together and stems of different songs do not: that is exactly what stem retrieval must discover.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

MODES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}
MODE_WEIGHTS = {"major": 0.45, "minor": 0.35, "dorian": 0.1, "mixolydian": 0.1}

# Scale-degree progressions (0 = tonic), a few per mode; each section of a song gets its own.
PROGRESSIONS: dict[str, list[tuple[int, ...]]] = {
    "major": [(0, 4, 5, 3), (0, 5, 3, 4), (1, 4, 0, 0), (0, 3, 0, 4), (5, 3, 0, 4), (0, 3, 4, 3), (0, 2, 3, 4),
              (0, 0, 3, 4), (3, 4, 2, 5), (0, 4, 3, 3)],
    "minor": [(0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4), (0, 0, 5, 6), (0, 3, 0, 4),
              (5, 6, 0, 0), (0, 2, 3, 4)],
    "dorian": [(0, 3, 0, 3), (0, 6, 3, 0), (0, 1, 0, 3), (0, 3, 6, 3)],
    "mixolydian": [(0, 6, 3, 0), (0, 6, 0, 3), (0, 3, 6, 0), (0, 4, 6, 3)],
}

FORMS = [
    ("intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"),
    ("intro", "verse", "verse", "chorus", "bridge", "chorus", "outro"),
    ("verse", "chorus", "verse", "chorus", "bridge", "chorus"),
    ("intro", "chorus", "verse", "chorus", "outro"),
]
SECTION_BARS = {"intro": (2, 4), "verse": (4, 8), "chorus": (4, 8), "bridge": (2, 4), "outro": (2, 4)}
SECTION_ENERGY = {"intro": 0.35, "verse": 0.65, "chorus": 1.0, "bridge": 0.5, "outro": 0.4}

# Grooves: kick/snare/hat positions in 16th steps of a bar (4 per beat); tempo range in BPM; swing range.
GROOVES: dict[str, dict] = {
    "rock": dict(meter=4, tempo=(90, 160), swing=(0.0, 0.0), kick=[(0, 8), (0, 8, 10), (0, 6, 8), (0, 7, 8)],
                 snare=(4, 12), hat=8),
    "four_floor": dict(meter=4, tempo=(115, 132), swing=(0.0, 0.0), kick=[(0, 4, 8, 12)], snare=(4, 12), hat=16),
    "halftime": dict(meter=4, tempo=(130, 180), swing=(0.0, 0.1), kick=[(0, 10), (0, 3, 10), (0, 11, 14)],
                     snare=(8,), hat=8),
    "funk": dict(meter=4, tempo=(88, 120), swing=(0.0, 0.12), kick=[(0, 3, 10), (0, 6, 10, 11), (0, 3, 8, 14)],
                 snare=(4, 12), hat=16),
    "hiphop": dict(meter=4, tempo=(78, 100), swing=(0.1, 0.3), kick=[(0, 7, 10), (0, 3, 10), (0, 10, 11)],
                   snare=(4, 12), hat=8),
    "shuffle": dict(meter=4, tempo=(80, 140), swing=(0.3, 0.33), kick=[(0, 8), (0, 6, 8)], snare=(4, 12), hat=8),
    "bossa": dict(meter=4, tempo=(100, 140), swing=(0.0, 0.0), kick=[(0, 6, 8, 14)], snare=(0, 6, 12), hat=8),
    "ballad": dict(meter=4, tempo=(60, 84), swing=(0.0, 0.15), kick=[(0, 10), (0, 8)], snare=(4, 12), hat=8),
    "breakbeat": dict(meter=4, tempo=(125, 175), swing=(0.0, 0.05), kick=[(0, 10), (0, 2, 10)], snare=(4, 12),
                      hat=8),
    "waltz": dict(meter=3, tempo=(84, 170), swing=(0.0, 0.0), kick=[(0,), (0, 10)], snare=(4, 8), hat=4),
    "jazz_waltz": dict(meter=3, tempo=(100, 180), swing=(0.25, 0.33), kick=[(0,)], snare=(8,), hat=4),
}
GROOVE_WEIGHTS = {"rock": 0.18, "four_floor": 0.1, "halftime": 0.08, "funk": 0.1, "hiphop": 0.1, "shuffle": 0.07,
                  "bossa": 0.07, "ballad": 0.1, "breakbeat": 0.05, "waltz": 0.09, "jazz_waltz": 0.06}

# The wider song plans of production "full": more genres and meters (5/4, 7/4), each groove's tempo range widened by
# 15 % within 60-180 BPM, tempos to a tenth of a BPM. Default plans use only GROOVES, unchanged.
WIDE_GROOVES: dict[str, dict] = {
    **GROOVES,
    "trap": dict(meter=4, tempo=(128, 170), swing=(0.0, 0.08), kick=[(0, 11), (0, 3, 11), (0, 7, 10, 14)], snare=(8,),
                 hat=16),
    "one_drop": dict(meter=4, tempo=(62, 92), swing=(0.0, 0.2), kick=[(8,), (8, 14)], snare=(8,), hat=8),
    "disco": dict(meter=4, tempo=(108, 130), swing=(0.0, 0.05), kick=[(0, 4, 8, 12)], snare=(4, 12), hat=16),
    "punk": dict(meter=4, tempo=(150, 180), swing=(0.0, 0.0), kick=[(0, 8), (0, 6, 8)], snare=(4, 12), hat=8),
    "drum_and_bass": dict(meter=4, tempo=(160, 180), swing=(0.0, 0.05), kick=[(0, 10), (0, 7, 10)], snare=(4, 12),
                          hat=16),
    "afrobeat": dict(meter=4, tempo=(98, 126), swing=(0.0, 0.1), kick=[(0, 6, 10), (0, 3, 8, 11)], snare=(4, 12, 14),
                     hat=16),
    "five": dict(meter=5, tempo=(90, 160), swing=(0.0, 0.1), kick=[(0, 6, 12), (0, 10)], snare=(4, 16), hat=8),
    "seven": dict(meter=7, tempo=(96, 170), swing=(0.0, 0.05), kick=[(0, 8, 16), (0, 6, 16, 22)], snare=(4, 12, 24),
                  hat=8),
}
WIDE_GROOVE_WEIGHTS = {**{k: 1.0 for k in GROOVES}, "rock": 1.6, "trap": 0.8, "one_drop": 0.6, "disco": 0.7,
                       "punk": 0.6, "drum_and_bass": 0.6, "afrobeat": 0.6, "five": 0.35, "seven": 0.25}


@dataclass(frozen=True)
class Chord:
    root: int                 # pitch class
    tones: tuple[int, ...]    # pitch classes, root first, stacked thirds
    name: str


@dataclass
class Bar:
    index: int
    section: str
    energy: float
    chords: list[tuple[float, float, Chord]]   # (start beat in bar, length in beats, chord)
    first_in_section: bool
    last_in_section: bool


@dataclass
class Groove:
    style: str
    kick: tuple[int, ...]     # 16th steps in a bar, shared by drums and bass so they lock together
    snare: tuple[int, ...]
    hat: int                  # hat subdivision per bar: 4 (quarters), 8 or 16


@dataclass
class SongPlan:
    """The shared skeleton of one song, in beats; `time(beat)` maps to seconds (with swing)."""

    tempo: float
    meter: int
    tonic: int
    mode: str
    offset: float             # seconds before the first beat
    seconds: float
    swing: float              # 0: straight; 0.33: triplet shuffle (the off-beat 8th moves from 0.5 to 0.665)
    groove: Groove
    bars: list[Bar] = field(default_factory=list)
    wide: bool = False        # production "full": the parts use the wider styles (more fills, syncopation, rolls)

    @property
    def key(self) -> str:
        return f"{NOTE_NAMES[self.tonic]} {self.mode}"

    @property
    def beat_seconds(self) -> float:
        return 60.0 / self.tempo

    @property
    def scale(self) -> tuple[int, ...]:
        return tuple((self.tonic + s) % 12 for s in MODES[self.mode])

    def time(self, beat: float, swing: float | None = None) -> float:
        """Seconds of `beat`, swung by the song's swing (or by a part's own `swing`)."""
        whole = math.floor(beat)
        frac = beat - whole
        mid = 0.5 + 0.5 * (self.swing if swing is None else swing)
        swung = frac * 2 * mid if frac < 0.5 else mid + (frac - 0.5) * 2 * (1 - mid)
        return self.offset + (whole + swung) * self.beat_seconds

    def beats(self) -> list[float]:
        n = int(math.floor((self.seconds - self.offset) / self.beat_seconds - 1e-9)) + 1
        return [round(self.offset + k * self.beat_seconds, 6) for k in range(max(n, 0))]

    def downbeats(self) -> list[float]:
        return self.beats()[:: self.meter]

    def chord_at(self, beat: float) -> Chord:
        bar = self.bars[min(int(beat // self.meter), len(self.bars) - 1)]
        pos = beat - bar.index * self.meter
        current = bar.chords[0][2]
        for start, _, chord in bar.chords:
            if start <= pos + 1e-9:
                current = chord
        return current


def diatonic_chord(tonic: int, mode: str, degree: int, seventh: bool = False, major_dominant: bool = False) -> Chord:
    """The chord on `degree` of the scale, stacked in thirds; `major_dominant` raises the third of v in minor."""
    scale = MODES[mode]
    n = 4 if seventh else 3
    tones = [(tonic + scale[(degree + 2 * k) % 7]) % 12 for k in range(n)]
    if major_dominant and degree == 4 and mode in ("minor", "dorian"):
        tones[1] = (tones[0] + 4) % 12
    third = (tones[1] - tones[0]) % 12
    fifth = (tones[2] - tones[0]) % 12
    quality = "" if third == 4 else "m"
    if fifth == 6:
        quality = "dim"
    if seventh:
        sev = (tones[3] - tones[0]) % 12
        quality += "maj7" if sev == 11 else "7"
    return Chord(tones[0], tuple(tones), NOTE_NAMES[tones[0]] + quality)


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[k] for k in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _wide_tempo(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A tempo from the groove's range widened by 15 % each way, within 60-180 BPM, to a tenth of a BPM."""
    return round(float(rng.uniform(max(60.0, lo * 0.85), min(180.0, hi * 1.15))), 1)


def plan_song(rng: np.random.Generator, seconds: float, wide: bool = False) -> SongPlan:
    """Draw tempo, meter, key, groove, form and chords of one song; `wide` (production "full") draws from the wider
    genres, meters and tempos of WIDE_GROOVES (the default plans, and their random draws, are unchanged)."""
    style = _choice(rng, WIDE_GROOVE_WEIGHTS if wide else GROOVE_WEIGHTS)
    g = (WIDE_GROOVES if wide else GROOVES)[style]
    tempo = _wide_tempo(rng, *g["tempo"]) if wide else float(rng.integers(g["tempo"][0], g["tempo"][1] + 1))
    swing = float(rng.uniform(*g["swing"])) if g["swing"][1] > 0 else 0.0
    kick = g["kick"][int(rng.integers(len(g["kick"])))]
    groove = Groove(style, tuple(kick), tuple(g["snare"]), int(g["hat"]))
    if style in ("funk", "afrobeat") or (style in ("four_floor", "disco", "trap") and rng.random() < 0.5):
        mode_weights = {"minor": 0.4, "dorian": 0.4, "mixolydian": 0.2}
    else:
        mode_weights = MODE_WEIGHTS
    mode = _choice(rng, mode_weights)
    plan = SongPlan(tempo=tempo, meter=int(g["meter"]), tonic=int(rng.integers(12)), mode=mode,
                    offset=round(float(rng.uniform(0.0, 0.3)), 3), seconds=float(seconds), swing=round(swing, 3),
                    groove=groove, wide=wide)
    bar_seconds = plan.meter * plan.beat_seconds
    n_bars = int(math.ceil((seconds - plan.offset) / bar_seconds)) + 1
    seventh = rng.random() < (0.7 if style in ("shuffle", "bossa", "jazz_waltz", "funk") else 0.25)
    major_dominant = rng.random() < 0.5
    chords_per_bar = 2 if (plan.meter == 4 and tempo < 100 and rng.random() < 0.35) else 1
    bars_per_chord = 2 if (chords_per_bar == 1 and tempo > 135 and rng.random() < 0.5) else 1
    progressions = PROGRESSIONS[mode]
    by_section: dict[str, tuple[int, ...]] = {}
    for name in ("verse", "chorus", "bridge"):
        by_section[name] = progressions[int(rng.integers(len(progressions)))]
    by_section["intro"] = by_section["outro"] = by_section["verse" if rng.random() < 0.5 else "chorus"]
    # form: short songs are one section; longer ones follow a form template, in blocks of 2, 4 or 8 bars
    blocks: list[tuple[str, int]] = []
    if n_bars < 8:
        blocks = [("chorus" if rng.random() < 0.5 else "verse", n_bars)]
    else:
        form = FORMS[int(rng.integers(len(FORMS)))]
        while sum(b for _, b in blocks) < n_bars:
            name = form[len(blocks) % len(form)]
            lo, hi = SECTION_BARS[name]
            blocks.append((name, int(rng.choice([b for b in (2, 4, 8) if lo <= b <= hi]))))
    i = 0
    for name, length in blocks:
        prog = by_section[name]
        for pos in range(length):
            if i == n_bars:
                break
            chords = []
            for c in range(chords_per_bar):
                slot = (pos * chords_per_bar + c) // bars_per_chord
                beats = plan.meter / chords_per_bar
                chord = diatonic_chord(plan.tonic, mode, prog[slot % len(prog)], seventh, major_dominant)
                chords.append((c * beats, beats, chord))
            plan.bars.append(Bar(i, name, SECTION_ENERGY[name], chords, pos == 0, pos == length - 1))
            i += 1
    return plan
