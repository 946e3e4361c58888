"""Curated names of the same instrument, per evaluation dataset, for the label colours of Fig. 2.

Fig. 2 colours an evaluation label green when it was a training label, orange when the training set had the same instrument
written differently ("lead female singer" vs "female lead vocals"), red when it is new (zero-shot). Whether two names mean
the same instrument is decided here, by hand, for every label the dataset loaders produce: MoisesDB's trackTypes and
categories (as `stemjepa.data.datasets.moisesdb` renders them), MUSDB18's four sources, and the fine names of the built-in
synthetic corpus whose rewordings are plausible. A more specific instrument is not a rewording ("rhodes electric piano" is
not "electric piano"). Labels the table lacks fall back to a word-overlap heuristic (`analysis.label_presence`).
"""
from __future__ import annotations

from ..data.labels import label_words

# Each group lists names of one instrument; the first is the dataset's own label. Names are lower-case, single-spaced.
_MOISESDB = [
    ["lead female singer", "female lead vocals", "female lead vocal", "lead vocals female", "female singer", "female vocals"],
    ["lead male singer", "male lead vocals", "male lead vocal", "lead vocals male", "male singer", "male vocals"],
    ["background vocals", "backing vocals", "background vocal", "backing vocal", "bgv", "backing singers"],
    ["human choir", "choir", "vocal choir"],
    ["other vocals"],
    ["bass guitar", "electric bass", "electric bass guitar", "bass electric"],
    ["bass synthesizer", "synth bass", "bass synth", "synthesizer bass"],
    ["double bass", "contrabass", "contrabass double bass", "upright bass", "acoustic bass", "acoustic upright bass"],
    ["tuba"], ["bassoon"], ["other bass"],
    ["kick drum", "kick", "bass drum"],
    ["snare drum", "snare"],
    ["toms", "tom", "tom toms", "tom-toms"],
    ["hi-hat", "hi hat", "hihat", "hi-hats", "hi hats"],
    ["overheads", "overhead", "drum overheads", "overhead mics"],
    ["cymbals", "cymbal"],
    ["drum machine", "electronic drums", "electronic drum kit", "programmed drums", "drum programming"],
    ["full acoustic drumkit", "acoustic drum kit", "drum kit", "drumkit", "drum set", "drumset", "acoustic drums"],
    ["other drums"],
    ["atonal percussion", "a-tonal percussion", "unpitched percussion", "non-pitched percussion", "untuned percussion"],
    ["pitched percussion", "tuned percussion", "chromatic percussion", "mallet percussion", "mallets"],
    ["other percussion"],
    ["grand piano", "acoustic piano", "acoustic grand piano", "piano grand"],
    ["electric piano", "e-piano", "e piano", "epiano"],
    ["other piano"],
    ["organ", "electric organ", "organ electric organ"],
    ["synth pad", "pad", "synthesizer pad", "pad synth"],
    ["synth lead", "lead synth", "synthesizer lead", "synth lead line"],
    ["other keys", "other keyboards"],
    ["clean electric guitar", "clean guitar", "electric guitar clean"],
    ["distorted electric guitar", "overdriven electric guitar", "overdriven guitar", "distortion guitar", "distorted guitar",
     "electric guitar distorted"],
    ["acoustic guitar", "acoustic guitars"],
    ["slide guitar", "lap steel guitar", "lap steel", "steel guitar"],
    ["other guitar"],
    ["banjo, mandolin, ukulele, harp"],
    ["other plucked", "plucked", "plucked strings"],
    ["violin"], ["viola"], ["cello"],
    ["violin section", "violins"],
    ["viola section", "violas"],
    ["cello section", "cellos"],
    ["string section", "strings", "string ensemble", "orchestral strings"],
    ["other strings"],
    ["brass", "brass section", "horns", "horn section"],
    ["flutes", "flute"],
    ["reeds", "reed", "reed section"],
    ["other wind", "other winds"],
    ["sound effects", "fx", "sfx", "effects"],
    ["click track", "click", "metronome"],
    # categories (coarse conditioning)
    ["vocals", "vocal", "voice", "voices"],
    ["bass"], ["drums", "drum"], ["percussion"], ["piano"], ["guitar", "guitars"],
    ["bowed strings", "bowed string instruments"],
    ["wind", "winds", "wind instruments"],
    ["other"],
]
_MUSDB = [["vocals", "vocal", "voice", "voices"], ["bass"], ["drums", "drum"], ["music"], ["other"]]
# the built-in corpus: the zero-shot instruments of the demo and other fine names with common rewordings
_SYNTH = [
    ["rhodes electric piano", "rhodes", "rhodes piano", "fender rhodes"],
    ["fm electric piano", "dx7 electric piano", "fm piano"],
    ["alto saxophone", "alto sax"], ["tenor saxophone", "tenor sax"], ["soprano saxophone", "soprano sax"],
    ["baritone saxophone", "baritone sax", "bari sax"],
    ["violin", "violins"], ["viola", "violas"], ["cello", "cellos"],
    ["acoustic grand piano", "grand piano", "acoustic piano"],
    ["overdriven electric guitar", "overdriven guitar"], ["distorted electric guitar", "distortion guitar", "distorted guitar"],
    ["clean electric guitar", "clean guitar"],
    ["acoustic upright bass", "upright bass", "double bass", "contrabass"],
    ["acoustic drum kit", "acoustic drums", "drum kit", "drumkit", "drum set"],
    ["hi-hat", "hi hat", "hihat"], ["kick drum", "kick", "bass drum"], ["snare drum", "snare"],
    ["lead vocals", "lead vocal", "lead voice"], ["background vocals", "backing vocals"],
]

ALIASES: dict[str, list[list[str]]] = {"moisesdb": _MOISESDB, "musdb18": _MUSDB, "musdb18hq": _MUSDB, "folder": _SYNTH}


def alias_group(label: str, dataset: str | None) -> set[str] | None:
    """Every name of the instrument `label` names in `dataset`'s table (itself included), None when the table lacks it.
    The MoisesDB table also serves the other datasets' fine labels, which often use MoisesDB's vocabulary."""
    norm = label_words(label)
    tables = [ALIASES.get(str(dataset), [])] + ([] if dataset == "moisesdb" else [_MOISESDB])
    for table in tables:
        for group in table:
            names = {label_words(n) for n in group}
            if norm in names:
                return names
    return None


__all__ = ["ALIASES", "alias_group"]
