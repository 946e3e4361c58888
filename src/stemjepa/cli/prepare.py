"""`stemjepa prepare`: decode a dataset once into a training cache (resumable, parallel)."""
from __future__ import annotations

DATASET_NAMES = ("musdb18", "musdb18hq", "moisesdb", "slakh2100", "folder")  # = stemjepa.data.datasets.DATASETS
# A cache is for training: by default only a dataset's training songs go in, so that evaluating on its test songs (or on all
# of MUSDB18 / MoisesDB, as Table I does) never meets a training song unawares. MoisesDB: the repository's split.
TRAIN_SPLIT = {"musdb18": "train", "musdb18hq": "train", "moisesdb": "train", "slakh2100": "train", "folder": "all"}


def add_parser(subparsers) -> None:
    from .options import positive_int

    p = subparsers.add_parser(
        "prepare",
        help="decode a dataset into a training cache",
        description="Decode every stem of a dataset once (16 kHz mono, float16, memory-mappable) with a frame-level "
        "activity index, into a cache that `stemjepa fit --data` reads. Songs already in the cache and unchanged since are "
        "kept, so an interrupted run can simply be started again; songs whose files changed are prepared again and, when "
        "the whole dataset is prepared (--split all), songs no longer in it leave the cache. Unreadable songs and stems "
        "are skipped and listed at the end.",
    )
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES,
                   help="dataset layout of ROOT ('folder': generic multitrack folder or synthetic corpus)")
    p.add_argument("--root", required=True, help="dataset folder, as distributed")
    p.add_argument("--out", required=True, help="cache folder to create or complete")
    p.add_argument("--split", default=None, choices=("train", "validation", "test", "all"),
                   help="which songs to prepare (default: the training split where the dataset has one, i.e. train for "
                   "musdb18, musdb18hq, slakh2100 and moisesdb (the repository's split), all for a folder)")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="decoding worker processes (default: one per core, at most 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.prepare import default_jobs, format_summary, prepare

    jobs = args.jobs if args.jobs is not None else default_jobs()
    split = args.split or TRAIN_SPLIT[args.dataset]
    result = prepare(args.dataset, args.root, args.out, split=split, jobs=jobs, progress=not args.no_progress)
    print(format_summary(result))
    return 0
