"""`stemjepa demo`: the whole system end to end on built-in synthetic data (what `make demo` runs)."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    from .options import positive_float, positive_int

    p = subparsers.add_parser("demo", help="run the whole system end to end on built-in synthetic data",
                              description="Generate a synthetic corpus, fine-tune the built-in model on it with phase 1 "
                                          "(contrastive) and phase 2 (JEPA) (--init scratch: train the tiny model from "
                                          "random weights instead), evaluate both and the built-in model as it is on "
                                          "held-out songs (zero-shot instruments), index the held-out stems, run example "
                                          "queries, and write a report. Re-running into the same --out reuses what exists (the "
                                          "corpus, and finished training runs whatever the step options: delete "
                                          "OUT/runs to train again); a "
                                          "non-empty --out that is not a demo's output is refused (nothing in it is "
                                          "overwritten).",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (new, empty, or a previous demo's)")
    from ..demo import DemoConfig

    d = DemoConfig()  # one set of defaults, the demo's own
    p.add_argument("--minutes", type=positive_float, default=d.minutes,
                   help="time budget for the whole job (installation not included): training gets what the other "
                        "stages leave, but at least a minute, and rendering the corpus is not cut short, so a small "
                        "budget is exceeded")
    p.add_argument("--train-songs", type=positive_int, default=d.train_songs, help="synthetic songs to train on")
    p.add_argument("--test-songs", type=positive_int, default=d.test_songs,
                   help="held-out synthetic songs (with the zero-shot instruments) to evaluate and index")
    p.add_argument("--seconds", type=positive_float, default=d.seconds, help="length of each synthetic song, in seconds")
    p.add_argument("--init", default=d.init, metavar="MODEL",
                   help="where training starts: a built-in model (name or alias), an export or a .ckpt, fine-tuned on "
                        "the corpus (both phases take its architecture), or 'scratch': the tiny configs from random "
                        "weights, phase 2 from phase 1 as in the paper (weaker in the same time: README, The demo)")
    p.add_argument("--phase1-steps", type=positive_int, default=None,
                   help="phase-1 training steps (default: 150 fine-tuning, 300 from scratch; the time budget may stop "
                        "earlier)")
    p.add_argument("--phase2-steps", type=positive_int, default=None,
                   help="phase-2 training steps (default: 150 fine-tuning, 300 from scratch; the time budget may stop "
                        "earlier)")
    p.add_argument("--jobs", type=positive_int, default=d.jobs, help="processes for rendering the corpus")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the corpus and of training")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..demo import DemoConfig, run_demo

    cfg = DemoConfig(out=Path(args.out), minutes=args.minutes, train_songs=args.train_songs, test_songs=args.test_songs,
                     seconds=args.seconds, seed=args.seed, jobs=args.jobs, init=args.init, phase1_steps=args.phase1_steps,
                     phase2_steps=args.phase2_steps, progress=not args.no_progress)
    run_demo(cfg)
    return 0
