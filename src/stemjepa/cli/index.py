"""`stemjepa index DIR --out INDEX_DIR [--model NAME_OR_PATH]`: build or update a searchable index of a stem library."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from ..search.vectors import AUTO_APPROX_THRESHOLD, MIN_IVFPQ_VECTORS
    from .options import add_model_option, positive_int

    p = subparsers.add_parser(
        "index", help="index a folder of stems for `stemjepa query` (incremental: re-run to pick up changes)",
        description="Embed every audio file under DIR, estimate its tempo and key, and store both in the --out folder. "
                    "Re-running adds new files, skips unchanged ones and drops deleted ones; an interrupted run resumes "
                    "where it stopped; files indexed before tempo and key existed (or by an older analyser) are analysed "
                    "then. Files that cannot be indexed are listed at the end and the exit status is then 1; a file "
                    "whose tempo/key analysis fails is indexed without them and listed.")
    p.add_argument("dir", help="folder of stems (searched recursively; hidden files and folders are skipped)")
    add_model_option(p, what="model to embed with (queries use the same one; the index records it)")
    p.add_argument("--out", required=True, metavar="INDEX_DIR",
                   help="index folder (created, or updated if it holds an index; a non-empty folder that holds none "
                        "is refused)")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="audio chunks (the model's chunk length) per forward pass (default 16)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when present)")
    p.add_argument("--index-type", choices=["auto", "exact", "ivfpq", "hnsw"], default=None,
                   help=f"search structure: exact inner product, IVF-PQ with exact re-ranking, or HNSW; auto = exact "
                        f"below {AUTO_APPROX_THRESHOLD:,} files, ivfpq from there on; ivfpq needs "
                        f"{MIN_IVFPQ_VECTORS} files and is exact below (default: keep the index's setting, auto for a "
                        "new index)")
    p.add_argument("--allow-empty", action="store_true",
                   help="allow an update that removes every file of the index (otherwise refused: an unmounted drive "
                        "must not wipe the index)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from .embed import add_precision_option

    add_precision_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..models.registry import load_model
    from ..search.build import build_index

    model = load_model(args.model, device=args.device)
    summary = build_index(args.dir, args.out, model, checkpoint=args.model, batch_size=args.batch_size,
                          index_type=args.index_type, progress=not args.quiet, allow_empty=args.allow_empty,
                          precision=args.precision)
    print(summary.text())
    if model.distance != "cosine":
        print(f"  note: this model was trained for {model.distance} ranking (the paper's ||q - z||); the index ranks by cosine "
              "of normalised vectors, which can order candidates differently (`eval retrieval` uses the model's own)")
    return 1 if summary.failed else 0
