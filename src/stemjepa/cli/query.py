"""`stemjepa query MIX... --instrument TEXT --index INDEX_DIR`: the stems of the library that fit a mix best."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from .options import add_model_option

    p = subparsers.add_parser(
        "query", help="find the stems of an index that fit a mix (e.g. which bass fits this song without bass)",
        description="Embed each MIX, predict the embedding of the missing INSTRUMENT, and list the k closest stems of "
                    "the index, with the offset (seconds) of the best-matching chunk of the model in each (one chunk: "
                    "the model's input length, 4 s for the default model, 8 s for the paper's). score: standard "
                    "deviations above the library's average stem for this query; pct: share of the library ranked "
                    "below; cosine: the raw cosine (also in --json). A mix that cannot be used is reported and the "
                    "others are answered (exit status 2 at the end).")
    p.add_argument("mixes", nargs="+", metavar="MIX", help="audio file(s) of the mix lacking the stem you look for")
    p.add_argument("--instrument", required=True, help='what to look for, free text (e.g. "bass", "acoustic guitar")')
    p.add_argument("--index", required=True, help="index folder made by `stemjepa index`")
    add_model_option(p, default=None, what="model to query with, default: the one recorded in the index (which built it)")
    p.add_argument("-k", type=int, default=10, help="results per mix (default 10)")
    p.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when present)")
    p.add_argument("--json", action="store_true", help="print JSON (one object per mix) instead of a table")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="also write each candidate as a WAV aligned to the mix (the mix's length and sample rate, "
                        "from the matched offset, looped or trimmed) plus results.json into DIR (one sub-folder per "
                        "mix when there are several). A mix too large to hold at its own rate is exported as 2 channels "
                        "at 48 kHz at most. A failed write (disk full) removes what this command exported")
    p.add_argument("--overwrite", action="store_true", help="with --export: replace files of the same names")
    from .embed import add_precision_option

    add_precision_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys

    from ..errors import StemJepaError
    from ..search.inputs import check_instrument, load_query
    from ..search.reader import StemIndex

    instrument = check_instrument(args.instrument)
    if args.k < 1:
        raise StemJepaError(f"-k must be at least 1, got {args.k}")
    with StemIndex.open(args.index, checkpoint=args.model, device=args.device, precision=args.precision) as index:
        sr = index.model.sample_rate
        waves, names, failed = [], [], []
        for mix in args.mixes:  # a bad mix is reported, the others are still answered
            try:
                waves.append(load_query(mix, sr)[0])
                names.append(mix)
            except StemJepaError as exc:
                print(f"error: {exc}", file=sys.stderr)
                failed.append(mix)
        if not waves:
            raise StemJepaError("no mix could be used" if len(args.mixes) > 1 else "the mix could not be used")
        results = index.query_many(waves, instrument, k=args.k)
        total = len(index)
    if args.export:
        from pathlib import Path

        from ..search.export import export_candidates, remove_created, safe_name

        created: list = []  # everything this command exported: removed again if a later write fails (a full disk)
        done = []
        for i, (name, res) in enumerate(zip(names, results)):
            folder = Path(args.export)
            if len(args.mixes) > 1:
                folder = folder / f"{i + 1:02d}_{safe_name(Path(name).stem)}"
            try:
                export_candidates(name, instrument, res, folder, overwrite=args.overwrite, created=created)
            except StemJepaError:
                remove_created(created)
                raise
            done.append(f"exported {len(res)} aligned candidates and results.json to {folder}")
        for line in done:  # only once every export is complete
            print(line, file=sys.stderr)
    if args.json:
        out = [{"mix": name, "instrument": instrument, "results": [r.to_dict() for r in res]}
               for name, res in zip(names, results)]
        print(json.dumps(out if len(out) > 1 or len(args.mixes) > 1 else out[0], indent=1))
    else:
        for name, res in zip(names, results):
            print(f"{name}: {instrument!r}, top {len(res)} of {total} stems")
            print(f"{'rank':>4}  {'score':>6}  {'pct':>5}  {'cosine':>6}  {'offset':>8}  path")
            for r in res:
                print(f"{r.rank:>4}  {r.score:>+6.2f}  {r.percentile:>5.1f}  {r.cosine:>6.3f}  {r.offset:>7.1f}s  "
                      f"{r.path}")
    return 2 if failed else 0
