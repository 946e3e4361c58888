"""`stemjepa eval retrieval` (the Table I benchmark and the Fig. 2 analysis) and `stemjepa eval compare` (runs side by side)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..fsutil import atomic_write_text, read_json

DATASETS = ("musdb18", "musdb18hq", "moisesdb", "slakh2100", "folder")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "retrieval",
        help="stem retrieval benchmark of Table I (+ Fig. 2 analysis)",
        description="Embed every stem of every track into a pool, query it with the mix of the other stems conditioned on "
        "the stem's label, and report Recall@1/5/10, normalised ranks, top-1 among 64 and the Fig. 2 analysis.",
    )
    from .options import add_model_option, positive_int

    add_model_option(p, what="model to evaluate")
    p.add_argument("--dataset", required=True, choices=DATASETS,
                   help="dataset layout at --root (a synthetic corpus is a 'folder')")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", default=None,
                   help="a split of the dataset (train, validation, test; a folder's songs may name any split in "
                   "stems.json) or all (default: Table I's pool, every track, for musdb18, musdb18hq and moisesdb; the "
                   "test split, or all where there is none, for the others)")
    p.add_argument("--label-level", "--conditioning", dest="label_level", choices=("fine", "coarse"), default="fine",
                   help="which label of a stem its query is conditioned on: the most specific one or its category "
                   "(--conditioning: the old spelling)")
    p.add_argument("--distance", choices=("l2", "cosine"), default=None,
                   help="ranking: Euclidean distance of the raw vectors (the paper's normalised rank) or cosine similarity "
                   "(default: the ranking the model was trained for: cosine for centred models such as the built-in "
                   "ones, L2 for the paper's configs; the report says which)")
    p.add_argument("--reference-encoder", choices=("target", "context"), default="target",
                   help="encoder of the pool's reference stems: the EMA target encoder (what the predictor predicts) "
                   "(the default) or the context one")
    p.add_argument("--strict", action="store_true",
                   help="refuse to evaluate songs the checkpoint was trained on (or a checkpoint that does not record them)")
    p.add_argument("--out", required=True, help="output folder (metrics.json, rankings.csv, analysis.csv, fig2.png, report.md)")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default: OUT/cache); shared between runs is fine")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--overwrite", action="store_true", help="replace results of another checkpoint / dataset in --out")
    p.add_argument("--name", default=None, help="row name in reports (default: the run folder of a RUN/checkpoints/*.ckpt, "
                   "else the model file's name)")
    p.add_argument("--label-map", default=None, help="JSON file mapping dataset labels to conditioning text")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N songs (quick checks)")
    p.add_argument("--k64-draws", type=positive_int, default=10,
                   help="seeded draws of the 63 distractors for top1_k64 (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the top1_k64 draws (default 0)")
    p.add_argument("--silence-db", type=float, default=-60.0,
                   help="a stem is silent, and left out of the pool and the queries, when no 100 ms frame reaches this "
                   "RMS in dBFS (default -60)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when present)")
    p.set_defaults(func=run_retrieval)

    c = subparsers.add_parser(
        "compare",
        help="one Table-I-style table from several `eval retrieval` folders",
        description="Print one Markdown table, a row per evaluated checkpoint and a column group per benchmark.",
    )
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output folders of `stemjepa eval retrieval`")
    c.add_argument("--out", default=None, help="also write the table to this Markdown file")
    c.add_argument("--k64", action="store_true", help="add the top-1 among 64 column")
    c.add_argument("--time", action="store_true", help="add the evaluation time column")
    c.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    c.set_defaults(func=run_compare)


def run_retrieval(args) -> int:
    from ..errors import ConfigError
    from ..evaluation.report import chance_row, protocol_note, table_header, table_row
    from ..evaluation.retrieval import RetrievalProtocol, evaluate_retrieval, load_songs

    label_map = None
    if args.label_map:
        label_map = read_json(args.label_map, error=ConfigError)
        if not isinstance(label_map, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in label_map.items()):
            raise ConfigError(f"{args.label_map}: must be a JSON object mapping label strings to text")
    from ..models.registry import resolve

    model_file = str(resolve(args.model).path)  # a one-line error for an unknown name or a missing file, before any work
    songs, split, problems = load_songs(args.dataset, args.root, args.split)
    for path, reason in problems:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if args.limit is not None:
        songs = songs[: args.limit]
    cache_dir = args.cache_dir
    if args.no_cache:
        cache_dir = False
    elif cache_dir is None:
        cache_dir = Path(args.out) / "cache"
    protocol = RetrievalProtocol(dataset=args.dataset, split=split, label_level=args.label_level, distance=args.distance,
                                 reference_encoder=args.reference_encoder, k64_draws=args.k64_draws, seed=args.seed,
                                 silence_db=args.silence_db, label_map=label_map)
    m = evaluate_retrieval(model_file, songs, protocol, args.out, cache_dir=cache_dir, overwrite=args.overwrite,
                           name=args.name, device=args.device, strict=args.strict)
    for s in m["skipped"]:
        print(f"warning: skipped song {s['song']}: {s['reason']}", file=sys.stderr)
    print(f"{m['n_queries']} queries, pool of {m['n_pool']} stems, {m['n_silent_excluded']} silent stems excluded, "
          f"{m['seconds']:.1f} s")
    print(table_header())
    print(table_row(m))
    print(chance_row(m))
    print(protocol_note(m))
    k64 = "n/a (a single track)" if m["top1_k64"] is None else f"{m['top1_k64']:.1f}%"
    print(f"top-1 among {m['k64_candidates']}: {k64}  -> {args.out}")
    return 0


def run_compare(args) -> int:
    from ..errors import StemJepaError
    from ..evaluation.report import compare_table

    extra = tuple(k for k, on in (("top1_k64", args.k64), ("seconds", args.time)) if on)
    table = compare_table(args.runs, extra=extra)
    print(table, end="")
    if args.out:
        out = Path(args.out)
        if out.exists() and not args.force:
            raise StemJepaError(f"{out}: exists; pass --force to replace it")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, table)
    return 0
