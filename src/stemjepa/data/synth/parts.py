"""Part generators: drums, percussion, bass, comping, pads, arpeggios, lead melodies and counter-melodies.

Every part is written against the song's `SongPlan` (chords, sections, groove), in beats, so the parts of one song
share harmony and rhythm. `arrange` picks the parts of a song and an instrument for each from the palette.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ...errors import ConfigError
from .palette import KIT_PARTS, Instrument, instruments
from .theory import Chord, SongPlan

# GM drum keys
KICK, SIDE_STICK, SNARE, CLAP = 36, 37, 38, 39
HAT_CLOSED, HAT_PEDAL, HAT_OPEN, CRASH, RIDE = 42, 44, 46, 49, 51
TOMS = (50, 48, 47, 45, 43, 41)

ROLE_REGISTER = {"bass": (28, 52), "comp": (48, 79), "pad": (48, 79), "arp": (55, 88), "lead": (60, 86),
                 "counter": (45, 72)}
# activity threshold per role: a part plays the bars whose section energy reaches it (plus a random shift per song)
ROLE_THRESHOLD = {"drums": 0.3, "perc": 0.6, "bass": 0.3, "comp": 0.25, "pad": 0.55, "arp": 0.6, "lead": 0.5,
                  "counter": 0.6}
# mixing level per role in dB, before a random offset per stem
ROLE_LEVEL_DB = {"drums": 0.0, "perc": -9.0, "bass": -2.0, "comp": -4.0, "pad": -8.0, "arp": -7.0, "lead": -1.0,
                 "counter": -6.0}
ROLE_PROBABILITY = {"drums": 0.85, "perc": 0.35, "bass": 0.92, "comp": 0.9, "pad": 0.5, "arp": 0.4, "lead": 0.85,
                    "counter": 0.3}
LEGATO_CATEGORIES = ("vocals", "wind", "bowed strings")


class Note(NamedTuple):
    start: float          # beats from the start of the song
    end: float            # beats
    pitch: int
    velocity: int
    delay: float = 0.0    # seconds added after the beat-to-time mapping (guitar strums)


@dataclass
class Part:
    role: str
    instrument: Instrument
    notes: list[Note] = field(default_factory=list)
    group: str = ""           # stems of one split drum kit share a group, hence one mixing gain
    level_db: float = 0.0
    program: int = 0          # rendering program (the kit preset for split-kit stems)

    @property
    def is_drum(self) -> bool:
        return self.instrument.is_drum


# ----------------------------------------------------------------------------------------------- helpers
def _vel(rng: np.random.Generator, base: float, energy: float) -> int:
    return int(np.clip(round(base * (0.75 + 0.25 * energy) + rng.normal(0, 4)), 20, 127))


def activity(plan: SongPlan, rng: np.random.Generator, role: str, shift: float = 0.0) -> list[bool]:
    """Bars where a part plays: sections whose energy reaches the role's threshold; never none."""
    th = ROLE_THRESHOLD[role] + shift + rng.uniform(-0.15, 0.15)
    active = [b.energy >= th for b in plan.bars]
    if not any(active):
        top = max(b.energy for b in plan.bars)
        active = [b.energy >= top for b in plan.bars]
    return active


def register(role: str, inst: Instrument) -> tuple[int, int]:
    """The pitch range a part uses: the role's register within the instrument's range (at least an octave and a half)."""
    lo, hi = ROLE_REGISTER[role]
    ilo, ihi = inst.range
    a, b = max(lo, ilo), min(hi, ihi)
    if b - a < 18:
        span = max(18, hi - lo)
        a = max(ilo, min(a, ihi - span))
        b = min(ihi, a + span)
    return a, b


def shifted_register(role: str, inst: Instrument, rng: np.random.Generator) -> tuple[int, int]:
    """The role's register moved by a random amount within the instrument's range, so that two chordal parts of one
    song (say comping and a pad) do not double the same voicing."""
    lo, hi = register(role, inst)
    shift = int(rng.integers(-5, 8))
    shift = max(inst.range[0] - lo, min(inst.range[1] - hi, shift))
    return lo + shift, hi + shift


def _pitch_near(pc: int, target: float) -> int:
    """The pitch of class `pc` nearest to `target`."""
    base = int(round(target)) - ((int(round(target)) - pc) % 12)
    return base if target - base <= 6 else base + 12


