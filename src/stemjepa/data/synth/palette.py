"""The instrument palette: General MIDI programs with label paths (coarse to fine) and the parts each can play.

Categories follow MoisesDB's stem names (vocals, bass, drums, guitar, piano, other keys, bowed strings, wind,
percussion, other plucked), so that a model trained on the synthetic corpus meets familiar labels on real data.
Each instrument also carries its MoisesDB (stemName, trackType) for `--layout moisesdb`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError

ROLES = ("drums", "perc", "bass", "comp", "pad", "arp", "lead", "counter")
ATONAL = "a-tonal_percussion_(claps,_shakers,_congas,_cowbell_etc)"


@dataclass(frozen=True)
class Instrument:
    labels: tuple[str, ...]          # coarse to fine; labels[-1] is the instrument's unique name
    program: int                     # GM program; for drums, the bank-128 kit preset
    roles: tuple[str, ...]           # parts it can play (see ROLES); "kit_part" for split-kit stems
    range: tuple[int, int] = (0, 127)
    moises: tuple[str, str] = ("other", "fx")
    is_drum: bool = False
    styles: tuple[str, ...] = ()     # comp patterns it plays idiomatically
    keys: tuple[int, ...] = ()       # GM drum keys of an unpitched percussion instrument

    @property
    def name(self) -> str:
        return self.labels[-1]

    @property
    def category(self) -> str:
        return self.labels[0]

    def matches(self, names) -> bool:
        """True when any of `names` equals one level of the label path (case-insensitive)."""
        levels = {x.lower() for x in self.labels}
        return any(n.strip().lower() in levels for n in names)


def _i(labels: str, program: int, roles: str, lo: int, hi: int, moises: str, styles: str = "", **kw) -> Instrument:
    stem, track = moises.split("/")
    return Instrument(tuple(labels.split("/")), program, tuple(roles.split()), (lo, hi), (stem, track),
                      styles=tuple(styles.split()), **kw)


_SYNTH_COMP = "syncopated offbeat sustain"
PALETTE: tuple[Instrument, ...] = (
    # vocals-like leads and backing
    _i("vocals/lead vocals/voice oohs", 53, "lead", 57, 81, "vocals/lead_female_singer"),
    _i("vocals/lead vocals/synth voice", 54, "lead", 48, 74, "vocals/lead_male_singer"),
    _i("vocals/background vocals/choir aahs", 52, "pad counter", 48, 79, "vocals/background_vocals"),
    # bass
    _i("bass/electric bass/fingered electric bass", 33, "bass", 28, 60, "bass/bass_guitar"),
    _i("bass/electric bass/picked electric bass", 34, "bass", 28, 60, "bass/bass_guitar"),
    _i("bass/electric bass/fretless bass", 35, "bass", 28, 60, "bass/bass_guitar"),
    _i("bass/electric bass/slap bass", 36, "bass", 28, 60, "bass/bass_guitar"),
    _i("bass/double bass/acoustic upright bass", 32, "bass", 28, 55, "bass/contrabass_double_bass"),
    _i("bass/synth bass/analog synth bass", 38, "bass", 24, 55, "bass/bass_synthesizer"),
    _i("bass/synth bass/digital synth bass", 39, "bass", 24, 55, "bass/bass_synthesizer"),
    # drum kits (one stem) and the stems of a split kit
    _i("drums/drum kit/acoustic drum kit", 0, "drums", 35, 81, "drums/full_acoustic_drumkit", is_drum=True),
    _i("drums/drum kit/room drum kit", 8, "drums", 35, 81, "drums/full_acoustic_drumkit", is_drum=True),
    _i("drums/drum kit/rock drum kit", 16, "drums", 35, 81, "drums/full_acoustic_drumkit", is_drum=True),
    _i("drums/drum kit/jazz drum kit", 32, "drums", 35, 81, "drums/full_acoustic_drumkit", is_drum=True),
    _i("drums/drum kit/brush drum kit", 40, "drums", 35, 81, "drums/full_acoustic_drumkit", is_drum=True),
    _i("drums/drum machine/electronic drum kit", 24, "drums", 35, 81, "drums/drum_machine", is_drum=True),
    _i("drums/drum machine/808 drum machine", 25, "drums", 35, 81, "drums/drum_machine", is_drum=True),
    _i("drums/kick drum", 0, "kit_part", 35, 36, "drums/kick_drum", is_drum=True, keys=(35, 36)),
    _i("drums/snare drum", 0, "kit_part", 37, 40, "drums/snare_drum", is_drum=True, keys=(37, 38, 39, 40)),
    _i("drums/toms", 0, "kit_part", 41, 50, "drums/toms", is_drum=True, keys=(41, 43, 45, 47, 48, 50)),
    _i("drums/hi-hat", 0, "kit_part", 42, 46, "drums/hi_hat", is_drum=True, keys=(42, 44, 46)),
    _i("drums/cymbals", 0, "kit_part", 49, 59, "drums/cymbals", is_drum=True, keys=(49, 51, 52, 53, 55, 57, 59)),
    # guitar
    _i("guitar/acoustic guitar/nylon string guitar", 24, "comp arp lead", 40, 84, "guitar/acoustic_guitar",
       "strum broken syncopated"),
    _i("guitar/acoustic guitar/steel string guitar", 25, "comp arp", 40, 84, "guitar/acoustic_guitar",
       "strum broken"),
    _i("guitar/electric guitar/jazz guitar", 26, "comp lead", 40, 84, "guitar/clean_electric_guitar",
       "syncopated quarters broken"),
    _i("guitar/electric guitar/clean electric guitar", 27, "comp arp", 40, 86, "guitar/clean_electric_guitar",
       "offbeat syncopated strum broken"),
    _i("guitar/electric guitar/muted electric guitar", 28, "comp", 40, 76, "guitar/clean_electric_guitar",
       "syncopated offbeat"),
    _i("guitar/electric guitar/overdriven electric guitar", 29, "comp lead", 40, 86,
       "guitar/distorted_electric_guitar", "power sustain"),
    _i("guitar/electric guitar/distorted electric guitar", 30, "comp lead", 40, 86,
       "guitar/distorted_electric_guitar", "power sustain"),
    # piano
    _i("piano/grand piano/acoustic grand piano", 0, "comp arp lead", 28, 100, "piano/grand_piano",
       "sustain quarters broken syncopated"),
    _i("piano/grand piano/bright piano", 1, "comp arp", 28, 100, "piano/grand_piano",
       "quarters broken syncopated offbeat"),
    _i("piano/grand piano/honky-tonk piano", 3, "comp", 36, 96, "piano/grand_piano", "quarters offbeat"),
    _i("piano/electric piano/rhodes electric piano", 4, "comp arp", 36, 96, "piano/electric_piano",
       "sustain syncopated offbeat"),
    _i("piano/electric piano/fm electric piano", 5, "comp arp", 36, 96, "piano/electric_piano",
       "syncopated offbeat quarters"),
    _i("piano/electric piano/electric grand piano", 2, "comp", 36, 96, "piano/electric_piano",
       "sustain syncopated"),
    # other keys: organs, harpsichord, clavinet, synthesizers
    _i("other keys/organ/drawbar organ", 16, "comp pad", 36, 96, "other_keys/organ_electric_organ",
       "sustain offbeat quarters"),
    _i("other keys/organ/percussive organ", 17, "comp", 36, 96, "other_keys/organ_electric_organ",
       "offbeat syncopated"),
    _i("other keys/organ/rock organ", 18, "comp pad", 36, 96, "other_keys/organ_electric_organ",
       "sustain syncopated"),
    _i("other keys/organ/church organ", 19, "pad", 36, 96, "other_keys/organ_electric_organ"),
    _i("other keys/keyboard/harpsichord", 6, "comp arp", 41, 89, "other_keys/other_sounds_(hapischord,_melotron_etc)",
       "broken quarters"),
    _i("other keys/keyboard/clavinet", 7, "comp", 41, 89, "other_keys/other_sounds_(hapischord,_melotron_etc)",
       "syncopated offbeat"),
    _i("other keys/synth lead/square lead", 80, "lead arp", 48, 96, "other_keys/synth_lead"),
    _i("other keys/synth lead/sawtooth lead", 81, "lead arp", 48, 96, "other_keys/synth_lead"),
    _i("other keys/synth lead/synth brass", 62, "comp pad", 40, 84, "other_keys/synth_lead", "stabs sustain"),
    _i("other keys/synth pad/warm pad", 89, "pad", 40, 84, "other_keys/synth_pad"),
    _i("other keys/synth pad/polysynth pad", 90, "pad comp", 40, 88, "other_keys/synth_pad", _SYNTH_COMP),
    _i("other keys/synth pad/new age pad", 88, "pad", 40, 84, "other_keys/synth_pad"),
    _i("other keys/synth pad/halo pad", 94, "pad", 40, 84, "other_keys/synth_pad"),
    _i("other keys/synth pad/synth strings", 50, "pad", 40, 84, "other_keys/synth_pad"),
    # bowed strings
    _i("bowed strings/violin", 40, "lead counter", 55, 96, "bowed_strings/violin"),
    _i("bowed strings/viola", 41, "counter", 48, 81, "bowed_strings/viola"),
    _i("bowed strings/cello", 42, "counter bass", 36, 72, "bowed_strings/cello"),
    _i("bowed strings/string section/string ensemble", 48, "pad counter", 40, 91, "bowed_strings/string_section"),
    _i("bowed strings/string section/slow strings", 49, "pad", 40, 91, "bowed_strings/string_section"),
    _i("bowed strings/string section/tremolo strings", 44, "pad", 40, 91, "bowed_strings/string_section"),
    _i("bowed strings/string section/pizzicato strings", 45, "comp arp", 36, 84, "bowed_strings/string_section",
       "quarters offbeat"),
    # wind: brass, reeds, flutes, other wind
    _i("wind/brass/trumpet", 56, "lead counter", 54, 82, "wind/brass"),
    _i("wind/brass/trombone", 57, "counter", 40, 70, "wind/brass"),
    _i("wind/brass/french horn", 60, "counter pad", 41, 74, "wind/brass"),
    _i("wind/brass/tuba", 58, "bass", 28, 55, "wind/brass"),
    _i("wind/brass/brass section", 61, "comp pad", 45, 82, "wind/brass", "stabs sustain"),
    _i("wind/reeds/alto saxophone", 65, "lead counter", 49, 80, "wind/reeds"),
    _i("wind/reeds/tenor saxophone", 66, "lead counter", 44, 75, "wind/reeds"),
    _i("wind/reeds/clarinet", 71, "lead counter", 50, 88, "wind/reeds"),
    _i("wind/reeds/oboe", 68, "lead counter", 58, 88, "wind/reeds"),
    _i("wind/reeds/bassoon", 70, "counter bass", 34, 67, "wind/reeds"),
    _i("wind/flutes/flute", 73, "lead counter", 60, 93, "wind/flutes"),
    _i("wind/flutes/piccolo", 72, "lead", 74, 100, "wind/flutes"),
    _i("wind/flutes/pan flute", 75, "lead", 60, 91, "wind/flutes"),
    _i("wind/flutes/recorder", 74, "lead", 60, 91, "wind/flutes"),
    _i("wind/other wind/harmonica", 22, "lead", 60, 84, "wind/other_wind"),
    _i("wind/other wind/accordion", 21, "comp lead", 53, 89, "wind/other_wind", "offbeat sustain"),
    # percussion: pitched and unpitched (one instrument per stem)
    _i("percussion/pitched percussion/vibraphone", 11, "arp lead comp", 53, 89, "percussion/pitched_percussion",
       "sustain syncopated"),
    _i("percussion/pitched percussion/marimba", 12, "arp lead", 45, 96, "percussion/pitched_percussion"),
    _i("percussion/pitched percussion/xylophone", 13, "arp lead", 65, 108, "percussion/pitched_percussion"),
    _i("percussion/pitched percussion/glockenspiel", 9, "arp lead", 79, 108, "percussion/pitched_percussion"),
    _i("percussion/pitched percussion/celesta", 8, "arp", 60, 108, "percussion/pitched_percussion"),
    _i("percussion/pitched percussion/music box", 10, "arp", 60, 96, "percussion/pitched_percussion"),
    _i("percussion/pitched percussion/steel drums", 114, "arp lead", 52, 84, "percussion/pitched_percussion"),
    _i("percussion/pitched percussion/kalimba", 108, "arp", 60, 88, "percussion/pitched_percussion"),
    _i("percussion/a-tonal percussion/shaker", 0, "perc", 0, 127, f"percussion/{ATONAL}", is_drum=True, keys=(82,)),
    _i("percussion/a-tonal percussion/maracas", 0, "perc", 0, 127, f"percussion/{ATONAL}", is_drum=True, keys=(70,)),
    _i("percussion/a-tonal percussion/tambourine", 0, "perc", 0, 127, f"percussion/{ATONAL}", is_drum=True,
       keys=(54,)),
    _i("percussion/a-tonal percussion/congas", 0, "perc", 0, 127, f"percussion/{ATONAL}", is_drum=True,
       keys=(62, 63, 64)),
    _i("percussion/a-tonal percussion/bongos", 0, "perc", 0, 127, f"percussion/{ATONAL}", is_drum=True,
       keys=(60, 61)),
    _i("percussion/a-tonal percussion/cowbell", 0, "perc", 0, 127, f"percussion/{ATONAL}", is_drum=True, keys=(56,)),
    _i("percussion/a-tonal percussion/claves", 0, "perc", 0, 127, f"percussion/{ATONAL}", is_drum=True, keys=(75,)),
    _i("percussion/a-tonal percussion/woodblock", 0, "perc", 0, 127, f"percussion/{ATONAL}", is_drum=True,
       keys=(76, 77)),
    _i("percussion/a-tonal percussion/hand claps", 0, "perc", 0, 127, f"percussion/{ATONAL}", is_drum=True,
       keys=(39,)),
    _i("percussion/a-tonal percussion/triangle", 0, "perc", 0, 127, f"percussion/{ATONAL}", is_drum=True,
       keys=(80, 81)),
    # other plucked
    _i("other plucked/harp", 46, "arp pad", 36, 96, "other_plucked/other_plucked"),
    _i("other plucked/banjo", 105, "comp arp", 48, 84, "other_plucked/other_plucked", "broken offbeat"),
    _i("other plucked/koto", 107, "arp lead", 55, 91, "other_plucked/other_plucked"),
    _i("other plucked/sitar", 104, "lead arp", 48, 84, "other_plucked/other_plucked"),
    _i("other plucked/shamisen", 106, "lead arp", 50, 86, "other_plucked/other_plucked"),
)

KIT_PARTS = tuple(x for x in PALETTE if "kit_part" in x.roles)
CATEGORIES = tuple(dict.fromkeys(x.category for x in PALETTE))


def instruments(exclude=(), require=()) -> list[Instrument]:
    """The palette without instruments matching `exclude`; with `require`, only those matching it."""
    kept = [x for x in PALETTE if not x.matches(exclude)]
    return [x for x in kept if x.matches(require)] if require else kept


def check_names(names, what: str) -> list[str]:
    """Validate instrument/category names against the palette; an unknown one is a ConfigError listing the choices."""
    names = [n.strip() for n in names if n and n.strip()]
    unknown = [n for n in names if not any(x.matches([n]) for x in PALETTE)]
    if unknown:
        raise ConfigError(f"{what}: unknown instrument or category {', '.join(map(repr, unknown))}; "
                          f"categories: {', '.join(CATEGORIES)} (`stemjepa synth --list-instruments` lists all)")
    return names


def describe() -> str:
    """One line per instrument: its label path and GM program (the `--list-instruments` output)."""
    lines = []
    for x in PALETTE:
        if "drums" in x.roles:
            prog = f"drum kit preset {x.program}"
        elif x.keys:
            prog = "drum keys " + ",".join(map(str, x.keys))
        else:
            prog = f"program {x.program}"
        lines.append(f"{' / '.join(x.labels):58s} {prog:22s} {' '.join(x.roles)}")
    return "\n".join(lines)


assert len({x.name for x in PALETTE}) == len(PALETTE), "instrument names must be unique"
