"""`stemjepa fit`: train one phase of the model."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    from .options import nonnegative_int, positive_int

    p = subparsers.add_parser("fit", help="train the model (phase 1 contrastive or phase 2 JEPA)",
                              description="Train one phase. DATA is a training cache (`stemjepa prepare`) or a multitrack folder "
                                          "(song sub-folders with stems.json), which is prepared into a cache on first use.",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="tiny", help="config name (see --list-configs) or path to a YAML file")
    p.add_argument("--data", help="training cache or multitrack folder")
    p.add_argument("--out", help="run folder (checkpoints/, logs/)")
    p.add_argument("--init", help="phase-1 checkpoint whose encoder initialises phase 2")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.ckpt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--max-steps", type=positive_int, help="number of training steps (overrides the config)")
    p.add_argument("--batch-size", type=positive_int, help="global batch size (overrides the config)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="training device")
    p.add_argument("--devices", type=positive_int, default=1, help="devices per node (DDP when > 1)")
    p.add_argument("--num-nodes", type=positive_int, default=1, help="number of nodes (DDP)")
    p.add_argument("--workers", type=nonnegative_int, help="data-loader worker processes (overrides data.num_workers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-configs", action="store_true", help="list the ready-made configs and exit")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. optim.lr=5e-4")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import available_configs, load_config
    from ..errors import StemJepaError
    from ..training.fit import FitOptions, fit

    if args.list_configs:
        print("\n".join(available_configs()))
        return 0
    if not args.data or not args.out:
        raise StemJepaError("fit needs --data DIR and --out RUN_DIR")
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    if args.batch_size is not None:
        overrides.append(f"data.batch_size={args.batch_size}")
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    ignored = list(args.overrides) + (["--batch-size"] if args.batch_size is not None else [])
    if args.resume and ignored:
        print(f"warning: ignored with --resume (the run continues with the config saved in its checkpoint): {' '.join(ignored)}")
    cfg = load_config(args.config, overrides)
    opts = FitOptions(data=args.data, out=args.out, init=args.init, resume=args.resume, overwrite=args.overwrite,
                      device=args.device, devices=args.devices, num_nodes=args.num_nodes, progress=not args.no_progress,
                      max_steps=args.max_steps)
    last = fit(cfg, opts)
    print(f"checkpoint: {last}")
    return 0
