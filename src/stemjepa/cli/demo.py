"""`stemjepa demo`: the whole system end to end on built-in synthetic data (what `make demo` runs)."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole system end to end on built-in synthetic data",
                              description="Generate a synthetic corpus, train phase 1 and phase 2, evaluate both on held-out "
                                          "songs (zero-shot instruments), index the held-out stems, run example queries, "
                                          "and write a report. Re-running reuses what exists.",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder")
    from ..demo import DemoConfig

    d = DemoConfig()  # one set of defaults, the demo's own
    p.add_argument("--minutes", type=float, default=d.minutes, help="time budget for the whole job (installation not included)")
    p.add_argument("--train-songs", type=int, default=d.train_songs)
    p.add_argument("--test-songs", type=int, default=d.test_songs)
    p.add_argument("--seconds", type=float, default=d.seconds, help="length of each synthetic song")
    p.add_argument("--phase1-steps", type=int, default=d.phase1_steps,
                   help="phase-1 training steps (the time budget may stop earlier)")
    p.add_argument("--phase2-steps", type=int, default=d.phase2_steps,
                   help="phase-2 training steps (the time budget may stop earlier)")
    p.add_argument("--jobs", type=int, default=2, help="processes for rendering the corpus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..demo import DemoConfig, run_demo

    cfg = DemoConfig(out=Path(args.out), minutes=args.minutes, train_songs=args.train_songs, test_songs=args.test_songs,
                     seconds=args.seconds, seed=args.seed, jobs=args.jobs, phase1_steps=args.phase1_steps,
                     phase2_steps=args.phase2_steps, progress=not args.no_progress)
    run_demo(cfg)
    return 0
