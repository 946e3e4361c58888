"""`stemjepa eval beats`: the beat-tracking probe of the encoder's patch embeddings (paper Sec. IV)."""
from __future__ import annotations

import sys
from pathlib import Path

DESCRIPTION = """\
Linear-probe beat tracking on the frozen encoder: one vector per time patch of the model (160 ms for the paper's and the
default model; frequency tokens concatenated), 8 linear heads per vector (8 frames per patch: 50 fps with 160 ms patches),
BCE with label widening, madmom DBN decoding (peak picking when madmom is
missing), mir_eval F-measure / CMLt / AMLt (beats before 5 s ignored, +-70 ms window), k-fold cross-validation over the
training datasets, every fold's probe also scored on each held-out --test dataset.

DATASET[:ROOT] layouts (detected from the folder; DATASET is a label, ROOT defaults to data/DATASET):
  ROOT/audio/**.{wav,flac,mp3,...} + ROOT/annotations/**.{beats,txt} matched by file name
      (one beat per line: time in seconds [beat-in-bar ...]; Ballroom, Hainsworth, SMC, Harmonix, GTZAN styles)
  ROOT/<song>/stems.json with song-level "beats" (and "downbeats") in seconds, e.g. `stemjepa synth` output;
      the song's audio is the sum of its stems.
Writes OUT/metrics.json and OUT/beats_example.png; features are cached in OUT/features (or --cache-dir).
"""


def add_parser(subparsers) -> None:
    import argparse

    p = subparsers.add_parser("beats", help="beat-tracking linear probe on the encoder's patch embeddings (Sec. IV)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    from .options import add_model_option

    add_model_option(p, what="model whose context encoder is probed")
    p.add_argument("--train", required=True, nargs="+", action="extend", metavar="DATASET[:ROOT]",
                   help="training datasets, cross-validated (e.g. ballroom:/data/ballroom smc:/data/smc)")
    p.add_argument("--test", default=[], nargs="+", action="extend", metavar="DATASET:ROOT",
                   help="held-out test datasets, scored by every fold's probe (e.g. gtzan:/data/gtzan)")
    p.add_argument("--out", required=True, help="output folder (metrics.json, beats_example.png, features/)")
    p.add_argument("--folds", type=int, default=8, help="cross-validation folds (1: train once on all training tracks)")
    p.add_argument("--epochs", type=int, default=20, help="probe training epochs per fold")
    p.add_argument("--lr", type=float, default=1e-3, help="probe learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=256, help="patch vectors per probe step (x 8 frames)")
    p.add_argument("--decoder", choices=("auto", "dbn", "peaks"), default="auto",
                   help="beat decoder: madmom DBN, peak picking, or auto (DBN when madmom imports)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N tracks of each dataset (quick checks)")
    p.add_argument("--random-init", action="store_true",
                   help="baseline: re-initialise the encoder's weights at random (same architecture) before probing")
    p.add_argument("--seed", type=int, default=0, help="fold assignment, probe init and --random-init seed")
    p.add_argument("--chunk-batch", type=int, default=8,
                   help="model chunks per encoder call (one chunk is the model's input length: 4 s for the default "
                        "model, 8 s for the paper's)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: OUT/features); safe to share between runs")
    p.add_argument("--no-cache", action="store_true", help="keep features in memory only")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/metrics.json")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when present)")
    p.set_defaults(func=run)


def load_encoder(checkpoint, device=None, random_init: bool = False, seed: int = 0):
    """The model to probe and the id its features are cached under (a random re-initialisation gets its own id)."""
    from ..models import load_model
    from ..models.digest import weights_digest

    model = load_model(checkpoint, device=device)
    feature_id = str(model.model_id)
    if random_init:
        randomise_encoder(model, seed)
        feature_id = f"{feature_id}-random-init-{weights_digest(model.encoder)[:12]}"
    return model, feature_id


RANDOM_INIT_SEED_OFFSET = 1_000_003


def randomise_encoder(model, seed: int = 0) -> None:
    """Re-draw the context encoder's weights with the architecture's own initialisation (the untrained baseline).

    The draw is seeded with RANDOM_INIT_SEED_OFFSET + seed: training seeds with a small `seed` too, and the same seed
    would reproduce the checkpoint's own starting weights rather than an independent random encoder.
    """
    import torch

    encoder = model.encoder
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(RANDOM_INIT_SEED_OFFSET + seed)
        for module in encoder.modules():
            if module is not encoder and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        init = getattr(encoder, "_init_weights", None)
        if callable(init):
            init()


def run(args) -> int:
    from ..errors import ConfigError
    from ..evaluation.beats.annotations import parse_dataset_spec
    from ..evaluation.beats.probe import ProbeConfig
    from ..evaluation.beats.runner import BeatEvalConfig, evaluate_beats

    out = Path(args.out)
    if (out / "metrics.json").exists() and not args.overwrite:
        raise ConfigError(f"{out / 'metrics.json'}: already exists (use --overwrite to replace it)")
    if args.epochs < 1 or args.batch_size < 1 or args.folds < 1:
        raise ConfigError("--epochs, --batch-size and --folds must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    train = [parse_dataset_spec(s) for s in args.train]
    test = [parse_dataset_spec(s) for s in args.test]
    from ..models.registry import resolve

    resolve(args.model)  # a one-line error for an unknown name or a missing file, before any work
    model, feature_id = load_encoder(args.model, args.device, args.random_init, args.seed)
    cfg = BeatEvalConfig(
        folds=args.folds,
        probe=ProbeConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                          seed=args.seed),
        decoder=args.decoder,
        limit=args.limit,
        chunk_batch=args.chunk_batch,
    )
    report = evaluate_beats(
        model, train, test, out, cfg, feature_id=feature_id, cache_dir=args.cache_dir, use_cache=not args.no_cache,
        extra={"checkpoint": str(args.model), "random_init": bool(args.random_init)},
    )
    for item in report["skipped"]:
        print(f"warning: skipped {item['path']}: {item['reason']}", file=sys.stderr)
    print(format_summary(report))
    print(f"wrote {out / 'metrics.json'}" + (f" and {out / report['plot']['file']}" if "plot" in report else ""))
    return 0


def format_summary(report: dict) -> str:
    """A small text table: one row per dataset, mean +- std over folds."""
    lines = [f"decoder: {report['decoder']['name']}; mir_eval: beats before {report['mir_eval']['min_beat_time']} s ignored, "
             f"F-measure window +-{report['mir_eval']['f_measure_threshold'] * 1000:.0f} ms; {report['folds']} folds"]
    lines.append(f"{'set':<22}{'dataset':<16}{'tracks':>7}  {'F1':>13}  {'CMLt':>13}  {'AMLt':>13}")
    for kind, key in (("test", "test"), ("cross-validation", "cross_validation")):
        for name, r in report.get(key, {}).items():
            cells = "  ".join(f"{_fmt(r[m])} +-{_fmt(r['std'][m])}" for m in ("F1", "CMLt", "AMLt"))
            lines.append(f"{kind:<22}{name:<16}{r['n_tracks']:>7}  {cells}")
    return "\n".join(lines)


def _fmt(x) -> str:
    return "  nan" if x is None or x != x else f"{x:.3f}"
