"""Production of synthetic songs (`production="full"`): a performer's feel per part and an effect chain per stem.

Default renders are dry General-MIDI parts in one shared room, played on the grid; produced music is not. With
production "full" every part gets a feel (laid-back or pushing, its own swing, timing and velocity spread) and every stem
its own chain, chosen by what the stem is (`chain_kind`) and drawn from the song's generator, so a corpus stays
deterministic per seed: EQ, compression, saturation or amp drive, chorus / phaser, delay, room and reverb, then a random
level. The mix is the plain sum of the processed stems: the only song-wide stage (loudness, peak ceiling, fades) is one
linear gain envelope applied to every stem alike, so stems always sum to the mix.

Effects come from Spotify's pedalboard (GPL-3.0), an optional extra: `pip install stemjepa[effects]`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import StemJepaError
from .corpus import _active_rms, _level, _room
from .parts import Part
from .theory import SongPlan

PRODUCTIONS = ("none", "full")
KINDS = ("drums", "bass", "guitar", "keys", "pads", "lead", "other")
REFERENCE_DB = -18.0          # stems enter their chain at this active RMS, so drive and threshold ranges mean the same
_DRIVEN_GUITARS = ("overdriven electric guitar", "distorted electric guitar")


def require_pedalboard():
    """The pedalboard module, or a clear error saying how to install it."""
    try:
        import pedalboard
    except ImportError as exc:
        raise StemJepaError(f'production "full" needs the effects library pedalboard ({exc}); '
                            "pip install stemjepa[effects]") from None
    return pedalboard


# ----------------------------------------------------------------------------------------------- feel
@dataclass(frozen=True)
class Feel:
    """How one player performs a part: a constant lead or lag, per-note timing and velocity spread, a swing of its own."""

    offset: float             # seconds; > 0 laid back, < 0 pushing
    jitter: float             # seconds, standard deviation per note
    swing: float              # the part's swing (the song's, nudged)
    velocity_scale: float
    velocity_sd: float


def draw_feel(part: Part, plan: SongPlan, rng: np.random.Generator) -> Feel:
    if part.role == "drums":
        offset, jitter = rng.uniform(-0.006, 0.006), rng.uniform(0.002, 0.007)
    elif part.role == "bass":
        offset, jitter = rng.uniform(-0.004, 0.018), rng.uniform(0.004, 0.012)
    else:
        offset, jitter = rng.uniform(-0.010, 0.025), rng.uniform(0.005, 0.018)
    nudge = rng.normal(0, 0.04) if plan.swing > 0 or rng.random() < 0.3 else 0.0
    swing = float(np.clip(plan.swing + abs(nudge) * (1 if plan.swing == 0 else np.sign(nudge)), 0.0, 0.4))
    return Feel(float(offset), float(jitter), round(swing, 3), float(rng.uniform(0.85, 1.1)), float(rng.uniform(3, 12)))


def humanised_midi(part: Part, plan: SongPlan, rng: np.random.Generator, seconds: float, feel: Feel):
    """The part as a pretty_midi Instrument, played with `feel`."""
    import pretty_midi

    inst = pretty_midi.Instrument(program=part.program, is_drum=part.is_drum, name=part.instrument.name)
    jitter = rng.normal(0, feel.jitter, size=len(part.notes))
    vel = rng.normal(0, feel.velocity_sd, size=len(part.notes))
    for note, dt, dv in zip(part.notes, jitter, vel):
        start = max(0.0, plan.time(note.start, feel.swing) + note.delay + feel.offset + float(dt))
        if start >= seconds - 0.03:
            continue
        end = min(seconds, max(plan.time(note.end, feel.swing) + note.delay + feel.offset, start + 0.03))
        velocity = int(np.clip(round(note.velocity * feel.velocity_scale + dv), 1, 127))
        inst.notes.append(pretty_midi.Note(velocity=velocity, pitch=int(note.pitch), start=start, end=end))
    return inst


# ----------------------------------------------------------------------------------------------- chains
def chain_kind(part: Part) -> str:
    """The family of chain a stem gets: one of KINDS."""
    cat = part.instrument.category
    if cat == "drums":
        return "drums"
    if part.role == "bass":
        return "bass"
    if cat == "guitar":
        return "guitar"
    if part.role == "pad" or (cat == "bowed strings" and part.role != "lead"):
        return "pads"
    if cat == "vocals" or (part.role == "lead" and cat in ("wind", "other keys", "bowed strings")):
        return "lead"
    if cat in ("piano", "other keys"):
        return "keys"
    return "other"


def _u(rng, lo, hi) -> float:
    return round(float(rng.uniform(lo, hi)), 3)


def _hz(rng, lo, hi, sr) -> float:
    """A frequency drawn log-uniformly in [lo, hi], kept below 0.45 of the sample rate."""
    return round(float(min(math.exp(rng.uniform(math.log(lo), math.log(hi))), 0.45 * sr)), 1)


def _eq(rng, sr, low=(80, 300), high=(2500, 9000), peak=(200, 5000), gain=6.0) -> list[tuple[str, dict]]:
    """Random tone: a low shelf, a high shelf and one or two peaks, each maybe."""
    out = []
    if rng.random() < 0.7:
        out.append(("LowShelfFilter", dict(cutoff_frequency_hz=_hz(rng, *low, sr), gain_db=_u(rng, -gain, gain))))
    if rng.random() < 0.7:
        out.append(("HighShelfFilter", dict(cutoff_frequency_hz=_hz(rng, *high, sr), gain_db=_u(rng, -gain, gain))))
    for _ in range(int(rng.integers(1, 3))):
        out.append(("PeakFilter", dict(cutoff_frequency_hz=_hz(rng, *peak, sr), gain_db=_u(rng, -gain, gain),
                                       q=_u(rng, 0.5, 3.0))))
    return out


def _comp(rng, threshold=(-32, -14), ratio=(2, 6), attack=(1, 20), release=(40, 300)) -> tuple[str, dict]:
    return ("Compressor", dict(threshold_db=_u(rng, *threshold), ratio=_u(rng, *ratio), attack_ms=_u(rng, *attack),
                               release_ms=_u(rng, *release)))


def _reverb(rng, size=(0.2, 0.8), wet=(0.08, 0.3)) -> tuple[str, dict]:
    return ("Reverb", dict(room_size=_u(rng, *size), damping=_u(rng, 0.2, 0.8), wet_level=_u(rng, *wet),
                           dry_level=_u(rng, 0.6, 0.9), width=0.0))


def _delay(rng, beat: float) -> tuple[str, dict]:
    return ("Delay", dict(delay_seconds=round(beat * float(rng.choice([0.5, 0.75, 1.0])), 4),
                          feedback=_u(rng, 0.1, 0.4), mix=_u(rng, 0.08, 0.25)))


def _modulation(rng) -> tuple[str, dict]:
    if rng.random() < 0.5:
        return ("Chorus", dict(rate_hz=_u(rng, 0.2, 2.5), depth=_u(rng, 0.1, 0.5), centre_delay_ms=_u(rng, 4, 12),
                               feedback=_u(rng, 0.0, 0.3), mix=_u(rng, 0.2, 0.5)))
    return ("Phaser", dict(rate_hz=_u(rng, 0.1, 1.5), depth=_u(rng, 0.3, 0.8), centre_frequency_hz=_u(rng, 400, 2000),
                           feedback=_u(rng, 0.0, 0.5), mix=_u(rng, 0.2, 0.5)))


Chain = tuple[list[tuple[str, dict]], float]  # (effects in order, send to the song's room)


def _drums_chain(part: Part, rng, sr: int, beat: float) -> Chain:
    hp = (250, 700) if part.instrument.name in ("hi-hat", "cymbals") else (20, 60)
    fx = [("HighpassFilter", dict(cutoff_frequency_hz=_hz(rng, *hp, sr)))]
    fx += _eq(rng, sr, low=(50, 120), high=(3000, 8000), peak=(80, 5000))
    if rng.random() < 0.4 or "machine" in part.instrument.labels[1]:
        fx.append(("Distortion", dict(drive_db=_u(rng, 2, 12))))
    fx.append(_comp(rng, ratio=(3, 8), attack=(2, 30), release=(40, 200)))
    fx.append(_reverb(rng, size=(0.05, 0.45), wet=(0.03, 0.2)))
    return fx, _u(rng, 0.05, 0.3)


def _bass_chain(part: Part, rng, sr: int, beat: float) -> Chain:
    fx = [("HighpassFilter", dict(cutoff_frequency_hz=_hz(rng, 25, 50, sr)))]
    fx.append(("LowShelfFilter", dict(cutoff_frequency_hz=_hz(rng, 70, 160, sr), gain_db=_u(rng, -3, 6))))
    if rng.random() < 0.6:
        fx.append(("Distortion", dict(drive_db=_u(rng, 3, 16))))
    fx.append(_comp(rng, ratio=(3, 8), attack=(5, 30), release=(60, 250)))
    if rng.random() < 0.5:
        fx.append(("LowpassFilter", dict(cutoff_frequency_hz=_hz(rng, 1500, 7000, sr))))
    return fx, _u(rng, 0.0, 0.06)


def _acoustic_guitar_chain(part: Part, rng, sr: int, beat: float) -> Chain:
    """No amp: a miked acoustic."""
    fx = [("HighpassFilter", dict(cutoff_frequency_hz=_hz(rng, 60, 140, sr)))]
    fx += _eq(rng, sr, low=(100, 300), high=(3000, 7000), peak=(150, 4000))
    fx.append(_comp(rng, ratio=(2, 5), attack=(3, 20)))
    if rng.random() < 0.3:
        fx.append(_modulation(rng))
    fx.append(_reverb(rng, size=(0.2, 0.7), wet=(0.05, 0.25)))
    return fx, _u(rng, 0.05, 0.25)


def _guitar_chain(part: Part, rng, sr: int, beat: float) -> Chain:
    drive = (14, 32) if part.instrument.name in _DRIVEN_GUITARS else ((2, 14) if rng.random() < 0.6 else (0.1, 1))
    fx = [("HighpassFilter", dict(cutoff_frequency_hz=_hz(rng, 70, 160, sr)))]
    fx.append(("Distortion", dict(drive_db=_u(rng, *drive))))        # the amp
    fx.append(("PeakFilter", dict(cutoff_frequency_hz=_hz(rng, 800, 3000, sr), gain_db=_u(rng, -4, 6),
                                  q=_u(rng, 0.7, 2.0))))               # the cabinet: mid bump, no top end
    fx.append(("LowpassFilter", dict(cutoff_frequency_hz=_hz(rng, 3000, 6500, sr))))
    if rng.random() < 0.45:
        fx.append(_modulation(rng) if rng.random() < 0.3 else ("Chorus", dict(
            rate_hz=_u(rng, 0.3, 2.0), depth=_u(rng, 0.1, 0.4), centre_delay_ms=_u(rng, 5, 10), feedback=0.0,
            mix=_u(rng, 0.2, 0.5))))
    if rng.random() < 0.3:
        fx.append(_delay(rng, beat))
    fx.append(_reverb(rng, size=(0.2, 0.7), wet=(0.05, 0.25)))
    return fx, _u(rng, 0.05, 0.25)


def _keys_chain(part: Part, rng, sr: int, beat: float) -> Chain:
    fx = _eq(rng, sr)
    if rng.random() < 0.6:
        fx.append(_modulation(rng))
    if rng.random() < 0.5:
        fx.append(_comp(rng, ratio=(1.5, 4)))
    fx.append(_reverb(rng, size=(0.3, 0.85), wet=(0.08, 0.3)))
    return fx, _u(rng, 0.05, 0.3)


def _pads_chain(part: Part, rng, sr: int, beat: float) -> Chain:
    fx = [("HighpassFilter", dict(cutoff_frequency_hz=_hz(rng, 80, 250, sr)))]
    fx += _eq(rng, sr, gain=4.0)
    if rng.random() < 0.35:
        fx.append(_modulation(rng))
    if rng.random() < 0.4:
        fx.append(("LowpassFilter", dict(cutoff_frequency_hz=_hz(rng, 2500, 7500, sr))))
    fx.append(_reverb(rng, size=(0.6, 0.95), wet=(0.2, 0.45)))
    return fx, _u(rng, 0.1, 0.4)


def _lead_chain(part: Part, rng, sr: int, beat: float) -> Chain:
    fx = [("HighpassFilter", dict(cutoff_frequency_hz=_hz(rng, 80, 200, sr)))]
    fx.append(_comp(rng, threshold=(-30, -16), ratio=(3, 7), attack=(1, 10), release=(40, 150)))
    fx.append(("PeakFilter", dict(cutoff_frequency_hz=_hz(rng, 2000, 5000, sr), gain_db=_u(rng, 0, 6),
                                  q=_u(rng, 0.5, 1.5))))               # presence
    fx += _eq(rng, sr, gain=3.0)
    if rng.random() < 0.6:
        fx.append(_delay(rng, beat))
    fx.append(_reverb(rng, size=(0.3, 0.9), wet=(0.1, 0.35)))
    return fx, _u(rng, 0.05, 0.25)


def _other_chain(part: Part, rng, sr: int, beat: float) -> Chain:
    fx = _eq(rng, sr)
    if rng.random() < 0.5:
        fx.append(_comp(rng))
    if rng.random() < 0.2:
        fx.append(_modulation(rng))
    fx.append(_reverb(rng, size=(0.1, 0.8), wet=(0.05, 0.3)))
    return fx, _u(rng, 0.05, 0.35)


_CHAINS = {"drums": _drums_chain, "bass": _bass_chain, "acoustic guitar": _acoustic_guitar_chain,
           "guitar": _guitar_chain, "keys": _keys_chain, "pads": _pads_chain, "lead": _lead_chain}


def draw_chain(kind: str, part: Part, rng: np.random.Generator, sr: int, beat: float) -> Chain:
    """The effects (pedalboard plugin name, parameters) of one stem, in order, and its send to the song's room."""
    if kind == "guitar" and part.instrument.labels[1] == "acoustic guitar":
        kind = "acoustic guitar"
    return _CHAINS.get(kind, _other_chain)(part, rng, sr, beat)


