"""FluidSynth rendering of one part (a pretty_midi Instrument) to a mono float32 stem.

One synthesizer per process and soundfont is created once and reused for every stem: loading a soundfont costs more
than rendering a short part. Reverb and chorus of FluidSynth are off and every render starts on a 64-sample block
boundary from a reset synthesizer, so a stem's audio depends only on its notes (determinism whatever the order of
rendering or the number of worker processes).
"""
from __future__ import annotations

import ctypes
import logging
import math
from pathlib import Path

import numpy as np

from ...audio import SAMPLE_RATE
from ...errors import DataError, StemJepaError

log = logging.getLogger(__name__)

POLYPHONY = 256
BLOCK = 64                     # FluidSynth's internal block: events apply at block boundaries
_SYNTHS: dict[tuple[str, int], tuple[object, int]] = {}
_WRITE_FLOAT = None


def default_soundfont() -> Path:
    """TimGM6mb.sf2, the small General MIDI soundfont shipped inside the pretty_midi package."""
    try:
        import pretty_midi
    except ImportError as exc:  # pragma: no cover - a dependency
        raise StemJepaError(f"pretty_midi is not installed ({exc}); pip install pretty_midi") from None
    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def resolve_soundfont(path=None) -> Path:
    """The soundfont to use (default: TimGM6mb); a clear error when the file is missing or not an SF2."""
    sf2 = Path(path) if path else default_soundfont()
    if not sf2.is_file():
        hint = " (the default soundfont ships with pretty_midi; reinstall it, or pass --soundfont PATH)" if not path else ""
        raise DataError(f"{sf2}: soundfont not found{hint}")
    with open(sf2, "rb") as fh:
        head = fh.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise DataError(f"{sf2}: not a SoundFont 2 (.sf2) file")
    return sf2.resolve()


def _fluidsynth():
    try:
        import fluidsynth
    except (ImportError, OSError) as exc:
        raise StemJepaError(f"FluidSynth is not available ({exc}): install the FluidSynth library "
                            "(Debian/Ubuntu: apt-get install fluidsynth) and pip install pyfluidsynth") from None
    if not hasattr(fluidsynth, "Synth"):
        raise StemJepaError("the installed `fluidsynth` Python module is not pyfluidsynth; pip install pyfluidsynth")
    return fluidsynth


def internal_rate(sample_rate: int) -> int:
    """Synthesis rate: an integer multiple of the output rate of at least 32 kHz (clean resampling, little aliasing)."""
    return sample_rate * max(1, math.ceil(32000 / sample_rate))


def get_synth(soundfont: Path, rate: int):
    """The process-wide synthesizer for (soundfont, rate), created on first use."""
    global _WRITE_FLOAT
    key = (str(soundfont), rate)
    if key not in _SYNTHS:
        fl = _fluidsynth()
        # effects off from creation on: their tails would carry from one stem into the next
        synth = fl.Synth(gain=0.3, samplerate=float(rate), **{"synth.reverb.active": 0, "synth.chorus.active": 0,
                                                               "synth.polyphony": POLYPHONY})
        sfid = synth.sfload(str(soundfont))
        if sfid < 0:
            synth.delete()
            raise DataError(f"{soundfont}: FluidSynth cannot load this soundfont")
        if _WRITE_FLOAT is None:
            fn = fl._fl.fluid_synth_write_float
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                           ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
            fn.restype = ctypes.c_int
            _WRITE_FLOAT = fn
        _SYNTHS[key] = (synth, sfid)
    return _SYNTHS[key]


def _select(synth, sfid: int, chan: int, program: int, is_drum: bool) -> None:
    bank = 128 if is_drum else 0
    for prog in dict.fromkeys((program, program // 8 * 8, 0)):   # fall back within the GM family, then to 0
        if synth.program_select(chan, sfid, bank, prog) == 0:
            if prog != program:
                log.warning("soundfont has no %s preset %d; using %d", "drum kit" if is_drum else "program", program, prog)
            return
    raise DataError(f"the soundfont has no preset usable for {'drum kit' if is_drum else 'program'} {program}")


def _prime(synth, sfid: int) -> None:
    """Bring every voice slot to one state: FluidSynth reuses voice objects whose leftovers (e.g. the last gain of an
    amplitude ramp) colour the first block of the next note, so without this a stem would depend on earlier stems."""
    fl = _fluidsynth()
    set_log = fl._fl.fluid_set_log_function
    set_log.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    set_log.restype = ctypes.c_void_p
    previous = set_log(2, None, None)        # silence "failed to allocate a voice" warnings: all slots are taken
    try:
        synth.program_select(0, sfid, 0, 0)
        for k in range(2 * POLYPHONY):
            synth.noteon(0, 24 + k % 96, 100)
        scratch = np.zeros(2 * BLOCK, dtype=np.float32)
        _WRITE_FLOAT(synth.synth, 2 * BLOCK, scratch.ctypes.data, 0, 1, scratch.ctypes.data, 0, 1)
        synth.all_sounds_off(0)
        _WRITE_FLOAT(synth.synth, 2 * BLOCK, scratch.ctypes.data, 0, 1, scratch.ctypes.data, 0, 1)
    finally:
        set_log(2, previous, None)
    synth.system_reset()


def render_instrument(inst, n_samples: int, sample_rate: int = SAMPLE_RATE, soundfont=None) -> np.ndarray:
    """Render a pretty_midi Instrument to a mono float32 array of exactly `n_samples` at `sample_rate`."""
    import soxr

    sf2 = resolve_soundfont(soundfont)
    rate = internal_rate(sample_rate)
    synth, sfid = get_synth(sf2, rate)
    chan = 9 if inst.is_drum else 0
    synth.system_reset()
    _prime(synth, sfid)
    _select(synth, sfid, chan, int(inst.program), bool(inst.is_drum))
    n_int = int(math.ceil(n_samples * rate / sample_rate))
    total = int(math.ceil(n_int / BLOCK)) * BLOCK
    events = []   # (sample, kind, a, b); at one instant: controllers (0), then note-offs (1), then note-ons (2)
    for cc in inst.control_changes:
        events.append((int(round(cc.time * rate)), 0, cc.number, cc.value))
    for note in inst.notes:
        events.append((int(round(note.start * rate)), 2, note.pitch, int(note.velocity)))
        events.append((int(round(note.end * rate)), 1, note.pitch, 0))
    events.sort()
    left = np.zeros(total, dtype=np.float32)
    right = np.zeros(total, dtype=np.float32)
    pos = 0

    def advance(to: int) -> None:
        nonlocal pos
        to = min(to, total)
        if to > pos:
            _WRITE_FLOAT(synth.synth, to - pos, left.ctypes.data + 4 * pos, 0, 1, right.ctypes.data + 4 * pos, 0, 1)
            pos = to

    for at, kind, a, b in events:
        if at >= total:
            break
        advance(at)
        if kind == 2:
            synth.noteon(chan, a, b)
        elif kind == 1:
            synth.noteoff(chan, a)
        else:
            synth.cc(chan, a, b)
    advance(total)
    # silence every voice and flush, so the next render starts from the same state
    synth.all_sounds_off(chan)
    scratch = np.zeros(4 * BLOCK, dtype=np.float32)
    _WRITE_FLOAT(synth.synth, 4 * BLOCK, scratch.ctypes.data, 0, 1, scratch.ctypes.data, 0, 1)
    synth.system_reset()
    mono = 0.5 * (left + right)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    out = np.zeros(n_samples, dtype=np.float32)
    m = min(n_samples, len(mono))
    out[:m] = mono[:m]
    return out
