"""Built-in synthetic multitrack corpus: musically coherent songs rendered stem by stem from MIDI with FluidSynth.

    from stemjepa.data.synth import synthesize_corpus, PALETTE
    synthesize_corpus("data/synth", n_songs=100, seconds=30, seed=0, jobs=2, exclude=["saxophone", "wind"])
    synthesize_corpus("data/produced", n_songs=100, production="full")   # effect chains, feel, wider styles (see
                                                                          # production.py; pip install stemjepa[effects])

`PALETTE` lists every instrument (`Instrument.labels` coarse to fine, GM `program`, `roles`, MoisesDB `moises`).
"""
from .corpus import compose, is_complete, synthesize_corpus
from .palette import CATEGORIES, PALETTE, Instrument, instruments
from .render import default_soundfont

__all__ = ["synthesize_corpus", "compose", "is_complete", "PALETTE", "CATEGORIES", "Instrument", "instruments",
           "default_soundfont"]