def voicing(chord: Chord, lo: int, hi: int, n: int, prev: list[int] | None) -> list[int]:
    """A close voicing of `n` chord tones in [lo, hi], moving as little as possible from `prev` (voice leading)."""
    tones = list(chord.tones)
    while len(tones) < n:
        tones.append(tones[len(tones) % len(chord.tones)])
    best, best_cost = None, None
    center = (lo + hi) / 2 - 4
    for inv in range(len(chord.tones)):
        order = tones[inv:] + tones[:inv]
        for octave_shift in (-12, 0, 12):
            start = _pitch_near(order[0], center + octave_shift)
            pitches = [start]
            for pc in order[1:n]:
                p = pitches[-1] + ((pc - pitches[-1]) % 12 or 12)
                pitches.append(p)
            if pitches[0] < lo or pitches[-1] > hi:
                continue
            ref = sorted(prev) if prev else None
            cost = sum(abs(a - b) for a, b in zip(pitches, ref)) if ref and len(ref) == len(pitches) \
                else abs(np.mean(pitches) - (lo + hi) / 2)
            if best_cost is None or cost < best_cost:
                best, best_cost = pitches, cost
    if best is None:  # tight range: stack from the bottom
        best = [_pitch_near(chord.tones[0], lo + 6)]
        for pc in tones[1:n]:
            best.append(best[-1] + ((pc - best[-1]) % 12 or 12))
    return best


def _chord_segments(plan: SongPlan, active: list[bool]):
    """(start beat, length, chord, bar) of every chord in the active bars."""
    for bar in plan.bars:
        if active[bar.index]:
            for start, length, chord in bar.chords:
                yield bar.index * plan.meter + start, length, chord, bar


# ----------------------------------------------------------------------------------------------- drums
@dataclass(frozen=True)
class _Drummer:
    """A song's drummer: what is drawn once per song, before its bars."""

    jazz: bool
    ride_chorus: bool
    hat_step: int
    open_last: bool
    ghost: bool
    snare_key: int
    fill_bars: bool


