"""`stemjepa synth`: write the built-in synthetic multitrack corpus (songs rendered stem by stem with FluidSynth)."""
from __future__ import annotations

import argparse

from ..audio import SAMPLE_RATE


def _names(values) -> list[str]:
    """Accept both `--exclude-instruments a b` and `--exclude-instruments "a,b"`."""
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="write a synthetic multitrack corpus (songs rendered stem by stem from MIDI)",
        description="Write musically coherent synthetic songs, one audio file per stem plus metadata (labels, tempo, "
                    "key, beats), rendered with FluidSynth. Deterministic for a seed; re-running resumes. "
                    "--production full makes them sound produced: every part played with a feel of its own (lead or "
                    "lag, swing, timing and velocity spread), every stem through an effect chain drawn for what it is "
                    "(drums: EQ, drive, compression, room; bass: saturation, compression, low EQ; guitars: amp drive "
                    "and cabinet EQ, chorus; keys: chorus / phaser, reverb; pads and strings: big reverb; vocal-like "
                    "leads: compression, presence, delay, reverb), random levels and fades, and wider genres, meters "
                    "(3, 4, 5, 7) and tempos (60-180 BPM); the stems still sum to the mix. It needs the GPL-3.0 "
                    "effects library pedalboard: pip install stemjepa[effects]. "
                    "Python: stemjepa.data.synth.synthesize_corpus(out, n, production=\"full\").",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", help="output folder (new, empty, or a corpus to resume)")
    p.add_argument("--songs", type=int, default=100, help="number of songs")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each song")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (song i depends only on seed and i)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--exclude-instruments", nargs="+", default=[], metavar="NAME",
                   help="instruments or categories (any level of a label path) kept out of the corpus")
    p.add_argument("--require-instruments", nargs="+", default=[], metavar="NAME",
                   help="every song contains at least one instrument matching one of these")
    p.add_argument("--layout", choices=["folder", "moisesdb"], default="folder",
                   help="folder: song folders with stems.json; moisesdb: the MoisesDB layout (data.json)")
    p.add_argument("--soundfont", default=None, help="SF2 soundfont (default: TimGM6mb shipped with pretty_midi)")
    p.add_argument("--sample-rate", type=int, default=SAMPLE_RATE, help="sample rate of the stems")
    p.add_argument("--production", choices=["none", "full"], default="none",
                   help="none: dry renders on the grid in one shared room; full: per-stem effect chains, humanised "
                        "playing, wider genres/meters/tempos (needs pip install stemjepa[effects]); a corpus folder "
                        "holds one setting")
    p.add_argument("--list-instruments", action="store_true", help="print the instrument palette and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import ConfigError

    if args.list_instruments:
        from ..data.synth.palette import describe

        print(describe())
        return 0
    if not args.out:
        raise ConfigError("stemjepa synth: --out DIR is required")
    from ..data.synth import synthesize_corpus

    summary: dict = {}
    songs = synthesize_corpus(args.out, args.songs, seconds=args.seconds, seed=args.seed, jobs=args.jobs,
                              exclude=_names(args.exclude_instruments), require=_names(args.require_instruments),
                              layout=args.layout, soundfont=args.soundfont, sample_rate=args.sample_rate,
                              progress=True, summary=summary, production=args.production)
    rate = summary["written"] / summary["seconds"] * 60 if summary["written"] and summary["seconds"] > 0 else 0.0
    print(f"{len(songs)} songs in {summary['folder']}: {summary['written']} written"
          + (f" ({rate:.1f} songs/min)" if rate else "")
          + f", {summary['kept']} already there" + (f", {len(summary['failed'])} failed" if summary["failed"] else ""))
    for index, reason in summary["failed"][:10]:
        print(f"  song {index}: {reason}")
    return 1 if summary["failed"] else 0
