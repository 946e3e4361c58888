"""`stemjepa index DIR --out INDEX_DIR [--model NAME_OR_PATH]`: build or update a searchable index of a stem library
(`--shard I/N` + `--merge`, or `--engine lightning`: over many processes or machines, search/parts.py)."""
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
    many = p.add_argument_group("many processes or machines (see README: many machines)")
    how = many.add_mutually_exclusive_group()
    how.add_argument("--shard", type=_shard, metavar="I/N",
                     help="embed only shard I of N (0 <= I < N; files split by a hash of their path) into its part "
                          "(INDEX/parts/I-of-N, or --parts); no engine needed (a SLURM array task); a killed shard "
                          "resumes; the index is not changed until --merge")
    how.add_argument("--merge", action="store_true",
                     help="fold the N finished parts of --shard runs into the index as one new generation (nothing "
                          "they embedded is embedded again), then delete them")
    how.add_argument("--engine", choices=["lightning"], default=None,
                     help="shard over --workers processes per node (x --num-nodes; launched here, or joined under "
                          "torchrun/SLURM) through Lightning Fabric, then merge on rank 0")
    many.add_argument("--parts", metavar="DIR", default=None, help="folder of the shards' parts (default INDEX/parts)")
    many.add_argument("--workers", type=positive_int, default=1,
                      help="--engine: processes per node, one device each (default 1)")
    many.add_argument("--num-nodes", type=positive_int, default=1, help="--engine: number of nodes (default 1)")
    from .embed import add_precision_option, add_quantize_option

    add_precision_option(p)
    add_quantize_option(p)
    p.set_defaults(func=run)


def _shard(text: str) -> tuple[int, int]:
    import argparse

    from ..search.parts import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args) -> int:
    from ..models.registry import load_model
    from ..search.build import IndexOptions, build_index
    from ..search.parts import Cluster, embed_part, index_with_lightning, parts_folder
    from .embed import set_quantize

    if args.engine is None and (args.workers > 1 or args.num_nodes > 1):
        from ..errors import StemJepaError

        raise StemJepaError("--workers and --num-nodes are for --engine lightning (with --shard, start one run per shard)")
    options = IndexOptions(batch_size=args.batch_size, index_type=args.index_type, progress=not args.quiet,
                           allow_empty=args.allow_empty, precision=args.precision,
                           merge_from=str(parts_folder(args.out, args.parts)) if args.merge else None)

    def load(device):
        model = load_model(args.model, device=device)
        set_quantize(model, args.quantize)
        return model

    if args.engine == "lightning":
        summary = index_with_lightning(args.dir, args.out, load, args.model, options, parts=args.parts,
                                       cluster=Cluster(args.workers, args.num_nodes, args.device or "auto"))
        print(summary.text())
        return 1 if summary.failed else 0
    model = load(args.device)
    if args.shard is not None:
        summary = embed_part(args.dir, args.out, model, args.shard, options, parts=args.parts)
        print(summary.text())
        return 1 if summary.failed else 0
    summary = build_index(args.dir, args.out, model, model_ref=args.model, options=options)
    print(summary.text())
    if model.distance != "cosine":
        print(f"  note: this model was trained for {model.distance} ranking (the paper's ||q - z||); the index ranks by cosine "
              "of normalised vectors, which can order candidates differently (`eval retrieval` uses the model's own)")
    return 1 if summary.failed else 0
