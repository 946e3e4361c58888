"""`stemjepa query MIX... --instrument TEXT --index INDEX_DIR`: the stems of the library that fit a mix best."""
from __future__ import annotations

import argparse

# what the figures mean, printed under every table; the thresholds are those measured on held-out synthetic songs with
# the built-in model (benchmarks/compat_ranking.py, benchmarks/RESULTS.md "Compatibility ranking")
LEGEND = ("z: how far a stem stands out from the library's average for this query, in standard deviations (built-in "
          "model, held-out songs: right answers +1.7 to +3.5, wrong first answers +2.0 to +3.4; under +1 is ordinary); "
          "percentile: share of the library ranked below; fit: tempo x key fit to the mix, 0-1 (half/double time and "
          "relative keys count); -: no beat or no key found (pads, drums)")


def _bpm(text: str):
    from ..analysis.compat import FilterError, parse_bpm_filter

    try:
        return parse_bpm_filter(text)
    except FilterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _key(text: str):
    from ..analysis.compat import FilterError, parse_key_filter

    try:
        return parse_key_filter(text)
    except FilterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers) -> None:
    from .options import add_model_option

    p = subparsers.add_parser(
        "query", help="find the stems of an index that fit a mix (e.g. which bass fits this song without bass)",
        description="Embed each MIX, predict the embedding of the missing INSTRUMENT, and list the k closest stems of "
                    "the index with their tempo and key, and the offset (seconds) of the best-matching chunk of the "
                    "model in each (one chunk: the model's input length, 4 s for the default model, 8 s for the "
                    "paper's). The mix's own tempo and key are estimated and shown. z: standard deviations above the "
                    "library's average stem for this query; percentile: share of the library ranked below; fit: how "
                    "well the stem's tempo and key fit the mix's, 0-1; cosine: the raw cosine (--json). A mix that "
                    "cannot be used is reported and the others are answered (exit status 2 at the end).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  stemjepa query song.wav --instrument bass --index lib.idx --bpm 120        # 115-125 BPM, or 60 / 240\n"
               "  stemjepa query song.wav --instrument bass --index lib.idx --bpm 118-124!   # no half/double time\n"
               "  stemjepa query song.wav --instrument piano --index lib.idx --key Am:camelot # Am, C, Dm, Em\n"
               "  stemjepa query song.wav --instrument pad --index lib.idx --rank compat --export picks/ --fit")
    p.add_argument("mixes", nargs="+", metavar="MIX", help="audio file(s) of the mix lacking the stem you look for")
    p.add_argument("--instrument", required=True, help='what to look for, free text (e.g. "bass", "acoustic guitar")')
    p.add_argument("--index", required=True, help="index folder made by `stemjepa index`")
    add_model_option(p, default=None, what="model to query with, default: the one recorded in the index (which built it)")
    p.add_argument("-k", type=int, default=10, help="results per mix (default 10)")
    p.add_argument("--bpm", type=_bpm, default=None, metavar="TEMPO",
                   help="keep stems near this tempo, half and double time included: 120 (+-4 %%), 120+-3 (BPM), "
                        "120:2%%, 118-124; a trailing ! turns half/double time off (120!). Stems with no beat (pads) "
                        "are kept; stems never analysed are not")
    p.add_argument("--key", type=_key, default=None, metavar="KEY",
                   help='keep stems in this key: "A minor", Am, "F# major", 8A (Camelot); Am:relative adds the '
                        "relative key (C major), Am:camelot the Camelot neighbours (C, Dm, Em), Am+-2 keys within 2 "
                        "semitones (same mode). Stems with no key (drums) are kept")
    p.add_argument("--rank", choices=["model", "compat"], default="model",
                   help="model: the model's order (default); compat: the model's z lowered by up to 1.5 for a stem "
                        "whose tempo or key clashes with the mix's (estimated), see README 'Tempo and key'")
    p.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when present)")
    p.add_argument("--json", action="store_true",
                   help="print JSON (one object per mix: its analysis, and per result z, percentile, cosine, offset, "
                        "analysis {bpm, key, ...} and fit) instead of a table")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="also write each candidate as a WAV aligned to the mix (the mix's length and sample rate, "
                        "from the matched offset, looped or trimmed) plus results.json into DIR (one sub-folder per "
                        "mix when there are several). A mix too large to hold at its own rate is exported as 2 channels "
                        "at 48 kHz at most. A failed write (disk full) removes what this command exported")
    p.add_argument("--fit", action="store_true",
                   help="with --export: time-stretch each candidate to the mix's tempo, pitch-shift it to the mix's "
                        "key and start it on the mix's downbeat (the unfitted export is what you get without --fit)")
    p.add_argument("--overwrite", action="store_true", help="with --export: replace files of the same names")
    from .embed import add_precision_option

    add_precision_option(p)
    p.set_defaults(func=run)