def apply_chain(x: np.ndarray, fx: list[tuple[str, dict]], sr: int) -> np.ndarray:
    """`x` (mono) through the effects; same length, tails cut at the end of the song."""
    pb = require_pedalboard()
    board = pb.Pedalboard([getattr(pb, name)(**params) for name, params in fx])
    y = board(x[None, :].astype(np.float32), float(sr), reset=True)
    return np.asarray(y, dtype=np.float32).reshape(-1, len(x)).mean(axis=0)


def _convolve(x: np.ndarray, ir_spectrum: np.ndarray, size: int) -> np.ndarray:
    return np.fft.irfft(np.fft.rfft(x, size) * ir_spectrum, size)[: len(x)]


def _envelope(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
    """The song's fades (a fade-in some times, a fade-out more often) and the 30 ms end ramp every song has."""
    env = np.ones(n, dtype=np.float64)
    seconds = n / sr
    fades = {}
    if rng.random() < 0.25:
        k = int(min(rng.uniform(0.3, 2.5), seconds / 4) * sr)
        env[:k] *= np.linspace(0, 1, k) ** 2
        fades["in"] = round(k / sr, 3)
    if rng.random() < 0.4:
        k = int(min(rng.uniform(1.0, 5.0), seconds / 3) * sr)
        env[n - k:] *= np.linspace(1, 0, k) ** 2
        fades["out"] = round(k / sr, 3)
    k = min(n, int(0.03 * sr))
    env[n - k:] *= np.linspace(1, 0, k)
    return env, fades


def produce(stems: list[np.ndarray], parts: list[Part], rng: np.random.Generator, sr: int, plan: SongPlan
            ) -> tuple[list[np.ndarray], np.ndarray, list[float], list[dict], dict]:
    """Production "full" of one song: per-stem chains, room sends, levels, then one song-wide linear gain and fades.

    Returns (stems, mix, gain per stem in dB, chain per stem, song-level settings); `mix` is the song-wide stage
    applied to the sum of the pre-master stems, hence equal to the sum of the returned stems (to half an LSB each).
    """
    require_pedalboard()
    n = len(stems[0])
    ref = 10 ** (REFERENCE_DB / 20)
    ir = _room(rng, sr)
    size = 1 << int(math.ceil(math.log2(n + len(ir))))
    ir_spectrum = np.fft.rfft(ir, size)
    # one gain per mixing group into the chains (a split kit keeps its balance), one level per group out of them
    groups = list(dict.fromkeys(p.group for p in parts))
    into = {g: ref / max(_level(np.sum([x for x, p in zip(stems, parts) if p.group == g], axis=0), sr), 1e-6) for g in groups}
    level_db = {g: next(p.level_db for p in parts if p.group == g) + float(rng.normal(0, 2.5)) for g in groups}
    out, chains = [], []
    for x, part in zip(stems, parts):
        kind = chain_kind(part)
        fx, room = draw_chain(kind, part, rng, sr, plan.beat_seconds)
        y = apply_chain(x * into[part.group], fx, sr).astype(np.float64)
        if room > 0:
            y = y + room * _convolve(y, ir_spectrum, size)
        y[~np.isfinite(y)] = 0.0
        out.append(y)
        chains.append({"kind": kind, "room": room, "effects": [{"effect": name, **params} for name, params in fx]})
    gains = [1.0] * len(out)
    for g in groups:
        idx = [i for i, p in enumerate(parts) if p.group == g]
        gain = 10 ** (level_db[g] / 20) / max(_level(np.sum([out[i] for i in idx], axis=0), sr), 1e-6)
        for i in idx:
            gains[i] = gain
    pre = [x * g for x, g in zip(out, gains)]
    # the song-wide stage: loudness, peak ceiling and fades, one linear envelope on every stem and on the mix alike
    pre_mix = np.sum(pre, axis=0)
    scale = 10 ** (rng.uniform(-20.0, -12.0) / 20) / _active_rms(pre_mix, sr)
    env, fades = _envelope(rng, n, sr)
    peak = max(float(np.abs(pre_mix * env).max()), max(float(np.abs(x * env).max()) for x in pre)) * scale
    ceiling = 10 ** (-1.0 / 20)
    if peak > ceiling:
        scale *= ceiling / peak
    master = env * scale
    mix = (pre_mix * master).astype(np.float32)
    final = [(x * master).astype(np.float32) for x in pre]
    for x in final:
        x[np.abs(x) < 2.0 ** -16] = 0.0   # below half an LSB of 16-bit: true silence, as in the default renders
    song = {"master_gain_db": round(20 * math.log10(max(scale, 1e-12)), 2), "fades": fades}
    return final, mix, [20 * math.log10(max(g * scale, 1e-12)) for g in gains], chains, song
