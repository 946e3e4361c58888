"""Musical compatibility of a candidate stem with a mix: tempo and key filters, the Camelot wheel, and a 0..1 score.

A producer asks two things of a stem before listening: is it near my tempo (half or double time counts: a 60 BPM pad
sits on a 120 BPM beat), and is it in a key that fits (the same key, its relative major/minor, or a Camelot neighbour,
which share all but one note). Filters answer yes/no (`BpmFilter`, `KeyFilter`, parsed from the text a user types);
`compatibility` gives the graded score that `rank="compat"` adds to the model's.

Keys are written with sharps, tonic + major/minor ("F# minor"); the Camelot wheel numbers them so that neighbours
(+-1, same letter) differ by one note and the same number with the other letter is the relative key (8A = A minor,
8B = C major). Stems without a key (drums, unpitched) and without a beat are neutral: every key/tempo filter keeps them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..errors import StemJepaError

if TYPE_CHECKING:
    from . import Analysis

PITCHES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_ACCIDENTAL = {"": 0, "#": 1, "♯": 1, "b": -1, "♭": -1}
_MAJOR_WORDS = {"", "maj", "major", "M", "ionian", "lydian", "mixolydian", "dur"}
_MINOR_WORDS = {"m", "min", "minor", "-", "aeolian", "dorian", "phrygian", "moll"}  # MIREX: modes map to their major/minor

MIN_BPM, MAX_BPM = 20.0, 400.0
DEFAULT_BPM_TOLERANCE_PCT = 4.0  # "--bpm 120": 115.2-124.8; a stretch this small is hard to hear
TEMPO_SIGMA_PCT = 4.0  # tempo fit falls to 0.61 at 4 % off, 0.14 at 8 %
HALF_DOUBLE_FIT = 0.85  # a half- or double-time match fits, a little less than the same tempo
# key fit by Camelot distance (steps round the wheel 0..6): same letter / other letter (the relative key is 0 steps)
_KEY_FIT_SAME_LETTER = (1.0, 0.8, 0.45, 0.2, 0.1, 0.05, 0.0)
_KEY_FIT_OTHER_LETTER = (0.9, 0.6, 0.3, 0.1, 0.05, 0.0, 0.0)

BPM_EXAMPLES = "120 (+-4 %), 120+-3 (BPM), 120:2%, 118-124, 120! (no half/double time)"
KEY_EXAMPLES = ('"A minor", Am, "F# major", 8A (Camelot), Am:relative, 8A:camelot (neighbours), '
                "Am+-2 (within 2 semitones)")


MAX_FILTER_CHARS = 64  # longer filter text is refused before any parsing (and shown cut short)


class FilterError(StemJepaError):
    """A tempo or key filter (or key name) that cannot be read; the message quotes the text and shows examples."""


def _shown(text) -> str:
    """`text` quoted for a one-line message: cut to 40 characters, control characters escaped."""
    t = text if isinstance(text, str) else repr(text)
    return repr(t if len(t) <= 40 else t[:40] + "...")


def _too_long(text, what: str) -> None:
    if isinstance(text, str) and len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"{what} {_shown(text)}: {len(text)} characters is too long for a {what} "
                          f"(at most {MAX_FILTER_CHARS})")


@dataclass(frozen=True, order=True)
class Key:
    """A key: tonic pitch class (0 = C) and mode."""

    tonic: int
    minor: bool

    @property
    def name(self) -> str:
        return f"{PITCHES[self.tonic]} {'minor' if self.minor else 'major'}"

    @property
    def camelot_number(self) -> int:
        major_tonic = (self.tonic + 3) % 12 if self.minor else self.tonic  # a minor key sits on its relative major
        return (7 * major_tonic + 7) % 12 + 1  # C major = 8B, each fifth up one step

    @property
    def camelot(self) -> str:
        return f"{self.camelot_number}{'A' if self.minor else 'B'}"

    @property
    def relative(self) -> Key:
        return Key((self.tonic + 3) % 12, False) if self.minor else Key((self.tonic + 9) % 12, True)

    def transposed(self, semitones: int) -> Key:
        return Key((self.tonic + semitones) % 12, self.minor)

    def __str__(self) -> str:
        return self.name


_CAMELOT = {k.camelot: k for k in (Key(t, m) for t in range(12) for m in (False, True))}
_KEY_RE = re.compile(r"^([A-Ga-g])\s*([#♯b♭]?)\s*([A-Za-z-]*)$")


def parse_key(text) -> Key | None:
    """The Key written as `text` ("A minor", "Am", "a min", "Bb major", "F#", "8A"; modes such as "D dorian" map to
    their MIREX major/minor), or None when it is not a key name."""
    if isinstance(text, Key):
        return text
    if not isinstance(text, str) or len(text) > MAX_FILTER_CHARS:
        return None
    t = " ".join(text.split())
    if (k := _CAMELOT.get(t.upper().replace(" ", ""))) is not None:
        return k
    m = _KEY_RE.match(t.replace(" ", ""))
    if m is None:
        return None
    letter, acc, mode = m.groups()
    if mode not in ("M", "m"):
        mode = mode.lower()
    if mode in _MAJOR_WORDS:
        minor = False
    elif mode in _MINOR_WORDS:
        minor = True
    else:
        return None
    tonic = (PITCHES.index(letter.upper()) + _ACCIDENTAL[acc]) % 12
    return Key(tonic, minor)


def key_name(text) -> str | None:
    """The canonical name ("F# minor") of a key written any way `parse_key` reads, or None."""
    k = parse_key(text)
    return None if k is None else k.name


def camelot(key) -> str:
    """The Camelot code of a key ("A minor" -> "8A", "C major" -> "8B"); FilterError when `key` is not a key."""
    k = parse_key(key)
    if k is None:
        raise FilterError(f"{_shown(key)}: not a key (examples: {KEY_EXAMPLES})")
    return k.camelot


def camelot_steps(a: Key, b: Key) -> int:
    """Steps between two keys round the Camelot wheel (0..6), ignoring the letter (major/minor)."""
    d = abs(a.camelot_number - b.camelot_number) % 12
    return min(d, 12 - d)


# --- filters ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BpmFilter:
    """Keeps stems whose tempo lies in [low, high], or (`half_double`) whose half or double does. A stem with no beat
    found (bpm None: pads, drones) is tempo-neutral and kept."""

    low: float
    high: float
    half_double: bool = True
    text: str = ""

    def __post_init__(self):
        what = self.text or f"{self.low}-{self.high}"
        if not (math.isfinite(self.low) and math.isfinite(self.high) and 0 < self.low <= self.high):
            raise FilterError(f"tempo filter {_shown(what)}: needs 0 < low <= high (examples: {BPM_EXAMPLES})")
        if self.half_double and self.high >= 2 * self.low:
            raise FilterError(f"tempo filter {_shown(what)}: a range an octave wide matches every tempo with half/double "
                              f"time; narrow it, or end it with '!' to turn half/double time off")

    def ranges(self) -> list[tuple[float, float]]:
        """The tempo ranges a stem may be in: the range itself, then its half and double when `half_double`."""
        out = [(self.low, self.high)]
        if self.half_double:
            out += [(self.low / 2, self.high / 2), (self.low * 2, self.high * 2)]
        return out

    def accepts(self, bpm) -> bool:
        if bpm is None:
            return True
        try:
            b = float(bpm)
        except (TypeError, ValueError):
            return False
        return math.isfinite(b) and any(lo <= b <= hi for lo, hi in self.ranges())

    def mask(self, bpms: np.ndarray) -> np.ndarray:
        """`accepts` for an array of tempi, NaN standing for None (kept)."""
        b = np.asarray(bpms, np.float64)
        keep = np.isnan(b)
        for lo, hi in self.ranges():
            keep |= (b >= lo) & (b <= hi)
        return keep

    def __str__(self) -> str:
        return self.text or f"{self.low:g}-{self.high:g}{'' if self.half_double else '!'}"


_NUM = r"(\d+(?:\.\d+)?)"
_BPM_FORMS = [
    (re.compile(rf"^{_NUM}$"), lambda c, t: (c * (1 - t), c * (1 + t))),
    (re.compile(rf"^{_NUM}(?:\+-|±|\+/-|:){_NUM}%$"), lambda c, p: (c * (1 - p / 100), c * (1 + p / 100))),
    (re.compile(rf"^{_NUM}(?:\+-|±|\+/-|:){_NUM}$"), lambda c, d: (c - d, c + d)),
    (re.compile(rf"^{_NUM}(?:-|\.\.|–){_NUM}$"), lambda lo, hi: (lo, hi)),
]


def parse_bpm_filter(text) -> BpmFilter:
    """A tempo filter from text: "120" (+-4 %), "120+-3" or "120±3" (BPM), "120:2%" or "120+-2%", "118-124";
    a trailing "!" turns half/double time off. FilterError (quoting `text`) otherwise."""
    if isinstance(text, BpmFilter):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = f"{text:g}"
    if not isinstance(text, str):
        raise FilterError(f"tempo filter {_shown(text)}: not text (examples: {BPM_EXAMPLES})")
    _too_long(text, "tempo filter")
    t = "".join(text.split()).lower()
    strict = t.endswith("!")
    t = t.removesuffix("!").replace("bpm", "")
    for pattern, bounds in _BPM_FORMS:
        m = pattern.match(t)
        if m is None:
            continue
        a, b = (float(x) for x in m.groups()) if len(m.groups()) == 2 else (float(m.group(1)), DEFAULT_BPM_TOLERANCE_PCT / 100)
        lo, hi = bounds(a, b)
        if not (MIN_BPM <= (lo + hi) / 2 <= MAX_BPM):
            raise FilterError(f"tempo filter {_shown(text)}: {(lo + hi) / 2:g} BPM is outside {MIN_BPM:g}-{MAX_BPM:g} BPM")
        if lo <= 0 or lo > hi:
            raise FilterError(f"tempo filter {_shown(text)}: the tolerance leaves no tempo (examples: {BPM_EXAMPLES})")
        return BpmFilter(lo, hi, half_double=not strict, text=text.strip())
    raise FilterError(f"tempo filter {_shown(text)}: not a tempo (examples: {BPM_EXAMPLES})")


KeyMode = Literal["same", "relative", "camelot", "semitones"]
_KEY_MODES = {"same": "same", "exact": "same", "relative": "relative", "rel": "relative", "camelot": "camelot",
              "neighbours": "camelot", "neighbors": "camelot", "harmonic": "camelot"}
_SEMITONES_RE = re.compile(r"^(?:\+-|±|\+/-)?(\d+)(?:st|semitones?)?$")


@dataclass(frozen=True)
class KeyFilter:
    """Keeps stems in `key` (same), or also in its relative key (relative), or also its Camelot neighbours (camelot:
    same number other letter, +-1 same letter), or whose tonic is within `semitones` of the key's in the same mode
    (semitones: a small pitch shift away). A stem without a key (drums, unpitched) is key-neutral and kept."""

    key: Key
    mode: KeyMode = "same"
    semitones: int = 0
    text: str = ""

    def keys(self) -> frozenset[str]:
        """The names of the keys this filter keeps."""
        k = self.key
        if self.mode == "relative":
            keys = {k, k.relative}
        elif self.mode == "camelot":
            n = k.camelot_number
            letter = k.camelot[-1]
            keys = {k, k.relative} | {_CAMELOT[f"{(n - 1 + d) % 12 + 1}{letter}"] for d in (-1, 1)}
        elif self.mode == "semitones":
            keys = {k.transposed(d) for d in range(-self.semitones, self.semitones + 1)}
        else:
            keys = {k}
        return frozenset(x.name for x in keys)

    def accepts(self, key) -> bool:
        if key is None:
            return True
        k = parse_key(key)
        return k is not None and k.name in self.keys()

    def __str__(self) -> str:
        return self.text or (self.key.name if self.mode == "same" else f"{self.key.name}:{self.mode}")


def parse_key_filter(text) -> KeyFilter:
    """A key filter from text: a key ("A minor", "Am", "F#", "Bb major", "8A"), optionally followed by ":relative",
    ":camelot" (neighbours on the wheel) or "+-N" / ":N" (within N semitones, same mode). FilterError otherwise."""
    if isinstance(text, KeyFilter):
        return text
    if not isinstance(text, str) or not text.strip():
        raise FilterError(f"key filter {_shown(text)}: empty (examples: {KEY_EXAMPLES})")
    _too_long(text, "key filter")
    t = text.strip()
    mode, semis = "same", 0
    base = t
    if ":" in t:
        base, _, how = t.rpartition(":")
        how = "".join(how.split()).lower()
        if how in _KEY_MODES:
            mode = _KEY_MODES[how]
        elif (m := _SEMITONES_RE.match(how)) is not None:
            mode, semis = "semitones", int(m.group(1))
        else:
            raise FilterError(f"key filter {_shown(text)}: unknown match {_shown(how)} (use relative, camelot or a number of "
                              f"semitones; examples: {KEY_EXAMPLES})")
    elif (m := re.search(r"(?:\+-|±|\+/-)\s*(\d+)\s*(?:st|semitones?)?\s*$", t)) is not None:
        base, mode, semis = t[:m.start()], "semitones", int(m.group(1))
    if mode == "semitones" and not 0 <= semis <= 6:
        raise FilterError(f"key filter {_shown(text)}: {semis} semitones is more than 6 (6 already reaches every tonic)")
    key = parse_key(base)
    if key is None:
        raise FilterError(f"key filter {_shown(text)}: {_shown(base.strip())} is not a key (examples: {KEY_EXAMPLES})")
    return KeyFilter(key, mode, semis, text=t)


# --- compatibility --------------------------------------------------------------------------------------------------
def tempo_fit(mix_bpm: float | None, cand_bpm: float | None) -> float:
    """0..1: 1 at the same tempo, falling off with the relative difference (Gaussian, TEMPO_SIGMA_PCT); half or double
    time counts at HALF_DOUBLE_FIT. Neutral (1) when either has no tempo."""
    if mix_bpm is None or cand_bpm is None or not (mix_bpm > 0 and cand_bpm > 0):
        return 1.0
    x = math.log2(cand_bpm / mix_bpm)
    best = 0.0
    for octave, weight in ((0, 1.0), (1, HALF_DOUBLE_FIT), (-1, HALF_DOUBLE_FIT)):
        pct = (2 ** abs(x - octave) - 1) * 100
        best = max(best, weight * math.exp(-0.5 * (pct / TEMPO_SIGMA_PCT) ** 2))
    return best


def key_fit(mix_key, cand_key) -> float:
    """0..1 by distance on the Camelot wheel: same key 1, relative 0.9, neighbour 0.8, diagonal neighbour 0.6, falling
    to 0 opposite. Neutral (1) when either has no key (drums) or a key that cannot be read."""
    a, b = parse_key(mix_key), parse_key(cand_key)
    if a is None or b is None:
        return 1.0
    table = _KEY_FIT_SAME_LETTER if a.minor == b.minor else _KEY_FIT_OTHER_LETTER
    return table[camelot_steps(a, b)]


def compatibility(mix: Analysis, cand: Analysis) -> float:
    """How well `cand` fits `mix` musically, 0..1: the product of the tempo fit (half/double aware) and the key fit
    (Camelot wheel); unpitched candidates are key-neutral, beatless ones tempo-neutral."""
    return float(tempo_fit(mix.bpm, cand.bpm) * key_fit(mix.key, cand.key))