def tempo_text(analysis) -> str:
    """'120.0' or '-' (no beat, or not analysed)."""
    return "-" if analysis is None or analysis.bpm is None else f"{analysis.bpm:.1f}"


def key_text(analysis) -> str:
    """'A minor' or '-' (no key, or not analysed)."""
    return "-" if analysis is None or analysis.key is None else analysis.key


def run(args) -> int:
    import sys

    from ..errors import StemJepaError
    from ..search.inputs import check_instrument
    from ..search.reader import StemIndex

    instrument = check_instrument(args.instrument)
    if args.k < 1:
        raise StemJepaError(f"-k must be at least 1, got {args.k}")
    if args.fit and not args.export:
        raise StemJepaError("--fit changes what --export writes: give --export DIR too")
    with StemIndex.open(args.index, model=args.model, device=args.device, precision=args.precision) as index:
        mixes, failed = _load_mixes(args.mixes, index.model.sample_rate)
        analyses = [index.analyse_mix(m) for m in mixes]
        results = index.query_many(mixes, instrument, k=args.k, bpm=args.bpm, key=args.key, rank=args.rank,
                                   mix_analyses=analyses)
        total = len(index)
    names = [m.name for m in mixes]
    if args.export:
        for line in _export(args, instrument, names, analyses, results):  # only once every export is complete
            print(line, file=sys.stderr)
    filters = {"bpm": None if args.bpm is None else str(args.bpm), "key": None if args.key is None else str(args.key)}
    if args.json:
        _print_json(args, instrument, filters, names, analyses, results)
    else:
        _print_table(args, instrument, filters, names, analyses, results, total)
    return 2 if failed else 0


def _load_mixes(paths: list[str], sample_rate: int) -> tuple[list, list[str]]:
    """(the checked mixes (`stemjepa.audio.mix.Mix`: checked here, once), the paths that could not be used): a bad mix
    is reported and the others are still answered."""
    import sys

    from ..audio.mix import load_query
    from ..errors import StemJepaError

    mixes, failed = [], []
    for path in paths:
        try:
            mixes.append(load_query(path, sample_rate, name=path))
        except StemJepaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed.append(path)
    if not mixes:
        raise StemJepaError("no mix could be used" if len(paths) > 1 else "the mix could not be used")
    return mixes, failed


def _export(args, instrument: str, names: list[str], analyses: list, results: list) -> list[str]:
    """Write every mix's candidates (--export, --fit); everything exported is removed again if a write fails (a full
    disk). The lines to print once all are written."""
    from pathlib import Path

    from ..errors import StemJepaError
    from ..search.export import export_candidates, remove_created, safe_name

    created: list = []  # everything this command exported: removed again if a later write fails (a full disk)
    done = []
    for i, (name, res) in enumerate(zip(names, results)):
        fit = {"fit": True, "mix_analysis": analyses[i]} if args.fit else {}
        folder = Path(args.export)
        if len(args.mixes) > 1:
            folder = folder / f"{i + 1:02d}_{safe_name(Path(name).stem)}"
        try:
            export_candidates(name, instrument, res, folder, overwrite=args.overwrite, created=created, **fit)
        except StemJepaError:
            remove_created(created)
            raise
        done.append(f"exported {len(res)} {'fitted' if args.fit else 'aligned'} candidates and results.json to {folder}")
    return done


def _print_json(args, instrument: str, filters: dict, names: list[str], analyses: list, results: list) -> None:
    import json

    out = [{"mix": name, "instrument": instrument, "analysis": a.to_dict(), "filters": filters, "rank": args.rank,
            "results": [r.to_dict() for r in res]}
           for name, a, res in zip(names, analyses, results)]
    print(json.dumps(out if len(out) > 1 or len(args.mixes) > 1 else out[0], indent=1))


def _print_table(args, instrument: str, filters: dict, names: list[str], analyses: list, results: list,
                 total: int) -> None:
    shown = ", ".join(f"{k} {v}" for k, v in filters.items() if v) or "none"
    for name, a, res in zip(names, analyses, results):
        print(f"{name}: {instrument!r}, top {len(res)} of {total} stems (mix: {tempo_text(a)} BPM, "
              f"{key_text(a)}; filters: {shown}; ranked by {args.rank})")
        print(f"{'rank':>4}  {'z':>6}  {'percentile':>10}  {'BPM':>6}  {'key':<8}  {'fit':>4}  {'offset':>8}  path")
        for r in res:
            fit_text = "-" if r.compatibility is None else f"{r.compatibility:.2f}"
            print(f"{r.rank:>4}  {r.z:>+6.2f}  {r.percentile:>10.1f}  {tempo_text(r.analysis):>6}  "
                  f"{key_text(r.analysis):<8}  {fit_text:>4}  {r.offset:>7.1f}s  {r.path}")
        if not res:
            print("  (no stem of the index passes the filters)")
    print(LEGEND)