def _draw_drummer(plan: SongPlan, rng: np.random.Generator) -> _Drummer:
    g, steps = plan.groove, plan.meter * 4
    jazz = g.style in ("shuffle", "jazz_waltz")
    ride_chorus = rng.random() < 0.4
    hat_step = max(1, steps // (g.hat * plan.meter // 4)) if g.hat else 2
    open_last = rng.random() < 0.4
    ghost = g.style in ("funk", "hiphop") or rng.random() < 0.2
    snare_key = SIDE_STICK if g.style == "bossa" else (CLAP if g.style == "four_floor" and rng.random() < 0.6 else SNARE)
    fill_bars = rng.random() < 0.75
    return _Drummer(jazz, ride_chorus, hat_step, open_last, ghost, snare_key, fill_bars)


def drum_notes(plan: SongPlan, rng: np.random.Generator, active: list[bool]) -> list[Note]:
    drummer = _draw_drummer(plan, rng)
    notes: list[Note] = []
    last_bar = len(plan.bars) - 1

    def hit(step: float, key: int, vel: int, bar_start: float):
        b = bar_start + step / 4
        notes.append(Note(b, b + 0.25, key, vel))

    for bar in plan.bars:
        if active[bar.index]:
            _drum_bar(plan, rng, drummer, bar, hit, bar.index == last_bar)
    if plan.bars and active[last_bar] and plan.bars[last_bar].energy >= 0.5:
        hit(0, CRASH, _vel(rng, 95, 1.0), last_bar * plan.meter)
    return notes


def _drum_bar(plan: SongPlan, rng: np.random.Generator, drummer: _Drummer, bar, hit, is_last: bool) -> None:
    """One bar of drums: groove (kick, snare, ghost notes), cymbals, a crash at a section start, a fill at a section's
    end."""
    g, steps = plan.groove, plan.meter * 4
    b0, e = bar.index * plan.meter, bar.energy
    fill = drummer.fill_bars and bar.last_in_section and not is_last and e >= 0.5
    if plan.wide and not fill and bar.index % 4 == 3 and not is_last:
        fill = rng.random() < 0.35            # wide styles: short fills inside sections too
    fill_from = steps - (8 if rng.random() < 0.3 else 4) if fill else steps
    for s in g.kick:
        if s < fill_from:
            hit(s, KICK, _vel(rng, 108 if s == 0 else 96, e), b0)
    if rng.random() < 0.15 * e:
        s = int(rng.choice([x for x in range(2, fill_from, 2) if x not in g.kick and x not in g.snare] or [0]))
        hit(s, KICK, _vel(rng, 85, e), b0)
    if plan.wide:
        _wide_extras(plan, rng, hit, b0, e, fill_from)
    if e >= 0.45:  # not sparse
        for s in g.snare:
            if s < fill_from:
                hit(s, drummer.snare_key, _vel(rng, 104, e), b0)
        if drummer.ghost:
            for s in (7, 9, 15) if plan.meter == 4 else (5, 9):
                if s < fill_from and rng.random() < 0.5:
                    hit(s, SNARE, _vel(rng, 40, e), b0)
    _cymbals(plan, rng, drummer, bar, hit, fill_from, fill)
    if bar.first_in_section and bar.index > 0 and e >= 0.5:
        hit(0, CRASH, _vel(rng, 100, e), b0)
    if fill:
        toms = TOMS if rng.random() < 0.6 else (SNARE,)
        n = steps - fill_from
        for k, s in enumerate(range(fill_from, steps)):
            key = toms[min(len(toms) - 1, k * len(toms) // max(n, 1))]
            hit(s, key, _vel(rng, 80 + 25 * k / max(n, 1), e), b0)


def _cymbals(plan: SongPlan, rng: np.random.Generator, drummer: _Drummer, bar, hit, fill_from: int, fill: bool) -> None:
    """Ride (jazz styles, or the chorus of some songs) with the hi-hat pedal, else the hi-hat pattern."""
    g, steps = plan.groove, plan.meter * 4
    b0, e = bar.index * plan.meter, bar.energy
    if drummer.jazz or (drummer.ride_chorus and bar.section == "chorus"):
        pattern = [s for beat in range(plan.meter) for s in ((beat * 4,) if beat % 2 == 0 else (beat * 4, beat * 4 + 2))]
        for s in pattern:
            if s < fill_from:
                hit(s, RIDE, _vel(rng, 88 if s % 4 == 0 else 72, e), b0)
        for beat in range(1, plan.meter, 2):
            hit(beat * 4, HAT_PEDAL, _vel(rng, 70, e), b0)
        return
    for s in range(0, fill_from, drummer.hat_step):
        key = HAT_CLOSED
        if g.style == "four_floor" and s % 4 == 2:
            key = HAT_OPEN
        elif drummer.open_last and s == steps - 2 and not fill:
            key = HAT_OPEN
        accent = 86 if s % 4 == 0 else (74 if s % 2 == 0 else 60)
        hit(s, key, _vel(rng, accent, e), b0)


def _wide_extras(plan: SongPlan, rng: np.random.Generator, hit, b0: float, e: float, fill_from: int) -> None:
    """Production "full" drums: off-grid syncopated kicks and snares, hi-hat rolls (trap) and open hats (disco)."""
    g, steps = plan.groove, plan.meter * 4
    free = [x for x in range(1, fill_from) if x not in g.kick and x not in g.snare]
    for _ in range(int(rng.poisson(0.8 * e))):             # syncopation on the 16ths between the pattern's hits
        if free:
            hit(int(rng.choice(free)), KICK if rng.random() < 0.6 else SNARE, _vel(rng, 70, e), b0)
    if g.style == "trap" and rng.random() < 0.6:
        start = int(rng.choice([s for s in range(0, fill_from - 1, 2)] or [0]))
        div = int(rng.choice([2, 3, 4]))                   # 32nds, 16th triplets or 64ths
        for k in range(2 * div):
            hit(start + k / div, HAT_CLOSED, _vel(rng, 60 + 25 * k / (2 * div), e), b0)
    if g.style == "disco":
        for s in range(2, min(steps, fill_from), 4):
            hit(s, HAT_OPEN, _vel(rng, 70, e), b0)


def perc_notes(plan: SongPlan, rng: np.random.Generator, inst: Instrument, active: list[bool]) -> list[Note]:
    steps, keys = plan.meter * 4, inst.keys
    name = inst.name
    if name in ("shaker", "maracas", "triangle") or (name == "tambourine" and rng.random() < 0.6):
        every = 1 if plan.tempo < 115 and name != "triangle" else 2
        pattern = [(s, keys[-1] if (name == "triangle" and s % 4 == 2) else keys[0], 90 if s % 4 == 0 else 64)
                   for s in range(0, steps, every)]
    elif name in ("hand claps", "tambourine"):
        pattern = [(s, keys[0], 96) for s in plan.groove.snare if s < steps]
    elif name == "claves" and plan.meter == 4:
        pattern = [(s, keys[0], 96) for s in (0, 6, 12)]
    else:  # a repeated random figure: the groove of this song
        n = int(rng.integers(3, min(7, steps // 2) + 1))
        picks = sorted(rng.choice(np.arange(0, steps, 2 if rng.random() < 0.6 else 1), size=n, replace=False))
        pattern = [(int(s), int(rng.choice(keys)), int(rng.integers(70, 105))) for s in picks]
    notes = []
    for bar in plan.bars:
        if not active[bar.index]:
            continue
        b0 = bar.index * plan.meter
        for s, key, v in pattern:
            if bar.index % 4 == 3 and rng.random() < 0.15:
                continue  # a little variation
            notes.append(Note(b0 + s / 4, b0 + s / 4 + 0.25, key, _vel(rng, v, bar.energy)))
    return notes


# ----------------------------------------------------------------------------------------------- bass
_BASS_STYLES = {
    "rock": ("roots8", "groove", "root_fifth"), "four_floor": ("offbeat", "octave", "roots8"),
    "halftime": ("groove", "whole", "roots8"), "funk": ("funk", "groove"), "hiphop": ("groove", "whole"),
    "shuffle": ("walking", "root_fifth"), "bossa": ("bossa",), "ballad": ("whole", "half", "root_fifth"),
    "breakbeat": ("groove", "roots8"), "waltz": ("waltz",), "jazz_waltz": ("walking", "waltz"),
    # the wider styles of production "full"
    "trap": ("whole", "groove"), "one_drop": ("offbeat", "groove", "half"), "disco": ("octave", "offbeat"),
    "punk": ("roots8",), "drum_and_bass": ("whole", "groove"), "afrobeat": ("funk", "groove"),
    "five": ("groove", "roots8", "root_fifth"), "seven": ("groove", "roots8"),
}


def bass_notes(plan: SongPlan, rng: np.random.Generator, inst: Instrument, active: list[bool]) -> list[Note]:
    lo, hi = register("bass", inst)
    style = str(rng.choice(_BASS_STYLES[plan.groove.style]))
    low = int(rng.integers(lo, lo + 6))           # roots sit in [low, low + 12)
    steps = plan.meter * 4
    kick = [s for s in plan.groove.kick if s < steps]
    funk_extra = sorted(set(kick) | {int(x) for x in rng.choice(np.arange(1, steps), size=3, replace=False)})
    figure = {  # (step, length in steps, interval above the root)
        "whole": [(0, steps, 0)],
        "half": [(0, steps // 2, 0), (steps // 2, steps // 2, 0 if rng.random() < 0.5 else 7)],
        "roots8": [(s, 2, 0) for s in range(0, steps, 2)],
        "root_fifth": [(s, 4, 0 if (s // 4) % 2 == 0 else 7) for s in range(0, steps, 4)],
        "octave": [(s, 2, 0 if (s // 2) % 2 == 0 else 12) for s in range(0, steps, 2)],
        "offbeat": [(s, 2, 0) for s in range(2, steps, 4)],
        "groove": [(s, (kick + [steps])[i + 1] - s, 0 if i == 0 or rng.random() < 0.7 else 7) for i, s in enumerate(kick)],
        "funk": [(s, 1 + (i % 2), (0, 12, 0, 7, 10, 12)[i % 6]) for i, s in enumerate(funk_extra)],
        "bossa": [(0, 6, 0), (6, 2, 7), (8, 6, 7), (14, 2, 0)],
        "waltz": [(0, 4, 0), (8, 4, 7)] if rng.random() < 0.5 else [(0, 12, 0)],
    }
    notes: list[Note] = []
    gate = float(rng.uniform(0.6, 0.95))
    for bar in plan.bars:
        if not active[bar.index]:
            continue
        b0, e = bar.index * plan.meter, bar.energy
        if style == "walking":
            _walk(plan, rng, bar, b0, low, notes)
            continue
        for s, length, interval in figure[style]:
            if s >= steps:
                continue
            beat = b0 + s / 4
            root = low + (plan.chord_at(beat).root - low) % 12
            pitch = root + interval
            if interval == 10 and (plan.chord_at(beat).tones[-1] - plan.chord_at(beat).root) % 12 != 10:
                pitch = root + 7
            while pitch > hi:
                pitch -= 12
            notes.append(Note(beat, beat + max(length, 1) / 4 * gate, pitch, _vel(rng, 96 if s == 0 else 84, e)))
    return notes


def _walk(plan: SongPlan, rng, bar, b0: float, low: int, notes: list[Note]) -> None:
    """A walking line: chord tones on the beats, a chromatic or scale approach to the next chord's root."""
    for beat in range(plan.meter):
        t = b0 + beat
        chord = plan.chord_at(t)
        root = low + (chord.root - low) % 12
        if beat == 0:
            pitch = root
        elif beat == plan.meter - 1:
            nxt = plan.chord_at(t + 1)
            target = low + (nxt.root - low) % 12
            pitch = target + (1 if rng.random() < 0.5 else -1)
        else:
            pitch = root + int(rng.choice([(chord.tones[k] - chord.root) % 12 for k in range(1, len(chord.tones))]))
        notes.append(Note(t, t + 0.9, pitch, _vel(rng, 88 if beat == 0 else 78, bar.energy)))


# ----------------------------------------------------------------------------------------------- chords
_SYNCOPATIONS = [((0, 3), (3, 3), (6, 4), (10, 6)), ((0, 6), (6, 4), (10, 6)), ((0, 2), (3, 3), (6, 2), (10, 2), (12, 4)),
                 ((2, 4), (6, 2), (10, 4)), ((0, 4), (6, 2), (8, 2), (11, 5))]


@dataclass(frozen=True)
class _Comping:
    """A song's comping: register, style, voices, rhythm per style and gate, drawn once (in this order)."""

    lo: int
    hi: int
    style: str
    n_voices: int
    rhythm: dict
    gate: float


def _draw_comping(plan: SongPlan, rng: np.random.Generator, inst: Instrument) -> _Comping:
    lo, hi = shifted_register("comp", inst, rng)
    styles = inst.styles or ("sustain", "quarters", "syncopated")
    style = str(rng.choice(styles))
    steps = plan.meter * 4
    n_voices = 4 if rng.random() < 0.5 else 3
    sync = [(s, d) for s, d in _SYNCOPATIONS[int(rng.integers(len(_SYNCOPATIONS)))] if s < steps]
    rhythm = {
        "quarters": [(s, 4) for s in range(0, steps, 4)],
        "offbeat": [(s, 2) for s in range(2, steps, 4)],
        "syncopated": sync,
        "strum": [(s, 2) for s in (0, 4, 6, 10, 12, 14) if s < steps],
        "power": [(s, 2) for s in range(0, steps, 2)],
        "stabs": [(s, d) for s, d in sync[: int(rng.integers(2, 4))]],
    }
    return _Comping(lo, hi, style, n_voices, rhythm, float(rng.uniform(0.5, 0.9)))


def comp_notes(plan: SongPlan, rng: np.random.Generator, inst: Instrument, active: list[bool]) -> list[Note]:
    comp = _draw_comping(plan, rng, inst)
    if comp.style in ("sustain", "broken"):
        return _held_comp(plan, rng, inst, active, comp)
    notes: list[Note] = []
    prev: list[int] | None = None
    for bar in plan.bars:
        if not active[bar.index]:
            continue
        b0, e = bar.index * plan.meter, bar.energy
        for s, d in comp.rhythm[comp.style]:
            beat = b0 + s / 4
            chord = plan.chord_at(beat)
            if comp.style == "power":
                root = 40 + (chord.root - 40) % 12
                accent = s in plan.groove.kick
                dur = d / 4 * (0.9 if accent else 0.45)
                notes += [Note(beat, beat + dur, p, _vel(rng, 100 if accent else 80, e)) for p in (root, root + 7, root + 12)]
            elif comp.style == "strum":
                notes += _strum(rng, chord, beat, s, d, comp.hi, e)
            else:
                v = voicing(chord, comp.lo, comp.hi, comp.n_voices, prev)
                prev = v
                notes += [Note(beat, beat + d / 4 * comp.gate, p, _vel(rng, 90 if s % 4 == 0 else 80, e)) for p in v]
    return notes


def _strum(rng: np.random.Generator, chord: Chord, beat: float, step: int, length: int, hi: int, energy: float) -> list[Note]:
    """A guitar strum of the chord's open shape: down on the beat, up (the top four strings) off it."""
    root = 40 + (chord.root - 40) % 12
    fifth, third = root + 7, root + 12 + (chord.tones[1] - chord.root) % 12
    shape = [p for p in (root, fifth, root + 12, third, fifth + 12) if p <= hi + 7]
    up = step % 4 == 2
    strings = list(reversed(shape[-4:])) if up else shape
    spread = float(0.012 if not up else 0.008)
    return [Note(beat, beat + length / 4 * 0.95, p, _vel(rng, 70 if up else 88, energy), delay=k * spread)
            for k, p in enumerate(strings)]


def _held_comp(plan: SongPlan, rng: np.random.Generator, inst: Instrument, active: list[bool], comp: _Comping) -> list[Note]:
    """Sustained chords, or a broken-chord figure drawn once and repeated, voice-led from chord to chord."""
    notes: list[Note] = []
    prev: list[int] | None = None
    order = None
    for start, length, chord, bar in _chord_segments(plan, active):
        v = voicing(chord, comp.lo, comp.hi, comp.n_voices, prev)
        prev = v
        if comp.style == "sustain":
            for p in v:
                notes.append(Note(start, start + length * 0.97, p, _vel(rng, 78, bar.energy)))
            continue
        bass = v[0] - 12 if v[0] - 12 >= inst.range[0] else v[0]
        tones = [bass] + v
        if order is None:  # the broken-chord figure of this song, repeated
            order = [0] + [int(x) for x in rng.integers(1, len(tones), size=7)]
        for k in range(int(length * 2)):
            p = tones[order[k % len(order)] % len(tones)]
            notes.append(Note(start + k / 2, start + k / 2 + 0.5 * (1.6 if k == 0 else 0.95), p,
                              _vel(rng, 84 if k == 0 else 70, bar.energy)))
    return notes


def pad_notes(plan: SongPlan, rng: np.random.Generator, inst: Instrument, active: list[bool]) -> list[Note]:
    lo, hi = shifted_register("pad", inst, rng)
    n = 4 if rng.random() < 0.5 else 3
    prev, notes = None, []
    for start, length, chord, bar in _chord_segments(plan, active):
        v = voicing(chord, lo, hi, n, prev)
        prev = v
        notes += [Note(start, start + length * 0.99, p, _vel(rng, 72, bar.energy)) for p in v]
    return notes


def arp_notes(plan: SongPlan, rng: np.random.Generator, inst: Instrument, active: list[bool]) -> list[Note]:
    lo, hi = register("arp", inst)
    rate = 4 if plan.tempo <= 110 and rng.random() < 0.6 else 2      # 16ths or 8ths, in steps
    kind = str(rng.choice(["up", "down", "updown", "figure"]))
    figure = [int(x) for x in rng.integers(0, 6, size=int(rng.choice([4, 6, 8])))]
    gate = float(rng.uniform(0.5, 0.95))
    base = int(rng.integers(lo, max(lo + 1, hi - 18)))
    notes = []
    for start, length, chord, bar in _chord_segments(plan, active):
        first = _pitch_near(chord.root, base + 6)
        tones = sorted({first + ((pc - first) % 12) + 12 * o for o in (0, 1) for pc in chord.tones})
        tones = [p for p in tones if p <= hi] or [first]
        seq = {"up": tones, "down": tones[::-1], "updown": tones + tones[-2:0:-1],
               "figure": [tones[i % len(tones)] for i in figure]}[kind]
        n = int(round(length * rate))
        for k in range(n):
            b = start + k / rate
            notes.append(Note(b, b + gate / rate, seq[k % len(seq)], _vel(rng, 82 if k % rate == 0 else 68, bar.energy)))
    return notes


# ----------------------------------------------------------------------------------------------- melodies
_CELLS = [  # rhythm cells of one beat: (step, length in steps); a length of 8 spans two beats
    ((0, 4),), ((0, 2), (2, 2)), ((0, 3), (3, 1)), ((0, 1), (1, 1), (2, 2)), ((0, 2), (2, 1), (3, 1)), ((2, 2),),
    ((0, 8),), (),
]


def _phrase(rng: np.random.Generator, meter: int, density: float) -> list[tuple[int, int, int]]:
    """A two-bar phrase: (step, length in steps, melodic move in scale steps), ending on a long note or a rest."""
    weights = np.array([3, 3 * density, 1.5, 1.5 * density, 1.2 * density, 1, 1.5, 1.2 / density])
    weights /= weights.sum()
    out, beat, total = [], 0, 2 * meter
    while beat < total - 1:
        cell = _CELLS[int(rng.choice(len(_CELLS), p=weights))]
        for s, length in cell:
            move = int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]))
            out.append((beat * 4 + s, length, move))
        beat += 2 if any(length == 8 for _, length in cell) else 1
    if out:
        s, length, move = out[-1]
        out[-1] = (s, max(length, 4), move)   # land on a long note
    return [x for x in out if x[0] < total * 4]


def melody_notes(plan: SongPlan, rng: np.random.Generator, inst: Instrument, active: list[bool],
                 role: str = "lead") -> list[Note]:
    """A lead melody in key: phrases of two bars (A A' B A), chord tones on strong beats, scale steps between."""
    lo, hi = register(role, inst)
    legato = inst.category in LEGATO_CATEGORIES or inst.name in ("sawtooth lead", "square lead", "harmonica")
    density = float(rng.uniform(0.6, 1.5))
    phrase_a, phrase_b = _phrase(rng, plan.meter, density), _phrase(rng, plan.meter, density)
    scale = plan.scale
    center = (lo + hi) / 2 - 2
    cur = int(rng.integers(lo + 4, max(lo + 5, hi - 6)))
    notes = []
    n_bars = len(plan.bars)
    for p_start in range(0, n_bars, 2):
        if not active[p_start]:
            continue
        phrase = phrase_b if (p_start // 2) % 4 == 2 else phrase_a
        for i, (s, length, move) in enumerate(phrase):
            beat = p_start * plan.meter + s / 4
            if int(beat // plan.meter) >= n_bars or not active[int(beat // plan.meter)]:
                continue
            chord = plan.chord_at(beat)
            bar = plan.bars[int(beat // plan.meter)]
            home = center + (3 if bar.section == "chorus" else 0)
            if s % 4 == 0:     # strong: the chord tone nearest to where the move leads, pulled toward home
                target = cur + 2 * move + 0.3 * (home - cur)
                cur = min((_pitch_near(pc, target) for pc in chord.tones), key=lambda p: abs(p - target))
            else:              # weak: move along the scale, turning back when far from home
                if abs(cur - home) > 7 and (move > 0) == (cur > home):
                    move = -move
                cur = _scale_step(cur, move, scale)
            if cur > hi:
                cur -= 12
            if cur < lo:
                cur += 12
            nxt = phrase[i + 1][0] if i + 1 < len(phrase) else s + length
            dur = (min(nxt, s + length) - s) / 4 * (0.98 if legato else 0.7)
            notes.append(Note(beat, beat + max(dur, 0.1), cur, _vel(rng, 92 if s % 4 == 0 else 80, bar.energy)))
    return notes


def _scale_step(pitch: int, move: int, scale: tuple[int, ...]) -> int:
    step = 1 if move > 0 else -1
    for _ in range(abs(move)):
        pitch += step
        while pitch % 12 not in scale:
            pitch += step
    return pitch


def counter_notes(plan: SongPlan, rng: np.random.Generator, inst: Instrument, active: list[bool]) -> list[Note]:
    """A slow counter-line of guide tones (thirds and sevenths), moving by the smallest step at each chord."""
    lo, hi = register("counter", inst)
    cur = int(rng.integers(lo + 3, max(lo + 4, hi - 5)))
    split = rng.random() < 0.5
    notes = []
    for start, length, chord, bar in _chord_segments(plan, active):
        guide = chord.tones[1:] if len(chord.tones) > 3 else chord.tones[1:2] + chord.tones[2:]
        pieces = [(start, length / 2), (start + length / 2, length / 2)] if split and length >= 2 else [(start, length)]
        for k, (b, d) in enumerate(pieces):
            pcs = guide if k == 0 else chord.tones
            cur = min((_pitch_near(pc, cur) for pc in pcs), key=lambda p: (abs(p - cur) == 0, abs(p - cur)))
            cur = cur - 12 if cur > hi else (cur + 12 if cur < lo else cur)
            notes.append(Note(b, b + d * 0.97, cur, _vel(rng, 76, bar.energy)))
    return notes


# ----------------------------------------------------------------------------------------------- arrangement
_KIT_BY_STYLE = {
    "shuffle": ("jazz drum kit", "brush drum kit", "room drum kit"), "jazz_waltz": ("jazz drum kit", "brush drum kit"),
    "bossa": ("brush drum kit", "jazz drum kit", "acoustic drum kit"),
    "ballad": ("brush drum kit", "acoustic drum kit", "room drum kit"),
    "four_floor": ("electronic drum kit", "808 drum machine", "acoustic drum kit"),
    "hiphop": ("808 drum machine", "electronic drum kit", "room drum kit"),
    "breakbeat": ("electronic drum kit", "acoustic drum kit"),
    "halftime": ("808 drum machine", "rock drum kit", "electronic drum kit"),
    "trap": ("808 drum machine", "electronic drum kit"), "one_drop": ("acoustic drum kit", "room drum kit"),
    "disco": ("acoustic drum kit", "electronic drum kit"), "punk": ("rock drum kit", "acoustic drum kit"),
    "drum_and_bass": ("electronic drum kit", "acoustic drum kit"), "afrobeat": ("acoustic drum kit", "room drum kit"),
}


# how much more often a category plays a role than any other instrument that can (vocals lead most songs, as in
# MoisesDB; bass lines are mostly played by basses)
_ROLE_FAVOURITES = {("lead", "vocals"): 8.0, ("bass", "bass"): 4.0, ("comp", "piano"): 2.0, ("comp", "guitar"): 2.0}
_COVER_ORDER = ("comp", "pad", "bass", "drums", "arp", "perc", "lead", "counter")


def _generate(role: str, plan: SongPlan, rng, inst: Instrument, active) -> list[Note]:
    if role == "perc":
        return perc_notes(plan, rng, inst, active)
    if role == "bass":
        return bass_notes(plan, rng, inst, active)
    if role == "comp":
        return comp_notes(plan, rng, inst, active)
    if role == "pad":
        return pad_notes(plan, rng, inst, active)
    if role == "arp":
        return arp_notes(plan, rng, inst, active)
    if role == "counter":
        return counter_notes(plan, rng, inst, active)
    return melody_notes(plan, rng, inst, active, "lead")


def arrange(plan: SongPlan, rng: np.random.Generator, exclude=(), require=()) -> list[Part]:
    """Choose the parts of a song and an instrument for each, then write their notes.

    Instruments matching `exclude` never appear; with `require`, at least one part uses an instrument matching it.
    Split-kit stems come from a kit that is itself allowed, and only for the kit stems that are allowed.
    """
    pool = instruments(exclude)
    forced: Instrument | None = None
    if require:
        cands = instruments(exclude, require)
        if not cands:
            raise ConfigError(f"no instrument matches {list(require)} once {list(exclude)} are excluded")
        forced = cands[int(rng.integers(len(cands)))]
    roles, forced_role = _pick_roles(rng, forced)
    chosen = _choose_instruments(plan, rng, pool, roles, forced, forced_role)
    _cover_bars(plan, chosen)
    parts: list[Part] = []  # the notes
    for i, (role, inst, split, active) in enumerate(chosen):
        if role == "drums":
            forced_kit = forced if forced is not None and "kit_part" in forced.roles else None
            parts += _drum_parts(plan, rng, inst, split, active, forced_kit, [x for x in KIT_PARTS if x in pool])
            continue
        notes = _generate(role, plan, rng, inst, active)
        if notes:
            parts.append(Part(role, inst, notes, group=f"{role}{i}", level_db=ROLE_LEVEL_DB[role] + rng.normal(0, 2),
                              program=inst.program))
    return parts


def _pick_roles(rng: np.random.Generator, forced: Instrument | None) -> tuple[list[str], str | None]:
    """The song's roles (at least three, one for the required instrument) and the role the required instrument plays."""
    roles = [r for r in ("drums", "perc", "bass", "comp", "comp", "pad", "arp", "lead", "counter")
             if rng.random() < ROLE_PROBABILITY[r]]
    if roles.count("comp") == 2 and rng.random() > 0.35:
        roles.remove("comp")
    forced_role = None
    if forced is not None:
        forced_role = "drums" if "kit_part" in forced.roles else str(rng.choice(forced.roles))
        if forced_role not in roles:
            roles.append(forced_role)
    for extra in ("comp", "lead", "pad", "arp"):          # at least three parts
        if len(roles) >= 3:
            break
        if extra not in roles:
            roles.append(extra)
    return roles, forced_role


def _choose_instruments(plan: SongPlan, rng: np.random.Generator, pool: list[Instrument], roles: list[str],
                        forced: Instrument | None, forced_role: str | None) -> list[tuple[str, Instrument, bool, list[bool]]]:
    """An instrument (or a kit) and the bars it plays, for every role: (role, instrument or kit, split, active)."""
    used: set[str] = set()
    chosen: list[tuple[str, Instrument, bool, list[bool]]] = []
    for role in roles:
        inst = None
        if forced is not None and role == forced_role:
            inst, forced_role = forced, None
        if role == "drums":
            picked = _choose_kit(plan, rng, pool, inst)
            if picked is not None:
                chosen.append(("drums", picked[0], picked[1], activity(plan, rng, "drums")))
            continue
        if inst is None:
            cands = [x for x in pool if role in x.roles and x.name not in used and not (forced and x is forced)]
            if not cands:
                continue
            w = np.array([_ROLE_FAVOURITES.get((role, x.category), 1.0) for x in cands])
            inst = cands[int(rng.choice(len(cands), p=w / w.sum()))]
        used.add(inst.name)
        shift = 0.25 if role == "comp" and any(r == "comp" for r, *_ in chosen) else 0.0
        chosen.append((role, inst, False, activity(plan, rng, role, shift)))
    return chosen


def _cover_bars(plan: SongPlan, chosen: list[tuple[str, Instrument, bool, list[bool]]]) -> None:
    """No bar with fewer than two parts (an intro where nothing plays is no song): parts are added where needed."""
    order = sorted(range(len(chosen)), key=lambda k: _COVER_ORDER.index(chosen[k][0]))
    for bar in range(len(plan.bars)):
        playing = sum(c[3][bar] for c in chosen)
        for k in order:
            if playing >= min(2, len(chosen)):
                break
            if not chosen[k][3][bar]:
                chosen[k][3][bar] = True
                playing += 1


def _fill_with(plan: SongPlan, rng, active: list[bool], keys: tuple[int, ...]) -> list[Note]:
    """A one-beat fill on `keys` at the end of every other active bar (so a required kit stem always plays)."""
    notes = []
    last_active = max(i for i, a in enumerate(active) if a)
    for bar in plan.bars:
        if active[bar.index] and (bar.index % 2 == 1 or bar.index == last_active):
            b = (bar.index + 1) * plan.meter - 1
            for k in range(4):
                key = keys[min(len(keys) - 1, k * len(keys) // 4)] if len(keys) > 1 else keys[0]
                notes.append(Note(b + k / 4, b + k / 4 + 0.25, key, _vel(rng, 88, bar.energy)))
    return notes


def _choose_kit(plan: SongPlan, rng, pool: list[Instrument], forced: Instrument | None) -> tuple[Instrument, bool] | None:
    """(kit, split into kick/snare/toms/hi-hat/cymbals stems?), or None when no kit is allowed."""
    kits = [x for x in pool if "drums" in x.roles]
    if forced is not None and "kit_part" in forced.roles:   # a required kit stem: split an acoustic kit
        acoustic = [x for x in kits if x.labels[1] == "drum kit"] or [k for k in instruments() if k.name == "acoustic drum kit"]
        return acoustic[int(rng.integers(len(acoustic)))], True
    if forced is not None:
        return forced, False
    if not kits:
        return None
    preferred = [x for x in kits if x.name in _KIT_BY_STYLE.get(plan.groove.style, ())]
    choice = preferred if preferred and rng.random() < 0.75 else kits
    kit = choice[int(rng.integers(len(choice)))]
    split = kit.labels[1] == "drum kit" and any(x in pool for x in KIT_PARTS) and rng.random() < 0.4
    return kit, split


def _drum_parts(plan: SongPlan, rng, kit: Instrument, split: bool, active: list[bool], forced: Instrument | None,
                allowed_parts: list[Instrument]) -> list[Part]:
    """The kit as one stem, or one stem per allowed kit piece that plays (a `forced` piece always plays)."""
    notes = drum_notes(plan, rng, active)
    level = ROLE_LEVEL_DB["drums"] + rng.normal(0, 1.5)
    if not split:
        return [Part("drums", kit, notes, group="drums", level_db=level, program=kit.program)]
    if forced is not None and not any(n.pitch in forced.keys for n in notes):
        notes += _fill_with(plan, rng, active, forced.keys)   # e.g. toms required but no fill came up
    parts = []
    for piece in allowed_parts:
        sub = [n for n in notes if n.pitch in piece.keys]
        if sub:
            parts.append(Part("drums", piece, sub, group="drums", level_db=level, program=kit.program))
    return parts
